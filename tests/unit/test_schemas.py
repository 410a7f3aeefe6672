"""The JSON Schemas in schemas/ are valid 2020-12 schemas and agree with their examples.

Every file under ``schemas/examples/<schema>/valid`` must validate and every file under
``.../invalid`` must fail, each for the reason recorded in ``INVALID_EXPECTED`` (so an
example cannot pass by failing for an unrelated typo).  Each check runs twice: with
format assertion on (what the worker does) and with format assertion off, which proves
the patterns alone carry the uuid / date-time rules, as in validators that treat
``format`` as an annotation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

SCHEMAS_DIR = Path(__file__).resolve().parents[2] / "schemas"
EXAMPLES_DIR = SCHEMAS_DIR / "examples"
SCHEMA_NAMES = ("document-event", "audit-event", "dead-letter")

# (schema, file stem) -> (instance path of the expected error, failing keyword)
INVALID_EXPECTED: dict[tuple[str, str], tuple[tuple[str | int, ...], str]] = {
    ("document-event", "missing-event-id"): ((), "required"),
    ("document-event", "bad-uuid"): (("event_id",), "pattern"),
    ("document-event", "uuid-without-hyphens"): (("event_id",), "pattern"),
    ("document-event", "uuid-trailing-newline"): (("event_id",), "pattern"),
    ("document-event", "unknown-event-type"): (("event_type",), "enum"),
    ("document-event", "doc-version-string"): (("doc_version",), "type"),
    ("document-event", "doc-version-negative"): (("doc_version",), "minimum"),
    ("document-event", "doc-version-float"): (("doc_version",), "type"),
    ("document-event", "doc-version-too-large"): (("doc_version",), "maximum"),
    ("document-event", "empty-doc-id"): (("doc_id",), "minLength"),
    ("document-event", "doc-id-null"): (("doc_id",), "type"),
    ("document-event", "missing-collection"): ((), "required"),
    ("document-event", "tags-not-array"): (("tags",), "type"),
    ("document-event", "tags-duplicate"): (("tags",), "uniqueItems"),
    ("document-event", "occurred-at-not-a-date"): (("occurred_at",), "pattern"),
    ("document-event", "occurred-at-without-offset"): (("occurred_at",), "pattern"),
    ("document-event", "occurred-at-epoch-number"): (("occurred_at",), "type"),
    ("document-event", "schema-version-2"): (("schema_version",), "const"),
    ("document-event", "chunk-missing-content-hash"): (("chunks", 1), "required"),
    ("document-event", "metadata-not-object"): (("metadata",), "type"),
    ("document-event", "not-an-object"): ((), "type"),
    ("audit-event", "unknown-outcome"): (("outcome",), "enum"),
    ("audit-event", "missing-worker-id"): ((), "required"),
    ("audit-event", "keys-removed-negative"): (("keys_removed",), "minimum"),
    ("audit-event", "unknown-action-kind"): (("actions", 0, "kind"), "enum"),
    ("audit-event", "skipped-without-reason"): (("reason",), "type"),
    ("audit-event", "applied-without-event-id"): (("event_id",), "type"),
    ("audit-event", "source-offset-string"): (("source", "offset"), "type"),
    ("dead-letter", "unknown-reason"): (("reason",), "enum"),
    ("dead-letter", "value-not-base64"): (("original_value_b64",), "pattern"),
    ("dead-letter", "missing-original-size"): ((), "required"),
    ("dead-letter", "truncated-not-boolean"): (("original_truncated",), "type"),
    ("dead-letter", "source-missing-partition"): (("source",), "required"),
    ("dead-letter", "doc-id-not-string"): (("doc_id",), "type"),
}

MIN_EXAMPLES = {  # schema -> (valid, invalid)
    "document-event": (6, 10),
    "audit-event": (2, 3),
    "dead-letter": (2, 3),
}


def _load(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def _schema(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = _load(SCHEMAS_DIR / f"{name}.schema.json")
    return schema


def _validators(name: str) -> list[Draft202012Validator]:
    schema = _schema(name)
    return [
        Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER),
        Draft202012Validator(schema),  # format as annotation only: patterns must suffice
    ]


def _examples(kind: str) -> list[Any]:
    params = []
    for name in SCHEMA_NAMES:
        for path in sorted((EXAMPLES_DIR / name / kind).glob("*.json")):
            params.append(pytest.param(name, path, id=f"{name}/{kind}/{path.name}"))
    return params


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_schema_is_valid_draft_2020_12(name: str) -> None:
    schema = _schema(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"https://cachebus.dev/schemas/{name}/1.json"
    Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_every_property_has_a_description(name: str) -> None:
    missing: list[str] = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for prop, sub in node.get("properties", {}).items():
                # properties inside if/then only narrow an already described property
                if "/if" not in where and "/then" not in where and "description" not in sub:
                    missing.append(f"{where}/properties/{prop}")
            for key, sub in node.items():
                walk(sub, f"{where}/{key}")
        elif isinstance(node, list):
            for i, sub in enumerate(node):
                walk(sub, f"{where}/{i}")

    walk(_schema(name), "#")
    assert not missing, f"properties without a description: {missing}"


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_enough_examples(name: str) -> None:
    want_valid, want_invalid = MIN_EXAMPLES[name]
    assert len(list((EXAMPLES_DIR / name / "valid").glob("*.json"))) >= want_valid
    assert len(list((EXAMPLES_DIR / name / "invalid").glob("*.json"))) >= want_invalid


@pytest.mark.parametrize(("name", "path"), _examples("valid"))
def test_valid_example_validates(name: str, path: Path) -> None:
    instance = _load(path)
    for validator in _validators(name):
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(instance)]
        assert not errors, f"{path.name} should be valid: {errors}"


@pytest.mark.parametrize(("name", "path"), _examples("invalid"))
def test_invalid_example_fails_for_its_reason(name: str, path: Path) -> None:
    key = (name, path.stem)
    assert key in INVALID_EXPECTED, f"add the expected error of {name}/invalid/{path.name}"
    want_path, want_keyword = INVALID_EXPECTED[key]
    instance = _load(path)
    for validator in _validators(name):
        errors = list(validator.iter_errors(instance))
        assert errors, f"{path.name} should be invalid"
        got = [(tuple(e.absolute_path), e.validator) for e in errors]
        assert (want_path, want_keyword) in got, (
            f"{path.name}: expected {want_keyword} at {want_path}, got {got}"
        )


def test_every_expectation_has_an_example() -> None:
    for name, stem in INVALID_EXPECTED:
        assert (EXAMPLES_DIR / name / "invalid" / f"{stem}.json").is_file(), (name, stem)


def test_extra_fields_are_accepted_but_wrong_types_are_not() -> None:
    validator = _validators("document-event")[0]
    event = _load(EXAMPLES_DIR / "document-event" / "valid" / "created-minimal.json")
    assert validator.is_valid({**event, "some_future_field": {"x": [1, 2]}})
    assert not validator.is_valid({**event, "collection": 5})
    assert not validator.is_valid({**event, "doc_version": True})


def test_dead_letter_doc_id_and_collection_are_optional() -> None:
    """Added within dlq_version 1: dead letters of earlier releases (no doc_id, no
    collection) stay valid; the audit's doc_id and collection have the same types."""
    dlq = _schema("dead-letter")
    audit = _schema("audit-event")
    for name in ("doc_id", "collection"):
        assert name not in dlq["required"]
        assert dlq["properties"][name]["type"] == audit["properties"][name]["type"]
    for path in sorted((EXAMPLES_DIR / "dead-letter" / "valid").glob("*.json")):
        letter = _load(path)
        old = {k: v for k, v in letter.items() if k not in ("doc_id", "collection")}
        for validator in _validators("dead-letter"):
            assert validator.is_valid(old), path.name
            assert validator.is_valid({**letter, "doc_id": None, "collection": None}), path.name


def test_glob_characters_in_doc_id_are_legal() -> None:
    validator = _validators("document-event")[0]
    event = _load(EXAMPLES_DIR / "document-event" / "valid" / "created-minimal.json")
    for doc_id in ("*", "*{a}:b?[x]\\", "{tag}", "a:b:c", " ", "\n", "doc\x00id"):
        assert validator.is_valid({**event, "doc_id": doc_id}), repr(doc_id)


def test_date_time_pattern_agrees_with_format_checker() -> None:
    """The pattern never accepts what the date-time format rejects, except impossible days."""
    pattern_only, with_format = _validators("audit-event")[1], _validators("audit-event")[0]
    audit = _load(EXAMPLES_DIR / "audit-event" / "valid" / "applied-update.json")
    ok = ["2025-03-01T12:34:56Z", "2025-03-01T12:34:56.1+14:00", "2025-03-01T00:00:00-00:00"]
    bad = [
        "2025-03-01 12:34:56Z",
        "2025-03-01t12:34:56z",
        "2025-13-01T12:34:56Z",
        "2025-03-01T24:00:00Z",
        "2025-03-01T12:34:60Z",
        "2025-03-01T12:34:56+2:00",
        "2025-03-01T12:34:56Z\n",
        "0000-01-01T00:00:00Z",
        "\uff12\uff10\uff12\uff15-03-01T12:34:56Z",  # fullwidth digits: \d would accept them
    ]
    for value in ok:
        assert pattern_only.is_valid({**audit, "processed_at": value}), value
        assert with_format.is_valid({**audit, "processed_at": value}), value
    for value in bad:
        assert not pattern_only.is_valid({**audit, "processed_at": value}), repr(value)
        assert not with_format.is_valid({**audit, "processed_at": value}), repr(value)
