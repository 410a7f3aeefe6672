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

The parts, by concern: :mod:`worker.monitor_config` (settings), :mod:`worker.canaries`
(sampling and arming), :mod:`worker.monitor_schedule` (when to check; pure),
:mod:`worker.monitor_stats` (counts, Prometheus, Redis buckets). This module runs the
checks and re-exports the public names.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from cachebus.commands import Call
from cachebus.keys import KeyScheme
from cachebus.rerank_scores import AsyncRerankScoreCache
from cachebus.runner import AsyncClient, AsyncRunner

from .audit import SourceRecord
from .canaries import BatchSample as BatchSample
from .canaries import Canary as Canary
from .canaries import CanarySampler
from .monitor_config import CANARY_MODEL as CANARY_MODEL
from .monitor_config import CANARY_TTL_MARGIN as CANARY_TTL_MARGIN
from .monitor_config import CHECKS_PER_ROUND, CONCURRENCY, PREPARE_TIMEOUT_MAX, UNLINK_BATCH
from .monitor_config import DEFAULT_CHECK_AFTER as DEFAULT_CHECK_AFTER
from .monitor_config import DEFAULT_MAX_CANARIES as DEFAULT_MAX_CANARIES
from .monitor_config import DEFAULT_MAX_PENDING as DEFAULT_MAX_PENDING
from .monitor_config import DEFAULT_SAMPLE_RATE as DEFAULT_SAMPLE_RATE
from .monitor_config import ENV_CHECK_AFTER as ENV_CHECK_AFTER
from .monitor_config import ENV_MAX_CANARIES as ENV_MAX_CANARIES
from .monitor_config import ENV_MAX_PENDING as ENV_MAX_PENDING
from .monitor_config import MonitorConfig as MonitorConfig
from .monitor_config import parse_offsets as parse_offsets
from .monitor_schedule import Due
from .monitor_schedule import Schedule as Schedule
from .monitor_schedule import invalidates_doc as invalidates_doc
from .monitor_schedule import safe_doc_id as safe_doc_id
from .monitor_stats import CANARIES, MonitorCounts
from .rules import Rules, load_rules
from .settings import WorkerSettings
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



class Monitor(CanarySampler):
    """Canaries and their checks for one worker process (see the module doc)."""

    def __init__(
        self,
        client: AsyncClient,
        settings: WorkerSettings,
        config: MonitorConfig,
        *,
        worker_id: str,
        rules: Rules | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.settings = settings
        self.worker_id = worker_id
        # How records decode (the input tables); None: the shipped defaults.
        self.rules = rules if rules is not None else load_rules(None)
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
