"""parse_event and peek_field: the worker's edge against hostile record values (pure)."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.hostile_events import (
    DEAD_LETTER_REASONS,
    HOSTILE,
    KNOWN_BUGS,
    MAX_BYTES,
    OK,
    encode,
    valid_event,
)
from worker.errors import InvalidEventError
from worker.events import DocumentEvent, parse_event, peek_field

EXAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "examples" / "document-event"
VALID_EXAMPLES = sorted((EXAMPLES / "valid").glob("*.json"))
INVALID_EXAMPLES = sorted((EXAMPLES / "invalid").glob("*.json"))
# Reasons other than schema_violation, by example file stem.
EXAMPLE_REASONS = {
    "unknown-event-type": "unknown_event_type",
    "schema-version-2": "unsupported_schema_version",
}


def corpus_params() -> list[Any]:
    params = []
    for name, value, expected in HOSTILE:
        marks = []
        if name in KNOWN_BUGS:
            marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[name]))
        params.append(pytest.param(value, expected, id=name, marks=marks))
    return params


def parse(event: dict[str, Any]) -> DocumentEvent:
    return parse_event(encode(event), max_bytes=MAX_BYTES)


def reason_of(value: bytes | None, max_bytes: int = MAX_BYTES) -> str:
    with pytest.raises(InvalidEventError) as info:
        parse_event(value, max_bytes=max_bytes)
    return info.value.reason


class TestCorpus:
    def test_corpus_is_big_and_well_formed(self) -> None:
        """At least 30 uniquely named cases, each expecting a known reason or ok."""
        names = [name for name, _, _ in HOSTILE]
        assert len(HOSTILE) >= 30
        assert len(names) == len(set(names))
        assert {expected for _, _, expected in HOSTILE} <= {*DEAD_LETTER_REASONS, OK}
        assert all(isinstance(value, bytes) for _, value, _ in HOSTILE)
        assert set(KNOWN_BUGS) <= set(names)

    def test_corpus_covers_every_outcome(self) -> None:
        """Every dead-letter reason and ok occur in the corpus."""
        counts = Counter(expected for _, _, expected in HOSTILE)
        assert set(counts) == {*DEAD_LETTER_REASONS, OK}

    def test_size_cases_straddle_the_limit(self) -> None:
        """The size cases are built exactly around MAX_BYTES."""
        by_name = {name: value for name, value, _ in HOSTILE}
        assert len(by_name["exactly_max_bytes"]) == MAX_BYTES
        assert len(by_name["oversize_valid_event"]) == MAX_BYTES + 1
        assert all(len(v) <= MAX_BYTES for n, v, _ in HOSTILE if not n.startswith("oversize"))

    @pytest.mark.parametrize(("value", "expected"), corpus_params())
    def test_case_has_expected_outcome(self, value: bytes, expected: str) -> None:
        """Each case parses to an event ("ok") or raises InvalidEventError with its reason."""
        if expected == OK:
            event = parse_event(value, max_bytes=MAX_BYTES)
            assert isinstance(event, DocumentEvent)
            assert event.event_type in ("created", "updated", "deleted")
            assert type(event.doc_version) is int
            for text in (event.event_id, event.doc_id, event.collection, *event.tags):
                assert isinstance(text, str)
                text.encode("utf-8")  # real Unicode text, usable in keys and audits
        else:
            with pytest.raises(InvalidEventError) as info:
                parse_event(value, max_bytes=MAX_BYTES)
            assert info.value.reason == expected
            assert info.value.detail
            info.value.detail.encode("utf-8")  # goes into the dead-letter JSON


class TestReasons:
    def test_tombstone_record_is_invalid_json(self) -> None:
        """A record without a value (None) is dead-lettered as invalid_json."""
        assert reason_of(None) == "invalid_json"

    def test_size_is_checked_before_anything_else(self) -> None:
        """Oversize garbage is 'oversize', not an encoding or JSON error."""
        assert reason_of(b"\xff{" * 10, max_bytes=19) == "oversize"
        assert reason_of(b"\xff{" * 10, max_bytes=20) == "invalid_encoding"

    def test_limit_is_inclusive(self) -> None:
        """A value of exactly max_bytes is accepted, one byte more is not."""
        value = encode(valid_event())
        assert parse_event(value, max_bytes=len(value)).doc_id == "d1"
        assert reason_of(value, max_bytes=len(value) - 1) == "oversize"

    def test_newer_schema_version_wins_over_other_errors(self) -> None:
        """A v2 event is unsupported_schema_version even if v1 rules would reject it."""
        event = valid_event(schema_version=3, event_type="renamed", doc_version="x")
        assert reason_of(encode(event)) == "unsupported_schema_version"

    def test_unknown_type_wins_over_schema_errors(self) -> None:
        """An unknown event_type is reported as such even when other fields are bad."""
        event = valid_event(event_type="archived", doc_version="x")
        del event["doc_id"]
        assert reason_of(encode(event)) == "unknown_event_type"

    def test_unknown_type_detail_is_truncated(self) -> None:
        """A 10 000-character event_type is quoted in the detail at most 64 characters long."""
        with pytest.raises(InvalidEventError) as info:
            parse(valid_event(event_type="y" * 10_000))
        assert "y" * 64 in info.value.detail
        assert "y" * 65 not in info.value.detail

    def test_schema_violation_names_the_field(self) -> None:
        """The detail says which field failed."""
        with pytest.raises(InvalidEventError) as info:
            parse(valid_event(doc_version="3"))
        assert info.value.detail.startswith("at doc_version:")

    def test_schema_violation_detail_is_bounded(self) -> None:
        """A huge offending value does not make a huge detail."""
        with pytest.raises(InvalidEventError) as info:
            parse(valid_event(occurred_at="z" * 20_000))
        assert len(info.value.detail) <= 600

    def test_error_message_carries_the_reason(self) -> None:
        """str(InvalidEventError) is 'reason: detail'."""
        with pytest.raises(InvalidEventError) as info:
            parse_event(b"{", max_bytes=MAX_BYTES)
        assert str(info.value) == f"invalid_json: {info.value.detail}"


class TestSchemaExamples:
    @pytest.mark.parametrize("path", VALID_EXAMPLES, ids=lambda p: p.stem)
    def test_valid_example_parses(self, path: Path) -> None:
        """Every valid example of schemas/examples/document-event parses."""
        raw = path.read_bytes()
        event = parse_event(raw, max_bytes=MAX_BYTES)
        data = json.loads(raw)
        assert event.event_id == data["event_id"]
        assert event.doc_id == data["doc_id"]
        assert event.doc_version == data["doc_version"]
        assert event.raw == data

    @pytest.mark.parametrize("path", INVALID_EXAMPLES, ids=lambda p: p.stem)
    def test_invalid_example_is_rejected(self, path: Path) -> None:
        """Every invalid example raises InvalidEventError with the matching reason."""
        expected = EXAMPLE_REASONS.get(path.stem, "schema_violation")
        assert reason_of(path.read_bytes()) == expected

    def test_examples_exist(self) -> None:
        """The example folders are not empty (the parametrised tests ran)."""
        assert len(VALID_EXAMPLES) >= 5
        assert len(INVALID_EXAMPLES) >= 10


class TestParsedFields:
    def test_required_fields(self) -> None:
        """The required fields are copied as they are."""
        event_id = str(uuid.uuid4())
        event = parse(
            valid_event(
                event_id=event_id,
                event_type="deleted",
                doc_id="*",
                collection="{c}",
                doc_version=42,
                occurred_at="2026-01-01T01:00:00+01:00",
            )
        )
        assert (event.event_id, event.event_type, event.doc_id, event.collection) == (
            event_id,
            "deleted",
            "*",
            "{c}",
        )
        assert event.doc_version == 42
        assert event.occurred_at == "2026-01-01T01:00:00+01:00"

    def test_optional_fields_default(self) -> None:
        """Without optional fields: no tags, chunks None, no chunk_ids, no content hash."""
        event = parse(valid_event())
        assert event.tags == ()
        assert event.chunks is None
        assert event.chunk_ids == ()
        assert event.content_hash is None

    def test_chunks_become_tuples_of_pairs(self) -> None:
        """chunks become (chunk_id, content_hash) tuples in order; extra keys are ignored."""
        chunks = [
            {"chunk_id": "c0", "content_hash": "h0", "offset": 0},
            {"chunk_id": "*", "content_hash": "h1"},
        ]
        event = parse(valid_event(event_type="updated", chunks=chunks))
        assert event.chunks == (("c0", "h0"), ("*", "h1"))
        assert all(isinstance(pair, tuple) for pair in event.chunks)

    def test_empty_chunks_are_not_missing_chunks(self) -> None:
        """chunks: [] is an empty tuple (a document without chunks), not None."""
        assert parse(valid_event(event_type="updated", chunks=[])).chunks == ()

    def test_tags_and_chunk_ids_are_tuples(self) -> None:
        """tags and chunk_ids are tuples in the order sent."""
        event = parse(valid_event(tags=["b", "a"], chunk_ids=["c1", "c0"], content_hash="sha:1"))
        assert event.tags == ("b", "a")
        assert event.chunk_ids == ("c1", "c0")
        assert event.content_hash == "sha:1"

    def test_raw_keeps_unknown_fields_but_not_equality(self) -> None:
        """raw holds the whole object (extra fields too) and does not take part in ==."""
        base = valid_event()
        a = parse({**base, "trace_id": "t1"})
        b = parse({**base, "trace_id": "t2"})
        assert a.raw["trace_id"] == "t1"
        assert a == b

    def test_event_is_frozen(self) -> None:
        """A parsed event cannot be changed by later stages."""
        event = parse(valid_event())
        with pytest.raises(AttributeError):
            event.doc_id = "other"  # type: ignore[misc]


class TestPeekField:
    @pytest.mark.parametrize(
        "garbage",
        [
            b"",
            b"{",
            b"\xff\xfe\xfd",
            b"[]",
            b'["event_id"]',
            b"null",
            b'"event_id"',
            b"42",
            b'{"event_id": 5}',
            b'{"event_id": null}',
            b'{"event_id": ["x"]}',
            b'{"other": "x"}',
            b"[" * 100_000,
            b'{"event_id": "x", "n": ' + b"9" * 5000 + b"}",
        ],
        ids=lambda v: repr(v[:20]),
    )
    def test_garbage_gives_none(self, garbage: bytes) -> None:
        """Anything without a top-level string field gives None, never an exception."""
        assert peek_field(garbage, "event_id") is None

    def test_finds_string_field_of_invalid_event(self) -> None:
        """A schema-invalid but parseable event still yields its event_id."""
        assert peek_field(encode({"event_id": "not-a-uuid", "doc_version": "x"}), "event_id") == (
            "not-a-uuid"
        )

    @pytest.mark.parametrize("value", [pytest.param(v, id=n) for n, v, _ in HOSTILE])
    def test_never_raises_on_corpus(self, value: bytes) -> None:
        """peek_field returns a str or None for every corpus case."""
        found = peek_field(value, "event_id")
        assert found is None or isinstance(found, str)


# -- the orjson fast path reads exactly what the standard library reads -------------------


def _outcome(value: bytes | None) -> Any:
    try:
        return parse_event(value, max_bytes=MAX_BYTES)
    except InvalidEventError as exc:
        return ("dead letter", exc.reason, exc.detail)


def _refused(value: bytes) -> Any:
    raise orjson.JSONDecodeError("refused", "", 0)


STDLIB_ONLY = SimpleNamespace(loads=_refused, JSONDecodeError=orjson.JSONDecodeError)
"""Stands in for orjson in worker.events: every record takes the standard-library
reading (what the worker did before orjson)."""


def _stdlib_outcome(value: bytes | None, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The same record forced through the standard-library reading."""
    from worker import events

    with monkeypatch.context() as m:
        m.setattr(events, "orjson", STDLIB_ONLY)
        return _outcome(value)


def _all_cases() -> list[bytes | None]:
    from tests.hostile_more import HOSTILE_MORE

    return [value for _, value, _ in HOSTILE] + [case.value for case in HOSTILE_MORE]


def test_fast_path_agrees_with_stdlib_on_every_hostile_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Same event or same dead-letter reason for all 234 hostile records. (Details of
    JSON syntax errors may be worded differently; reasons may not.)"""
    for value in _all_cases():
        fast, slow = _outcome(value), _stdlib_outcome(value, monkeypatch)
        if isinstance(slow, tuple):
            assert isinstance(fast, tuple) and fast[1] == slow[1], (value, fast, slow)
        else:
            assert fast == slow, value


@given(
    st.dictionaries(
        st.sampled_from(["event_id", "doc_id", "doc_version", "schema_version", "tags", "x"]),
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**70), max_value=2**70)
        | st.floats(allow_nan=False)
        | st.text(max_size=8)
        | st.lists(st.text(max_size=4), max_size=3),
    )
)
def test_fast_path_agrees_with_stdlib_on_generated_events(overrides: dict[str, Any]) -> None:
    """Valid events with fields replaced by arbitrary JSON values (huge integers, floats,
    surrogate-free text): the same outcome either way."""
    from worker import events

    value = encode(valid_event(**overrides))
    fast = _outcome(value)
    events.orjson = STDLIB_ONLY  # type: ignore[assignment]
    try:
        slow = _outcome(value)
    finally:
        events.orjson = orjson
    if isinstance(slow, tuple):
        assert isinstance(fast, tuple) and fast[1] == slow[1]
    else:
        assert fast == slow
