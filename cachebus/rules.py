"""Declarative invalidation rules (TOML), with shipped defaults: what each document
event does to the caches. The worker and the library's ``document_*`` calls read the
same rules (``CACHEBUS_RULES_FILE`` over ``cachebus/default_rules.toml``)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError
from .keys import KeyScheme

EmbeddingDrop = Literal["changed", "all", "none"]
_DEFAULTS = Path(__file__).resolve().parent / "default_rules.toml"


@dataclass(frozen=True, slots=True)
class EventRule:
    """What one event type does."""

    bump_collection: bool = False
    invalidate_doc: bool = False
    invalidate_tags: bool = False
    embeddings: EmbeddingDrop = "none"
    tombstone: bool = False
    revive: bool = False


@dataclass(frozen=True, slots=True)
class ScanRule:
    events: tuple[str, ...]
    pattern: str


@dataclass(frozen=True, slots=True)
class Rules:
    created: EventRule
    updated: EventRule
    deleted: EventRule
    scans: tuple[ScanRule, ...] = ()

    def for_type(self, event_type: str) -> EventRule:
        rule: EventRule = getattr(self, event_type)
        return rule


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


def parse_rules(data: dict[str, Any]) -> Rules:
    unknown = set(data) - {"created", "updated", "deleted", "scan"}
    if unknown:
        raise ConfigError(f"rules: unknown tables {sorted(unknown)}")
    scans = []
    raw_scans = data.get("scan", [])
    if not isinstance(raw_scans, list):
        raise ConfigError("rules: scan rules are written as [[scan]] tables")
    for i, scan in enumerate(raw_scans):
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
        kinds = {"created", "updated", "deleted"}
        if (
            not isinstance(events, list)
            or not events
            or not all(isinstance(e, str) and e in kinds for e in events)
        ):
            raise ConfigError(f"{where}: events must list some of created, updated, deleted")
        # Fail at load, not per event: only {doc_id} and {collection} can be filled.
        KeyScheme("x").pattern(pattern, doc_id="x", collection="x")
        scans.append(ScanRule(tuple(events), pattern))
    return Rules(
        created=_event_rule("created", data.get("created", {})),
        updated=_event_rule("updated", data.get("updated", {})),
        deleted=_event_rule("deleted", data.get("deleted", {})),
        scans=tuple(scans),
    )


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
