"""CloudEvents 1.0 (Kafka protocol binding) as document events, on the worker's events
topic beside native events.

* **binary** mode: the attributes are headers (``ce_specversion``, ``ce_id``,
  ``ce_source``, ``ce_type``, ``ce_subject``, ``ce_time``; ``content-type``), the value
  is the data;
* **structured** mode: the value is a JSON object with ``specversion``, ``id``,
  ``source``, ``type``, ``subject``, ``time``, ``datacontenttype`` and ``data`` (or
  ``data_base64``); the ``content-type: application/cloudevents+json`` header is
  optional.

Mapping (``[cloudevents]`` of the rules file, :class:`worker.sources.CloudEventsConfig`):
``doc_id`` = ``subject`` (else ``data.doc_id``); ``event_type`` from ``type`` (the
``types`` table, else a type ending in ``.created``, ``.updated`` or ``.deleted``);
``event_id`` = ``id`` when it is a UUID, else a UUID (v5) of ``source`` and ``id``
(CloudEvents makes source + id unique; the same event re-sent gets the same
event_id, so it is a ``skipped_duplicate``); ``occurred_at`` = ``time`` (else the
record's timestamp). The data is a JSON object carrying the native fields
(``collection``, ``doc_version``, ``tags``, ``chunks``, ``chunk_ids``,
``content_hash``...), validated with ``schemas/document-event.schema.json`` like a
native event.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any, TypeGuard

from .audit import SourceRecord
from .errors import InvalidEventError
from .events import DocumentEvent, event_from_dict, loads_json, peeked
from .sources import CloudEventsConfig

__all__ = [
    "SPECVERSION",
    "decode_binary",
    "decode_structured",
    "is_binary",
    "is_structured",
    "peek_binary",
    "peek_structured",
]

SPECVERSION = "1.0"
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://cachebus.dev/cloudevents")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_ATTRIBUTES = ("id", "source", "type", "subject", "time")


def is_binary(record: SourceRecord) -> bool:
    """Binary mode: the record has a ``ce_specversion`` header."""
    return record.header("ce_specversion") is not None


def is_structured(data: Any) -> TypeGuard[dict[str, Any]]:
    """Structured mode: the value is a JSON object with ``specversion``."""
    return isinstance(data, dict) and "specversion" in data


def decode_binary(
    record: SourceRecord, config: CloudEventsConfig, *, max_bytes: int
) -> DocumentEvent:
    """A binary-mode CloudEvent. Raises :class:`InvalidEventError`."""
    attrs: dict[str, Any] = {"specversion": _header(record, "ce_specversion")}
    for name in _ATTRIBUTES:
        found = _header(record, f"ce_{name}")
        if found is not None:
            attrs[name] = found
    _check_specversion(attrs["specversion"])
    _check_content_type(_header(record, "content-type"), "content-type header")
    value = record.value
    data: Any = {}
    if value:
        if len(value) > max_bytes:
            raise InvalidEventError("oversize", f"{len(value)} bytes exceeds the {max_bytes} limit")
        data = loads_json(value)
    return _to_event(record, attrs, data, config, "binary")


def decode_structured(
    record: SourceRecord, envelope: dict[str, Any], config: CloudEventsConfig
) -> DocumentEvent:
    """A structured-mode CloudEvent (the value, already read as JSON)."""
    _check_specversion(envelope.get("specversion"))
    _check_content_type(envelope.get("datacontenttype"), "datacontenttype")
    if "data_base64" in envelope and envelope["data_base64"] is not None:
        encoded = envelope["data_base64"]
        if not isinstance(encoded, str):
            raise InvalidEventError("schema_violation", "CloudEvent data_base64 must be a string")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidEventError(
                "schema_violation", "CloudEvent data_base64 is not base64"
            ) from None
        data: Any = loads_json(raw) if raw else {}
    else:
        data = envelope.get("data")
        if data is None:
            data = {}
    attrs = {name: envelope[name] for name in _ATTRIBUTES if name in envelope}
    return _to_event(record, attrs, data, config, "structured")


def peek_binary(
    record: SourceRecord, config: CloudEventsConfig, *, max_bytes: int
) -> dict[str, str]:
    """What a binary-mode CloudEvent that could not be decoded says about itself (see
    :func:`_peek`): the attributes from its UTF-8 headers, the data from a JSON value
    (when ``content-type`` allows JSON and the value is within ``max_bytes``)."""
    attrs: dict[str, Any] = {}
    for name in ("id", "source", "type", "subject"):
        with contextlib.suppress(InvalidEventError):  # a header that is not UTF-8
            attrs[name] = _header(record, f"ce_{name}")
    try:
        json_data = _json_media(_header(record, "content-type"))
    except InvalidEventError:
        json_data = False
    data: Any = None
    value = record.value
    if value and len(value) <= max_bytes and json_data:
        with contextlib.suppress(InvalidEventError, RecursionError):
            data = loads_json(value)
    return _peek(attrs, data, config)


def peek_structured(envelope: dict[str, Any], config: CloudEventsConfig) -> dict[str, str]:
    """What a structured-mode CloudEvent (its value read as JSON) that could not be
    decoded says about itself (see :func:`_peek`)."""
    data = envelope.get("data")
    encoded = envelope.get("data_base64")
    if isinstance(encoded, str) and data is None:
        with contextlib.suppress(binascii.Error, ValueError, InvalidEventError, RecursionError):
            data = loads_json(base64.b64decode(encoded, validate=True))
    if not _json_media(envelope.get("datacontenttype")):
        data = None
    return _peek(envelope, data, config)


def _json_media(found: Any) -> bool:
    try:
        _check_content_type(found, "")
    except InvalidEventError:
        return False
    return True


def _peek(attrs: dict[str, Any], data: Any, config: CloudEventsConfig) -> dict[str, str]:
    """The fields of the document event a CloudEvent maps to, as far as its attributes
    and data give them, never guessed: ``event_id`` derived as :func:`event_id` does
    (the ``id`` as found when there is no ``source``), ``doc_id`` = ``subject`` or
    ``data.doc_id`` (none when they disagree), ``event_type`` mapped from ``type`` (the
    ``type`` as found when it maps to none), ``collection`` from the data. Strings as
    :func:`worker.events.peek_text` bounds them."""
    if not isinstance(data, dict):
        data = {}
    found: dict[str, Any] = {"collection": data.get("collection")}
    ce_id, source = attrs.get("id"), attrs.get("source")
    if isinstance(ce_id, str) and ce_id:
        found["event_id"] = event_id(source, ce_id) if isinstance(source, str) and source else ce_id
    subject, doc_id = attrs.get("subject"), data.get("doc_id")
    if subject is None or doc_id is None or subject == doc_id:
        found["doc_id"] = doc_id if subject is None else subject
    ce_type = attrs.get("type")
    if isinstance(ce_type, str) and ce_type:
        kind = config.event_type(ce_type)
        found["event_type"] = ce_type if kind is None else kind.value
    return peeked(found)


def _header(record: SourceRecord, name: str) -> str | None:
    raw = record.header(name)
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidEventError(
            "invalid_encoding", f"CloudEvent header {name!r} is not UTF-8"
        ) from None


def _check_specversion(found: Any) -> None:
    if found != SPECVERSION:
        shown = found[:16] if isinstance(found, str) else found
        raise InvalidEventError(
            "unsupported_schema_version",
            f"CloudEvents specversion {shown!r} is not supported (this worker reads "
            f"{SPECVERSION!r})",
        )


def _check_content_type(found: Any, where: str) -> None:
    """The data must be JSON: ``application/json``, ``*/*+json``, ``text/json`` (or
    nothing: JSON by default)."""
    if found is None:
        return
    if not isinstance(found, str):
        raise InvalidEventError("schema_violation", f"CloudEvent {where} must be a string")
    media = found.split(";", 1)[0].strip().lower()
    if media in ("application/json", "text/json") or media.endswith("+json"):
        return
    raise InvalidEventError(
        "schema_violation",
        f"CloudEvent {where} {found[:80]!r}: the data must be JSON (application/json)",
    )


def _required(attrs: dict[str, Any], name: str, mode: str) -> str:
    found = attrs.get(name)
    if not isinstance(found, str) or not found:
        where = f"header ce_{name}" if mode == "binary" else f"attribute {name!r}"
        raise InvalidEventError(
            "schema_violation",
            f"CloudEvent ({mode} mode): {where} is required (a non-empty string)",
        )
    return found


def event_id(source: str, ce_id: str) -> str:
    """The document event id of CloudEvent (source, id): the id itself when it is a
    UUID, else a UUID (v5) of both (stable: the same event always gets the same one)."""
    if _UUID.fullmatch(ce_id):
        return ce_id
    return str(uuid.uuid5(_NAMESPACE, json.dumps([source, ce_id], separators=(",", ":"))))


def _occurred_at(attrs: dict[str, Any], record: SourceRecord, mode: str) -> str:
    found = attrs.get("time")
    if found is not None:
        if not isinstance(found, str):
            raise InvalidEventError("schema_violation", f"CloudEvent ({mode}) time must be text")
        return found.upper()  # RFC 3339 allows a lowercase t and z; the event schema does not
    ms = record.timestamp_ms
    if ms is not None and ms > 0:
        stamp = datetime.fromtimestamp(ms / 1000, UTC)
    else:
        stamp = datetime.now(UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _to_event(
    record: SourceRecord,
    attrs: dict[str, Any],
    data: Any,
    config: CloudEventsConfig,
    mode: str,
) -> DocumentEvent:
    if not isinstance(data, dict):
        raise InvalidEventError(
            "schema_violation",
            f"CloudEvent ({mode} mode): data must be a JSON object with the document's "
            "fields (collection, doc_version, ...)",
        )
    ce_id = _required(attrs, "id", mode)
    source = _required(attrs, "source", mode)
    ce_type = _required(attrs, "type", mode)
    kind = config.event_type(ce_type)
    if kind is None:
        raise InvalidEventError(
            "unknown_event_type",
            f"CloudEvent type {ce_type[:128]!r} maps to no event type: name it in the "
            "rules file's [cloudevents] types, or end it in .created, .updated or .deleted",
        )
    given = data.get("event_type")
    if given is not None and given != kind.value:
        raise InvalidEventError(
            "schema_violation",
            f"CloudEvent type {ce_type[:128]!r} means {kind.value!r} but data.event_type is "
            f"{str(given)[:32]!r}",
        )
    subject = attrs.get("subject")
    doc_id = data.get("doc_id")
    if subject is not None:
        if not isinstance(subject, str):
            raise InvalidEventError("schema_violation", "CloudEvent subject must be text")
        if doc_id is not None and doc_id != subject:
            raise InvalidEventError(
                "schema_violation",
                f"CloudEvent subject {subject[:200]!r} is not data.doc_id {str(doc_id)[:200]!r}",
            )
        doc_id = subject
    if doc_id is None:
        raise InvalidEventError(
            "schema_violation",
            f"CloudEvent ({mode} mode) names no document: set subject (or data.doc_id)",
        )
    event = {
        **data,
        "event_id": event_id(source, ce_id),
        "event_type": kind.value,
        "doc_id": doc_id,
        "occurred_at": _occurred_at(attrs, record, mode),
        "schema_version": data.get("schema_version", 1),
    }
    if "source" not in data:
        event["source"] = source[:256]
    try:
        return event_from_dict(event)
    except InvalidEventError as exc:
        raise InvalidEventError(exc.reason, f"{exc.detail} (CloudEvent {mode} mode)") from None
