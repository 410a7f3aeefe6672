"""The worker's input formats as the rules file maps them: ``[[debezium]]`` tables
(one per Debezium topic) and the ``[cloudevents]`` table. The library
(:mod:`cachebus.rules`) keeps these tables as they are (``Rules.inputs``); the worker
reads them here, with one-line :class:`~cachebus.errors.ConfigError`\\ s for mistakes.

.. code-block:: toml

    [[debezium]]
    topic = "pg.public.documents"   # required
    doc_id = "id"                   # required
    collection = "collection"       # or: collection_value = "handbook" (exactly one)
    version = "lsn"                 # "lsn" (default: source.lsn) or an integer column
    tags = "tags"                   # optional columns
    chunks = "chunks"
    content_hash = "content_hash"
    tombstones = "audit"            # "audit" (default) or "ignore"

    [cloudevents]
    types = { "com.example.document.published" = "created" }
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from cachebus.errors import ConfigError
from cachebus.events import EventType, event_type, names
from cachebus.rules import Rules

__all__ = [
    "CloudEventsConfig",
    "DebeziumSource",
    "Sources",
    "check_topics",
    "parse_sources",
    "sources_of",
]

Tombstones = Literal["audit", "ignore"]
LSN = "lsn"
"""``version = "lsn"``: the change's position in the source log (``source.lsn``)."""

_DEBEZIUM_KEYS = frozenset(
    {
        "topic",
        "doc_id",
        "collection",
        "collection_value",
        "version",
        "tags",
        "chunks",
        "content_hash",
        "tombstones",
    }
)
_CLOUDEVENTS_KEYS = frozenset({"types"})


@dataclass(frozen=True, slots=True)
class DebeziumSource:
    """One ``[[debezium]]`` table: how the rows of one Debezium topic map to document
    events. Column names are the table's column names as Debezium writes them."""

    topic: str
    doc_id: str
    collection: str | None = None
    """Column giving the collection (exactly one of this and ``collection_value``)."""
    collection_value: str | None = None
    """One fixed collection for every row."""
    version: str = LSN
    """``"lsn"`` (``source.lsn``) or a column holding an integer version."""
    tags: str | None = None
    chunks: str | None = None
    content_hash: str | None = None
    tombstones: Tombstones = "audit"


@dataclass(frozen=True, slots=True)
class CloudEventsConfig:
    """The ``[cloudevents]`` table."""

    types: Mapping[str, EventType] = field(default_factory=lambda: MappingProxyType({}))
    """CloudEvents ``type`` -> event type; other types: by suffix (``.created``...)."""

    def event_type(self, ce_type: str) -> EventType | None:
        """The event type of a CloudEvents ``type``, or None if it has none."""
        found = self.types.get(ce_type)
        if found is not None:
            return found
        _, dot, suffix = ce_type.rpartition(".")
        return event_type(suffix) if dot else None


@dataclass(frozen=True, slots=True)
class Sources:
    """Everything the rules file says about input formats."""

    debezium: Mapping[str, DebeziumSource] = field(default_factory=lambda: MappingProxyType({}))
    """By topic."""
    cloudevents: CloudEventsConfig = field(default_factory=CloudEventsConfig)

    @property
    def topics(self) -> tuple[str, ...]:
        """The Debezium topics, in the rules file's order."""
        return tuple(self.debezium)


def _text(where: str, table: Mapping[str, Any], key: str, *, required: bool = False) -> str | None:
    value = table.get(key)
    if value is None:
        if required:
            raise ConfigError(f"{where}: {key} is required (a non-empty string)")
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: {key} must be a non-empty string")
    return value


def _debezium(i: int, table: Any) -> DebeziumSource:
    where = f"rules [[debezium]] #{i + 1}"
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table (write [[debezium]])")
    topic = table.get("topic")
    if isinstance(topic, str) and topic:
        where = f"rules [[debezium]] {topic!r}"
    unknown = set(table) - _DEBEZIUM_KEYS
    if unknown:
        raise ConfigError(
            f"{where}: unknown keys {sorted(unknown)} (known: {sorted(_DEBEZIUM_KEYS)})"
        )
    topic = _text(where, table, "topic", required=True)
    doc_id = _text(where, table, "doc_id", required=True)
    collection = _text(where, table, "collection")
    collection_value = _text(where, table, "collection_value")
    if (collection is None) == (collection_value is None):
        raise ConfigError(
            f"{where}: give exactly one of collection (a column) and collection_value "
            "(one collection for every row)"
        )
    if collection_value is not None and len(collection_value) > 256:
        raise ConfigError(f"{where}: collection_value is longer than 256 characters")
    version = _text(where, table, "version") or LSN
    tombstones = table.get("tombstones", "audit")
    if tombstones not in ("audit", "ignore"):
        raise ConfigError(f'{where}: tombstones must be "audit" or "ignore"')
    assert topic is not None and doc_id is not None  # required above
    return DebeziumSource(
        topic=topic,
        doc_id=doc_id,
        collection=collection,
        collection_value=collection_value,
        version=version,
        tags=_text(where, table, "tags"),
        chunks=_text(where, table, "chunks"),
        content_hash=_text(where, table, "content_hash"),
        tombstones=tombstones,
    )


def _cloudevents(table: Any) -> CloudEventsConfig:
    where = "rules [cloudevents]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    unknown = set(table) - _CLOUDEVENTS_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)} (known: types)")
    raw = table.get("types", {})
    if not isinstance(raw, dict):
        raise ConfigError(f'{where}.types must be a table, e.g. {{ "com.example.x" = "created" }}')
    types: dict[str, EventType] = {}
    for name, kind in raw.items():
        found = event_type(kind)
        if not name or found is None:
            raise ConfigError(
                f"{where}.types: {name!r} = {kind!r}: the value must be one of {names()}"
            )
        types[name] = found
    return CloudEventsConfig(MappingProxyType(types))


def parse_sources(inputs: Mapping[str, Any]) -> Sources:
    """The ``debezium`` and ``cloudevents`` tables of a rules file (other keys are the
    library's and are ignored here).

    Raises:
        ConfigError: one line naming the table and the mistake.
    """
    raw = inputs.get("debezium", [])
    if not isinstance(raw, list):
        raise ConfigError("rules: Debezium topics are written as [[debezium]] tables")
    by_topic: dict[str, DebeziumSource] = {}
    for i, table in enumerate(raw):
        source = _debezium(i, table)
        if source.topic in by_topic:
            raise ConfigError(f"rules [[debezium]]: topic {source.topic!r} is mapped twice")
        by_topic[source.topic] = source
    cloudevents = _cloudevents(inputs.get("cloudevents", {}))
    return Sources(MappingProxyType(by_topic), cloudevents)


_last: tuple[Rules, Sources] | None = None


def sources_of(rules: Rules) -> Sources:
    """The input formats of ``rules`` (parsed once per rules object).

    Raises:
        ConfigError: a mistake in the ``[[debezium]]`` or ``[cloudevents]`` tables.
    """
    global _last
    last = _last
    if last is not None and last[0] is rules:
        return last[1]
    sources = parse_sources(rules.inputs)
    _last = (rules, sources)
    return sources


def check_topics(sources: Sources, *, events: str, outputs: tuple[str, ...]) -> tuple[str, ...]:
    """Every topic the worker consumes: ``events`` then the Debezium topics.

    Raises:
        ConfigError: a Debezium topic that is the events topic or one the worker writes.
    """
    for topic in sources.topics:
        if topic == events:
            raise ConfigError(
                f"rules [[debezium]] {topic!r} is the worker's events topic "
                "(CACHEBUS_EVENTS_TOPIC): Debezium writes to a topic of its own"
            )
        if topic in outputs:
            raise ConfigError(f"rules [[debezium]] {topic!r} is a topic the worker writes to")
    return (events, *sources.topics)
