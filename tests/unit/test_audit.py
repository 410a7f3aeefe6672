"""Audit events and dead-letter envelopes match their JSON Schemas (pure, no Kafka)."""

from __future__ import annotations

import base64
import json
import re
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from jsonschema import Draft202012Validator

from cachebus.errors import CacheBusError
from cachebus.keys import KeyScheme
from tests.hostile_events import HOSTILE, MAX_BYTES, encode, padded_to, valid_event
from worker.audit import (
    MAX_DLQ_ORIGINAL,
    SourceRecord,
    audit_event,
    dead_letter,
    now_rfc3339,
    to_bytes,
)
from worker.errors import InvalidEventError
from worker.events import DocumentEvent, parse_event
from worker.planner import Plan, plan
from worker.results import ActionResult, Applied, DeadLettered, Skipped
from worker.rules import ScanRule, load_rules

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
WORKER = "worker-test:1"
KEYS = KeyScheme("cb")
RULES = load_rules()
SCAN_RULES = replace(RULES, scans=(ScanRule(("updated", "deleted"), "legacy:docembed:{doc_id}:*"),))
RFC3339_MS_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
# The processor's own ways of dead-lettering besides parse_event's reasons.
DLQ_REASONS = (
    "invalid_json",
    "invalid_encoding",
    "schema_violation",
    "unknown_event_type",
    "unsupported_schema_version",
    "oversize",
    "key_mismatch",
    "processing_error",
)
# Corpus cases whose audit or dead letter cannot be serialised today.
AUDIT_BUGS: dict[str, str] = {}


def _schema(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SCHEMAS / f"{name}.schema.json").read_text("utf-8"))
    return data


PY_VALIDATORS = {
    name: Draft202012Validator(_schema(name), format_checker=Draft202012Validator.FORMAT_CHECKER)
    for name in ("audit-event", "dead-letter")
}
RS_VALIDATORS = {
    name: jsonschema_rs.Draft202012Validator(_schema(name), validate_formats=True)
    for name in ("audit-event", "dead-letter")
}


def assert_valid(name: str, document: dict[str, Any]) -> None:
    """Valid for jsonschema (formats asserted) and jsonschema-rs, before and after to_bytes."""
    wire = json.loads(to_bytes(document))
    for doc in (document, wire):
        errors = [
            f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
            for e in PY_VALIDATORS[name].iter_errors(doc)
        ]
        assert errors == []
        rs_errors = [e.message for e in RS_VALIDATORS[name].iter_errors(doc)]
        assert rs_errors == []


def record(
    value: bytes | None,
    *,
    key: bytes | None = b"d1",
    timestamp_ms: int | None = None,
    offset: int = 18422,
) -> SourceRecord:
    if timestamp_ms is None and key is not None:
        timestamp_ms = int(time.time() * 1000) - 250
    return SourceRecord("documents.events", 3, offset, timestamp_ms, key, value)


def parse(value: bytes) -> DocumentEvent:
    return parse_event(value, max_bytes=MAX_BYTES)


def applied_like_applier(p: Plan, *, removed: int, generation: int, scanned: int) -> Applied:
    """An Applied shaped exactly as Applier._apply_round builds it."""
    actions = []
    for action in p.actions:
        if action.kind == "drop_embeddings":
            actions.append(ActionResult(action, embeddings_removed=removed))
        elif action.kind == "bump":
            actions.append(ActionResult(action, generation=generation))
        elif action.kind == "scan":
            actions.append(ActionResult(action, keys_removed=scanned))
        else:
            actions.append(ActionResult(action))
    return Applied(
        tuple(actions),
        keys_removed=removed + scanned * len(p.scans),
        generations={"search_results:c": generation} if p.bumps else {},
    )


class TestValidators:
    @pytest.mark.parametrize("name", ["audit-event", "dead-letter"])
    def test_schemas_are_valid_2020_12(self, name: str) -> None:
        """The schemas themselves are valid draft 2020-12 schemas."""
        Draft202012Validator.check_schema(_schema(name))

    def test_validators_reject_something(self) -> None:
        """Both validators really check (an empty object is invalid for both schemas)."""
        for name in ("audit-event", "dead-letter"):
            assert not PY_VALIDATORS[name].is_valid({})
            assert not RS_VALIDATORS[name].is_valid({})


class TestAppliedAudit:
    def test_applied_update_with_all_action_kinds(self) -> None:
        """An applied update (doc tag, drop, user tag, bump, scan) gives a valid audit event."""
        raw = encode(
            valid_event(
                event_type="updated",
                doc_id="kb/*{1}",
                tags=["tenant:acme"],
                chunks=[{"chunk_id": "c0", "content_hash": "h0"}],
                doc_version=7,
            )
        )
        ev = parse(raw)
        p = plan(ev, SCAN_RULES, KEYS)
        applied = applied_like_applier(p, removed=2, generation=58, scanned=3)
        audit = audit_event(
            record(raw), applied, worker_id=WORKER, replay=False, event=ev
        ).to_json()
        assert_valid("audit-event", audit)
        assert [a["kind"] for a in audit["actions"]] == [
            "tag",
            "drop_embeddings",
            "tag",
            "bump",
            "scan",
        ]
        assert audit["actions"][1]["detail"] == {
            "mode": "changed",
            "chunks_in_event": 1,
            "removed": 2,
        }
        assert audit["actions"][3]["detail"] == {"generation": 58}
        assert audit["actions"][4] == {
            "kind": "scan",
            "target": "cb:legacy:docembed:kb/\\*{1}:*",
            "detail": {"keys_removed": 3},
        }
        assert audit["keys_removed"] == 5
        assert audit["generations_bumped"] == {"search_results:c": 58}
        assert (audit["event_id"], audit["doc_id"], audit["collection"]) == (
            ev.event_id,
            "kb/*{1}",
            "c",
        )
        assert (audit["event_type"], audit["doc_version"]) == ("updated", 7)
        assert audit["outcome"] == "applied"
        assert audit["reason"] is None

    @pytest.mark.parametrize("kind", ["created", "deleted"])
    def test_applied_other_types(self, kind: str) -> None:
        """Applied created and deleted events give valid audit events."""
        raw = encode(valid_event(event_type=kind, tags=["t"]))
        ev = parse(raw)
        applied = applied_like_applier(plan(ev, RULES, KEYS), removed=0, generation=1, scanned=0)
        audit = audit_event(record(raw), applied, worker_id=WORKER, replay=True, event=ev).to_json()
        assert_valid("audit-event", audit)
        assert audit["replay"] is True

    def test_source_and_lag(self) -> None:
        """source is the record's position; lag_ms is measured from the event's
        occurred_at (the schema's definition), not from the record timestamp."""
        occurred = datetime.now(UTC) - timedelta(seconds=30)
        raw = encode(valid_event(occurred_at=occurred.isoformat().replace("+00:00", "Z")))
        rec = record(raw, timestamp_ms=int(time.time() * 1000) - 5000, offset=9)
        audit = audit_event(
            rec, Applied(), worker_id=WORKER, replay=False, event=parse(raw)
        ).to_json()
        assert audit["source"] == {
            "topic": "documents.events",
            "partition": 3,
            "offset": 9,
            "timestamp_ms": rec.timestamp_ms,
        }
        assert 29_900 <= audit["lag_ms"] < 90_000
        assert RFC3339_MS_Z.match(audit["processed_at"])
        assert audit["worker_id"] == WORKER
        assert_valid("audit-event", audit)

    @pytest.mark.parametrize(
        ("occurred_at", "offset_s"),
        [
            ("{t}Z", 0),
            ("{t}.5Z", 0.5),
            ("{t}.123456789Z", 0.123456789),
            ("{t}+02:00", -7200),
            ("{t}.25-01:30", 5400.25),
        ],
    )
    def test_lag_reads_every_rfc3339_form(self, occurred_at: str, offset_s: float) -> None:
        """Offsets, no fraction and more than 6 fractional digits all count."""
        base = datetime.now(UTC).replace(microsecond=0, tzinfo=None) - timedelta(seconds=60)
        text = occurred_at.format(t=base.isoformat())
        event = replace(parse(encode(valid_event())), occurred_at=text)
        audit = audit_event(
            record(b"{}"), Applied(), worker_id=WORKER, replay=False, event=event
        ).to_json()
        expected = (datetime.now(UTC) - base.replace(tzinfo=UTC)).total_seconds() - offset_s
        assert abs(audit["lag_ms"] / 1000 - expected) < 5

    def test_lag_falls_back_to_the_record_timestamp(self) -> None:
        """An occurred_at no calendar has (2025-02-30 passes the pattern) or a
        dead-lettered record: the produce timestamp stands in."""
        event = replace(parse(encode(valid_event())), occurred_at="2025-02-30T00:00:00Z")
        rec = record(b"{}", timestamp_ms=int(time.time() * 1000) - 7000)
        audit = audit_event(rec, Applied(), worker_id=WORKER, replay=False, event=event).to_json()
        assert 6_900 <= audit["lag_ms"] < 60_000
        dead = audit_event(rec, DeadLettered("x", "y"), worker_id=WORKER, replay=False).to_json()
        assert 6_900 <= dead["lag_ms"] < 60_000


class TestAuditKey:
    def test_keyed_by_doc_id_not_by_the_record_key(self) -> None:
        """schemas/README.md: audits are keyed by doc_id (UTF-8)."""
        raw = encode(valid_event(doc_id="kb/ä*1"))
        audit = audit_event(
            record(raw, key=b"other"), Applied(), worker_id=WORKER, replay=False, event=parse(raw)
        )
        assert audit.key() == "kb/ä*1".encode()

    def test_dead_letter_audit_keyed_by_what_could_be_read(self) -> None:
        """A dead-lettered record: its doc_id if one could be read, else no key."""
        readable = encode(valid_event(doc_version="3"))
        bad = DeadLettered("schema_violation", "x")
        audit = audit_event(record(readable, key=b"k"), bad, worker_id=WORKER, replay=False)
        assert audit.key() == b"d1"
        unreadable = audit_event(record(b"\xff", key=b"k"), bad, worker_id=WORKER, replay=False)
        assert unreadable.doc_id is None and unreadable.key() is None


class TestSkippedAudit:
    @pytest.mark.parametrize(
        ("outcome", "reason"),
        [
            ("skipped_stale", "doc_version 6 is not above the document's high-water mark 7"),
            ("skipped_duplicate", "event already applied"),
        ],
    )
    def test_skips_are_valid(self, outcome: Any, reason: str) -> None:
        """Skipped events carry their reason, no actions and nothing removed."""
        raw = encode(valid_event(event_type="updated", doc_version=6))
        audit = audit_event(
            record(raw), Skipped(outcome, reason), worker_id=WORKER, replay=False, event=parse(raw)
        ).to_json()
        assert_valid("audit-event", audit)
        assert (audit["outcome"], audit["reason"]) == (outcome, reason)
        assert (audit["actions"], audit["keys_removed"], audit["generations_bumped"]) == ([], 0, {})


class TestDeadLettered:
    def test_unparseable_value(self) -> None:
        """Garbage: the audit and the dead letter are valid, with event_id null."""
        value = b'{"event_id": "0b7c5d3e-2f41-4a8e-9c6d-1e2f3a4b5c6d", "doc_id": '
        rec = record(value)
        with pytest.raises(InvalidEventError) as info:
            parse(value)
        reason, detail = info.value.reason, info.value.detail
        audit = audit_event(
            rec, DeadLettered(reason, detail), worker_id=WORKER, replay=False
        ).to_json()
        envelope = dead_letter(rec, reason, detail, worker_id=WORKER)
        assert_valid("audit-event", audit)
        assert_valid("dead-letter", envelope)
        assert audit["event_id"] is None
        assert audit["outcome"] == "dead_lettered"
        assert audit["reason"].startswith("invalid_json: ")
        assert audit["actions"] == []
        assert envelope["event_id"] is None
        assert (envelope["doc_id"], envelope["collection"]) == (None, None)
        assert envelope["reason"] == "invalid_json"
        assert envelope["detail"] == detail
        assert base64.b64decode(envelope["original_value_b64"]) == value
        assert base64.b64decode(envelope["original_key_b64"]) == b"d1"
        assert envelope["original_size"] == len(value)
        assert envelope["original_truncated"] is False

    def test_schema_violation_keeps_event_id(self) -> None:
        """A parseable but invalid event's event_id (even a non-uuid) is kept."""
        value = encode(valid_event(event_id="not-a-uuid"))
        rec = record(value)
        envelope = dead_letter(rec, "schema_violation", "at event_id: bad", worker_id=WORKER)
        audit = audit_event(
            rec,
            DeadLettered("schema_violation", "at event_id: bad"),
            worker_id=WORKER,
            replay=False,
        ).to_json()
        assert_valid("dead-letter", envelope)
        assert_valid("audit-event", audit)
        assert envelope["event_id"] == audit["event_id"] == "not-a-uuid"
        assert envelope["doc_id"] == audit["doc_id"] == "d1"
        assert envelope["collection"] == audit["collection"] is not None

    def test_doc_id_and_collection_are_the_audits(self) -> None:
        """What the decode step read (``fields``) wins over the bytes, as for the audit;
        strings an audit would not carry (too long, not text) are null in both."""
        value = encode(valid_event(doc_id="kb/1", collection="handbook"))
        rec = record(value)
        fields = {"event_id": "e-1", "doc_id": "kb/2", "collection": "c" * 1025}
        envelope = dead_letter(rec, "key_mismatch", "x", worker_id=WORKER, fields=fields)
        audit = audit_event(
            rec, DeadLettered("key_mismatch", "x"), worker_id=WORKER, replay=False, fields=fields
        ).to_json()
        assert_valid("dead-letter", envelope)
        got = (envelope["event_id"], envelope["doc_id"], envelope["collection"])
        assert got == (audit["event_id"], audit["doc_id"], audit["collection"])
        assert got == ("e-1", "kb/2", None)
        peeked = dead_letter(rec, "processing_error", "x", worker_id=WORKER)
        assert (peeked["doc_id"], peeked["collection"]) == ("kb/1", "handbook")
        long = encode(valid_event(doc_id="d" * 1025, collection="\ud800"))
        nothing = dead_letter(record(long), "schema_violation", "x", worker_id=WORKER)
        assert (nothing["doc_id"], nothing["collection"]) == (None, None)

    def test_oversize_value_is_truncated(self) -> None:
        """An oversize value is cut to MAX_DLQ_ORIGINAL bytes, flagged, and still valid."""
        value = padded_to(MAX_DLQ_ORIGINAL + 1000)
        rec = record(value)
        envelope = dead_letter(rec, "oversize", f"{len(value)} bytes", worker_id=WORKER)
        assert_valid("dead-letter", envelope)
        assert envelope["original_truncated"] is True
        assert envelope["original_size"] == len(value)
        assert base64.b64decode(envelope["original_value_b64"]) == value[:MAX_DLQ_ORIGINAL]
        assert envelope["event_id"] is None
        assert (envelope["doc_id"], envelope["collection"]) == (None, None)
        audit = audit_event(
            rec, DeadLettered("oversize", f"{len(value)} bytes"), worker_id=WORKER, replay=False
        ).to_json()
        assert_valid("audit-event", audit)

    def test_value_at_limit_is_not_truncated(self) -> None:
        """A value of exactly MAX_DLQ_ORIGINAL bytes is kept whole."""
        value = padded_to(MAX_DLQ_ORIGINAL)
        envelope = dead_letter(record(value), "oversize", "big", worker_id=WORKER)
        assert envelope["original_truncated"] is False
        assert base64.b64decode(envelope["original_value_b64"]) == value
        assert_valid("dead-letter", envelope)

    def test_no_key_and_no_timestamp(self) -> None:
        """A record with key None and timestamp None gives null key and null lag."""
        rec = record(b"[]", key=None, timestamp_ms=None)
        envelope = dead_letter(
            rec, "schema_violation", "event must be a JSON object", worker_id=WORKER
        )
        audit = audit_event(
            rec,
            DeadLettered("schema_violation", "event must be a JSON object"),
            worker_id=WORKER,
            replay=False,
        ).to_json()
        assert_valid("dead-letter", envelope)
        assert_valid("audit-event", audit)
        assert envelope["original_key_b64"] is None
        assert envelope["source"]["timestamp_ms"] is None
        assert audit["source"]["timestamp_ms"] is None
        assert audit["lag_ms"] is None

    def test_kafka_no_timestamp_sentinel(self) -> None:
        """Kafka's -1 'no timestamp' gives a null lag, not a huge one."""
        audit = audit_event(
            record(b"x", timestamp_ms=-1),
            DeadLettered("invalid_json", "x"),
            worker_id=WORKER,
            replay=False,
        ).to_json()
        assert audit["lag_ms"] is None
        assert_valid("audit-event", audit)

    def test_tombstone_record(self) -> None:
        """A record without a value: empty base64, size 0, event_id null."""
        rec = record(None)
        envelope = dead_letter(rec, "invalid_json", "record has no value", worker_id=WORKER)
        audit = audit_event(
            rec, DeadLettered("invalid_json", "record has no value"), worker_id=WORKER, replay=False
        ).to_json()
        assert_valid("dead-letter", envelope)
        assert_valid("audit-event", audit)
        assert (envelope["original_value_b64"], envelope["original_size"]) == ("", 0)
        assert envelope["event_id"] is None
        assert audit["event_id"] is None

    @pytest.mark.parametrize("reason", DLQ_REASONS)
    def test_every_reason_is_valid(self, reason: str) -> None:
        """Every reason the worker uses is allowed by the dead-letter schema."""
        envelope = dead_letter(record(b"{}"), reason, "detail", worker_id=WORKER)
        assert_valid("dead-letter", envelope)

    def test_surrogate_event_id_serialises(self) -> None:
        """A dead letter whose peeked event_id holds a lone surrogate still serialises."""
        value = encode(valid_event(event_id="\ud800"))
        envelope = dead_letter(
            record(value), "invalid_encoding", "lone surrogate", worker_id=WORKER
        )
        assert_valid("dead-letter", envelope)


class TestToBytes:
    def test_compact(self) -> None:
        """No spaces after separators."""
        assert to_bytes({"a": [1, 2], "b": {"c": None, "d": True}}) == (
            b'{"a":[1,2],"b":{"c":null,"d":true}}'
        )

    def test_utf8_not_ascii_escaped(self) -> None:
        """Non-ASCII text is written as UTF-8, not \\u escapes; control characters are escaped."""
        out = to_bytes({"doc_id": "ü/文書😀", "nul": "a\u0000b"})
        assert out == '{"doc_id":"ü/文書😀","nul":"a\\u0000b"}'.encode()
        out.decode("utf-8", "strict")

    def test_round_trip(self) -> None:
        """An audit event survives to_bytes -> json.loads unchanged."""
        raw = encode(valid_event(doc_id="*{x}"))
        audit = audit_event(
            record(raw), Applied(), worker_id=WORKER, replay=False, event=parse(raw)
        ).to_json()
        assert json.loads(to_bytes(audit)) == audit

    def test_now_rfc3339(self) -> None:
        """Timestamps are UTC with milliseconds and an uppercase Z."""
        stamp = now_rfc3339()
        assert RFC3339_MS_Z.match(stamp)
        assert datetime.fromisoformat(stamp).utcoffset() is not None


def process_like_worker(value: bytes) -> list[tuple[str, dict[str, Any]]]:
    """What Processor.process emits for one record, without Redis (dry-run applied)."""
    rec = record(value)
    try:
        ev = parse(value)
        p = plan(ev, SCAN_RULES, KEYS)
    except InvalidEventError as exc:
        reason, detail = exc.reason, exc.detail
    except CacheBusError as exc:
        reason, detail = "processing_error", str(exc)
    else:
        applied = Applied.planned(p.actions)
        return [
            (
                "audit-event",
                audit_event(rec, applied, worker_id=WORKER, replay=False, event=ev).to_json(),
            )
        ]
    return [
        ("dead-letter", dead_letter(rec, reason, detail, worker_id=WORKER)),
        (
            "audit-event",
            audit_event(
                rec, DeadLettered(reason, detail), worker_id=WORKER, replay=False
            ).to_json(),
        ),
    ]


class TestHostileCorpus:
    @pytest.mark.parametrize(
        "value",
        [
            pytest.param(
                value,
                id=name,
                marks=[pytest.mark.xfail(strict=True, reason=AUDIT_BUGS[name])]
                if name in AUDIT_BUGS
                else [],
            )
            for name, value, _ in HOSTILE
        ],
    )
    def test_outputs_serialise_and_validate(self, value: bytes) -> None:
        """For every corpus record the audit (and dead letter) serialise and validate."""
        for name, document in process_like_worker(value):
            assert_valid(name, document)
            to_bytes(document).decode("utf-8", "strict")
