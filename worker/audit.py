"""Audit events and dead-letter envelopes (``schemas/audit-event`` and
``schemas/dead-letter``), as plain JSON bytes: no faust metadata."""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from .applier import Applied
from .events import DocumentEvent, peek_fields

MAX_DLQ_ORIGINAL = 256 * 1024


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """One consumed Kafka record, independent of the consumer library."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes | None

    def source(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "timestamp_ms": self.timestamp_ms,
        }


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _lag_ms(record: SourceRecord, event: DocumentEvent | None) -> float | None:
    """Milliseconds from the change (the event's ``occurred_at``) to now, as
    ``schemas/audit-event.schema.json`` defines ``lag_ms``: what a reader of the cache
    waited for the invalidation, pipeline included. The record's produce timestamp
    stands in when the event could not be read (its position is in ``source``)."""
    now_ms = time.time() * 1000
    if event is not None:
        occurred = _epoch_ms(event.occurred_at)
        if occurred is not None:
            return round(now_ms - occurred, 1)
    if record.timestamp_ms is None or record.timestamp_ms < 0:
        return None
    return round(now_ms - record.timestamp_ms, 1)


def _epoch_ms(rfc3339: str) -> float | None:
    """An RFC 3339 date-time (as the event schema allows it) in ms since the epoch."""
    text = rfc3339.replace("z", "Z").replace("Z", "+00:00")
    head, dot, rest = text.partition(".")
    if dot:  # datetime takes at most 6 fractional digits; the schema allows any number
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{head}.{rest[:digits][:6].ljust(6, '0')}{rest[digits:]}"
    try:
        return datetime.fromisoformat(text).timestamp() * 1000
    except ValueError:  # e.g. 2025-02-30, which the schema's pattern lets through
        return None


def audit_key(audit: dict[str, Any]) -> bytes | None:
    """The Kafka key of an audit event: its ``doc_id`` (UTF-8), or none when the input
    could not be read (``schemas/README.md``)."""
    doc_id = audit.get("doc_id")
    if not isinstance(doc_id, str):
        return None
    return doc_id.encode("utf-8", "surrogatepass")


def audit_event(
    record: SourceRecord,
    *,
    worker_id: str,
    replay: bool,
    event: DocumentEvent | None = None,
    applied: Applied | None = None,
    dead_letter_reason: str | None = None,
    processed_at: str | None = None,
) -> dict[str, Any]:
    """One audit event per input event (``processed_at``: the batch's time, now
    when not given)."""
    found: dict[str, str | None]
    if event is not None:
        found = {
            "event_id": event.event_id,
            "doc_id": event.doc_id,
            "collection": event.collection,
            "event_type": event.event_type,
        }
    else:
        found = _peek_all(record.value)
    return {
        "audit_version": 1,
        **found,
        "doc_version": event.doc_version if event else None,
        "outcome": applied.outcome if applied else "dead_lettered",
        "reason": applied.reason if applied else dead_letter_reason,
        "actions": applied.actions if applied else [],
        "keys_removed": applied.keys_removed if applied else 0,
        "generations_bumped": applied.generations if applied else {},
        "source": record.source(),
        "lag_ms": _lag_ms(record, event),
        "processed_at": processed_at or now_rfc3339(),
        "worker_id": worker_id,
        "replay": replay,
    }


def _peek_all(value: bytes | None) -> dict[str, str | None]:
    """What a dead-lettered record says about itself, as far as it can be read."""
    names = ("event_id", "doc_id", "collection", "event_type")
    if not value or len(value) > MAX_DLQ_ORIGINAL:
        return dict.fromkeys(names)
    found = peek_fields(value, names)
    return {name: found.get(name) for name in names}


def dead_letter(
    record: SourceRecord, reason: str, detail: str, *, worker_id: str
) -> dict[str, Any]:
    """The dead-letter envelope: reason, detail and the original bytes."""
    value = record.value or b""
    truncated = len(value) > MAX_DLQ_ORIGINAL
    kept = value[:MAX_DLQ_ORIGINAL]
    return {
        "dlq_version": 1,
        "reason": reason,
        "detail": detail,
        "original_value_b64": base64.b64encode(kept).decode("ascii"),
        "original_key_b64": (
            base64.b64encode(record.key).decode("ascii") if record.key is not None else None
        ),
        "original_size": len(value),
        "original_truncated": truncated,
        "source": record.source(),
        "event_id": None if truncated else peek_fields(kept, ("event_id",)).get("event_id"),
        "dead_lettered_at": now_rfc3339(),
        "worker_id": worker_id,
    }


def to_bytes(document: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON."""
    try:
        return orjson.dumps(document)
    except TypeError:  # e.g. a lone surrogate: the standard library's error, as before
        return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
