"""The event contract of schemas/README.md, at the processor (dry run, no services):
record key = doc_id or none, audits keyed by doc_id, clear reasons for bad numbers."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from tests.hostile_events import MAX_BYTES, encode, valid_event
from worker.audit import SourceRecord
from worker.errors import InvalidEventError
from worker.events import parse_event
from worker.processor import Outbound, Processor
from worker.rules import load_rules
from worker.settings import WorkerSettings

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
DLQ_SCHEMA = Draft202012Validator(
    json.loads((SCHEMAS / "dead-letter.schema.json").read_text("utf-8")),
    format_checker=Draft202012Validator.FORMAT_CHECKER,
)


def rec(value: bytes, key: bytes | None, offset: int) -> SourceRecord:
    return SourceRecord("documents.events", 0, offset, int(time.time() * 1000), key, value)


async def process(*records: SourceRecord) -> Outbound:
    processor = Processor(None, WorkerSettings(), load_rules(), worker_id="w:1", dry_run=True)
    return await processor.process(list(records))


async def test_key_mismatch_is_dead_lettered_and_no_key_is_accepted() -> None:
    """A record keyed by something other than its doc_id goes to the DLQ with reason
    key_mismatch (audited, keyed by the body's doc_id); key = doc_id and no key pass."""
    good = encode(valid_event(doc_id="kb/1"))
    wrong = encode(valid_event(doc_id="kb/2"))
    unkeyed = encode(valid_event(doc_id="kb/3"))
    out = await process(
        rec(good, b"kb/1", 0), rec(wrong, b"support-kb", 1), rec(unkeyed, None, 2)
    )
    assert out.outcomes == {"applied": 2, "dead_lettered": 1}
    assert len(out.dead_letters) == 1
    dlq_key, raw = out.dead_letters[0]
    envelope = json.loads(raw)
    assert dlq_key == b"support-kb"  # dead letters keep the original record's key
    assert envelope["reason"] == "key_mismatch"
    assert "'support-kb'" in envelope["detail"] and "'kb/2'" in envelope["detail"]
    assert list(DLQ_SCHEMA.iter_errors(envelope)) == []
    audits = {json.loads(v)["source"]["offset"]: (k, json.loads(v)) for k, v in out.audits}
    assert audits[1][1]["outcome"] == "dead_lettered"
    assert audits[1][1]["reason"].startswith("key_mismatch: ")
    # Audits are keyed by the event's doc_id, whatever the record's key was.
    assert [audits[i][0] for i in (0, 1, 2)] == [b"kb/1", b"kb/2", b"kb/3"]


async def test_unreadable_record_audit_has_no_key() -> None:
    out = await process(rec(b"\xff\xfe", b"k", 0))
    ((key, raw),) = out.audits
    assert key is None and json.loads(raw)["doc_id"] is None


async def test_non_ascii_doc_id_key_matches() -> None:
    """The key is compared as the doc_id's UTF-8 bytes."""
    value = encode(valid_event(doc_id="страница*{1}"))
    out = await process(rec(value, "страница*{1}".encode(), 0))
    assert out.outcomes == {"applied": 1}


@pytest.mark.parametrize(
    ("literal", "field"),
    [("NaN", "doc_version"), ("Infinity", "doc_version"), ("-Infinity", "schema_version")],
)
def test_nan_and_infinity_get_a_clear_reason(literal: str, field: str) -> None:
    """NaN is not JSON: the detail says so and where, not "null is not of type integer"."""
    value = encode(valid_event(**{field: 12345})).replace(b"12345", literal.encode())
    with pytest.raises(InvalidEventError) as caught:
        parse_event(value, max_bytes=MAX_BYTES)
    assert caught.value.reason == "schema_violation"
    assert caught.value.detail == (
        f"at {field}: {literal} is not a JSON number (JSON has no NaN or Infinity)"
    )
    assert "null" not in caught.value.detail


def test_nan_anywhere_is_refused_with_its_path() -> None:
    value = encode(valid_event(metadata={"scores": [1, 2]})).replace(b"2]", b"NaN]")
    with pytest.raises(InvalidEventError, match=r"at metadata/scores/1: NaN is not a JSON"):
        parse_event(value, max_bytes=MAX_BYTES)
