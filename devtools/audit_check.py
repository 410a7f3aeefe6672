"""End-to-end verification of the worker from its audit topic and Redis.

* :class:`AuditChecker` -- consumes the audit topic record by record (with its
  partition, offset and timestamp) and checks the guarantees: every event has
  an ``applied`` audit, re-deliveries only add audits, per-document order.
* :func:`collect_audits` -- reads the audit topic until every expected event is
  applied and the consumer group has committed the whole events topic.
* :func:`check_marks` -- compares the high-water marks in Redis with the last
  version of every document.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cachebus.keys import KeyScheme
from worker.settings import WorkerSettings

# --------------------------------------------------------------------------- audits


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audit event with its place in the audit topic."""

    partition: int
    offset: int
    timestamp_ms: int
    audit: dict[str, Any]


@dataclass
class Verdict:
    """What the audit trail and Redis say about a stream of events."""

    events: int
    audits: int
    lost: list[str]
    """Event ids without an ``applied`` audit."""
    unaudited: list[str]
    """Event ids without any audit."""
    duplicated: int
    """Audits beyond one per event (re-deliveries: re-applied or skipped)."""
    order_violations: list[str]
    mark_mismatches: list[str]
    outcomes: Counter[str]
    workers: Counter[str]

    @property
    def ok(self) -> bool:
        return not (self.lost or self.unaudited or self.order_violations or self.mark_mismatches)

    def summary(self) -> str:
        return (
            f"events={self.events} audits={self.audits} lost={len(self.lost)} "
            f"unaudited={len(self.unaudited)} duplicated={self.duplicated} "
            f"order_violations={len(self.order_violations)} "
            f"mark_mismatches={len(self.mark_mismatches)} outcomes={dict(self.outcomes)} "
            f"workers={dict(self.workers)}"
            + (f" first order violations: {self.order_violations[:5]}" if self.order_violations
               else "")
            + (f" first mark mismatches: {self.mark_mismatches[:5]}" if self.mark_mismatches
               else "")
        )


class AuditChecker:
    """Checks the audit trail of expected events, one record at a time.

    Per-document order: a document's audits share a key (its doc_id), hence one
    audit partition; read in offset order, the *first* ``applied`` audit of
    each event must carry a strictly higher ``doc_version`` than the previous
    first-applied audit of that document. A repeated ``applied`` audit of an
    event already applied is a re-delivery (counted as duplicated), not an
    order violation: at-least-once may re-apply a batch whose marks were not
    yet raised, which is harmless because invalidations are idempotent.
    """

    def __init__(self, *, keep_trail: bool = False) -> None:
        self.keep_trail = keep_trail
        self.trail: list[tuple[int, str, int]] = []
        """With ``keep_trail``: (timestamp ms, worker, source partition) of every audit."""
        self.expected: set[str] = set()
        self.audit_count: Counter[str] = Counter()
        self.history: dict[str, list[str]] = {}
        """event_id -> "outcome@worker" of each of its audits (for diagnostics)."""
        self.applied: set[str] = set()
        self.outcomes: Counter[str] = Counter()
        self.workers: Counter[str] = Counter()
        self.total = 0
        self.foreign = 0
        self.timestamps: list[int] = []
        self.order_violations: list[str] = []
        self._last_version: dict[str, int] = {}
        self._doc_partition: dict[str, int] = {}
        self.by_worker_partition: dict[str, set[int]] = {}
        """Source (events topic) partitions each worker audited."""
        self.first_audit_worker: dict[str, str] = {}
        self.repeats: list[tuple[int, str, str]] = []
        """(timestamp ms, worker, outcome) of every audit beyond an event's first."""

    def expect(self, events: Iterable[Mapping[str, Any]]) -> None:
        self.expected.update(str(e["event_id"]) for e in events)

    def expect_one(self, event: Mapping[str, Any]) -> None:
        self.expected.add(str(event["event_id"]))

    def feed(self, record: AuditRecord) -> None:
        audit = record.audit
        self.total += 1
        self.timestamps.append(record.timestamp_ms)
        event_id = str(audit.get("event_id"))
        if event_id not in self.expected:
            self.foreign += 1
            return
        outcome = str(audit.get("outcome"))
        worker = str(audit.get("worker_id"))
        self.outcomes[outcome] += 1
        self.workers[worker] += 1
        self.audit_count[event_id] += 1
        self.history.setdefault(event_id, []).append(
            f"{outcome}@{worker}: {audit.get('reason') or ''}"
        )
        if self.audit_count[event_id] > 1:
            self.repeats.append((record.timestamp_ms, worker, outcome))
        self.first_audit_worker.setdefault(event_id, worker)
        source = audit.get("source") or {}
        partition = int(source.get("partition", -1))
        self.by_worker_partition.setdefault(worker, set()).add(partition)
        if self.keep_trail:
            self.trail.append((record.timestamp_ms, worker, partition))
        if outcome != "applied":
            return
        if event_id in self.applied:
            return  # a re-delivery that was applied again
        self.applied.add(event_id)
        doc = str(audit.get("doc_id"))
        version = int(audit["doc_version"])
        seen = self._doc_partition.setdefault(doc, record.partition)
        if seen != record.partition:
            self.order_violations.append(
                f"{doc}: audits in partitions {seen} and {record.partition} (order undefined)"
            )
        last = self._last_version.get(doc)
        if last is not None and version <= last:
            self.order_violations.append(
                f"{doc}: v{version} applied after v{last} "
                f"(audit partition {record.partition} offset {record.offset})"
            )
        self._last_version[doc] = max(version, last or version)

    def all_applied(self) -> bool:
        return self.expected <= self.applied

    def first_after(self, t: float) -> float | None:
        """Seconds from wall-clock time ``t`` to the first audit written after it."""
        ms = t * 1000
        after = [ts for ts in self.timestamps if ts >= ms]
        return (min(after) - ms) / 1000 if after else None

    def last_after(self, t: float) -> float | None:
        """Seconds from wall-clock time ``t`` to the last audit."""
        if not self.timestamps:
            return None
        return max(0.0, (max(self.timestamps) - t * 1000) / 1000)

    def takeover_after(self, t: float, leaving: str) -> float | None:
        """Seconds from wall-clock time ``t`` (``leaving`` stops) until every source
        partition ``leaving`` audited last before ``t`` has an audit by another worker
        (needs ``keep_trail``); None if ``leaving`` owned nothing then."""
        ms = t * 1000
        last: dict[int, str] = {}
        for ts, worker, partition in sorted(self.trail):
            if ts < ms:
                last[partition] = worker
        owned = {p for p, w in last.items() if w == leaving}
        if not owned:
            return None
        firsts = []
        for p in owned:
            after = [ts for ts, w, q in self.trail if q == p and w != leaving and ts >= ms]
            if not after:
                return None
            firsts.append(min(after))
        return (max(firsts) - ms) / 1000

    def verdict(self, mark_mismatches: Sequence[str] = ()) -> Verdict:
        lost = sorted(self.expected - self.applied)
        unaudited = sorted(e for e in self.expected if e not in self.audit_count)
        audits = sum(self.audit_count.values())
        return Verdict(
            events=len(self.expected),
            audits=audits,
            lost=lost,
            unaudited=unaudited,
            duplicated=audits - len(self.audit_count),
            order_violations=list(self.order_violations),
            mark_mismatches=list(mark_mismatches),
            outcomes=Counter(self.outcomes),
            workers=Counter(self.workers),
        )


async def _committed_everything(settings: WorkerSettings) -> bool:
    """True when the worker group's committed offsets reach the end of every
    partition of the events topic (nothing left to (re)deliver)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    from worker.kafka import client_config

    config = client_config(settings)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, **config)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, **config)
    await admin.start()
    await consumer.start()
    try:
        parts = [
            TopicPartition(settings.events_topic, p)
            for p in range(settings.topic_partitions)
        ]
        ends = await consumer.end_offsets(parts)
        committed = await admin.list_consumer_group_offsets(settings.consumer_group)
        return all(
            ends[tp] == 0 or (tp in committed and committed[tp].offset >= ends[tp])
            for tp in parts
        )
    finally:
        await consumer.stop()
        await admin.close()


async def acollect_audits(
    settings: WorkerSettings,
    checker: AuditChecker,
    *,
    timeout: float = 120.0,
    quiesce: bool = True,
) -> AuditChecker:
    """Read the audit topic from the beginning into ``checker`` until every
    expected event has an ``applied`` audit. With ``quiesce``, then wait until
    the consumer group has committed the whole events topic (so no
    re-delivery can add audits any more) and read the audit topic to its end."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from worker.kafka import client_config

    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_bytes=16 * 1024 * 1024,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        **client_config(settings),
    )
    await consumer.start()
    deadline = time.monotonic() + timeout
    try:
        parts = [TopicPartition(settings.audit_topic, p) for p in range(settings.topic_partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)

        async def pump() -> None:
            batch = await consumer.getmany(timeout_ms=200, max_records=20_000)
            for tp, records in batch.items():
                for r in records:
                    checker.feed(
                        AuditRecord(tp.partition, r.offset, r.timestamp, json.loads(r.value))
                    )

        while not checker.all_applied():
            if time.monotonic() > deadline:
                gone = sorted(checker.expected - checker.applied)
                missing = len(gone)
                seen = {e: checker.history.get(e, []) for e in gone[:5]}
                raise TimeoutError(
                    f"{missing} of {len(checker.expected)} events have no applied audit "
                    f"(their audits: {seen}) "
                    f"after {timeout}s ({checker.total} audits read)"
                )
            await pump()
        if not quiesce:
            return checker
        while not await _committed_everything(settings):
            if time.monotonic() > deadline:
                raise TimeoutError(f"group {settings.consumer_group} did not commit everything")
            await pump()
            await asyncio.sleep(0.2)
        ends = await consumer.end_offsets(parts)

        async def behind() -> bool:
            for tp in parts:
                if await consumer.position(tp) < ends[tp]:
                    return True
            return False

        while await behind():
            if time.monotonic() > deadline:
                raise TimeoutError("audit topic not read to its end")
            await pump()
        return checker
    finally:
        await consumer.stop()


def collect_audits(
    settings: WorkerSettings, checker: AuditChecker, *, timeout: float = 120.0, quiesce: bool = True
) -> AuditChecker:
    """Sync wrapper of :func:`acollect_audits`."""
    return asyncio.run(acollect_audits(settings, checker, timeout=timeout, quiesce=quiesce))


def check_marks(
    client: Any, prefix: str, last: Mapping[str, tuple[int, str]], *, chunk: int = 500
) -> list[str]:
    """Compare every document's high-water mark (``<version>:<event_id>``) with
    the last event of its stream. ``client`` is a sync Redis or RedisCluster
    client (MGET is split per slot by redis-py's cluster client)."""
    keys = KeyScheme(prefix)
    docs = sorted(last)
    wrong: list[str] = []
    for i in range(0, len(docs), chunk):
        part = docs[i : i + chunk]
        if hasattr(client, "mget_nonatomic"):
            values = client.mget_nonatomic([keys.hwm(d) for d in part])
        else:
            values = client.mget([keys.hwm(d) for d in part])
        for doc, raw in zip(part, values, strict=True):
            version, event_id = last[doc]
            want = f"{version}:{event_id}".encode()
            if raw != want:
                wrong.append(f"{doc}: mark {raw!r}, last event {want!r}")
    return wrong
