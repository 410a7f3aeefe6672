"""CloudEvents 1.0 (Kafka protocol binding, binary and structured mode) on the events
topic, through the decode step and the processor (dry run, no services)."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from cachebus.events import EventType
from cachebus.rules import load_rules, parse_rules
from tests.hostile_events import valid_event
from worker.audit import SourceRecord
from worker.cloudevents import event_id
from worker.errors import InvalidEventError
from worker.events import DocumentEvent
from worker.inputs import decode
from worker.processor import Processor
from worker.rules import Rules
from worker.settings import WorkerSettings

MAX = 1 << 20
TOPIC = "documents.events"
STAMP = 1_764_000_000_000  # 2025-11-24T16:00:00Z
DATA = {
    "collection": "handbook",
    "doc_version": 7,
    "tags": ["tenant:acme"],
    "chunks": [{"chunk_id": "c1", "content_hash": "sha256:aa"}],
    "content_hash": "sha256:0a1b",
}
RULES = parse_rules({"cloudevents": {"types": {"com.example.document.published": "created"}}})


def binary(
    *,
    data: Any = DATA,
    key: bytes | None = b"kb/1",
    drop: tuple[str, ...] = (),
    **attrs: str,
) -> SourceRecord:
    headers = {
        "ce_specversion": "1.0",
        "ce_id": "0b7c5d3e-2f41-4a8e-9c6d-1e2f3a4b5c6d",
        "ce_source": "/cms/eu",
        "ce_type": "com.example.document.updated",
        "ce_subject": "kb/1",
        "ce_time": "2026-11-26T20:00:00.123Z",
        "content-type": "application/json",
        **attrs,
    }
    pairs = tuple((k, v.encode()) for k, v in headers.items() if k not in drop)
    value = None if data is None else json.dumps(data).encode()
    return SourceRecord(TOPIC, 0, 0, STAMP, key, value, pairs)


def structured(key: bytes | None = b"kb/1", header: bool = True, **fields: Any) -> SourceRecord:
    envelope = {
        "specversion": "1.0",
        "id": "evt-1042",
        "source": "https://cms.example.com/eu",
        "type": "com.example.document.deleted",
        "subject": "kb/1",
        "time": "2026-11-26T20:00:00Z",
        "datacontenttype": "application/json",
        "data": {"collection": "handbook", "doc_version": 8},
        **fields,
    }
    envelope = {k: v for k, v in envelope.items() if v is not ...}
    headers = (("content-type", b"application/cloudevents+json"),) if header else ()
    return SourceRecord(TOPIC, 0, 0, STAMP, key, json.dumps(envelope).encode(), headers)


def event(record: SourceRecord, rules: Rules = RULES) -> DocumentEvent:
    found = decode(record, rules, max_bytes=MAX)
    assert isinstance(found, DocumentEvent)
    return found


def refused(record: SourceRecord, rules: Rules = RULES) -> InvalidEventError:
    with pytest.raises(InvalidEventError) as info:
        decode(record, rules, max_bytes=MAX)
    return info.value


def test_binary_mode_maps_headers_and_data() -> None:
    got = event(binary())
    assert got.event_type is EventType.UPDATED
    assert (got.doc_id, got.collection, got.doc_version) == ("kb/1", "handbook", 7)
    assert got.event_id == "0b7c5d3e-2f41-4a8e-9c6d-1e2f3a4b5c6d"  # a UUID id is kept
    assert got.occurred_at == "2026-11-26T20:00:00.123Z"
    assert got.tags == ("tenant:acme",) and got.chunks == (("c1", "sha256:aa"),)
    assert got.content_hash == "sha256:0a1b"
    assert got.raw["source"] == "/cms/eu"


def test_structured_mode_with_and_without_content_type_header() -> None:
    for header in (True, False):
        got = event(structured(header=header))
        assert got.event_type is EventType.DELETED
        assert (got.doc_id, got.collection, got.doc_version) == ("kb/1", "handbook", 8)
        assert got.event_id == event_id("https://cms.example.com/eu", "evt-1042")
        assert uuid.UUID(got.event_id).version == 5
    b64 = base64.b64encode(json.dumps({"collection": "c", "doc_version": 2}).encode()).decode()
    got = event(structured(data=..., data_base64=b64))
    assert (got.collection, got.doc_version) == ("c", 2)


def test_event_ids_are_stable_per_source_and_id() -> None:
    """A non-UUID id: a UUID of (source, id), the same every time, another per source."""
    assert event_id("/a", "1") == event_id("/a", "1") != event_id("/b", "1")
    assert event_id("/a", "1") != event_id("/a", "2")
    assert event(binary(ce_id="42")).event_id == event_id("/cms/eu", "42")


def test_types_table_suffixes_and_unknown_types() -> None:
    assert event(binary(ce_type="com.example.document.published")).event_type is EventType.CREATED
    assert event(binary(ce_type="x.deleted")).event_type is EventType.DELETED
    error = refused(binary(ce_type="com.example.document.archived"))
    assert error.reason == "unknown_event_type" and "[cloudevents] types" in error.detail
    no_table = load_rules()
    assert refused(binary(ce_type="com.example.document.published"), no_table).reason == (
        "unknown_event_type"
    )


def test_time_and_subject_fallbacks() -> None:
    """No time: the record's timestamp. No subject: data.doc_id; both must agree."""
    got = event(binary(drop=("ce_time",)))
    assert got.occurred_at == "2025-11-24T16:00:00.000Z"
    assert event(binary(drop=("ce_subject",), data={**DATA, "doc_id": "kb/1"})).doc_id == "kb/1"
    lower = event(binary(ce_time="2026-11-26t20:00:00z"))
    assert lower.occurred_at == "2026-11-26T20:00:00Z"
    assert "subject" in refused(binary(drop=("ce_subject",))).detail
    clash = refused(binary(data={**DATA, "doc_id": "kb/2"}))
    assert clash.reason == "schema_violation" and "'kb/2'" in clash.detail


@pytest.mark.parametrize(
    ("record", "reason", "words"),
    [
        (binary(ce_specversion="0.3"), "unsupported_schema_version", "specversion '0.3'"),
        (structured(specversion="2.0"), "unsupported_schema_version", "specversion '2.0'"),
        (binary(drop=("ce_id",)), "schema_violation", "header ce_id is required"),
        (structured(source=...), "schema_violation", "attribute 'source' is required"),
        (binary(**{"content-type": "text/plain"}), "schema_violation", "must be JSON"),
        (structured(datacontenttype="application/xml"), "schema_violation", "must be JSON"),
        (binary(data=[1, 2]), "schema_violation", "data must be a JSON object"),
        (binary(data=None), "schema_violation", "collection"),
        (binary(data={"collection": "c", "doc_version": "7"}), "schema_violation", "doc_version"),
        (binary(ce_time="yesterday"), "schema_violation", "occurred_at"),
        (binary(data={**DATA, "schema_version": 2}), "unsupported_schema_version", "2"),
        (binary(key=b"kb/2"), "key_mismatch", "'kb/2'"),
        (structured(data_base64="%%%"), "schema_violation", "not base64"),
        (binary(data={**DATA, "event_type": "created"}), "schema_violation", "data.event_type"),
    ],
)
def test_bad_cloudevents_are_refused(record: SourceRecord, reason: str, words: str) -> None:
    error = refused(record)
    assert error.reason == reason and words in error.detail, error.detail


def test_bad_header_bytes_and_unkeyed_records() -> None:
    record = binary()
    bad = SourceRecord(
        TOPIC, 0, 0, STAMP, None, record.value, (*record.headers, ("ce_subject", b"\xff"))
    )
    assert refused(bad).reason == "invalid_encoding"
    assert event(binary(key=None)).doc_id == "kb/1"  # no key is accepted, as for native events


def test_native_events_stay_native() -> None:
    """Without ce_ headers or a top-level specversion a record is a native event, even
    if ``specversion`` appears inside it."""
    native = {**valid_event(doc_id="kb/1"), "metadata": {"specversion": "1.0"}}
    record = SourceRecord(TOPIC, 0, 0, STAMP, b"kb/1", json.dumps(native).encode())
    assert event(record).event_id == native["event_id"]


async def test_processor_applies_and_audits_both_modes(tmp_path: Path) -> None:
    processor = Processor(None, WorkerSettings(), RULES, worker_id="w:1", dry_run=True)
    out = await processor.process([binary(), structured(), binary(ce_specversion="0.3")])
    assert out.outcomes == {"applied": 2, "dead_lettered": 1}
    audits = [json.loads(v) for _, v in out.audits]
    assert [a["event_type"] for a in audits[:2]] == ["updated", "deleted"]
    assert audits[2]["reason"].startswith("unsupported_schema_version: CloudEvents specversion")


def test_the_schemas_readme_examples_decode() -> None:
    """schemas/examples/inputs/cloudevent-*.json are what schemas/README.md says."""
    examples = Path(__file__).resolve().parents[2] / "schemas" / "examples" / "inputs"
    value = (examples / "cloudevent-structured.json").read_bytes()
    got = event(SourceRecord(TOPIC, 0, 0, STAMP, b"kb/article-1042", value))
    assert (got.event_type, got.doc_id, got.doc_version) == ("updated", "kb/article-1042", 8)
    assert got.event_id == event_id("https://cms.example.com/eu", "cms-7731")
    spec = json.loads((examples / "cloudevent-binary.json").read_text())
    headers = tuple((k, v.encode()) for k, v in spec["headers"].items())
    record = SourceRecord(
        TOPIC, 0, 0, STAMP, spec["key"].encode(), json.dumps(spec["value"]).encode(), headers
    )
    got = event(record)
    assert (got.event_type, got.doc_id, got.doc_version) == ("deleted", "kb/article-1042", 9)
