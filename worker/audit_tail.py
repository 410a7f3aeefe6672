"""``cachebus audit tail``: print the audit trail, like ``tail``.

* no flags: follow, printing audits as the workers write them, until Ctrl-C or SIGTERM;
* ``-n N``: the last N audits written so far, then exit (``-f``: then follow);
* ``--from-beginning``: every audit the topic holds, then exit (``-f``: then follow);
  with ``-n N`` the first N;
* ``-m N`` / ``--max-count N``: stop after printing N audits (in any mode).

The audit topic has several partitions; what the topic holds is printed in time order
(record timestamps, merged across partitions), not partition by partition. Followed
audits are printed as they arrive (in time order within each fetch).

It is a plain consumer without a consumer group (no offsets committed, nothing shared
with the workers) and never creates the topic.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import json
import signal
import sys
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TextIO, TypeVar

from cachebus.errors import ConfigError

from .audit_event import render_audit
from .settings import WorkerSettings

T = TypeVar("T")
METADATA_ATTEMPTS = 5
"""Metadata requests before giving up (0.2 s doubling between them: about 3 s)."""


class Record(Protocol):
    """What we read of a consumer record (aiokafka's ``ConsumerRecord``)."""

    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def value(self) -> bytes | None: ...


R = TypeVar("R", bound=Record)


def time_key(record: Record) -> tuple[int, int, int]:
    """Order of printing: record timestamp, then partition and offset (stable)."""
    return (record.timestamp, record.partition, record.offset)


class TimeMerge:
    """k-way merge of partitions in timestamp order, one bounded buffer per partition.

    A record is released only when every partition that may still deliver one has a
    record buffered (the smallest head is then the next in time order); a partition is
    *done* when its range is read. Feed it with :meth:`push`, ask :meth:`wanted` which
    partitions to fetch next, and take records from :meth:`ready`."""

    def __init__(self, partitions: Iterable[int]) -> None:
        self._buffers: dict[int, deque[Record]] = {p: deque() for p in partitions}
        self._open: set[int] = set(self._buffers)

    def push(self, partition: int, records: Iterable[Record]) -> None:
        self._buffers[partition].extend(records)

    def done(self, partition: int) -> None:
        """Nothing more will come from ``partition``."""
        self._open.discard(partition)

    def wanted(self) -> list[int]:
        """Open partitions with nothing buffered: fetch these before anything is released."""
        return sorted(p for p in self._open if not self._buffers[p])

    @property
    def finished(self) -> bool:
        return not self._open and not any(self._buffers.values())

    def ready(self) -> Iterator[Record]:
        """Release records in time order for as long as that order is certain."""
        while not self.wanted():
            heads = [(time_key(b[0]), p) for p, b in self._buffers.items() if b]
            if not heads:
                return
            _, partition = min(heads)
            yield self._buffers[partition].popleft()


def last_n(per_partition: Iterable[Sequence[R]], n: int) -> list[R]:
    """The ``n`` latest records over all partitions, oldest first."""
    if n <= 0:
        return []
    latest = heapq.nlargest(n, (r for rs in per_partition for r in rs), key=time_key)
    return sorted(latest, key=time_key)


format_audit = render_audit
"""One human line per audit event (:meth:`worker.audit_event.AuditEvent.render`)."""


@dataclass(frozen=True, slots=True)
class TailOptions:
    last: int | None = None
    """Print the last N audits the topic holds (None: none, unless from_beginning)."""
    from_beginning: bool = False
    """Print every audit the topic holds (the first ``last`` if that is set too)."""
    follow: bool = True
    """Then keep printing new audits until stopped."""
    max_count: int | None = None
    """Stop after printing this many."""
    as_json: bool = False

    @property
    def history(self) -> bool:
        return self.from_beginning or self.last is not None


class _Printer:
    def __init__(self, out: TextIO, options: TailOptions) -> None:
        self.out = out
        self.options = options
        self.shown = 0

    @property
    def full(self) -> bool:
        limit = self.options.max_count
        return limit is not None and self.shown >= limit

    def show(self, record: Record) -> None:
        if self.full or record.value is None:
            return
        try:
            audit = json.loads(record.value)
        except ValueError:
            return
        if not isinstance(audit, dict):
            return
        text = json.dumps(audit) if self.options.as_json else format_audit(audit)
        print(text, file=self.out, flush=True)
        self.shown += 1


async def partitions_of(consumer: Any, topic: str) -> list[int] | None:
    """The topic's partitions, or None if it does not exist, from a started consumer.
    Reads the metadata of all topics: asking for one by name would let a broker with
    ``auto.create.topics.enable`` create it (with its default partition count)."""
    from aiokafka.errors import KafkaError

    for attempt in range(METADATA_ATTEMPTS):
        try:
            cluster = await consumer._client.fetch_all_metadata()
            break
        except KafkaError:  # no broker answered this round (a busy or starting broker)
            if attempt == METADATA_ATTEMPTS - 1:
                raise
            await asyncio.sleep(0.2 * 2**attempt)
    partitions = cluster.partitions_for_topic(topic)
    return sorted(partitions) if partitions else None


async def topic_partitions(settings: WorkerSettings, topic: str) -> list[int] | None:
    """:func:`partitions_of` with a consumer of its own."""
    from aiokafka import AIOKafkaConsumer

    from .kafka import client_config

    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        enable_auto_commit=False,
        **client_config(settings),
    )
    try:
        await consumer.start()
        return await partitions_of(consumer, topic)
    finally:
        await consumer.stop()


async def audit_tail(
    settings: WorkerSettings,
    options: TailOptions,
    *,
    out: TextIO,
    on_follow: Callable[[], None] | None = None,
) -> int:
    """Print audits as ``options`` say; returns how many were printed. Runs until
    cancelled when following (see :func:`run_until_signal`)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from .kafka import client_config

    topic = settings.audit_topic
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **client_config(settings),
    )
    printer = _Printer(out, options)
    try:
        await consumer.start()
        partitions = await partitions_of(consumer, topic)
        if partitions is None:
            raise ConfigError(
                f"audit topic {topic!r} does not exist at {settings.kafka_bootstrap} (the "
                "worker creates it when it starts; check CACHEBUS_AUDIT_TOPIC)"
            )
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        begins = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        if options.history:
            await _history(consumer, tps, begins, ends, options, printer)
        if not options.follow or printer.full:
            return printer.shown
        for tp in tps:
            consumer.seek(tp, ends[tp])
        if on_follow is not None:
            on_follow()
        while not printer.full:
            batch = await consumer.getmany(timeout_ms=1000)
            records = [r for rs in batch.values() for r in rs]
            for record in sorted(records, key=time_key):
                printer.show(record)
    finally:
        await consumer.stop()
    return printer.shown


async def _history(
    consumer: Any,
    tps: list[Any],
    begins: dict[Any, int],
    ends: dict[Any, int],
    options: TailOptions,
    printer: _Printer,
) -> None:
    """What the topic holds up to ``ends``: all (``from_beginning``; the first N with
    ``last``) or the last N, in time order."""
    if options.from_beginning:
        starts = dict(begins)
    else:
        n = options.last or 0
        starts = {tp: max(begins[tp], ends[tp] - n) for tp in tps}
    todo = [tp for tp in tps if starts[tp] < ends[tp]]
    for tp in todo:
        consumer.seek(tp, starts[tp])
    by_partition = {tp.partition: tp for tp in tps}

    if options.from_beginning:
        limit = options.last
        merge = TimeMerge(tp.partition for tp in todo)
        shown = 0
        while not merge.finished and not printer.full:
            if limit is not None and shown >= limit:
                return
            wanted = merge.wanted()
            if wanted:
                await _fetch(consumer, [by_partition[p] for p in wanted], ends, merge.push,
                             merge.done)
                continue
            for record in merge.ready():
                if printer.full or (limit is not None and shown >= limit):
                    return
                printer.show(record)
                shown += 1
        return

    collected: dict[int, list[Record]] = {tp.partition: [] for tp in todo}
    remaining = {tp.partition for tp in todo}

    def keep(partition: int, records: Iterable[Record]) -> None:
        collected[partition].extend(records)

    while remaining:
        await _fetch(consumer, [by_partition[p] for p in sorted(remaining)], ends, keep,
                     remaining.discard)
    for record in last_n(list(collected.values()), options.last or 0):
        printer.show(record)


async def _fetch(
    consumer: Any,
    tps: list[Any],
    ends: dict[Any, int],
    push: Callable[[int, Iterable[Record]], None],
    done: Callable[[int], None],
) -> None:
    """One fetch of ``tps``: records below their end offset go to ``push``; a partition
    whose position reached its end is ``done``."""
    batch = await consumer.getmany(*tps, timeout_ms=1000)
    for tp, records in batch.items():
        push(tp.partition, [r for r in records if r.offset < ends[tp]])
    for tp in tps:
        if await consumer.position(tp) >= ends[tp]:
            done(tp.partition)


async def run_until_signal(work: Awaitable[T]) -> tuple[bool, T | None]:
    """Run ``work`` until it ends or SIGINT / SIGTERM arrives (then it is cancelled
    and its ``finally`` blocks run). Returns (stopped by a signal, result)."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(work)
    stopped = False

    def stop() -> None:
        nonlocal stopped
        stopped = True
        task.cancel()

    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop)
    try:
        return False, await task
    except asyncio.CancelledError:
        if stopped:
            return True, None
        raise
    finally:
        for sig in signals:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)


def register(subparsers: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``cachebus audit tail``."""
    p = subparsers.add_parser("audit", help="read the audit trail")
    audit_sub = p.add_subparsers(dest="audit_command", required=True, metavar="{tail}")
    t = audit_sub.add_parser(
        "tail",
        help="print audit events (follows new ones until Ctrl-C / SIGTERM)",
        description=(
            "Print the audit trail in time order. Without -n or --from-beginning it "
            "follows: new audits are printed as the workers write them, until Ctrl-C or "
            "SIGTERM (exit 0). -n N prints the last N audits and exits; --from-beginning "
            "every audit the topic holds (with -n N the first N) and exits; add -f to "
            "follow afterwards. -m N stops after N audits in any mode."
        ),
    )
    add_common(t)
    t.add_argument(
        "-n",
        "--lines",
        dest="last",
        type=int,
        metavar="N",
        default=None,
        help="the last N audits (with --from-beginning: the first N), then exit unless -f",
    )
    t.add_argument(
        "--from-beginning",
        action="store_true",
        help="every audit the topic holds, in time order, then exit unless -f",
    )
    t.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="after -n / --from-beginning, keep printing new audits until Ctrl-C / SIGTERM "
        "(the default without them)",
    )
    t.add_argument(
        "-m", "--max-count", type=int, metavar="N", default=None, help="stop after N audits"
    )
    t.add_argument("--json", action="store_true", help="raw JSON lines")
    t.set_defaults(run=run)


def options_from(args: argparse.Namespace) -> TailOptions:
    for name in ("last", "max_count"):
        value = getattr(args, name)
        if value is not None and value < 0:
            flag = "-n" if name == "last" else "--max-count"
            raise ConfigError(f"audit tail {flag} {value}: must be 0 or more")
    history = args.from_beginning or args.last is not None
    return TailOptions(
        last=args.last,
        from_beginning=args.from_beginning,
        follow=args.follow or not history,
        max_count=args.max_count,
        as_json=args.json,
    )


def run(settings: WorkerSettings, args: argparse.Namespace, out: TextIO | None = None) -> int:
    """``cachebus audit tail``: exit 0, also when stopped by Ctrl-C or SIGTERM."""
    options = options_from(args)
    stream = out or sys.stdout

    def following() -> None:
        print(
            f"cachebus: following {settings.audit_topic} (Ctrl-C to stop)",
            file=sys.stderr,
            flush=True,
        )

    asyncio.run(run_until_signal(audit_tail(settings, options, out=stream, on_follow=following)))
    return 0
