"""Kafka plumbing shared by the worker, the CLI and replay: client security
settings from the one settings object, and topic creation."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Mapping
from typing import Any

from cachebus.errors import ConfigError
from cachebus.settings import Settings


def client_config(settings: Settings) -> dict[str, Any]:
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


async def ensure_topics(settings: Settings, timeout: float = 30.0) -> None:
    """Create the events, audit and dead-letter topics when missing."""
    parts = settings.topic_partitions
    await acreate_topics(
        settings.kafka_bootstrap,
        {settings.events_topic: parts, settings.audit_topic: parts, settings.dlq_topic: parts},
        timeout=timeout,
        **client_config(settings),
    )


async def acreate_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    replication: int = 1,
    timeout: float = 30.0,
    **client_config: Any,
) -> None:
    """Create ``{name: partitions}`` topics and wait until every partition has a leader.

    Topics that already exist are left alone (their partition count is not changed).

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
    await admin.start()
    try:
        response = await admin.create_topics(
            [NewTopic(name, partitions, replication) for name, partitions in topics.items()]
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
