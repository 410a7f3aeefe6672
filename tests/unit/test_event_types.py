"""Event types are defined once (cachebus.events.EventType); the language-neutral files
that name them agree with that definition (pure)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, get_args

import pytest

from cachebus.errors import ConfigError
from cachebus.events import EVENT_TYPES, EventType, event_type
from cachebus.keys import KeyScheme
from cachebus.planning import ActionKind, plan
from cachebus.rules import load_rules, parse_rules
from tests.hostile_events import MAX_BYTES, encode, valid_event
from worker.errors import InvalidEventError
from worker.events import parse_event
from worker.results import AuditOutcome

ROOT = Path(__file__).resolve().parents[2]


def _schema(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ROOT / "schemas" / f"{name}.schema.json").read_text())
    return data


def test_document_event_schema_enum_is_the_python_definition() -> None:
    """schemas/document-event.schema.json lists exactly the EventType members, in order."""
    enum = _schema("document-event")["properties"]["event_type"]["enum"]
    assert enum == [t.value for t in EventType]


def test_shipped_default_rules_have_one_table_per_event_type() -> None:
    """cachebus/default_rules.toml: a table for every type and for nothing else."""
    data = tomllib.loads((ROOT / "cachebus" / "default_rules.toml").read_text("utf-8"))
    assert set(data) - {"scan"} == set(EVENT_TYPES)


def test_audit_schema_enums_are_the_python_definitions() -> None:
    """The audit schema's outcome and action-kind enums are the Python literals."""
    schema = _schema("audit-event")
    assert schema["properties"]["outcome"]["enum"] == list(get_args(AuditOutcome))
    kinds = schema["properties"]["actions"]["items"]["properties"]["kind"]["enum"]
    assert kinds == list(get_args(ActionKind))


@pytest.mark.parametrize("kind", list(EventType))
def test_every_type_parses_and_plans(kind: EventType) -> None:
    """The parser accepts each type as its member; the planner has a rule for it."""
    event = parse_event(encode(valid_event(event_type=kind.value)), max_bytes=MAX_BYTES)
    assert event.event_type is kind
    assert load_rules().for_type(kind) is not None
    plan(event, load_rules(), KeyScheme("cb"))


def test_other_types_are_refused_everywhere() -> None:
    """A name outside the definition: dead-lettered by the parser, refused by the rules."""
    with pytest.raises(InvalidEventError) as info:
        parse_event(encode(valid_event(event_type="archived")), max_bytes=MAX_BYTES)
    assert info.value.reason == "unknown_event_type"
    with pytest.raises(ConfigError, match="unknown tables"):
        parse_rules({"archived": {}})
    with pytest.raises(ConfigError, match="created, updated, deleted"):
        parse_rules({"scan": [{"events": ["archived"], "pattern": "x:*"}]})
    assert event_type("archived") is None and event_type(3) is None
    assert event_type("created") is EventType.CREATED
