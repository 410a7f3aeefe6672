"""Document event types: the one definition.

The kinds of document event (``created`` / ``updated`` / ``deleted``) are defined here
and nowhere else in code. Everything that names them derives from :class:`EventType`:

* the event parser (:mod:`worker.events`): an ``event_type`` outside it is dead-lettered
  ``unknown_event_type``;
* the rules (:mod:`cachebus.rules`): one ``[<type>]`` table per member (unknown tables are
  refused, a missing one does nothing), ``[[scan]].events`` name members;
* the planner (:func:`cachebus.planning.plan`): ``rules.for_type(event.event_type)``.

What each type does by default is data: one table per member in
``cachebus/default_rules.toml`` (the shipped defaults users read and override).

Two files must agree and are checked by ``tests/unit/test_event_types.py``: the
``event_type`` enum of ``schemas/document-event.schema.json`` (a language-neutral
contract; a new type is a breaking change there, see schemas/README.md) and the
tables of ``cachebus/default_rules.toml``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class EventType(StrEnum):
    """What happened to a document (``event_type`` of a document event)."""

    CREATED = "created"
    """New document: search results cached for its collection may now miss it."""
    UPDATED = "updated"
    """Content or metadata changed: everything computed from the old version is stale."""
    DELETED = "deleted"
    """The document is gone: nothing derived from it may be served again."""


EVENT_TYPES: Final[tuple[EventType, ...]] = tuple(EventType)
"""Every event type, in definition order (the schema's enum order)."""

_BY_NAME: Final[dict[str, EventType]] = {t.value: t for t in EventType}


def event_type(name: object) -> EventType | None:
    """The event type called ``name``, or None if there is none (no exception:
    the parser's hot path)."""
    return _BY_NAME.get(name) if isinstance(name, str) else None


def names() -> str:
    """The types for messages: ``created, updated, deleted``."""
    return ", ".join(EVENT_TYPES)
