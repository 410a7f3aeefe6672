"""Rollback detection and the fence (see docs/consistency.md and :mod:`cachebus.durability`).

A :class:`FenceMonitor` remembers the highest witness this process saw per
primary. A witness that comes back lower (or missing) proves the primary lost
writes (a restart from an old RDB, an AOF cut at its last fsync, a failover to a
replica that never got them, a FLUSHALL): the monitor **fences** by writing a new
random epoch, which turns every cached entry written before into a miss, logs an
ERROR naming the primary and the ``cachebus replay`` command that rebuilds the
worker control state, and counts it. No clock takes part in the detection: the
witness is a counter, the epoch a random token (wall time only dates the replay
hint).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Final

from .keys import KeyScheme

# The logger fences were always logged on (operators filter on it).
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
