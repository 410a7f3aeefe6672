"""The worker's errors, in the one hierarchy rooted at :class:`cachebus.errors.CacheBusError`
(callers decide by ``retriable``, not by lists of types).

The library's errors stay in :mod:`cachebus.errors`; these are raised only by the worker
and its commands: an event that fails validation (dead-lettered, never retried), a replay
refused because its consumer group has live members.
"""

from __future__ import annotations

from cachebus.errors import CacheBusError

__all__ = ["CacheBusError", "InvalidEventError", "ReplayRefused"]


class InvalidEventError(CacheBusError):
    """A document event failed validation; the worker dead-letters it."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.fields: dict[str, str] | None = None
        """What the record says about itself as far as it could be read (``event_id``,
        ``doc_id``, ``collection``, ``event_type``; bounded UTF-8 text), set by the decode
        step (:func:`worker.inputs.decode`) for the audit and the dead letter; None when
        not set (they then peek at a native event's fields)."""


class ReplayRefused(CacheBusError):
    """The consumer group has live members: replaying into it would race them."""
