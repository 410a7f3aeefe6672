"""Rate-limited warnings for failures the library absorbs (fail-open reads and writes).

A Redis outage makes every cache call fail open; one WARNING per call would flood
the logs of a busy service. :class:`RateLimitedLog` writes at most one line per
``interval`` seconds per key, e.g. (layer, error type), and the next line for that
key says how many were suppressed in between::

    cachebus query_embeddings get_many failed open (CacheUnavailableError): Redis call
    failed: Timeout reading from socket [312 more like this in the last 10 s]
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

DEFAULT_INTERVAL = 10.0
"""Seconds between two lines of one kind."""
MAX_KEYS = 1024
"""Kinds remembered at once (the oldest is forgotten past this)."""


@dataclass(slots=True)
class _Entry:
    last: float
    suppressed: int = 0


class RateLimitedLog:
    """At most one line per ``interval`` seconds per key, with a suppressed count.
    Thread-safe; ``clock`` is injectable for tests."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[Hashable, _Entry] = {}

    def warning(self, key: Hashable, message: str, *args: object) -> bool:
        """Log ``message % args`` at WARNING unless a line of ``key`` went out less than
        ``interval`` s ago (then it is only counted). Returns whether it was logged."""
        return self.log(logging.WARNING, key, message, *args)

    def log(self, level: int, key: Hashable, message: str, *args: object) -> bool:
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and now - entry.last < self.interval:
                entry.suppressed += 1
                return False
            suppressed = entry.suppressed if entry is not None else 0
            since = now - entry.last if entry is not None else 0.0
            self._entries.pop(key, None)
            self._entries[key] = _Entry(now)
            if len(self._entries) > MAX_KEYS:
                del self._entries[next(iter(self._entries))]
        if suppressed:
            message += " [%d more like this in the last %.0f s]"
            args = (*args, suppressed, since)
        self.logger.log(level, message, *args)
        return True

    def reset(self) -> None:
        """Forget every key (the next line of each kind is logged)."""
        with self._lock:
            self._entries.clear()

    def suppressed(self, key: Hashable) -> int:
        """Lines of ``key`` counted but not logged since its last line."""
        with self._lock:
            entry = self._entries.get(key)
            return entry.suppressed if entry is not None else 0


FAIL_OPEN = RateLimitedLog(logging.getLogger("cachebus"))
"""The one log of fail-open cache calls, shared by the layers and the services."""


def fail_open(layer: str, what: str, exc: BaseException) -> bool:
    """Log that ``layer``'s ``what`` failed open because of ``exc``: at most one line
    per :data:`DEFAULT_INTERVAL` per (layer, error type)."""
    return FAIL_OPEN.warning(
        (layer, type(exc).__name__),
        "cachebus %s %s failed open (%s): %s",
        layer,
        what,
        type(exc).__name__,
        exc,
    )
