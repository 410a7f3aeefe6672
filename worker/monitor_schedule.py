"""The consistency monitor's pure parts: when each canary is checked (:class:`Schedule`),
which audits retire a canary (:func:`invalidates_doc`), log-safe document ids.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from cachebus.errors import CacheBusError
from cachebus.keys import encode_part

T = TypeVar("T")



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
