"""Declarative invalidation rules (TOML), with shipped defaults: what each document
event does to the caches. The worker and the library's ``document_*`` calls read the
same rules (``CACHEBUS_RULES_FILE`` over ``cachebus/default_rules.toml``).

The event types come from :class:`cachebus.events.EventType`: one ``[<type>]`` table
per type, and nothing else names them here."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from .errors import ConfigError
from .events import EVENT_TYPES, EventType, event_type, names
from .keys import KeyScheme

EmbeddingDrop = Literal["changed", "all", "none"]
_DEFAULTS = Path(__file__).resolve().parent / "default_rules.toml"


@dataclass(frozen=True, slots=True)
class EventRule:
    """What one event type does. The default (every field off) does nothing."""

    bump_collection: bool = False
    invalidate_doc: bool = False
    invalidate_tags: bool = False
    embeddings: EmbeddingDrop = "none"
    tombstone: bool = False
    revive: bool = False


@dataclass(frozen=True, slots=True)
class ScanRule:
    events: tuple[str, ...]
    """Event types (names are normalised to :class:`EventType` members)."""
    pattern: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "events", tuple(_known(e) for e in self.events))


def _known(name: str) -> EventType:
    found = event_type(name)
    if found is None:
        raise ValueError(f"{name!r} is not an event type ({names()})")
    return found


@dataclass(frozen=True, slots=True)
class Rules:
    """One :class:`EventRule` per :class:`EventType` (a type left out does nothing),
    and the ``[[scan]]`` rules."""

    by_type: Mapping[str, EventRule] = field(default_factory=dict)
    """Keyed by :class:`EventType` (names are accepted and normalised)."""
    scans: tuple[ScanRule, ...] = ()
    inputs: Mapping[str, Any] = field(default_factory=dict)
    """The rules file's ``[[debezium]]`` and ``[cloudevents]`` tables as written: the
    worker's input formats (read by ``worker.sources``; the library ignores them)."""

    def __post_init__(self) -> None:
        given = {_known(name): rule for name, rule in self.by_type.items()}
        table: dict[str, EventRule] = {t: given.get(t, EventRule()) for t in EVENT_TYPES}
        object.__setattr__(self, "by_type", MappingProxyType(table))
        object.__setattr__(self, "inputs", MappingProxyType(dict(self.inputs)))

    def for_type(self, kind: EventType | str) -> EventRule:
        return self.by_type[_known(kind)]

    def with_rule(self, kind: EventType | str, rule: EventRule) -> Rules:
        """A copy with ``kind``'s rule replaced."""
        return Rules({**self.by_type, _known(kind): rule}, self.scans, self.inputs)


_RULE_KEYS = set(EventRule.__slots__)


def _event_rule(name: str, table: Any) -> EventRule:
    if not isinstance(table, dict):
        raise ConfigError(f"rules [{name}] must be a table")
    unknown = set(table) - _RULE_KEYS
    if unknown:
        raise ConfigError(f"rules [{name}]: unknown keys {sorted(unknown)}")
    embeddings = table.get("embeddings", "none")
    if embeddings not in ("changed", "all", "none"):
        raise ConfigError(f"rules [{name}].embeddings must be changed, all or none")
    for key, value in table.items():
        if key != "embeddings" and not isinstance(value, bool):
            raise ConfigError(f"rules [{name}].{key} must be true or false")
    return EventRule(**table)


def merge_tables(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def _scan_rule(i: int, scan: Any) -> ScanRule:
    where = f"rules [[scan]] #{i + 1}"
    if not isinstance(scan, dict):
        raise ConfigError(f"{where}: must be a table with events and pattern")
    unknown = set(scan) - {"events", "pattern"}
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    events = scan.get("events")
    pattern = scan.get("pattern")
    if not isinstance(pattern, str) or not pattern:
        raise ConfigError(f"{where}: pattern must be a non-empty string")
    kinds = [event_type(e) for e in events] if isinstance(events, list) else []
    if not kinds or None in kinds:
        raise ConfigError(f"{where}: events must list some of {names()}")
    # Fail at load, not per event: only {doc_id} and {collection} can be filled.
    KeyScheme("x").pattern(pattern, doc_id="x", collection="x")
    return ScanRule(tuple(k for k in kinds if k is not None), pattern)


INPUT_TABLES = ("debezium", "cloudevents")
"""Tables of the rules file that belong to the worker's input formats (kept, not read)."""


def parse_rules(data: dict[str, Any]) -> Rules:
    unknown = set(data) - {*EVENT_TYPES, "scan", *INPUT_TABLES}
    if unknown:
        raise ConfigError(f"rules: unknown tables {sorted(unknown)}")
    raw_scans = data.get("scan", [])
    if not isinstance(raw_scans, list):
        raise ConfigError("rules: scan rules are written as [[scan]] tables")
    scans = tuple(_scan_rule(i, scan) for i, scan in enumerate(raw_scans))
    inputs = {name: data[name] for name in INPUT_TABLES if name in data}
    return Rules({t: _event_rule(t, data.get(t, {})) for t in EVENT_TYPES}, scans, inputs)


def load_rules(path: str | Path | None = None) -> Rules:
    """The shipped defaults, overridden by the TOML file at ``path`` if given."""
    base = tomllib.loads(_DEFAULTS.read_text("utf-8"))
    if path:
        try:
            override = tomllib.loads(Path(path).read_text("utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read rules file {path}: {exc}") from None
        base = merge_tables(base, override)
    return parse_rules(base)
