"""Document events: parse and validate raw Kafka record values at the edge."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from cachebus.errors import InvalidEventError

from .schemas import validator

EventType = Literal["created", "updated", "deleted"]
SUPPORTED_SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class DocumentEvent:
    """A validated document event (see ``schemas/document-event.schema.json``)."""

    event_id: str
    event_type: EventType
    doc_id: str
    collection: str
    doc_version: int
    occurred_at: str
    tags: tuple[str, ...] = ()
    chunks: tuple[tuple[str, str], ...] | None = None
    """(chunk_id, content_hash) pairs, when the pipeline sent them."""
    chunk_ids: tuple[str, ...] = ()
    content_hash: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def peek_field(value: bytes, name: str) -> str | None:
    """Best-effort extraction of one string field from a bad record, for audits."""
    try:
        data = json.loads(value)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    found = data.get(name) if isinstance(data, dict) else None
    return found if isinstance(found, str) else None


def parse_event(value: bytes | None, *, max_bytes: int) -> DocumentEvent:
    """Parse and validate one record value. Raises :class:`InvalidEventError`
    with a dead-letter reason (``oversize``, ``invalid_encoding``,
    ``invalid_json``, ``unsupported_schema_version``, ``unknown_event_type``,
    ``schema_violation``)."""
    if value is None:
        raise InvalidEventError("invalid_json", "record has no value (tombstone record)")
    if len(value) > max_bytes:
        raise InvalidEventError("oversize", f"{len(value)} bytes exceeds the {max_bytes} limit")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEventError("invalid_encoding", f"value is not UTF-8: {exc}") from None
    try:
        data = json.loads(text)
    except RecursionError:
        raise InvalidEventError("invalid_json", "JSON nested too deeply") from None
    except ValueError as exc:
        raise InvalidEventError("invalid_json", str(exc)) from None
    if not isinstance(data, dict):
        raise InvalidEventError("schema_violation", "event must be a JSON object")
    version = data.get("schema_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > 1:
        raise InvalidEventError(
            "unsupported_schema_version",
            f"schema_version {version} is newer than this worker supports "
            f"({SUPPORTED_SCHEMA_VERSION})",
        )
    kind = data.get("event_type")
    if isinstance(kind, str) and kind not in ("created", "updated", "deleted"):
        raise InvalidEventError("unknown_event_type", f"event_type {kind[:64]!r} is not known")
    check = validator("document-event")
    if not check.is_valid(data):
        error = next(iter(check.iter_errors(data)))
        path = "/".join(str(p) for p in error.instance_path) or "(root)"
        raise InvalidEventError("schema_violation", f"at {path}: {error.message[:500]}")
    chunks = data.get("chunks")
    return DocumentEvent(
        event_id=data["event_id"],
        event_type=kind,  # type: ignore[arg-type]
        doc_id=data["doc_id"],
        collection=data["collection"],
        doc_version=data["doc_version"],
        occurred_at=data["occurred_at"],
        tags=tuple(data.get("tags") or ()),
        chunks=None
        if chunks is None
        else tuple((c["chunk_id"], c["content_hash"]) for c in chunks),
        chunk_ids=tuple(data.get("chunk_ids") or ()),
        content_hash=data.get("content_hash"),
        raw=data,
    )
