"""Document events: parse and validate raw Kafka record values at the edge."""

from __future__ import annotations

import json
from typing import Any

import orjson

from cachebus.events import EventType, event_type
from cachebus.planning import DocumentEvent

from .errors import InvalidEventError
from .schemas import validator

__all__ = [
    "MAX_PEEK_CHARS",
    "PEEKED",
    "DocumentEvent",
    "EventType",
    "check_key",
    "event_fields",
    "event_from_dict",
    "loads_json",
    "parse_event",
    "peek_field",
    "peek_fields",
    "peek_text",
    "peeked",
]
SUPPORTED_SCHEMA_VERSION = 1


PEEKED = ("event_id", "doc_id", "collection", "event_type")
"""The fields an audit of a record that could not be processed still reports."""
MAX_PEEK_CHARS = 1024
"""Longer strings are not reported (an audit stays small, its key bounded)."""


def peek_text(value: Any) -> str | None:
    """``value`` if it is a string an audit may carry: at most :data:`MAX_PEEK_CHARS`
    characters of text (UTF-8 encodable: no lone surrogate); else None."""
    if not isinstance(value, str) or len(value) > MAX_PEEK_CHARS:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return value


def peek_fields(value: bytes, names: tuple[str, ...]) -> dict[str, str]:
    """Best-effort extraction of string fields from a bad record, for audits.
    Only strict UTF-8 JSON objects are read, and only strings that are text."""
    try:
        data = json.loads(value.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return {}
    if not isinstance(data, dict):
        return {}
    return peeked({name: data.get(name) for name in names})


def peeked(fields: dict[str, Any]) -> dict[str, str]:
    """The entries of ``fields`` an audit may carry (:func:`peek_text`)."""
    out = {}
    for name, value in fields.items():
        text = peek_text(value)
        if text is not None:
            out[name] = text
    return out


def event_fields(event: DocumentEvent) -> dict[str, str]:
    """What a decoded event says about itself (:data:`PEEKED`), for the audit of a
    record dead-lettered after it was decoded (``key_mismatch``, ``processing_error``)."""
    return peeked(
        {
            "event_id": event.event_id,
            "doc_id": event.doc_id,
            "collection": event.collection,
            "event_type": event.event_type.value,
        }
    )


def parse_event(value: bytes | None, *, max_bytes: int) -> DocumentEvent:
    """Parse and validate one record value. Raises :class:`InvalidEventError`
    with a dead-letter reason (``oversize``, ``invalid_encoding``,
    ``invalid_json``, ``unsupported_schema_version``, ``unknown_event_type``,
    ``schema_violation``)."""
    if value is None:
        raise InvalidEventError("invalid_json", "record has no value (tombstone record)")
    if len(value) > max_bytes:
        raise InvalidEventError("oversize", f"{len(value)} bytes exceeds the {max_bytes} limit")
    # orjson (strict UTF-8, no lone surrogates, no NaN) on the hot path. What it
    # refuses is read by the standard library, which names the problem; so is a record
    # whose version fields came out as floats (orjson reads integers past 64 bits as
    # floats, and these are the only numbers the worker interprets).
    try:
        data = orjson.loads(value)
        slow = isinstance(data, dict) and (
            type(data.get("doc_version")) is float or type(data.get("schema_version")) is float
        )
    except orjson.JSONDecodeError:
        slow = True
    if slow:
        data = _slow_loads(value)
    if not isinstance(data, dict):
        raise InvalidEventError("schema_violation", "event must be a JSON object")
    if slow and b"\\u" in value:
        # JSON escapes can smuggle lone surrogates, which are not text: they could
        # reach neither a key nor the UTF-8 audit trail.
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidEventError(
                "invalid_encoding", "a string contains a lone UTF-16 surrogate escape"
            ) from None
    return event_from_dict(data)


def event_from_dict(data: dict[str, Any]) -> DocumentEvent:
    """Validate a decoded native event (``schemas/document-event.schema.json``) and
    build it. Also the last step of the other input formats (:mod:`worker.inputs`),
    which map their records to a native event first. Raises :class:`InvalidEventError`
    (``unsupported_schema_version``, ``unknown_event_type``, ``schema_violation``)."""
    version = data.get("schema_version")
    if isinstance(version, float) and version.is_integer():
        version = int(version)  # JSON Schema: 2.0 is the integer 2
    if isinstance(version, int) and not isinstance(version, bool) and version > 1:
        raise InvalidEventError(
            "unsupported_schema_version",
            f"schema_version {version} is newer than this worker supports "
            f"({SUPPORTED_SCHEMA_VERSION})",
        )
    raw_kind = data.get("event_type")
    kind = event_type(raw_kind)
    if isinstance(raw_kind, str) and kind is None:
        raise InvalidEventError(
            "unknown_event_type", f"event_type {raw_kind[:64]!r} is not known"
        )
    check = validator("document-event")
    if not check.is_valid(data):
        error = next(iter(check.iter_errors(data)))
        path = "/".join(str(p) for p in error.instance_path) or "(root)"
        raise InvalidEventError("schema_violation", f"at {path}: {error.message[:500]}")
    chunks = data.get("chunks")
    return DocumentEvent(
        event_id=data["event_id"],
        event_type=kind,  # type: ignore[arg-type]  # the schema checked it is one
        doc_id=data["doc_id"],
        collection=data["collection"],
        doc_version=int(data["doc_version"]),  # JSON Schema counts 1.0 as an integer
        occurred_at=data["occurred_at"],
        tags=tuple(data.get("tags") or ()),
        chunks=None
        if chunks is None
        else tuple((c["chunk_id"], c["content_hash"]) for c in chunks),
        chunk_ids=tuple(data.get("chunk_ids") or ()),
        content_hash=data.get("content_hash"),
        raw=data,
    )


def loads_json(value: bytes) -> Any:
    """Read a JSON document as :func:`parse_event` does (strict UTF-8, no lone
    surrogate escapes, no NaN/Infinity), for the other input formats. Raises
    :class:`InvalidEventError` (``invalid_encoding``, ``invalid_json``,
    ``schema_violation``)."""
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        pass
    data = _slow_loads(value)
    if b"\\u" in value:
        try:
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidEventError(
                "invalid_encoding", "a string contains a lone UTF-16 surrogate escape"
            ) from None
    return data


def _slow_loads(value: bytes) -> Any:
    """The standard library's reading: for records orjson refused (it names the
    problem) and for version fields orjson read as floats."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEventError("invalid_encoding", f"value is not UTF-8: {exc}") from None
    try:
        data = json.loads(text, parse_constant=_NonFinite)
    except RecursionError:
        raise InvalidEventError("invalid_json", "JSON nested too deeply") from None
    except ValueError as exc:
        raise InvalidEventError("invalid_json", str(exc)) from None
    found = _non_finite(data)
    if found is not None:
        path, token = found
        # The standard library reads NaN/Infinity (orjson does not); jsonschema-rs would
        # then see them as null and report "null is not of type integer".
        raise InvalidEventError(
            "schema_violation",
            f"at {path}: {token} is not a JSON number (JSON has no NaN or Infinity)",
        )
    return data


class _NonFinite:
    """What ``json.loads`` reads for ``NaN``, ``Infinity`` and ``-Infinity``."""

    __slots__ = ("token",)

    def __init__(self, token: str) -> None:
        self.token = token


def _non_finite(data: Any) -> tuple[str, str] | None:
    """The path and token of the first NaN/Infinity in ``data``, if any."""
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, _NonFinite):
            return path or "(root)", item.token
        if isinstance(item, dict):
            children = list(item.items())
        elif isinstance(item, list):
            children = list(enumerate(item))
        else:
            continue
        for name, child in reversed(children):
            stack.append((f"{path}/{name}" if path else str(name), child))
    return None


def peek_field(value: bytes, name: str) -> str | None:
    """One field of :func:`peek_fields`."""
    return peek_fields(value, (name,)).get(name)


def check_key(key: bytes | None, event: DocumentEvent) -> None:
    """A record's key must be its event's ``doc_id`` (UTF-8), or absent. Another key
    may put the document's events on several partitions, where nothing orders them
    (see schemas/README.md): such a record is dead-lettered (``key_mismatch``).
    Native events and CloudEvents; not Debezium records (:mod:`worker.debezium`)."""
    if key is None or key == event.doc_id.encode("utf-8", "surrogatepass"):
        return
    shown = key[:200].decode("utf-8", "backslashreplace")
    raise InvalidEventError(
        "key_mismatch",
        f"record key {shown!r} is not the event's doc_id {event.doc_id[:200]!r}: "
        "publish each event with key = doc_id (UTF-8) so one document's events share a "
        "partition and stay in order",
    )
