"""Durable invalidations and rollback detection (see docs/consistency.md).

After every invalidation, one :class:`~cachebus.commands.EachPrimary` step raises a
**witness** counter on every primary (``INCR <prefix>:witness:{<node tag>}``, no
TTL), in the same pipeline and connection as the ``WAIT`` / ``WAITAOF`` that make
the invalidation durable when the settings ask for it. The witness is written
after the invalidation's commands completed, so it follows them in that primary's
replication stream, AOF and snapshots: a primary that lost the invalidation lost
the witness raise with it.

A :class:`~cachebus.fence.FenceMonitor` (:mod:`cachebus.fence`) remembers the highest
witness seen per primary; one that comes back lower or missing proves lost writes, and
the monitor fences (a new random epoch: every entry written before becomes a miss).

Concurrency: a reply is compared with what the monitor had seen *before the
command was sent* (a snapshot taken when the step is built), never with replies of
commands still in flight, so concurrent invalidations of one process cannot look
like a rollback to each other.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .commands import Call, EachPrimary, Program
from .errors import ConfigError, DurabilityError
from .fence import HISTORY_MAX as HISTORY_MAX
from .fence import REPLAY_MARGIN_S as REPLAY_MARGIN_S
from .fence import FenceEvent as FenceEvent
from .fence import FenceMonitor as FenceMonitor
from .fence import Snapshot as Snapshot
from .fence import new_epoch as new_epoch
from .keys import KeyScheme
from .settings import Settings

log = logging.getLogger("cachebus.durability")


@dataclass(slots=True)
class WitnessReport:
    """What one witness step saw, per node tag."""

    witnesses: dict[str, int] = field(default_factory=dict)
    replicas: dict[str, int] = field(default_factory=dict)
    """Replicas that acknowledged (``WAIT``), or fsynced (``WAITAOF``)."""
    fences: list[FenceEvent] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Regression:
    node_tag: str
    snap: Snapshot
    found: int | None
    incremented: bool


def _version(hello: Any) -> str:
    """The server version in a HELLO reply (a map, or a flat list in RESP2)."""
    if isinstance(hello, Mapping):
        items = list(hello.items())
    elif isinstance(hello, list | tuple):
        items = list(zip(hello[::2], hello[1::2], strict=False))
    else:
        return "unknown"
    for key, value in items:
        if key in (b"version", "version"):
            return value.decode() if isinstance(value, bytes) else str(value)
    return "unknown"


class Durability:
    """Programs of the witness step, for one prefix (no I/O).

    ``describe(node_tag)`` names a primary in messages (the runner's
    ``primary_address``)."""

    def __init__(
        self,
        settings: Settings,
        monitor: FenceMonitor,
        *,
        describe: Callable[[str], str] | None = None,
    ) -> None:
        self.settings = settings
        self.keys = KeyScheme(settings.prefix)
        self.monitor = monitor
        self.describe: Callable[[str], str] = describe or (lambda tag: f"node {tag}")
        self.replicas = settings.durability_replicas
        self.fsync = settings.durability_fsync
        self.timeout_ms = settings.durability_timeout_ms
        if (self.replicas or self.fsync) and self.timeout_ms >= settings.redis_timeout * 1000:
            raise ConfigError(
                f"durability_timeout_ms ({self.timeout_ms}) must be below redis_timeout "
                f"({settings.redis_timeout:g} s): WAIT blocks the connection that long, and "
                "the socket timeout would cut it"
            )
        self._fsync_checked = False
        self._pending: list[_Regression] = []
        self._pending_lock = threading.Lock()

    @property
    def waits(self) -> bool:
        """True if the step waits for replicas or fsync."""
        return bool(self.replicas or self.fsync)

    def _wait_calls(self) -> list[Call]:
        if self.fsync:
            # WAITAOF 1 n: fsynced locally and on n replicas (which implies they hold it).
            return [Call.of("WAITAOF", 1, self.replicas, self.timeout_ms)]
        if self.replicas:
            return [Call.of("WAIT", self.replicas, self.timeout_ms)]
        return []

    def _detect_waitaof(self) -> Program[None]:
        replies = yield EachPrimary(
            lambda tag: [Call.of("COMMAND INFO", "WAITAOF"), Call.of("HELLO")]
        )
        for tag, (info, hello) in sorted(replies.items()):
            if not info or info[0] is None:
                raise ConfigError(
                    "durability_fsync=true needs WAITAOF (Redis >= 7.2), but the primary at "
                    f"{self.describe(tag)} runs Redis {_version(hello)}: upgrade it, or turn "
                    "CACHEBUS_DURABILITY_FSYNC off (CACHEBUS_DURABILITY_REPLICAS still works)"
                )
        self._fsync_checked = True

    def confirm(self) -> Program[WitnessReport]:
        """After an invalidation: raise the witness on every primary and, if the
        settings ask, wait for replicas / fsync in the same pipeline. Fences on a
        regression; raises :class:`DurabilityError` on a shortfall (after fencing)."""
        if self.fsync and not self._fsync_checked:
            yield from self._detect_waitaof()
        snaps: dict[str, Snapshot] = {}
        waits = self._wait_calls()

        def make(tag: str) -> list[Call]:
            snaps[tag] = self.monitor.snapshot(tag)
            return [Call.of("INCR", self.keys.witness(tag)), *waits]

        replies = yield EachPrimary(make)
        report = WitnessReport()
        shortfalls: dict[str, str] = {}
        for tag, reply in sorted(replies.items()):
            if not waits:
                continue
            if self.fsync:
                local, acked = (int(x) for x in reply[1])
                report.replicas[tag] = acked
                if local < 1 or acked < self.replicas:
                    shortfalls[tag] = (
                        f"{self.describe(tag)}: fsynced locally {local} of 1, on "
                        f"{acked} of {self.replicas} replicas"
                    )
            else:
                acked = int(reply[1])
                report.replicas[tag] = acked
                if acked < self.replicas:
                    shortfalls[tag] = f"{self.describe(tag)}: {acked} of {self.replicas} replicas"
        regressions: list[_Regression] = []
        for tag, reply in replies.items():
            value = int(reply[0])
            report.witnesses[tag] = value
            if self.monitor.regressed(tag, snaps[tag], value, incremented=True):
                regressions.append(_Regression(tag, snaps[tag], value, True))
            elif tag not in shortfalls:
                # With durability on, only a witness the replicas (and fsync) confirmed
                # is remembered: losing an unconfirmed one loses nothing acknowledged
                # (its invalidation is retried), so it must not fence.
                self.monitor.observe(tag, snaps[tag], value)
        if regressions:
            report.fences = yield from self._fence(regressions)
        if waits and shortfalls:
            raise DurabilityError(
                f"invalidation not durable within {self.timeout_ms} ms ("
                + "; ".join(shortfalls.values())
                + "): retry it"
            )
        return report

    def check(self) -> Program[WitnessReport]:
        """Only read the witnesses (no INCR): the worker's periodic check. Fences on
        a regression."""
        snaps: dict[str, Snapshot] = {}

        def make(tag: str) -> list[Call]:
            snaps[tag] = self.monitor.snapshot(tag)
            return [Call.of("GET", self.keys.witness(tag))]

        replies = yield EachPrimary(make)
        report = WitnessReport()
        regressions: list[_Regression] = []
        for tag, (raw,) in replies.items():
            value = 0 if raw is None else int(raw)
            report.witnesses[tag] = value
            if self.monitor.regressed(tag, snaps[tag], value, incremented=False):
                regressions.append(
                    _Regression(tag, snaps[tag], None if raw is None else value, False)
                )
            elif not self._wait_calls():
                # A value read here may include writes no replica has yet: with
                # durability on, only confirmed witnesses (see confirm) are remembered.
                self.monitor.observe(tag, snaps[tag], value)
        if regressions:
            report.fences = yield from self._fence(regressions)
        return report

    def _fence(self, regressions: list[_Regression]) -> Program[list[FenceEvent]]:
        with self._pending_lock:
            self._pending.extend(regressions)
        yield [Call.of("SET", self.keys.epoch(), new_epoch())]
        with self._pending_lock:
            # Identity, not equality: a fallback (Redis full) may have taken them already.
            mine = [r for r in regressions if any(r is p for p in self._pending)]
            self._pending = [p for p in self._pending if not any(p is r for r in regressions)]
        return self._record(mine, epoch_written=True)

    def _record(self, regressions: list[_Regression], *, epoch_written: bool) -> list[FenceEvent]:
        return [
            self.monitor.fenced(
                r.node_tag,
                r.snap,
                r.found,
                incremented=r.incremented,
                primary=self.describe(r.node_tag),
                epoch_written=epoch_written,
            )
            for r in regressions
        ]

    # Redis full: the fence's SET was refused ------------------------------------
    def pending_fence_keys(self) -> list[str]:
        """The epoch key if a fence is waiting for its write (it failed): under
        ``noeviction`` at maxmemory, UNLINK it instead (a missing epoch is a fence)."""
        with self._pending_lock:
            return [self.keys.epoch()] if self._pending else []

    def fenced_by_unlink(self) -> list[FenceEvent]:
        """Record the pending fences as done by unlinking the epoch."""
        with self._pending_lock:
            pending, self._pending = self._pending, []
        return self._record(pending, epoch_written=False)
