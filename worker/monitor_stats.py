"""The consistency monitor's counts and their export: Prometheus (``/metrics``) and
per-minute buckets ``<prefix>:metrics:{consistency}:<minute>`` in Redis, read by
``cachebus stats`` and ``cachebus verify``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import Counter, Gauge, disable_created_metrics

from cachebus.keys import KeyScheme
from cachebus.runner import AsyncRunner

from .monitor_config import ERROR_LOG_INTERVAL
from .monitor_schedule import Schedule
from .verify import BUCKET_SECONDS, BUCKETS_SCRIPT, RETENTION_MINUTES, bucket_key

if TYPE_CHECKING:
    from .canaries import Canary

log = structlog.get_logger("cachebus.worker")


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


class MonitorStats:
    """The monitor's counts and their export: Prometheus, per-minute buckets in Redis
    (:meth:`flush`), rate-limited error logs. A base of :class:`~worker.monitor.Monitor`."""

    counts: MonitorCounts
    keys: KeyScheme
    runner: AsyncRunner
    schedule: Schedule[Canary]
    live: OrderedDict[str, Canary]
    _checking: int
    _clock: Callable[[], float]
    _wall: Callable[[], float]
    _last_error_log: float
    _errors_unlogged: int

    @property
    def pending(self) -> int:
        """Canaries under check (scheduled or being read)."""
        return len(self.schedule) + self._checking

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
