"""Kafka plumbing shared by the worker, the CLI and replay: client security
settings from :class:`~worker.settings.WorkerSettings`, and topic creation."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Coroutine, Mapping
from typing import Any, Final

from cachebus.errors import ConfigError

from .settings import WorkerSettings


def client_config(settings: WorkerSettings) -> dict[str, Any]:
    """aiokafka keyword arguments for security (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL)."""
    protocol = settings.kafka_security_protocol.upper()
    if protocol not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
        raise ConfigError(f"unknown CACHEBUS_KAFKA_SECURITY_PROTOCOL {protocol!r}")
    config: dict[str, Any] = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        config["ssl_context"] = ssl.create_default_context(cafile=settings.kafka_ssl_cafile or None)
    if protocol.startswith("SASL"):
        if not settings.kafka_sasl_mechanism:
            raise ConfigError("SASL needs CACHEBUS_KAFKA_SASL_MECHANISM (PLAIN, SCRAM-SHA-256/512)")
        config["sasl_mechanism"] = settings.kafka_sasl_mechanism
        config["sasl_plain_username"] = settings.kafka_sasl_username
        config["sasl_plain_password"] = settings.kafka_sasl_password
    return config


OVERSIZE_HEADROOM: Final = 1024 * 1024
"""The events topic accepts records this much larger than ``max_event_bytes``."""


def events_topic_configs(settings: WorkerSettings) -> dict[str, str]:
    """Topic configs of a created events topic. ``max.message.bytes`` is above
    ``max_event_bytes`` (by :data:`OVERSIZE_HEADROOM`): with the broker's default
    (about 1 MB) a record over the worker's limit would be refused when produced, and
    the ``oversize`` dead-letter path could never be taken. Records larger still are
    refused by the broker at produce time."""
    return {"max.message.bytes": str(settings.max_event_bytes + OVERSIZE_HEADROOM)}


async def ensure_topics(settings: WorkerSettings, timeout: float = 30.0) -> None:
    """Create the events, audit and dead-letter topics when missing (the events topic
    with :func:`events_topic_configs`). Existing topics are left as they are."""
    parts = settings.topic_partitions
    await acreate_topics(
        settings.kafka_bootstrap,
        {settings.events_topic: parts, settings.audit_topic: parts, settings.dlq_topic: parts},
        timeout=timeout,
        configs={settings.events_topic: events_topic_configs(settings)},
        **client_config(settings),
    )


KAFKA_RETRY_START: Final = 0.5
KAFKA_RETRY_MAX: Final = 15.0
"""Startup: seconds between attempts to reach Kafka, doubling up to this."""
KAFKA_ATTEMPT_TIMEOUT: Final = 10.0
"""Startup: one attempt (bootstrap, create topics, leaders elected) gives up after this."""


async def wait_for_topics(settings: WorkerSettings, stop: asyncio.Event, log: Any) -> bool:
    """Startup: :func:`ensure_topics` until it succeeds (True) or ``stop`` is set
    (False, at once, whatever is in progress). One log line per failed attempt,
    the wait doubling from ``KAFKA_RETRY_START`` to ``KAFKA_RETRY_MAX`` seconds."""
    from aiokafka.errors import KafkaError

    delay = KAFKA_RETRY_START
    attempt = 0
    while not stop.is_set():
        attempt += 1
        try:
            done = await _unless(stop, ensure_topics(settings, timeout=KAFKA_ATTEMPT_TIMEOUT))
        except (KafkaError, OSError, TimeoutError, RuntimeError) as exc:
            log.warning(
                "kafka unavailable; retrying",
                bootstrap=settings.kafka_bootstrap,
                error=_one_line(exc),
                attempt=attempt,
                retry_in_s=delay,
            )
        else:
            if not done:
                return False
            if attempt > 1:
                log.info("kafka is reachable", bootstrap=settings.kafka_bootstrap, attempts=attempt)
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, KAFKA_RETRY_MAX)
    return False


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    name = type(exc).__name__
    text = text if text.startswith(name) else f"{name}: {text}"
    return (text.splitlines() or [name])[0][:500]


async def _unless(stop: asyncio.Event, work: Coroutine[Any, Any, None]) -> bool:
    """Run ``work``; True when it finished, False when ``stop`` was set first (it is
    cancelled). Its exception propagates."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    if task.cancelled():
        return False
    task.result()
    return True


async def acreate_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    replication: int = 1,
    timeout: float = 30.0,
    *,
    configs: Mapping[str, Mapping[str, str]] | None = None,
    **client_config: Any,
) -> None:
    """Create ``{name: partitions}`` topics and wait until every partition has a leader.
    ``configs``: topic configs by topic name (e.g. ``max.message.bytes``), for created
    topics.

    Topics that already exist are left alone (their partition count and configs are not
    changed).

    Raises:
        RuntimeError: the broker refused to create a topic for another reason.
        TimeoutError: partitions got no leader within ``timeout`` seconds.
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError, for_code

    if not topics:
        return
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000), **client_config
    )
    try:
        await admin.start()  # inside: a failed bootstrap closes the client too
        response = await admin.create_topics(
            [
                NewTopic(
                    name,
                    partitions,
                    replication,
                    topic_configs=dict((configs or {}).get(name, {})) or None,
                )
                for name, partitions in topics.items()
            ]
        )
        failures = []
        for entry in response.topic_errors:
            name, code = entry[0], entry[1]
            message = entry[2] if len(entry) > 2 else None
            if code in (0, TopicAlreadyExistsError.errno):
                continue
            failures.append(f"{name}: {for_code(code).__name__} {message or ''}".strip())
        if failures:
            raise RuntimeError("create_topics failed: " + "; ".join(failures))

        # CreateTopics returns before leaders are elected; producing at once would then hit
        # LEADER_NOT_AVAILABLE retries, so wait here where the timeout is explicit.
        deadline = time.monotonic() + timeout
        while True:
            described = await admin.describe_topics(list(topics))
            if all(_topic_ready(t) for t in described) and len(described) == len(topics):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"topics {sorted(topics)} have no leaders after {timeout}s")
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


def _topic_ready(topic: Mapping[str, Any]) -> bool:
    partitions = topic.get("partitions") or []
    return (
        topic.get("error_code", 0) == 0
        and bool(partitions)
        and all(p.get("error_code", 0) == 0 and p.get("leader", -1) >= 0 for p in partitions)
    )
