"""Steady traffic, fault bookkeeping and end-to-end verification for the worker.

Shared by the soak run (``python -m soak.run``, ``make soak``) and by the fault
and scale-out tests (``tests/integration/test_fault_suite.py``,
``tests/integration/test_scale_out.py``). Everything works on real processes
through :class:`worker.stack.LocalStack`; nothing here is mocked.

* :func:`stream` -- a fixed stream of events over many documents with
  increasing versions; :class:`DocumentTraffic` -- an endless one.
* :class:`SteadyProducer` -- a thread that publishes at a steady rate.
* :class:`AuditChecker` -- consumes the audit topic record by record (with its
  partition, offset and timestamp) and checks the guarantees: every event has
  an ``applied`` audit, re-deliveries only add audits, per-document order.
* :func:`collect_audits` -- reads the audit topic until every expected event is
  applied and the consumer group has committed the whole events topic.
* :func:`check_marks` -- compares the high-water marks in Redis with the last
  version of every document.
* :func:`rss_kb` -- the resident set size of a process (psutil-free).
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cachebus.keys import KeyScheme
from cachebus.settings import Settings
from worker.stack import document_event

__all__ = [
    "AuditChecker",
    "AuditRecord",
    "DocumentTraffic",
    "FaultRow",
    "SteadyProducer",
    "Verdict",
    "check_marks",
    "collect_audits",
    "cpu_seconds",
    "markdown_table",
    "rss_kb",
    "stream",
]


# --------------------------------------------------------------------------- traffic


def stream(docs: int, versions: int, *, doc_prefix: str = "doc") -> list[dict[str, Any]]:
    """Events of ``docs`` documents, each with versions 1..``versions``
    (created, then updates), version-major so every document moves forward
    throughout the stream."""
    events = []
    for v in range(1, versions + 1):
        for d in range(docs):
            kind = "created" if v == 1 else "updated"
            events.append(document_event(kind, f"{doc_prefix}-{d}", v, collection=f"c{d % 3}"))
    return events


def last_versions(events: Iterable[Mapping[str, Any]]) -> dict[str, tuple[int, str]]:
    """``{doc_id: (last version, its event_id)}`` of a stream."""
    out: dict[str, tuple[int, str]] = {}
    for event in events:
        doc, version = str(event["doc_id"]), int(event["doc_version"])
        if doc not in out or version > out[doc][0]:
            out[doc] = (version, str(event["event_id"]))
    return out


class DocumentTraffic:
    """An endless, realistic event mix over ``docs`` documents: a document is
    created, updated (sometimes with chunk hashes, sometimes with tags),
    deleted now and then and created again; versions only go up."""

    def __init__(self, docs: int, *, doc_prefix: str = "soak", seed: int = 7) -> None:
        self.docs = docs
        self.doc_prefix = doc_prefix
        self._rng = random.Random(seed)
        self._version: dict[str, int] = {}
        self._deleted: set[str] = set()
        self.last: dict[str, tuple[int, str]] = {}
        """``{doc_id: (last version, its event_id)}`` of everything generated."""

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        rng = self._rng
        doc = f"{self.doc_prefix}-{rng.randrange(self.docs)}"
        version = self._version.get(doc, 0) + 1
        self._version[doc] = version
        extra: dict[str, Any] = {}
        if version == 1 or doc in self._deleted:
            kind = "created"
            self._deleted.discard(doc)
        elif rng.random() < 0.08:
            kind = "deleted"
            self._deleted.add(doc)
        else:
            kind = "updated"
            if rng.random() < 0.5:
                extra["chunks"] = [
                    {"chunk_id": f"c{i}", "content_hash": f"sha256:{version}-{i % 3}"}
                    for i in range(rng.randrange(1, 6))
                ]
            if rng.random() < 0.2:
                extra["tags"] = [f"team-{rng.randrange(20)}"]
        number = int(doc.rsplit("-", 1)[1])
        event = document_event(kind, doc, version, collection=f"c{number % 5}", **extra)
        self.last[doc] = (version, event["event_id"])
        return event


class SteadyProducer(threading.Thread):
    """Publishes ``events`` (keyed by doc_id) at ``rate`` events/s from a thread
    with its own event loop and one producer, until the events run out or
    :meth:`stop` is called. ``published`` counts acknowledged events."""

    def __init__(
        self,
        settings: Settings,
        events: Iterable[Mapping[str, Any]],
        rate: float,
        *,
        tick: float = 0.05,
        on_sent: Callable[[Mapping[str, Any]], None] | None = None,
    ) -> None:
        super().__init__(name="steady-producer", daemon=True)
        self.settings = settings
        self._events = iter(events)
        self.rate = rate
        self.tick = tick
        self._on_sent = on_sent
        self._stop_event = threading.Event()
        self.published = 0
        self.error: BaseException | None = None
        self.started_at: float | None = None
        self.finished_at: float | None = None

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # reported by finish()
            self.error = exc
        finally:
            self.finished_at = time.monotonic()

    def finish(self, timeout: float = 120.0) -> int:
        """Wait until everything is published; re-raise a producer error."""
        self.join(timeout)
        if self.is_alive():
            raise TimeoutError(f"producer still running after {timeout}s")
        if self.error is not None:
            raise RuntimeError(f"producer failed: {self.error!r}") from self.error
        return self.published

    async def _run(self) -> None:
        from aiokafka import AIOKafkaProducer

        from worker.kafka import client_config

        producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            acks="all",
            linger_ms=5,
            **client_config(self.settings),
        )
        await producer.start()
        try:
            start = self.started_at = time.monotonic()
            sent = 0
            exhausted = False
            while not exhausted and not self._stop_event.is_set():
                due = int((time.monotonic() - start) * self.rate) - sent
                futures = []
                for _ in range(max(0, due)):
                    event = next(self._events, None)
                    if event is None:
                        exhausted = True
                        break
                    value = json.dumps(event).encode("utf-8")
                    key = str(event["doc_id"]).encode("utf-8")
                    futures.append(await producer.send(self.settings.events_topic, value, key=key))
                    if self._on_sent is not None:
                        self._on_sent(event)
                    sent += 1
                if futures:
                    await asyncio.gather(*futures)
                    self.published += len(futures)
                await asyncio.sleep(self.tick)
        finally:
            await producer.stop()


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


async def _committed_everything(settings: Settings) -> bool:
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
    settings: Settings,
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
    settings: Settings, checker: AuditChecker, *, timeout: float = 120.0, quiesce: bool = True
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


# --------------------------------------------------------------------------- reports


@dataclass
class FaultRow:
    """One line of the fault table."""

    scenario: str
    events: int
    lost: int
    duplicated: int
    audited_at_fault: int
    fault_s: float
    first_audit_s: float | None
    all_audited_s: float | None
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def markdown_table(rows: Sequence[FaultRow]) -> str:
    head = (
        "| scenario | events | lost | duplicated audits | audited before fault | fault lasted "
        "| recovery: first audit | recovery: all audited | notes |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---|\n"
    )
    body = "".join(
        f"| {r.scenario} | {r.events} | {r.lost} | {r.duplicated} | {r.audited_at_fault} | "
        f"{_secs(r.fault_s)} | {_secs(r.first_audit_s)} | {_secs(r.all_audited_s)} | "
        f"{r.notes} |\n"
        for r in rows
    )
    return head + body


# --------------------------------------------------------------------------- processes


def rss_kb(pid: int) -> int | None:
    """Resident set size of ``pid`` in KiB (``VmRSS`` of /proc), None if gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of ``pid`` in seconds (/proc/<pid>/stat), None if gone."""
    import os

    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces: split after its closing parenthesis.
    fields = text.rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")
