"""Audit events and dead-letter envelopes (``schemas/audit-event`` and
``schemas/dead-letter``), as plain JSON bytes: no faust metadata. An audit event is an
:class:`~worker.audit_event.AuditEvent` built here from the record and what happened
to it (a :mod:`worker.results` fact)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from .audit_event import AuditEvent, Source
from .events import PEEKED, DocumentEvent, peek_fields, peek_text
from .results import Result

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
    headers: tuple[tuple[str, bytes], ...] = ()
    """The record's headers in order (CloudEvents binary mode, W3C trace context)."""

    def header(self, name: str) -> bytes | None:
        """The last value of header ``name`` (case-insensitive), if any."""
        wanted = name.lower()
        found = None
        for key, value in self.headers:
            if key.lower() == wanted:
                found = value
        return found

    def source(self) -> Source:
        return Source(self.topic, self.partition, self.offset, self.timestamp_ms)


def headers_of(raw: Any) -> tuple[tuple[str, bytes], ...]:
    """Record headers as ``(name, value)`` pairs (faust gives a list of pairs or a
    mapping; a header without a value reads as empty bytes)."""
    if not raw:
        return ()
    items = raw.items() if isinstance(raw, dict) else raw
    return tuple((str(k), bytes(v) if v is not None else b"") for k, v in items)


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


def audit_event(
    record: SourceRecord,
    result: Result,
    *,
    worker_id: str,
    replay: bool,
    event: DocumentEvent | None = None,
    processed_at: str | None = None,
    fields: Mapping[str, str] | None = None,
) -> AuditEvent:
    """The audit event of one input record (``processed_at``: the batch's time, now
    when not given). ``event``: the record's parsed event (None when it was dead-lettered
    before it could be read: what it says about itself is then ``fields``, what the
    decode step could read (:attr:`~worker.errors.InvalidEventError.fields`), or when
    not given, peeked from its bytes as a native event)."""
    if event is not None:
        return AuditEvent(
            event_id=event.event_id,
            doc_id=event.doc_id,
            collection=event.collection,
            event_type=event.event_type.value,
            doc_version=event.doc_version,
            result=result,
            source=record.source(),
            lag_ms=_lag_ms(record, event),
            processed_at=processed_at or now_rfc3339(),
            worker_id=worker_id,
            replay=replay,
        )
    found = _peek_all(record.value) if fields is None else _known(fields)
    return AuditEvent(
        event_id=found["event_id"],
        doc_id=found["doc_id"],
        collection=found["collection"],
        event_type=found["event_type"],
        doc_version=None,
        result=result,
        source=record.source(),
        lag_ms=_lag_ms(record, None),
        processed_at=processed_at or now_rfc3339(),
        worker_id=worker_id,
        replay=replay,
    )


def _peek_all(value: bytes | None) -> dict[str, str | None]:
    """What a dead-lettered record says about itself, as far as it can be read."""
    if not value or len(value) > MAX_DLQ_ORIGINAL:
        return dict.fromkeys(PEEKED)
    found = peek_fields(value, PEEKED)
    return {name: found.get(name) for name in PEEKED}


def _known(fields: Mapping[str, str]) -> dict[str, str | None]:
    return {name: peek_text(fields.get(name)) for name in PEEKED}


def dead_letter(
    record: SourceRecord,
    reason: str,
    detail: str,
    *,
    worker_id: str,
    fields: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The dead-letter envelope: reason, detail and the original bytes; its
    ``event_id``, ``doc_id`` and ``collection`` are the record's audit's: from ``fields``
    (as :func:`audit_event`), else peeked from the bytes (None when unreadable)."""
    value = record.value or b""
    truncated = len(value) > MAX_DLQ_ORIGINAL
    kept = value[:MAX_DLQ_ORIGINAL]
    found = _peek_all(record.value) if fields is None else _known(fields)
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
        "source": record.source().to_json(),
        "event_id": found["event_id"],
        "doc_id": found["doc_id"],
        "collection": found["collection"],
        "dead_lettered_at": now_rfc3339(),
        "worker_id": worker_id,
    }


def to_bytes(document: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON."""
    try:
        return orjson.dumps(document)
    except TypeError:  # e.g. a lone surrogate: the standard library's error, as before
        return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
