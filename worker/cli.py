"""The ``cachebus`` command: worker, publish, audit tail."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from cachebus.errors import CacheBusError, InvalidEventError
from cachebus.settings import Settings


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for name in ("kafka_bootstrap", "redis_url", "prefix", "rules_file", "consumer_group"):
        value = getattr(args, name, None)
        if value:
            overrides[name] = value
    return Settings.from_env(**overrides)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap", dest="kafka_bootstrap", help="Kafka bootstrap servers")
    parser.add_argument("--redis-url", help="Redis URL (redis:// or rediss://)")
    parser.add_argument("--prefix", help="key prefix")


# -- publish -----------------------------------------------------------------


def _lines(stream: TextIO) -> Iterable[tuple[int, str]]:
    for number, line in enumerate(stream, 1):
        if line.strip():
            yield number, line.strip()


async def publish(settings: Settings, stream: TextIO, *, validate: bool, out: TextIO) -> int:
    """Validate and publish JSONL document events (key = doc_id). Returns the
    number of lines refused."""
    from aiokafka import AIOKafkaProducer

    from .events import parse_event
    from .kafka import client_config

    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        **client_config(settings),
    )
    await producer.start()
    sent = refused = 0
    try:
        futures = []
        for number, line in _lines(stream):
            raw = line.encode("utf-8")
            try:
                event = parse_event(raw, max_bytes=settings.max_event_bytes)
                key = event.doc_id.encode("utf-8")
            except InvalidEventError as exc:
                if validate:
                    refused += 1
                    print(f"line {number}: refused ({exc.reason}): {exc.detail}", file=sys.stderr)
                    continue
                key = None
            futures.append(await producer.send(settings.events_topic, raw, key=key))
            sent += 1
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    print(f"published {sent} events to {settings.events_topic}; refused {refused}", file=out)
    return refused


# -- audit tail --------------------------------------------------------------


def format_audit(audit: dict[str, Any]) -> str:
    actions = ", ".join(
        f"{a['kind']} {a['target']}" + (f" {a['detail']}" if a.get("detail") else "")
        for a in audit.get("actions", [])
    )
    event = f"{audit.get('event_type') or '?'} {audit.get('doc_id') or '?'}"
    if audit.get("doc_version") is not None:
        event += f" v{audit['doc_version']}"
    src = audit.get("source", {})
    lag = audit.get("lag_ms")
    line = (
        f"{audit.get('processed_at', '')}  p{src.get('partition')}@{src.get('offset')}  "
        f"{audit.get('outcome', ''):<17} {event:<32} "
        f"removed={audit.get('keys_removed', 0)}"
    )
    if lag is not None:
        line += f" lag={lag:.0f}ms"
    if audit.get("replay"):
        line += " [replay]"
    if actions:
        line += f"  | {actions}"
    if audit.get("reason") and audit.get("outcome") != "applied":
        line += f"  | {audit['reason']}"
    return line


async def audit_tail(
    settings: Settings,
    *,
    from_beginning: bool,
    count: int | None,
    follow: bool,
    as_json: bool,
    out: TextIO,
    idle_timeout: float = 2.0,
) -> int:
    """Print audit events; stop after ``count`` or when idle (unless ``follow``)."""
    from aiokafka import AIOKafkaConsumer

    from .kafka import client_config

    consumer = AIOKafkaConsumer(
        settings.audit_topic,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=False,
        group_id=None,
        **client_config(settings),
    )
    await consumer.start()
    shown = 0
    try:
        while count is None or shown < count:
            batch = await consumer.getmany(timeout_ms=int(idle_timeout * 1000))
            if not batch and not follow:
                break
            for records in batch.values():
                for record in records:
                    try:
                        audit = json.loads(record.value)
                    except ValueError:
                        continue
                    print(
                        json.dumps(audit) if as_json else format_audit(audit), file=out, flush=True
                    )
                    shown += 1
                    if count is not None and shown >= count:
                        return shown
    finally:
        await consumer.stop()
    return shown


# -- main --------------------------------------------------------------------


# Each module has ``register(subparsers, add_common)`` which adds its subcommand
# and sets ``run(settings, args) -> exit code`` as the parser default.
COMMAND_MODULES: tuple[str, ...] = (
    "worker.replay",
    "worker.stats",
    "worker.warm",
    "worker.acl_cli",
    "worker.gc_cli",
    "worker.monitor",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cachebus", description="Event-driven cache invalidation for embedding caches."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("worker", help="run the invalidation worker (faust)")
    _add_common(p)
    p.add_argument("--rules", dest="rules_file", help="TOML rules file (default: shipped rules)")
    p.add_argument("--group", dest="consumer_group", help="consumer group id")

    p = sub.add_parser("publish", help="validate and publish JSONL document events")
    _add_common(p)
    p.add_argument("file", nargs="?", default="-", help="JSONL file (default: stdin)")
    p.add_argument(
        "--no-validate",
        action="store_true",
        help="publish lines even if they fail validation (tests of the DLQ)",
    )

    p = sub.add_parser("audit", help="read the audit trail")
    audit_sub = p.add_subparsers(dest="audit_command", required=True)
    t = audit_sub.add_parser("tail", help="print audit events")
    _add_common(t)
    t.add_argument("--from-beginning", action="store_true")
    t.add_argument("-n", type=int, default=None, help="stop after N events")
    t.add_argument("-f", "--follow", action="store_true", help="keep waiting for new events")
    t.add_argument("--json", action="store_true", help="raw JSON lines")

    # Commands that live in their own modules register themselves here.
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub, _add_common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = _settings(args)
        if args.command == "worker":
            from .app import run

            # faust parses sys.argv itself; give it only the program name.
            sys.argv = sys.argv[:1]
            run(settings)
            return 0
        if args.command == "publish":
            stream = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")  # noqa: SIM115
            with stream:
                refused = asyncio.run(
                    publish(settings, stream, validate=not args.no_validate, out=sys.stdout)
                )
            return 1 if refused else 0
        if args.command == "audit" and args.audit_command == "tail":
            asyncio.run(
                audit_tail(
                    settings,
                    from_beginning=args.from_beginning,
                    count=args.n,
                    follow=args.follow,
                    as_json=args.json,
                    out=sys.stdout,
                )
            )
            return 0
        if hasattr(args, "run"):
            code: int = args.run(settings, args)
            return code
    except CacheBusError as exc:
        print(f"cachebus: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
