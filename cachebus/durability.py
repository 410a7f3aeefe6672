"""Durable invalidations and rollback detection (see docs/consistency.md).

After every invalidation, one :class:`~cachebus.commands.EachPrimary` step raises a
**witness** counter on every primary (``INCR <prefix>:witness:{<node tag>}``, no
TTL), in the same pipeline and connection as the ``WAIT`` / ``WAITAOF`` that make
the invalidation durable when the settings ask for it. The witness is written
after the invalidation's commands completed, so it follows them in that primary's
replication stream, AOF and snapshots: a primary that lost the invalidation lost
the witness raise with it.

A :class:`FenceMonitor` remembers the highest witness this process saw per
primary. A witness that comes back lower (or missing) proves the primary lost
writes (a restart from an old RDB, an AOF cut at its last fsync, a failover to a
replica that never got them, a FLUSHALL): the monitor **fences** by writing a new
random epoch, which turns every cached entry written before into a miss, logs an
ERROR naming the primary and the ``cachebus replay`` command that rebuilds the
worker's control state, and counts it. No clock takes part in the detection: the
witness is a counter, the epoch a random token (wall time only dates the replay
hint).

Concurrency: a reply is compared with what the monitor had seen *before the
command was sent* (a snapshot taken when the step is built), never with replies of
commands still in flight, so concurrent invalidations of one process cannot look
like a rollback to each other.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Final

from .commands import Call, EachPrimary, Program
from .errors import ConfigError, DurabilityError
from .keys import KeyScheme
from .settings import Settings

log = logging.getLogger("cachebus.durability")

REPLAY_MARGIN_S: Final = 300.0
"""Subtracted from the replay hint's start time: covers the consumer lag of the
worker at the time (events are replayed by their Kafka timestamp, applied later)
and clock differences between hosts."""
HISTORY_MAX: Final = 10_000
"""Witness observations kept per primary for the replay hint (at most one per
second: about 2.8 hours)."""


def new_epoch() -> str:
    """A fresh fence epoch: 8 url-safe base64 characters (48 random bits)."""
    return secrets.token_urlsafe(6)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class FenceEvent:
    """One detected loss of writes on one primary, and the fence written for it."""

    node_tag: str
    primary: str
    """Address (``host:port``) of the primary that lost writes."""
    witness_key: str
    remembered: int
    """The highest witness this process had seen on that primary."""
    found: int | None
    """What the primary answered (``None``: the witness key was missing; after an
    INCR: the value that INCR returned)."""
    at: float
    """Wall time of the detection (for humans; not used to detect)."""
    replay_from: str
    """RFC 3339 time to replay the events topic from."""
    replay_command: str
    epoch_written: bool = True
    """False when Redis was full: the epoch was unlinked instead (same effect: every
    entry is a miss; the next ticket creates a new epoch)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "node_tag": self.node_tag,
            "primary": self.primary,
            "witness_key": self.witness_key,
            "remembered": self.remembered,
            "found": self.found,
            "at": _iso(self.at),
            "replay_from": self.replay_from,
            "replay_command": self.replay_command,
            "epoch_written": self.epoch_written,
        }


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the monitor knew about one primary when a command was built."""

    seen: int
    incarnation: int
    sent_at: float


@dataclass(slots=True)
class _Node:
    seen: int = 0
    incarnation: int = 0
    """Raised by every fence: replies to commands sent before it are not compared."""
    history: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=HISTORY_MAX))
    """(witness value, wall time the command that saw it was sent), oldest first."""


class FenceMonitor:
    """Highest witness seen per primary (by node tag), for one key prefix.

    Thread-safe. Share one per process and prefix (:meth:`shared`) when several
    invalidators write the same deployment, or pass one to each invalidator that
    should detect (an invalidator makes its own by default)."""

    _shared: ClassVar[dict[str, FenceMonitor]] = {}
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, prefix: str = "cb", *, replay_margin: float = REPLAY_MARGIN_S) -> None:
        self.keys = KeyScheme(prefix)
        self.replay_margin = replay_margin
        self.fences = 0
        """Fences this monitor wrote (the worker exports it as ``cachebus_fences_total``)."""
        self.last_fence: FenceEvent | None = None
        self.listeners: list[Callable[[FenceEvent], None]] = []
        """Called with every fence (metrics, health); exceptions are logged, not raised."""
        self._nodes: dict[str, _Node] = {}
        self._lock = threading.Lock()

    @classmethod
    def shared(cls, prefix: str = "cb") -> FenceMonitor:
        """The process-wide monitor of a prefix."""
        with cls._shared_lock:
            monitor = cls._shared.get(prefix)
            if monitor is None:
                monitor = cls._shared[prefix] = cls(prefix)
            return monitor

    def seen(self) -> dict[str, int]:
        """Highest witness seen per node tag."""
        with self._lock:
            return {tag: node.seen for tag, node in self._nodes.items()}

    def snapshot(self, node_tag: str) -> Snapshot:
        """Take before sending a command whose reply :meth:`regressed` will judge."""
        with self._lock:
            node = self._nodes.setdefault(node_tag, _Node())
            return Snapshot(node.seen, node.incarnation, time.time())

    def regressed(self, node_tag: str, snap: Snapshot, value: int, *, incremented: bool) -> bool:
        """True if ``value`` proves that the primary lost writes: below what this
        process had seen before the command was sent (an ``INCR`` must return more
        than that, a ``GET`` at least that; a missing key reads as 0)."""
        with self._lock:
            node = self._nodes.setdefault(node_tag, _Node())
            if snap.incarnation != node.incarnation or snap.seen <= 0:
                return False  # a fence happened meanwhile, or nothing to compare with
            return value <= snap.seen if incremented else value < snap.seen

    def observe(self, node_tag: str, snap: Snapshot, value: int) -> None:
        """Remember a witness value that is not a regression."""
        with self._lock:
            node = self._nodes.setdefault(node_tag, _Node())
            if snap.incarnation != node.incarnation:
                return
            if value > node.seen:
                node.seen = value
            history = node.history
            if not history or snap.sent_at - history[-1][1] >= 1.0:
                history.append((value, snap.sent_at))

    def replay_start(self, node_tag: str, held: int) -> float:
        """When the lost writes may have begun: the latest time this process saw the
        witness at or below ``held`` (what the primary holds now), else its oldest
        observation; minus :attr:`replay_margin`."""
        with self._lock:
            node = self._nodes.get(node_tag)
            history = list(node.history) if node is not None else []
        start = None
        for value, at in reversed(history):
            if value <= held:
                start = at
                break
        if start is None:
            start = history[0][1] if history else time.time()
        return start - self.replay_margin

    def fenced(
        self,
        node_tag: str,
        snap: Snapshot,
        found: int | None,
        *,
        incremented: bool,
        primary: str,
        epoch_written: bool = True,
    ) -> FenceEvent:
        """Record a fence written for a regression; the primary's current witness is
        the new baseline. Logs the ERROR line and notifies the listeners."""
        value = found or 0
        held = value - 1 if incremented else value
        start = self.replay_start(node_tag, held)
        with self._lock:
            node = self._nodes.setdefault(node_tag, _Node())
            remembered = node.seen
            node.seen = value
            node.incarnation += 1
            node.history.clear()
            node.history.append((value, time.time()))
            self.fences += 1
        replay_from = _iso(start)
        event = FenceEvent(
            node_tag=node_tag,
            primary=primary,
            witness_key=self.keys.witness(node_tag),
            remembered=max(remembered, snap.seen),
            found=found,
            at=time.time(),
            replay_from=replay_from,
            replay_command=f"cachebus replay --from-time {replay_from}",
            epoch_written=epoch_written,
        )
        with self._lock:
            self.last_fence = event
        log.error(
            "cachebus FENCE: Redis primary %s lost writes: witness %s is %s, this process "
            "had seen %d. %s; every cached entry is now a miss. Rebuild the worker's "
            "control state (high-water marks, tombstones) from Kafka: %s",
            event.primary,
            event.witness_key,
            "missing" if found is None else found,
            event.remembered,
            "Wrote a new epoch" if epoch_written else "Redis is full: unlinked the epoch",
            event.replay_command,
        )
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception:  # a metrics hook must not stop the fence
                log.exception("fence listener failed")
        return event


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
