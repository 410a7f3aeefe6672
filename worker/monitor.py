"""The live consistency monitor: canary entries read back after invalidations.

In the spirit of Meta's Polaris and Uber's Cache Inspector: the worker keeps a
few real cache entries of its own (*canaries*), tagged with documents it sees,
and reads them back through the library after it invalidated those documents.
An invalidated entry that still serves is a **violation** of the guarantee in
docs/consistency.md. The monitor measures what a client would have observed;
it proves nothing, it samples.

* **Canary**: a rerank-scores entry (the public ``AsyncRerankScoreCache`` on the
  worker's Redis client) of the reserved reranker model ``__cachebus_canary__``
  (so it never collides with user data), query = a random token, candidates
  ``[(doc_id, doc_version)]``: it is tagged ``doc:<doc_id>`` like a user's scores.
  It is written through ``set()``, which takes its ticket before writing (the
  README's way for a value computed from immutable input; a canary is one, and
  it saves ``lookup()``'s round trip on the agent's path), and it is **read back
  before it is used**: a canary that does not serve (a tombstoned document, a
  stamp re-created above its ticket) would make every later check pass
  vacuously, so it is dropped instead.
* **Arming**: a sampled event (``CACHEBUS_MONITOR_SAMPLE_RATE``) of a document
  that has no live canary gets one *before the batch is applied*
  (:meth:`Monitor.before`). The next applied event of that document retires the
  canary, and (sampled again) a fresh one is armed in the background for the
  document's next event: so a canary may be minutes old when the invalidation
  that must retire it comes, like a user's cached value, and like the entries a
  failover to a lagging replica brings back to life. Every piece of work is
  drawn at the sample rate, so the monitor's cost follows it.
* **Checks**: when the batch's audits are delivered (:meth:`Monitor.after`), the
  canary of every applied event that invalidated its document (``tag`` or
  ``tombstone`` of ``doc:<id>``; ``revive`` is not a promise) is read at each of
  ``CACHEBUS_MONITOR_CHECK_AFTER`` (default 0, 5, 60, 300 s) after the audit: a
  hit is a violation (one WARNING line), a miss a passed check, a canary gone
  from Redis (expired, evicted, lost) ends its checks uncounted.
* **No false alarms**: a canary is only checked against events of batches that
  began after its ticket was taken (batch numbers, no clocks), so its ticket's
  sequence is below the stamp their invalidation wrote. Batches applied before
  the ticket do not concern it; for a batch in between (a background re-arm
  overlapping an apply) it is dropped unchecked.

Checks never block or crash the agent: :meth:`before` is bounded by a timeout
and :meth:`after` only enqueues; the reads run in a task of their own, every
Redis step with a timeout, every error counted
(``cachebus_consistency_errors_total``) and logged at most once a minute.
Memory is bounded: at most ``CACHEBUS_MONITOR_MAX_CANARIES`` live canaries (the
least recently used is dropped) and ``CACHEBUS_MONITOR_MAX_PENDING`` canaries
under check (the oldest is dropped, counted in
``cachebus_consistency_checks_dropped_total``).

Counts go to Prometheus (``/metrics``) and, every ``metrics_flush_interval``
seconds, to Redis in per-minute buckets ``<prefix>:metrics:{consistency}:<minute>``
(value ``<checks>:<violations>``, added by a GET/SET script so the worker's
least-privilege ACL role, which has no HINCRBY or EXPIRE, can write them; each
bucket expires after a day). ``cachebus stats`` and ``cachebus verify`` sum a
window of buckets and show it as nines.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import random
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

import structlog
from prometheus_client import Counter, Gauge, disable_created_metrics

from cachebus.commands import Call
from cachebus.errors import CacheBusError, ConfigError
from cachebus.keys import KeyScheme, encode_part
from cachebus.rerank_scores import AsyncRerankScoreCache
from cachebus.runner import AsyncClient, AsyncRunner
from cachebus.settings import Settings

from .audit import SourceRecord
from .events import parse_event
from .verify import BUCKET_SECONDS as BUCKET_SECONDS
from .verify import BUCKETS_SCRIPT as BUCKETS_SCRIPT
from .verify import DEFAULT_WINDOW as DEFAULT_WINDOW
from .verify import ENV_SAMPLE_RATE as ENV_SAMPLE_RATE
from .verify import RETENTION_MINUTES as RETENTION_MINUTES
from .verify import Consistency as Consistency
from .verify import aread_consistency as aread_consistency
from .verify import bucket_key as bucket_key
from .verify import parse_window as parse_window
from .verify import read_consistency as read_consistency
from .verify import window_label as window_label
from .verify import window_minutes as window_minutes

if TYPE_CHECKING:
    from .processor import Outbound

log = structlog.get_logger("cachebus.worker")
T = TypeVar("T")

# -- settings (read here until they move into cachebus.settings.Settings) ----------

ENV_CHECK_AFTER: Final = "CACHEBUS_MONITOR_CHECK_AFTER"
ENV_MAX_PENDING: Final = "CACHEBUS_MONITOR_MAX_PENDING"
ENV_MAX_CANARIES: Final = "CACHEBUS_MONITOR_MAX_CANARIES"

DEFAULT_SAMPLE_RATE: Final = 0.01
DEFAULT_CHECK_AFTER: Final = (0.0, 5.0, 60.0, 300.0)
DEFAULT_MAX_PENDING: Final = 10_000
DEFAULT_MAX_CANARIES: Final = 10_000

CANARY_MODEL: Final = "__cachebus_canary__"
"""The reranker model name of canary entries: ``<prefix>:rr:__cachebus_canary__:{...}``."""
CANARY_TTL_MARGIN: Final = 60
"""A canary lives at least this long past its last check."""
MAX_ARM_PER_BATCH: Final = 64
"""Canaries written before one batch is applied, at most (bounds the agent's wait)."""
PREPARE_TIMEOUT_MAX: Final = 1.0
"""The agent waits at most min(redis_timeout, this) seconds for a batch's canaries."""
CHECKS_PER_ROUND: Final = 256
CONCURRENCY: Final = 32
UNLINK_BATCH: Final = 500
ERROR_LOG_INTERVAL: Final = 60.0


def _env_float(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a valid float") from None
    if not math.isfinite(value):
        raise ConfigError(f"{name}={raw!r} is not a valid float")
    return value


def _env_int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a valid int") from None


def parse_offsets(raw: str, name: str = ENV_CHECK_AFTER) -> tuple[float, ...]:
    """``"0,5,60,300"`` -> (0.0, 5.0, 60.0, 300.0): seconds after the audit, at least
    one, each >= 0, strictly increasing."""
    parts = [p.strip() for p in raw.split(",")]
    try:
        offsets = tuple(float(p) for p in parts)
    except ValueError:
        raise ConfigError(
            f"{name}={raw!r} must be comma-separated seconds, e.g. 0,5,60,300"
        ) from None
    if not offsets or not all(math.isfinite(o) and o >= 0 for o in offsets):
        raise ConfigError(f"{name}={raw!r}: every offset must be a number of seconds >= 0")
    if any(b <= a for a, b in itertools.pairwise(offsets)):
        raise ConfigError(f"{name}={raw!r}: offsets must be strictly increasing")
    if offsets[-1] > RETENTION_MINUTES * BUCKET_SECONDS:
        raise ConfigError(f"{name}={raw!r}: the last check must come within a day")
    return offsets


@dataclass(frozen=True, slots=True)
class MonitorConfig:
    """The monitor's settings (``CACHEBUS_MONITOR_*``; they belong in
    :class:`cachebus.settings.Settings` once the lead moves them there)."""

    sample_rate: float = DEFAULT_SAMPLE_RATE
    """Share of events whose document gets a canary (0: the monitor is off)."""
    check_after: tuple[float, ...] = DEFAULT_CHECK_AFTER
    """Seconds after an invalidation's audit at which its canary is read."""
    max_pending: int = DEFAULT_MAX_PENDING
    """Canaries under check at most (the oldest is dropped beyond)."""
    max_canaries: int = DEFAULT_MAX_CANARIES
    """Live canaries (one per monitored document) at most (least recently used dropped)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.sample_rate <= 1.0:
            raise ConfigError(
                f"{ENV_SAMPLE_RATE}={self.sample_rate!r} must be between 0 (off) and 1"
            )
        if self.max_pending < 1:
            raise ConfigError(f"{ENV_MAX_PENDING}={self.max_pending!r} must be 1 or more")
        if self.max_canaries < 1:
            raise ConfigError(f"{ENV_MAX_CANARIES}={self.max_canaries!r} must be 1 or more")
        parse_offsets(",".join(repr(o) for o in self.check_after))

    @property
    def enabled(self) -> bool:
        return self.sample_rate > 0

    def canary_ttl(self, settings: Settings) -> int:
        """The canaries' TTL: the rerank-scores TTL, or longer if the last check
        needs it. Raises :class:`ConfigError` if the stamps could not cover it."""
        from cachebus.rerank_scores import RerankScoreCore

        wanted = max(
            settings.rerank_scores_ttl, math.ceil(self.check_after[-1]) + CANARY_TTL_MARGIN
        )
        try:
            return RerankScoreCore(settings, CANARY_MODEL).check_ttl(wanted)
        except ConfigError as exc:
            raise ConfigError(
                f"{ENV_CHECK_AFTER}: canaries cannot live long enough: {exc}"
            ) from None

    def checked(self, settings: Settings) -> MonitorConfig:
        """This config, after checking it fits ``settings`` (at startup)."""
        if self.enabled:
            self.canary_ttl(settings)
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> MonitorConfig:
        env = os.environ if environ is None else environ
        raw_offsets = env.get(ENV_CHECK_AFTER)
        return cls(
            sample_rate=_env_float(env, ENV_SAMPLE_RATE, DEFAULT_SAMPLE_RATE),
            check_after=DEFAULT_CHECK_AFTER if raw_offsets is None else parse_offsets(raw_offsets),
            max_pending=_env_int(env, ENV_MAX_PENDING, DEFAULT_MAX_PENDING),
            max_canaries=_env_int(env, ENV_MAX_CANARIES, DEFAULT_MAX_CANARIES),
        )


# -- Prometheus ------------------------------------------------------------------

disable_created_metrics()  # type: ignore[no-untyped-call]

CHECKS = Counter(
    "cachebus_consistency_checks_total",
    "Reads of canary entries after the invalidation of their document was audited",
)
VIOLATIONS = Counter(
    "cachebus_consistency_violations_total",
    "Canary reads that served an entry whose document invalidation was audited",
)
ERRORS = Counter(
    "cachebus_consistency_errors_total",
    "Canary writes, checks and publishes that failed (Redis errors, timeouts)",
)
DROPPED = Counter(
    "cachebus_consistency_checks_dropped_total",
    "Checks not run because too many canaries were under check",
)
CANARIES = Counter(
    "cachebus_consistency_canaries_total",
    "Canaries by result: armed (read back serving), not_serving (discarded), "
    "lost (gone from Redis before a check; its checks are not counted)",
    ["result"],
)
PENDING = Gauge("cachebus_consistency_pending", "Canaries under check")
LIVE = Gauge("cachebus_consistency_live_canaries", "Armed canaries waiting for an invalidation")


# -- pure parts: the schedule and the nines ----------------------------------------


@dataclass(slots=True)
class Due(Generic[T]):
    """One check that came due: ``item``'s check number ``index`` (0-based)."""

    item: T
    index: int
    start: float
    order: int


class Schedule(Generic[T]):
    """Checks of retired canaries at ``start + offsets[i]``, bounded.

    One FIFO queue per offset: items enter the first at ``start`` (non-decreasing)
    and move to the next when their check came due, so every queue stays sorted by
    due time and the next due check is at one of the queues' heads. Beyond
    ``max_pending`` items the oldest (earliest start) is dropped with its remaining
    checks (counted in :attr:`dropped_checks`)."""

    def __init__(self, offsets: Sequence[float], max_pending: int) -> None:
        if not offsets:
            raise ValueError("at least one offset")
        self.offsets = tuple(offsets)
        self.max_pending = max_pending
        self._queues: list[deque[Due[T]]] = [deque() for _ in self.offsets]
        self._order = 0
        self._size = 0
        self.dropped_checks = 0

    def __len__(self) -> int:
        return self._size

    def add(self, item: T, start: float) -> list[T]:
        """Schedule ``item``'s checks; returns the items dropped to make room."""
        self._order += 1
        self._queues[0].append(Due(item, 0, start, self._order))
        self._size += 1
        dropped: list[T] = []
        while self._size > self.max_pending:
            oldest = min((q for q in self._queues if q), key=lambda q: (q[0].start, q[0].order))
            gone = oldest.popleft()
            self._size -= 1
            self.dropped_checks += len(self.offsets) - gone.index
            dropped.append(gone.item)
        return dropped

    def next_due(self) -> float | None:
        heads = [q[0].start + self.offsets[i] for i, q in enumerate(self._queues) if q]
        return min(heads) if heads else None

    def pop_due(self, now: float, limit: int | None = None) -> list[Due[T]]:
        """Checks due at ``now``, earliest first (at most ``limit``). They leave the
        schedule: :meth:`advance` each one that should go on to its next check."""
        out: list[Due[T]] = []
        while limit is None or len(out) < limit:
            best: deque[Due[T]] | None = None
            best_due = now
            for i, q in enumerate(self._queues):
                if q and q[0].start + self.offsets[i] <= best_due:
                    best, best_due = q, q[0].start + self.offsets[i]
            if best is None:
                break
            out.append(best.popleft())
            self._size -= 1
        return out

    def advance(self, due: Due[T]) -> bool:
        """Put ``due``'s item back for its next check; False if that was its last.
        Advance the checks of one :meth:`pop_due` in the order it returned them."""
        nxt = due.index + 1
        if nxt >= len(self.offsets):
            return False
        self._queues[nxt].append(Due(due.item, nxt, due.start, due.order))
        self._size += 1
        return True


def invalidates_doc(audit: Mapping[str, Any]) -> bool:
    """Whether an applied audit event retired its document's tag (``tag`` or
    ``tombstone`` of ``doc:<id>``, what guarantees 1 and 2 promise)."""
    doc = audit.get("doc_id")
    if audit.get("outcome") != "applied" or not isinstance(doc, str):
        return False
    target = f"doc:{doc}"
    return any(
        isinstance(a, Mapping)
        and a.get("kind") in ("tag", "tombstone")
        and a.get("target") == target
        for a in audit.get("actions") or ()
    )


def safe_doc_id(doc_id: str) -> str:
    """A doc id for a log line: percent-encoded as in keys (no control characters,
    quotes or newlines), at most 200 characters."""
    try:
        return encode_part(doc_id)[:200]
    except CacheBusError:
        return repr(doc_id)[:200]


# -- the monitor -------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class Canary:
    """One canary entry, tagged ``doc:<doc_id>``."""

    doc_id: str
    query: str
    candidates: tuple[tuple[str, int], ...]
    key: str
    first_batch: int
    """Only events of this batch and later ones may be checked against it: its
    ticket was taken before they were applied."""
    expires_at: float
    """Monotonic time by which its TTL may have run out."""
    settled_batch: int = 0
    """Batches up to this one were applied before its ticket: their events do not
    concern it. Between this and ``first_batch``: unknown (the canary is dropped)."""
    event_id: str = ""
    event_type: str = ""
    retired_at: float = 0.0
    violations: int = 0


@dataclass(frozen=True, slots=True)
class BatchSample:
    """What :meth:`Monitor.before` hands to :meth:`Monitor.after` for one batch."""

    batch: int


@dataclass(slots=True)
class MonitorCounts:
    """This process's totals (also in Prometheus)."""

    checks: int = 0
    violations: int = 0
    errors: int = 0
    armed: int = 0
    not_serving: int = 0
    lost: int = 0
    dropped_checks: int = 0
    buckets: dict[int, list[int]] = field(default_factory=dict)
    """Unix minute -> [checks, violations] not yet published to Redis."""


class Monitor:
    """Canaries and their checks for one worker process (see the module doc)."""

    def __init__(
        self,
        client: AsyncClient,
        settings: Settings,
        config: MonitorConfig,
        *,
        worker_id: str,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.settings = settings
        self.worker_id = worker_id
        self.keys = KeyScheme(settings.prefix)
        # Strict: a Redis error must not read as a passed check. No metrics flush:
        # canary reads must not count in the rerank_scores layer's hit rate.
        canary_settings = settings.with_(strict=True, metrics_flush_interval=0)
        self.cache = AsyncRerankScoreCache(client, CANARY_MODEL, settings=canary_settings)
        self.ttl = config.canary_ttl(settings)
        self.runner = AsyncRunner(client)
        self.timeout = max(0.05, settings.redis_timeout)
        self.prepare_timeout = min(self.timeout, PREPARE_TIMEOUT_MAX)
        self.flush_interval = settings.metrics_flush_interval
        self.schedule: Schedule[Canary] = Schedule(config.check_after, config.max_pending)
        self.live: OrderedDict[str, Canary] = OrderedDict()
        self.counts = MonitorCounts()
        self._rng = rng or random.Random()
        self._clock = clock
        self._wall = wall
        self._batch = 0
        self._rearm: OrderedDict[str, int] = OrderedDict()
        self._unlink: list[str] = []
        self._checking = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Future[None] | None = None
        self._next_flush = clock() + self.flush_interval
        self._last_error_log = -math.inf
        self._errors_unlogged = 0

    @property
    def enabled(self) -> bool:
        return self.config.enabled

    @property
    def pending(self) -> int:
        """Canaries under check (scheduled or being read)."""
        return len(self.schedule) + self._checking

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> None:
        """Start the checks' task (in the running loop); no-op when off."""
        if self.enabled and self._task is None:
            self._task = asyncio.ensure_future(self._loop())

    async def aclose(self, timeout: float = 2.0) -> None:
        """Stop the task; publish what was counted (best effort, bounded)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.enabled and self.flush_interval > 0:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.flush(), timeout)

    # -- the agent's hooks ------------------------------------------------------

    async def before(self, records: Sequence[SourceRecord]) -> BatchSample | None:
        """Before a batch is applied: number it and arm canaries for its sampled
        events whose document has none. Bounded in time; never raises."""
        if not self.enabled:
            return None
        self._batch += 1
        sample = BatchSample(self._batch)
        try:
            picked = self._pick(records)
            if picked:
                await self._arm_before(picked, sample.batch)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._error("arming canaries", exc)
        return sample

    async def _arm_before(self, picked: list[tuple[str, int]], batch: int) -> None:
        tasks = [asyncio.ensure_future(self._arm(d, v, batch)) for d, v in picked]
        done, pending = await asyncio.wait(tasks, timeout=self.prepare_timeout)
        # Cancelled without waiting for them: a cancelled arm never reaches _keep (its
        # next step raises), so no canary written after the apply began is kept.
        for task in pending:
            task.cancel()
        for task in done:
            exc = task.exception()
            if exc is not None:
                self._error("arming a canary", exc)
        if pending:
            self._error("arming canaries", TimeoutError(f"{len(pending)} canaries not armed"))

    def after(self, sample: BatchSample | None, out: Outbound) -> None:
        """After the batch's audits were delivered: schedule the checks of the
        canaries its applied events invalidated, and re-arm their documents. Only
        enqueues; never raises."""
        if sample is None or not self.enabled:
            return
        try:
            self._after(sample.batch, [audit for _, audit in out.audit_docs])
        except Exception as exc:
            self._error("scheduling checks", exc)

    def _after(self, batch: int, audits: Iterable[Mapping[str, Any]]) -> None:
        now = self._clock()
        for audit in audits:
            doc = audit.get("doc_id")
            if audit.get("outcome") != "applied" or not isinstance(doc, str):
                continue
            canary = self.live.get(doc)
            if canary is None or batch <= canary.settled_batch:
                continue
            del self.live[doc]
            if self._sampled():  # the monitor's work stays proportional to the rate
                self._queue_rearm(doc, audit.get("doc_version"))
            first_due = now + self.schedule.offsets[0]
            if (
                batch < canary.first_batch  # the ticket may be before or after this apply
                or not invalidates_doc(audit)  # created (revive) raises the stamp too, but
                or canary.expires_at <= first_due  # promises nothing
            ):
                self._unlink.append(canary.key)
                continue
            canary.event_id = str(audit.get("event_id") or "")
            canary.event_type = str(audit.get("event_type") or "")
            canary.retired_at = now
            for gone in self.schedule.add(canary, now):
                self._unlink.append(gone.key)
        self._sync_dropped()
        self._gauges()
        self._wake.set()

    def _pick(self, records: Sequence[SourceRecord]) -> list[tuple[str, int]]:
        """Sampled events whose document has no live canary: (doc_id, version)."""
        picked: dict[str, int] = {}
        for record in records:
            if len(picked) >= MAX_ARM_PER_BATCH:
                break
            if not self._sampled():
                continue
            try:
                event = parse_event(record.value, max_bytes=self.settings.max_event_bytes)
                encode_part(event.doc_id)
            except CacheBusError:
                continue  # dead-lettered by the processor
            doc = event.doc_id
            if doc in picked:
                continue
            # Armed now (before the apply) rather than by a re-arm after it.
            self._rearm.pop(doc, None)
            canary = self.live.get(doc)
            if canary is not None:
                if canary.expires_at > self._clock() + self.schedule.offsets[-1]:
                    self.live.move_to_end(doc)
                    continue
                del self.live[doc]  # too old to outlive its checks: replace it
                self._unlink.append(canary.key)
            picked[doc] = event.doc_version
        return list(picked.items())

    def _sampled(self) -> bool:
        rate = self.config.sample_rate
        return rate >= 1.0 or self._rng.random() < rate

    def _queue_rearm(self, doc: str, version: Any) -> None:
        if doc in self._rearm:
            return
        if len(self._rearm) >= self.config.max_canaries:
            self._rearm.popitem(last=False)
        self._rearm[doc] = version if isinstance(version, int) else 0

    # -- canaries ---------------------------------------------------------------

    async def _arm(self, doc: str, version: int, first_batch: int | None) -> Canary | None:
        """Write a canary for ``doc`` (its ticket taken by ``set``) and read it
        back; keep it if it serves. ``first_batch`` None: the next batch to begin
        after the ticket (a re-arm); else the batch about to be applied (``before``)."""
        candidates = ((doc, int(version)),)
        for _ in range(2):
            query = f"{self.worker_id}/{secrets.token_hex(8)}"
            key = self.cache.core.key(query, candidates)
            started = self._clock()
            # before(k) runs once batch k - 1 is applied: batches below the current
            # number were applied before the ticket set() is about to take.
            settled = self._batch - 1 if first_batch is None else first_batch - 1
            # set() takes its ticket itself (the README's way for values computed from
            # immutable input): one round trip less than lookup() -> ticket -> set().
            written = await self.cache.set(query, candidates, [float(version)], ttl=self.ttl)
            # Read once set() returned, so after its ticket: the batches numbered above
            # begin after it (a conservative bound; no clock involved).
            batch = self._batch + 1 if first_batch is None else first_batch
            if not written:
                continue  # refused (an epoch fenced meanwhile, an old ticket): try again
            if await self.cache.get(query, candidates) is not None:
                expires = started + self.ttl - 1.0
                canary = Canary(doc, query, candidates, key, batch, expires, settled)
                self._keep(canary)
                return canary
            # Not serving: a stamp created above the ticket (first canary of a document
            # under load: the next ticket is above it), or a tombstoned document.
            self._unlink.append(key)
        self.counts.not_serving += 1
        CANARIES.labels("not_serving").inc()
        return None

    def _keep(self, canary: Canary) -> None:
        old = self.live.pop(canary.doc_id, None)
        if old is not None:
            # Another canary of the document was armed meanwhile (before() while a
            # re-arm was on its way): keep the one that can be checked soonest.
            if old.first_batch <= canary.first_batch:
                self.live[old.doc_id] = old
                self._unlink.append(canary.key)
                return
            self._unlink.append(old.key)
        self.live[canary.doc_id] = canary
        while len(self.live) > self.config.max_canaries:
            _, evicted = self.live.popitem(last=False)
            self._unlink.append(evicted.key)
        self.counts.armed += 1
        CANARIES.labels("armed").inc()
        self._gauges()

    async def _check(self, canary: Canary, index: int) -> bool:
        """Read the canary through the library. Returns False if it is gone from
        Redis (its checks end, uncounted)."""
        value = await self.cache.get(canary.query, canary.candidates)
        if value is None:
            (exists,) = await self.runner.execute([Call.of("EXISTS", canary.key)])
            if not int(exists):
                self.counts.lost += 1
                CANARIES.labels("lost").inc()
                return False
        self._count(violation=value is not None)
        if value is not None:
            canary.violations += 1
            log.warning(
                "consistency violation: an entry of an invalidated document served",
                doc_id=safe_doc_id(canary.doc_id),
                event_id=canary.event_id,
                event_type=canary.event_type,
                age_s=round(self._clock() - canary.retired_at, 1),
                check=f"+{self.schedule.offsets[index]:g}s",
                canary_key=canary.key,
                worker_id=self.worker_id,
            )
        return True

    def _count(self, *, violation: bool) -> None:
        minute = int(self._wall() // BUCKET_SECONDS)
        bucket = self.counts.buckets.setdefault(minute, [0, 0])
        bucket[0] += 1
        self.counts.checks += 1
        CHECKS.inc()
        if violation:
            bucket[1] += 1
            self.counts.violations += 1
            VIOLATIONS.inc()

    # -- the task ---------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            failed = False
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._error("consistency checks", exc)
                failed = True
            if failed:
                await asyncio.sleep(1.0)  # never spin on a step that keeps failing
                continue
            now = self._clock()
            wake_at = [self._next_flush] if self.flush_interval > 0 else []
            nxt = self.schedule.next_due()
            if nxt is not None:
                wake_at.append(nxt)
            if self._rearm or self._unlink:
                wake_at.append(now)
            delay = min(wake_at, default=now + 1.0) - now
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), min(delay, 1.0))

    async def step(self) -> None:
        """One round: due checks, re-arms, unlinks, the flush if due."""
        await self._run_checks()
        await self._run_rearms()
        await self._run_unlinks()
        if self.flush_interval > 0 and self._clock() >= self._next_flush:
            self._next_flush = self._clock() + self.flush_interval
            await self._guarded("publishing counts", self.flush())
        self._gauges()

    async def _run_checks(self) -> None:
        due = self.schedule.pop_due(self._clock(), CHECKS_PER_ROUND)
        if not due:
            return
        self._checking = len(due)
        limit = asyncio.Semaphore(CONCURRENCY)

        async def one(d: Due[Canary]) -> bool:
            async with limit:
                if self._clock() >= d.item.expires_at:
                    return False  # its TTL may have run out: no meaningful check left
                ok = await self._guarded("a check", self._check(d.item, d.index))
                return ok is not False  # an error: go on with its next check

        try:
            going_on = await asyncio.gather(*(one(d) for d in due))
        finally:
            self._checking = 0
        for d, go in zip(due, going_on, strict=True):
            if not (go and self.schedule.advance(d)):
                self._unlink.append(d.item.key)

    async def _run_rearms(self) -> None:
        batch: list[tuple[str, int]] = []
        while self._rearm and len(batch) < CONCURRENCY:
            batch.append(self._rearm.popitem(last=False))
        if batch:
            await asyncio.gather(
                *(self._guarded("re-arming a canary", self._arm(d, v, None)) for d, v in batch)
            )

    async def _run_unlinks(self) -> None:
        while self._unlink:
            keys, self._unlink = self._unlink[:UNLINK_BATCH], self._unlink[UNLINK_BATCH:]
            # On failure they expire by their TTL.
            unlink = self.runner.execute([Call("UNLINK", tuple(keys))])
            await self._guarded("removing canaries", unlink)

    async def _guarded(self, what: str, step: Awaitable[T]) -> T | None:
        try:
            return await asyncio.wait_for(step, self.timeout * 2)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._error(what, exc)
            return None

    async def flush(self) -> None:
        """Add the counted checks and violations to their minute buckets in Redis.
        What fails stays counted here and goes with the next flush."""
        buckets = self.counts.buckets
        horizon = int(self._wall() // BUCKET_SECONDS) - RETENTION_MINUTES
        for minute in [m for m in buckets if m <= horizon]:
            del buckets[minute]
        if not buckets:
            return
        sent = {m: (c, v) for m, (c, v) in buckets.items()}
        keys = [bucket_key(self.keys, m) for m in sent]
        args: list[Any] = [RETENTION_MINUTES * BUCKET_SECONDS + BUCKET_SECONDS]
        for c, v in sent.values():
            args += [c, v]
        await self.runner.execute([BUCKETS_SCRIPT.call(len(keys), *keys, *args)])
        for minute, (c, v) in sent.items():
            left = buckets.get(minute)
            if left is None:
                continue
            left[0] -= c
            left[1] -= v
            if left == [0, 0]:
                del buckets[minute]

    # -- bookkeeping ------------------------------------------------------------

    def _sync_dropped(self) -> None:
        new = self.schedule.dropped_checks - self.counts.dropped_checks
        if new > 0:
            DROPPED.inc(new)
            self.counts.dropped_checks = self.schedule.dropped_checks

    def _gauges(self) -> None:
        PENDING.set(self.pending)
        LIVE.set(len(self.live))

    def _error(self, what: str, exc: BaseException) -> None:
        self.counts.errors += 1
        ERRORS.inc()
        now = self._clock()
        if now - self._last_error_log < ERROR_LOG_INTERVAL:
            self._errors_unlogged += 1
            return
        log.warning(
            "consistency monitor: step failed (checks go on)",
            step=what,
            error=repr(exc)[:300],
            errors_since_last_log=self._errors_unlogged,
        )
        self._last_error_log = now
        self._errors_unlogged = 0
