"""What a dead-lettered Debezium record or CloudEvent says about itself: the decode step
reads its event_id, doc_id, collection and event_type through the format's mapping
(never guessed), and the audit and the dead-letter envelope carry them (dry-run
processor, no services)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from cachebus.rules import parse_rules
from tests import debezium_shapes as dbz
from tests.hostile_events import valid_event
from worker.audit import SourceRecord
from worker.cloudevents import event_id
from worker.debezium import Tombstone
from worker.errors import InvalidEventError
from worker.events import DocumentEvent, EventType, event_fields
from worker.inputs import decode
from worker.processor import Outbound, Processor
from worker.rules import Rules
from worker.settings import WorkerSettings

MAX = 1 << 20
EVENTS = "documents.events"
STAMP = 1_764_000_000_000
SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def _validator(name: str) -> Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


AUDIT_SCHEMA = _validator("audit-event")
DLQ_SCHEMA = _validator("dead-letter")


def _rules(**debezium: Any) -> Rules:
    table = {"topic": dbz.TOPIC, "doc_id": "id", **(debezium or {"collection": "collection"})}
    return parse_rules(
        {
            "debezium": [table],
            "cloudevents": {"types": {"com.example.document.published": "created"}},
        }
    )


RULES = _rules()


def dbz_record(value: dict[str, Any] | bytes | None, key: bytes | None) -> SourceRecord:
    raw = value if isinstance(value, bytes) or value is None else dbz.encode(value)
    return SourceRecord(dbz.TOPIC, 0, 7, STAMP, key, raw)


def ce_binary(
    data: Any = None, *, key: bytes | None = None, headers: dict[str, str] | None = None
) -> SourceRecord:
    given = {
        "ce_specversion": "1.0",
        "ce_id": "cms-1",
        "ce_source": "/cms/eu",
        "ce_type": "com.example.document.updated",
        "ce_subject": "kb/1",
        "content-type": "application/json",
        **(headers or {}),
    }
    pairs = tuple((k, v.encode()) for k, v in given.items())
    value = json.dumps({"collection": "handbook"} if data is None else data).encode()
    return SourceRecord(EVENTS, 0, 3, STAMP, key, value, pairs)


def ce_structured(**fields: Any) -> SourceRecord:
    envelope = {
        "specversion": "1.0",
        "id": "evt-9",
        "source": "https://cms.example.com/eu",
        "type": "com.example.document.deleted",
        "subject": "kb/2",
        "data": {"collection": "handbook"},  # no doc_version: a schema_violation
        **fields,
    }
    envelope = {k: v for k, v in envelope.items() if v is not ...}
    return SourceRecord(EVENTS, 0, 4, STAMP, None, json.dumps(envelope).encode())


def refused(record: SourceRecord, rules: Rules = RULES) -> InvalidEventError:
    with pytest.raises(InvalidEventError) as info:
        decode(record, rules, max_bytes=MAX)
    return info.value


async def dead_lettered(
    record: SourceRecord, rules: Rules = RULES
) -> tuple[dict[str, Any], dict[str, Any], bytes | None]:
    """(audit, dead letter, the audit's Kafka key) of one record the processor
    dead-letters; both documents valid against their schemas."""
    processor = Processor(None, WorkerSettings(), rules, worker_id="w:1", dry_run=True)
    out: Outbound = await processor.process([record])
    assert out.outcomes == {"dead_lettered": 1}
    (key, raw), (dlq_key, letter_raw) = out.audits[0], out.dead_letters[0]
    audit, letter = json.loads(raw), json.loads(letter_raw)
    assert list(AUDIT_SCHEMA.iter_errors(audit)) == [], audit
    assert list(DLQ_SCHEMA.iter_errors(letter)) == [], letter
    assert dlq_key == record.key  # the dead letter keeps the original key
    # The dead letter says what the audit says about the record (schemas/README.md).
    for name in ("event_id", "doc_id", "collection"):
        assert letter[name] == audit[name], name
    return audit, letter, key


def fields_of(audit: dict[str, Any]) -> tuple[Any, ...]:
    return audit["event_id"], audit["doc_id"], audit["collection"], audit["event_type"]


# -- Debezium ------------------------------------------------------------------------


async def test_debezium_delete_without_collection_reports_the_row_through_the_mapping() -> None:
    """REPLICA IDENTITY DEFAULT: the delete's ``before`` has only the key. The audit
    names the row (doc_id from the mapped column), the op's event type and the
    event_id the change would have had; the collection stays unknown."""
    record = dbz_record(dbz.envelope("d", before={"id": 104}, lsn=2200), dbz.key(104))
    full = decode(dbz_record(dbz.envelope("d", before=dbz.row(104), lsn=2200), None), RULES,
                  max_bytes=MAX)  # fmt: skip
    assert isinstance(full, DocumentEvent)  # the same change with REPLICA IDENTITY FULL
    audit, letter, key = await dead_lettered(record)
    assert "REPLICA IDENTITY FULL" in audit["reason"]
    assert fields_of(audit) == (full.event_id, "104", None, "deleted")
    assert key == b"104"  # the audits of one document share its key
    assert letter["event_id"] == full.event_id


async def test_debezium_update_failing_later_reports_every_field() -> None:
    """A row that maps (doc_id, collection, op) but fails validation afterwards."""
    bad = dbz.envelope("u", before=dbz.row(5), after=dbz.row(5, tags=["ok"]), lsn=900)
    bad["after"]["chunks"] = "{}"  # jsonb that is not an array
    rules = _rules(collection="collection", chunks="chunks")
    audit, _, _ = await dead_lettered(dbz_record(dbz.with_schema(bad), dbz.key(5)), rules)
    assert audit["reason"].startswith("schema_violation")
    event_id_, doc_id, collection, event_type = fields_of(audit)
    assert (doc_id, collection, event_type) == ("5", "handbook", "updated")
    good = dbz.envelope("u", before=dbz.row(5), after=dbz.row(5), lsn=900)
    decoded = decode(dbz_record(good, None), rules, max_bytes=MAX)
    assert isinstance(decoded, DocumentEvent) and event_id_ == decoded.event_id


@pytest.mark.parametrize(
    ("value", "reason", "expected"),
    [
        (b"not json", "invalid_json", (None, "42", None, None)),
        (
            b'{"op":"t","source":{"lsn":1},"before":{"id":999,"collection":"x"}}',
            "unknown_event_type",
            (None, "42", None, None),
        ),
        (
            b'{"op":"c","after":{"id":999,"collection":"x"}}',
            "schema_violation",
            (None, "999", "x", "created"),
        ),
    ],
    ids=["not-json", "truncate", "no-source-block"],
)
async def test_debezium_unreadable_parts_are_not_guessed(
    value: bytes, reason: str, expected: tuple[Any, ...]
) -> None:
    """No readable op: no event type, and the row is not read (which side would it
    be?): the doc_id comes from the record key (the primary key), which holds the
    mapped column. A row that maps wins over the key. No source block: no event_id."""
    audit, _, _ = await dead_lettered(dbz_record(value, dbz.key(42, schemas=False)))
    assert audit["reason"].startswith(reason)
    assert fields_of(audit) == expected
    assert refused(dbz_record(value, None)).fields == {
        k: v
        for k, v in zip(("doc_id", "collection", "event_type"), expected[1:], strict=True)
        if v is not None and v != "42"
    }


async def test_debezium_fixed_collection_and_a_key_without_the_column() -> None:
    """``collection_value`` is known for every record; a key that does not hold the
    doc_id column gives no doc_id."""
    rules = _rules(doc_id="slug", collection_value="handbook")
    audit, _, key = await dead_lettered(dbz_record(b"{", dbz.key(1)), rules)
    assert fields_of(audit) == (None, None, "handbook", None)
    assert key is None


async def test_debezium_fields_are_bounded_text() -> None:
    """A doc_id longer than an audit carries (1024 characters) is not reported (the
    audit is not keyed by it); the event_id derived from it is a UUID like any."""
    row = {"id": "x" * 2000}  # and no collection: a schema_violation
    audit, _, key = await dead_lettered(dbz_record(dbz.envelope("c", after=row), None))
    assert fields_of(audit)[1:] == (None, None, "created") and key is None
    assert len(audit["event_id"]) == 36


async def test_debezium_oversize_reports_the_key_only() -> None:
    record = dbz_record(b" " * (MAX + 1), dbz.key(3))
    error = refused(record)
    assert error.reason == "oversize" and error.fields == {"doc_id": "3"}
    audit, letter, _ = await dead_lettered(record)
    assert fields_of(audit) == (None, "3", None, None) and letter["original_truncated"] is True


def test_debezium_tombstones_and_good_records_are_untouched() -> None:
    assert isinstance(decode(dbz_record(None, dbz.key(1)), RULES, max_bytes=MAX), Tombstone)
    good = decode(dbz_record(dbz.envelope("c", after=dbz.row(1)), None), RULES, max_bytes=MAX)
    assert isinstance(good, DocumentEvent) and good.doc_id == "1"


# -- CloudEvents ---------------------------------------------------------------------


async def test_binary_cloudevent_with_an_unmapped_type() -> None:
    """The attributes are read from the headers: event_id derived from (source, id)
    as for an applied event, doc_id = subject, the type as found (it maps to none),
    the collection from the data."""
    audit, letter, key = await dead_lettered(
        ce_binary(headers={"ce_type": "com.example.document.archived"})
    )
    assert audit["reason"].startswith("unknown_event_type")
    expected = (event_id("/cms/eu", "cms-1"), "kb/1", "handbook", "com.example.document.archived")
    assert fields_of(audit) == expected
    assert letter["event_id"] == expected[0] and key == b"kb/1"


async def test_binary_cloudevent_failing_validation_reports_the_mapped_type() -> None:
    audit, _, _ = await dead_lettered(ce_binary({"collection": "c", "doc_version": "7"}))
    assert audit["reason"].startswith("schema_violation")
    assert fields_of(audit) == (event_id("/cms/eu", "cms-1"), "kb/1", "c", "updated")


async def test_binary_cloudevent_headers_only_when_the_data_is_unreadable() -> None:
    """Unsupported specversion with data that is not JSON; a header that is not UTF-8
    is left out (the others are still read); a UUID id is the event_id."""
    uid = "0b7c5d3e-2f41-4a8e-9c6d-1e2f3a4b5c6d"
    record = ce_binary(headers={"ce_specversion": "0.3", "ce_id": uid, "ce_type": "x.created"})
    record = SourceRecord(EVENTS, 0, 1, STAMP, None, b"\xff not json", record.headers)
    audit, _, _ = await dead_lettered(record)
    assert fields_of(audit) == (uid, "kb/1", None, "created")
    bad = ce_binary()
    bad = SourceRecord(
        EVENTS, 0, 2, STAMP, None, bad.value, (*bad.headers, ("ce_subject", b"\xff"))
    )
    audit, _, _ = await dead_lettered(bad)
    assert audit["reason"].startswith("invalid_encoding")
    assert fields_of(audit) == (event_id("/cms/eu", "cms-1"), None, "handbook", "updated")


async def test_binary_cloudevent_data_of_another_media_type_is_not_read() -> None:
    record = ce_binary(
        {"collection": "c", "doc_version": 1}, headers={"content-type": "text/plain"}
    )
    audit, _, _ = await dead_lettered(record)
    assert fields_of(audit)[1:] == ("kb/1", None, "updated")


async def test_structured_cloudevent_without_source_or_with_a_clash() -> None:
    """No source: the id as found (no event_id can be derived). subject and
    data.doc_id that disagree: no doc_id (the event names no one document)."""
    audit, _, _ = await dead_lettered(ce_structured(source=...))
    assert fields_of(audit) == ("evt-9", "kb/2", "handbook", "deleted")
    clash = ce_structured(data={"collection": "h", "doc_version": 1, "doc_id": "kb/3"})
    audit, _, key = await dead_lettered(clash)
    assert fields_of(audit) == (event_id("https://cms.example.com/eu", "evt-9"), None, "h",
                                "deleted")  # fmt: skip
    assert key is None


async def test_structured_cloudevent_with_bad_attribute_types_and_long_strings() -> None:
    record = ce_structured(id=12, subject="s" * 1025, type=["x"], data={"collection": 5})
    audit, _, _ = await dead_lettered(record)
    assert fields_of(audit) == (None, None, None, None)


async def test_key_mismatch_reports_the_decoded_event() -> None:
    record = ce_binary({"collection": "handbook", "doc_version": 1}, key=b"kb/other")
    error = refused(record)
    assert error.reason == "key_mismatch"
    audit, _, key = await dead_lettered(record)
    assert fields_of(audit) == (event_id("/cms/eu", "cms-1"), "kb/1", "handbook", "updated")
    assert key == b"kb/1"


# -- native events and the processing_error path --------------------------------------


async def test_native_events_are_peeked_as_before() -> None:
    """A native event's own fields, as before (any string event_id, the unknown type)."""
    bad = {**valid_event(doc_id="kb/1"), "event_id": "not-a-uuid", "event_type": "archived"}
    record = SourceRecord(EVENTS, 0, 0, STAMP, b"kb/1", json.dumps(bad).encode())
    audit, letter, _ = await dead_lettered(record)
    assert fields_of(audit) == ("not-a-uuid", "kb/1", bad["collection"], "archived")
    assert letter["event_id"] == "not-a-uuid"


def test_event_fields_are_bounded_text() -> None:
    """The processing_error path (a decoded event the key scheme refuses)."""
    event = DocumentEvent(
        event_id="00000000-0000-4000-8000-000000000000",
        event_type=EventType.UPDATED,
        doc_id="\ud800",
        collection="c" * 1025,
        doc_version=1,
        occurred_at="2026-01-01T00:00:00Z",
    )
    assert event_fields(event) == {
        "event_id": "00000000-0000-4000-8000-000000000000",
        "event_type": "updated",
    }
