"""``cachebus replay``: re-consume the events topic (and the rules file's
``[[debezium]]`` topics) through the same planner,
applier and audit as the live worker, to rebuild Redis's control state (after
Redis lost its data, for a new region, or after a rule change).

It never seeks inside a running faust app: it is its own plain consumer. With
``--group G`` it consumes as group G from the chosen start and commits its
progress there, and refuses while G has live members (a running worker);
without it, it uses no consumer group at all (nothing to reset, nothing shared).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, TextIO

from cachebus.connection import connect_async
from cachebus.errors import ConfigError

from .errors import ReplayRefused as ReplayRefused
from .kafka import client_config
from .rules import load_rules
from .settings import WorkerSettings

if TYPE_CHECKING:
    from .applier import Applier


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    from_time: datetime | None = None
    """Start at the first offset whose timestamp is at or after this (offsets_for_times)."""
    from_offset: int | None = None
    to_offset: int | None = None
    """Stop before this offset (exclusive), per partition; default: the end at start time."""
    partitions: tuple[int, ...] = ()
    group: str | None = None
    dry_run: bool = False
    audit: bool = True
    batch: int = 500
    progress: bool = True


@dataclass(slots=True)
class ReplayReport:
    events: int = 0
    seconds: float = 0.0
    outcomes: Counter[str] = field(default_factory=Counter)
    actions: Counter[str] = field(default_factory=Counter)
    start: dict[str, int] = field(default_factory=dict)
    """First offset per ``topic:partition``."""
    end: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def summary(self, dry_run: bool) -> str:
        verb = "dry run (nothing written): read" if dry_run else "replayed"
        lines = [
            f"{verb} {self.events} events in {self.seconds:.2f} s ({self.rate:,.0f} events/s)",
            "outcomes: " + (", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items())) or "-"),
            "actions:  " + (", ".join(f"{k} {v}" for k, v in sorted(self.actions.items())) or "-"),
        ]
        return "\n".join(lines)


async def live_members(settings: WorkerSettings, group: str) -> int:
    """How many members the consumer group has right now (0 if it does not exist)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap, **client_config(settings)
    )
    try:
        await admin.start()
        responses = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    members = 0
    for response in responses:
        for described in response.groups:
            # (error_code, group_id, state, protocol_type, protocol, members, ...)
            if described[1] == group and described[2] not in ("Dead", "Empty"):
                members += len(described[5])
    return members


def _progress_bar(total: int, enabled: bool, out: TextIO) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit="ev",
        unit_scale=True,
        desc="replay",
        file=out,
        disable=not enabled,
        mininterval=0.5,
        smoothing=0.1,
    )


async def replay(
    settings: WorkerSettings,
    options: ReplayOptions,
    *,
    out: TextIO = sys.stderr,
    on_batch: Callable[[int], None] | None = None,
) -> ReplayReport:
    """Replay ``settings.events_topic`` and the rules file's ``[[debezium]]`` topics
    according to ``options`` (partitions and offsets apply to each topic). A dry run
    reads the high-water marks (Redis must answer) and predicts the same outcomes,
    writing nothing."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    from .applier import Applier
    from .audit import SourceRecord, headers_of
    from .audit_tail import topic_partitions
    from .dry_run import DryRunApplier
    from .processor import Processor
    from .sources import check_topics, sources_of

    rules = load_rules(settings.rules_file or None)
    topics = check_topics(
        sources_of(rules),
        events=settings.events_topic,
        outputs=(settings.audit_topic, settings.dlq_topic),
    )
    if options.group:
        members = await live_members(settings, options.group)
        if members:
            raise ReplayRefused(
                f"consumer group {options.group!r} has {members} live member(s): stop its "
                "workers first, or replay without --group (no shared group is touched)"
            )
    kafka = client_config(settings)
    partitions = await topic_partitions(settings, settings.events_topic)
    if not partitions:
        raise ConfigError(
            f"topic {settings.events_topic!r} does not exist at {settings.kafka_bootstrap}"
        )
    by_topic = {settings.events_topic: partitions}
    for topic in topics[1:]:
        found = await topic_partitions(settings, topic)
        if not found:  # Debezium creates a table's topic with its first change
            print(f"replay: Debezium topic {topic!r} does not exist yet; skipped", file=out)
            continue
        by_topic[topic] = found
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=options.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=options.batch,
        **kafka,
    )
    producer = None
    client = None
    report = ReplayReport()
    try:
        await consumer.start()
        tps = [
            TopicPartition(topic, p)
            for topic, found in by_topic.items()
            for p in sorted(found)
            if not options.partitions or p in options.partitions
        ]
        consumer.assign(tps)
        begins = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        start = {tp: begins[tp] for tp in tps}
        if options.from_offset is not None:
            start = {tp: max(begins[tp], options.from_offset) for tp in tps}
        if options.from_time is not None:
            stamp = int(options.from_time.timestamp() * 1000)
            found = await consumer.offsets_for_times({tp: stamp for tp in tps})
            start = {tp: (found[tp].offset if found[tp] is not None else ends[tp]) for tp in tps}
        stop = dict(ends)
        if options.to_offset is not None:
            stop = {tp: min(ends[tp], options.to_offset) for tp in tps}
        report.start = {f"{tp.topic}:{tp.partition}": start[tp] for tp in tps}
        report.end = {f"{tp.topic}:{tp.partition}": stop[tp] for tp in tps}
        for tp in tps:
            consumer.seek(tp, start[tp])
        remaining = {tp for tp in tps if start[tp] < stop[tp]}
        total = sum(max(0, stop[tp] - start[tp]) for tp in tps)

        client = await connect_async(settings)
        applier: Applier
        if options.dry_run:
            applier = DryRunApplier(client, settings)
        else:
            applier = Applier(client, settings)
            if options.audit:
                producer = AIOKafkaProducer(
                    bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=5, **kafka
                )
                await producer.start()
        processor = Processor(
            applier,
            settings,
            rules,
            worker_id=f"replay-{uuid.uuid4().hex[:8]}",
            replay=True,
        )
        started = time.perf_counter()
        bar = _progress_bar(total, options.progress, out)
        try:
            while remaining:
                batch = await consumer.getmany(
                    *remaining, timeout_ms=1000, max_records=options.batch
                )
                records: list[SourceRecord] = []
                for tp, messages in batch.items():
                    for m in messages:
                        if m.offset < stop[tp]:
                            records.append(
                                SourceRecord(
                                    m.topic,
                                    m.partition,
                                    m.offset,
                                    m.timestamp,
                                    m.key,
                                    m.value,
                                    headers_of(m.headers),
                                )
                            )
                for tp in list(remaining):
                    if await consumer.position(tp) >= stop[tp]:
                        remaining.discard(tp)
                if not records:
                    continue
                outcome = await processor.process(records)
                if producer is not None:
                    futures = [
                        await producer.send(
                            settings.audit_topic,
                            v,
                            key=k,
                            headers=None if audit.trace is None else audit.trace.headers(),
                        )
                        for (k, v), audit in zip(
                            outcome.audits, outcome.audit_events, strict=True
                        )
                    ]
                    await asyncio.gather(*futures)
                await processor.commit(outcome)
                if options.group and not options.dry_run:
                    await consumer.commit()
                report.events += len(records)
                report.outcomes.update(outcome.outcomes)
                for audit in outcome.audit_events:
                    report.actions.update(a.kind for a in audit.actions)
                bar.update(len(records))
                if on_batch is not None:
                    on_batch(report.events)
        finally:
            bar.close()
        report.seconds = time.perf_counter() - started
        if options.group and not options.dry_run:
            # Leave the group's committed offsets at the replay's end.
            await consumer.commit({tp: stop[tp] for tp in tps})
    finally:
        await consumer.stop()
        if producer is not None:
            await producer.stop()
        if client is not None:
            await client.aclose()
    return report


def _parse_time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"--from-time {text!r} is not an ISO 8601 / RFC 3339 time") from None
    if value.tzinfo is None:
        raise ConfigError("--from-time needs a UTC offset, e.g. 2026-11-26T08:00:00Z")
    return value


def register(sub: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "replay",
        help="re-consume the events topic (and [[debezium]] topics) to rebuild control state",
    )
    add_common(p)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--from-beginning", action="store_true", help="(the default)")
    where.add_argument("--from-time", help="RFC 3339 time; events at or after it")
    where.add_argument("--from-offset", type=int, help="first offset, in every partition")
    p.add_argument("--to-offset", type=int, help="stop before this offset (exclusive)")
    p.add_argument(
        "--partition",
        type=int,
        action="append",
        default=[],
        help="only these partitions (repeatable)",
    )
    p.add_argument(
        "--group",
        help="consume as this consumer group (refused if it has live members); default: no group",
    )
    p.add_argument("--rules", dest="rules_file", help="TOML rules file")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="predict the outcomes and actions (reads the high-water marks in Redis); write "
        "nothing to Redis, to Kafka topics or to the group's offsets",
    )
    p.add_argument("--no-audit", action="store_true", help="do not write audit events")
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_run)


def _run(settings: WorkerSettings, args: argparse.Namespace) -> int:
    options = ReplayOptions(
        from_time=_parse_time(args.from_time) if args.from_time else None,
        from_offset=args.from_offset,
        to_offset=args.to_offset,
        partitions=tuple(args.partition),
        group=args.group,
        dry_run=args.dry_run,
        audit=not args.no_audit,
        batch=args.batch,
        progress=not args.quiet,
    )
    from .logs import configure

    configure(settings.log_level)  # the processor's log lines: JSON on stderr, as the worker's
    if not getattr(args, "debug", False):
        # aiokafka's own connection errors: the CLI's one-line error says what failed.
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    report = asyncio.run(replay(settings, options))
    print(report.summary(options.dry_run))
    return 0
