"""``cachebus publish``: validate and publish JSONL document events (key = doc_id),
creating a missing events topic first. Needs the worker extra (imported when run)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Iterable
from typing import Any, TextIO

from cachebus.errors import ConfigError
from worker.errors import InvalidEventError

from ..settings import WorkerSettings


def register(subparsers: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``cachebus publish``."""
    p = subparsers.add_parser(
        "publish", help="validate and publish JSONL document events (worker extra)"
    )
    add_common(p)
    p.add_argument("file", nargs="?", default="-", help="JSONL file (default: stdin)")
    p.add_argument(
        "--no-validate",
        action="store_true",
        help="publish lines even if they fail validation (tests of the DLQ)",
    )
    p.set_defaults(run=run)


def run(settings: WorkerSettings, args: argparse.Namespace) -> int:
    """Publish ``args.file`` (``-``: stdin); exit 1 if lines were refused."""
    stream = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")  # noqa: SIM115
    with stream:
        refused = asyncio.run(
            publish(settings, stream, validate=not args.no_validate, out=sys.stdout)
        )
    return 1 if refused else 0


def _lines(stream: TextIO) -> Iterable[tuple[int, str]]:
    for number, line in enumerate(stream, 1):
        if line.strip():
            yield number, line.strip()


async def ensure_events_topic(settings: WorkerSettings, *, err: TextIO = sys.stderr) -> bool:
    """Create the events topic with ``CACHEBUS_TOPIC_PARTITIONS`` partitions if it does
    not exist (as the worker does), rather than let the broker auto-create it with its
    default (often 1). Returns whether it was created."""
    from worker.audit_tail import topic_partitions
    from worker.kafka import acreate_topics, client_config, events_topic_configs

    topic = settings.events_topic
    if await topic_partitions(settings, topic) is not None:
        return False
    try:
        await acreate_topics(
            settings.kafka_bootstrap,
            {topic: settings.topic_partitions},
            configs={topic: events_topic_configs(settings)},
            **client_config(settings),
        )
    except (RuntimeError, TimeoutError) as exc:
        raise ConfigError(
            f"topic {topic!r} does not exist and could not be created ({exc}); start "
            f"`cachebus worker` once (it creates its topics) or create it with "
            f"CACHEBUS_TOPIC_PARTITIONS={settings.topic_partitions} partitions"
        ) from exc
    print(
        f"cachebus publish: created topic {topic} with {settings.topic_partitions} "
        "partitions (CACHEBUS_TOPIC_PARTITIONS)",
        file=err,
    )
    return True


async def publish(settings: WorkerSettings, stream: TextIO, *, validate: bool, out: TextIO) -> int:
    """Validate and publish JSONL document events (key = doc_id). Returns the
    number of lines refused. Creates a missing events topic first."""
    from aiokafka import AIOKafkaProducer

    from worker.events import parse_event
    from worker.kafka import OVERSIZE_HEADROOM, client_config
    from worker.tracing import configure, producer_headers

    configure("cachebus-publish")  # OTEL_TRACES_EXPORTER (ConfigError: exporter missing)
    await ensure_events_topic(settings)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        # Above max_event_bytes: an oversize event reaches the topic (created with a
        # matching max.message.bytes) and the worker dead-letters it as `oversize`.
        max_request_size=settings.max_event_bytes + OVERSIZE_HEADROOM,
        **client_config(settings),
    )
    sent = refused = 0
    try:
        await producer.start()
        futures = []
        # The current trace context (or TRACEPARENT's) in every record's headers.
        with producer_headers(settings.events_topic) as headers:
            for number, line in _lines(stream):
                raw = line.encode("utf-8")
                try:
                    event = parse_event(raw, max_bytes=settings.max_event_bytes)
                    key = event.doc_id.encode("utf-8")
                except InvalidEventError as exc:
                    if validate:
                        refused += 1
                        print(
                            f"line {number}: refused ({exc.reason}): {exc.detail}", file=sys.stderr
                        )
                        continue
                    key = None
                futures.append(
                    await producer.send(settings.events_topic, raw, key=key, headers=headers)
                )
                sent += 1
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    print(f"published {sent} events to {settings.events_topic}; refused {refused}", file=out)
    return refused
