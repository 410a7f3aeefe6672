"""Debezium change events (Kafka Connect JSON converter, with or without schemas) as
document events, mapped by a ``[[debezium]]`` table of the rules file
(:class:`worker.sources.DebeziumSource`).

* ``op`` ``c``/``r`` -> ``created``, ``u`` -> ``updated``, ``d`` -> ``deleted``; the
  row is ``after`` (``before`` for ``d``).
* ``doc_version``: ``source.lsn`` by default, the change's position in the
  Postgres WAL. A row's changes have increasing LSNs in commit order (a row is locked
  by the transaction that changes it until it commits), so the worker's per-document
  high-water mark lets no older change win over a newer one, also when Debezium
  re-sends changes after a restart. With ``version = "<column>"`` that column's
  integer is used instead; a delete then counts as the row's last version + 1.
* ``event_id``: a UUID (v5) of the connector name, database, schema, table, LSN and
  doc_id (without an LSN: of the whole ``source`` block): the same change re-read or
  re-sent by Debezium gets the same id (``skipped_duplicate``).
* ``occurred_at``: ``source.ts_ms`` (the commit time), as RFC 3339.
* ``__debezium_unavailable_value`` (an unchanged TOASTed column) is never data: the
  column's old value from ``before`` is used when there is one, else it is absent.
* The record key (the row's primary key as JSON) is not compared with doc_id: Debezium
  partitions by the primary key, so one row's changes stay in one partition, in
  order, as long as doc_id is the primary key or a function of it.

A record without a value after a delete is Debezium's tombstone (for log compaction):
a :class:`Tombstone`, never an error.
"""

from __future__ import annotations

import base64
import contextlib
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from cachebus.events import EventType

from .audit import SourceRecord
from .errors import InvalidEventError
from .events import DocumentEvent, event_from_dict, loads_json, peeked
from .sources import LSN, DebeziumSource

__all__ = ["UNAVAILABLE", "Tombstone", "decode_debezium", "key_doc_id", "peek_debezium"]

UNAVAILABLE = "__debezium_unavailable_value"
"""Debezium's placeholder for an unchanged TOASTed column (``unavailable.value.placeholder``)."""
_UNAVAILABLE_B64 = base64.b64encode(UNAVAILABLE.encode()).decode()
"""The placeholder of a ``bytea`` column."""
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://cachebus.dev/debezium")
MAX_VERSION = 2**53 - 1

OPS: dict[str, EventType] = {
    "c": EventType.CREATED,
    "r": EventType.CREATED,
    "u": EventType.UPDATED,
    "d": EventType.DELETED,
}
_MISSING = object()


@dataclass(frozen=True, slots=True)
class Tombstone:
    """Debezium's null-value record after a delete (for log compaction): nothing to
    invalidate (the delete came just before it)."""

    audit: bool
    """``tombstones = "audit"``: audited ``skipped_tombstone``; else committed silently."""
    doc_id: str | None
    """From the record key when it names the doc_id column (for the audit)."""
    collection: str | None

    REASON = (
        "Debezium tombstone (null value after a delete, for log compaction): "
        "the delete before it did the invalidation"
    )


def key_doc_id(key: bytes | None, column: str) -> str | None:
    """The doc_id column of a Debezium record key (``{"id": 1}`` or, with schemas,
    ``{"schema": ..., "payload": {"id": 1}}``), if it is there and readable."""
    if not key:
        return None
    try:
        data = orjson.loads(key)
    except orjson.JSONDecodeError:
        return None
    if isinstance(data, dict) and isinstance(data.get("payload"), dict) and "schema" in data:
        data = data["payload"]
    if not isinstance(data, dict):
        return None
    try:
        return _id_text(data.get(column, _MISSING), column)
    except InvalidEventError:
        return None


def decode_debezium(
    record: SourceRecord, source: DebeziumSource, *, max_bytes: int
) -> DocumentEvent | Tombstone:
    """One record of a Debezium topic. Raises :class:`InvalidEventError` with a
    dead-letter reason (``oversize``, ``invalid_json``, ``invalid_encoding``,
    ``unknown_event_type``, ``schema_violation``) and a detail naming the field."""
    value = record.value
    if value is None:
        return _tombstone(record, source)
    if len(value) > max_bytes:
        raise InvalidEventError("oversize", f"{len(value)} bytes exceeds the {max_bytes} limit")
    data = loads_json(value)
    if not isinstance(data, dict):
        raise InvalidEventError(
            "schema_violation", "Debezium change event must be a JSON object (the envelope)"
        )
    if "payload" in data and "schema" in data:  # JSON converter with schemas.enable=true
        data = data["payload"]
        if data is None:
            return _tombstone(record, source)
        if not isinstance(data, dict):
            raise InvalidEventError(
                "schema_violation", "Debezium change event: payload must be a JSON object"
            )
    op = data.get("op")
    if op == "t":
        raise InvalidEventError(
            "unknown_event_type",
            "Debezium op 't' (TRUNCATE) is not mapped to document events: invalidate the "
            "collection by hand (cachebus invalidate) and leave truncate.handling.mode at skip",
        )
    kind = OPS.get(op) if isinstance(op, str) else None
    if kind is None or not isinstance(op, str):
        shown = op[:16] if isinstance(op, str) else op
        raise InvalidEventError(
            "unknown_event_type",
            f"Debezium op {shown!r} is not one of c, r, u, d (is this a Debezium change event?)",
        )
    src = data.get("source")
    if not isinstance(src, dict):
        raise InvalidEventError(
            "schema_violation", "Debezium change event has no source block (an object)"
        )
    deleted = kind is EventType.DELETED
    side = "before" if deleted else "after"
    row = data.get(side)
    if not isinstance(row, dict):
        raise InvalidEventError(
            "schema_violation",
            f"Debezium op {op!r} needs {side} (the row) as a JSON object, got {_kind(row)}",
        )
    previous = None if deleted else data.get("before")
    cols = _Columns(row, previous if isinstance(previous, dict) else None, op, side)

    doc_id = _id_text(cols.get(source.doc_id), source.doc_id)
    if doc_id is None:
        raise InvalidEventError(
            "schema_violation", cols.missing(source.doc_id, "doc_id", key_hint=True)
        )
    collection = source.collection_value
    if source.collection is not None:
        found = cols.get(source.collection)
        if found is _MISSING or found is None or (deleted and found == ""):
            raise InvalidEventError(
                "schema_violation", cols.missing(source.collection, "collection")
            )
        collection = _string(found, source.collection, "collection")
    lsn = src.get("lsn")
    version = _version(source, cols, src, deleted)
    event: dict[str, Any] = {
        "event_id": _event_id(src, lsn, doc_id, record.topic),
        "event_type": kind.value,
        "doc_id": doc_id,
        "collection": collection,
        "doc_version": version,
        "occurred_at": _occurred_at(src, data, record),
        "schema_version": 1,
        "source": f"debezium:{record.topic}"[:256],
    }
    if source.tags is not None:
        tags = _tags(cols.get(source.tags), source.tags)
        if tags is not None:
            event["tags"] = tags
    if source.chunks is not None:
        chunks = _chunks(cols.get(source.chunks), source.chunks)
        if chunks is not None:
            event["chunks"] = chunks
    if source.content_hash is not None:
        found = cols.get(source.content_hash)
        if found is not _MISSING and found is not None:
            event["content_hash"] = _string(found, source.content_hash, "content_hash")
    try:
        return event_from_dict(event)
    except InvalidEventError as exc:
        raise InvalidEventError(
            exc.reason, f"{exc.detail} (mapped from Debezium topic {record.topic!r})"
        ) from None


def peek_debezium(
    record: SourceRecord, source: DebeziumSource, *, max_bytes: int
) -> dict[str, str]:
    """What a record of a Debezium topic that could not be decoded says about itself,
    through the mapping and never guessed, for its audit and dead letter:

    * ``doc_id``: the mapped column of the row (``after``, ``before`` for ``d``), else
      of the record key (the primary key) when it holds that column;
    * ``collection``: ``collection_value``, else the mapped column of the row;
    * ``event_type``: the mapped ``op`` (none for an unknown op);
    * ``event_id``: as :func:`decode_debezium` derives it, when the op maps and
      ``source`` and the doc_id are there.

    Strings as :func:`worker.events.peek_text` bounds them. Never raises."""
    try:
        return _peek(record, source, max_bytes)
    except (InvalidEventError, RecursionError, TypeError, ValueError):
        return {}


def _peek(record: SourceRecord, source: DebeziumSource, max_bytes: int) -> dict[str, str]:
    found: dict[str, Any] = {
        "doc_id": key_doc_id(record.key, source.doc_id),
        "collection": source.collection_value,
    }
    value = record.value
    if value is None or len(value) > max_bytes:
        return peeked(found)
    try:
        data = loads_json(value)
    except InvalidEventError:
        return peeked(found)
    if isinstance(data, dict) and "payload" in data and "schema" in data:
        data = data["payload"]
    if not isinstance(data, dict):
        return peeked(found)
    op = data.get("op")
    kind = OPS.get(op) if isinstance(op, str) else None
    if kind is not None:
        assert isinstance(op, str)
        found["event_type"] = kind.value
        doc_id = found["doc_id"]
        side = "before" if kind is EventType.DELETED else "after"
        row = data.get(side)
        previous = data.get("before") if side == "after" else None
        if isinstance(row, dict):
            cols = _Columns(row, previous if isinstance(previous, dict) else None, op, side)
            with contextlib.suppress(InvalidEventError):  # e.g. a boolean: not an id
                found["doc_id"] = _id_text(cols.get(source.doc_id), source.doc_id) or doc_id
            if source.collection is not None:
                collection = cols.get(source.collection)
                if isinstance(collection, str) and collection:
                    found["collection"] = collection
    src = data.get("source")
    doc_id = found["doc_id"]
    if kind is not None and isinstance(src, dict) and isinstance(doc_id, str):
        found["event_id"] = _event_id(src, src.get("lsn"), doc_id, record.topic)
    return peeked(found)


def _tombstone(record: SourceRecord, source: DebeziumSource) -> Tombstone:
    return Tombstone(
        audit=source.tombstones == "audit",
        doc_id=key_doc_id(record.key, source.doc_id),
        collection=source.collection_value,
    )


class _Columns:
    """The row's columns; an unchanged TOASTed column reads as its old value (from
    ``before``) or as absent, never as the placeholder."""

    def __init__(self, row: dict[str, Any], before: dict[str, Any] | None, op: str, side: str):
        self.row = row
        self.before = before
        self.op = op
        self.side = side

    def get(self, name: str) -> Any:
        found = self.row.get(name, _MISSING)
        if _unavailable(found):
            old = self.before.get(name, _MISSING) if self.before is not None else _MISSING
            return _MISSING if _unavailable(old) else old
        return found

    def missing(self, column: str, what: str, *, key_hint: bool = False) -> str:
        found = self.row.get(column, _MISSING)
        state = (
            "is not in"
            if found is _MISSING
            else "is an unchanged TOAST value (__debezium_unavailable_value) in"
            if _unavailable(found)
            else "is null in"
        )
        text = f"column {column!r} (mapped to {what}) {state} {self.side}"
        if self.op == "d" and not key_hint:
            text += (
                ": a delete carries only the replica identity's columns; run ALTER TABLE "
                "... REPLICA IDENTITY FULL on the table, or map one collection with "
                "collection_value"
            )
        else:
            text += f" (columns present: {sorted(self.row)[:20]})"
        return text


def _unavailable(value: Any) -> bool:
    if value in (UNAVAILABLE, _UNAVAILABLE_B64):
        return True
    return isinstance(value, list) and len(value) == 1 and value[0] == UNAVAILABLE


def _kind(value: Any) -> str:
    if value is _MISSING:
        return "nothing"
    if value is None:
        return "null"
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), "a number"
    )


def _id_text(value: Any, column: str) -> str | None:
    """A doc_id column's value as text (numbers: their decimal text); None if absent."""
    if value is _MISSING or value is None:
        return None
    if isinstance(value, bool):
        raise InvalidEventError(
            "schema_violation", f"column {column!r} (doc_id) is a boolean, not text or a number"
        )
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) <= MAX_VERSION:
            return str(int(value))
        raise InvalidEventError(
            "schema_violation",
            f"column {column!r} (doc_id) is {value!r}, not an integer or text",
        )
    if isinstance(value, str):
        return value
    raise InvalidEventError(
        "schema_violation", f"column {column!r} (doc_id) is {_kind(value)}, not text or a number"
    )


def _string(value: Any, column: str, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidEventError(
            "schema_violation", f"column {column!r} ({what}) is {_kind(value)}, not text"
        )
    return value


def _integer(value: Any, where: str) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidEventError("schema_violation", f"{where} is {_kind(value)}, not an integer")
    if value < 0 or value > MAX_VERSION:
        raise InvalidEventError(
            "schema_violation", f"{where} is {value}, outside 0..2^53-1 (doc_version)"
        )
    return value


def _version(source: DebeziumSource, cols: _Columns, src: dict[str, Any], deleted: bool) -> int:
    if source.version == LSN:
        lsn = src.get("lsn")
        if lsn is None:
            raise InvalidEventError(
                "schema_violation",
                'source.lsn is missing (version = "lsn" needs the Postgres connector); '
                "map version to an integer column that grows with every change",
            )
        return _integer(lsn, "source.lsn")
    found = cols.get(source.version)
    if found is _MISSING or found is None:
        raise InvalidEventError("schema_violation", cols.missing(source.version, "doc_version"))
    version = _integer(found, f"column {source.version!r} (doc_version)")
    # A delete has no new row: it is the version after the row's last one.
    return min(version + 1, MAX_VERSION) if deleted else version


def _event_id(src: dict[str, Any], lsn: Any, doc_id: str, topic: str) -> str:
    # The standard library's encoder: any JSON the record held (orjson refuses integers
    # past 64 bits, which a source block may carry).
    if lsn is not None:
        parts = [src.get(k) for k in ("name", "db", "schema", "table")]
        name = json.dumps(["pg", *parts, lsn, doc_id], separators=(",", ":"))
    else:
        name = json.dumps(["source", topic, src, doc_id], sort_keys=True, separators=(",", ":"))
    return str(uuid.uuid5(_NAMESPACE, name))


def _rfc3339(ms: int) -> str:
    stamp = datetime.fromtimestamp(ms / 1000, UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _occurred_at(src: dict[str, Any], envelope: dict[str, Any], record: SourceRecord) -> str:
    for ms in (src.get("ts_ms"), envelope.get("ts_ms"), record.timestamp_ms):
        if isinstance(ms, int) and not isinstance(ms, bool) and 0 < ms < 253402300800000:
            return _rfc3339(ms)
    raise InvalidEventError(
        "schema_violation", "no commit time: source.ts_ms is missing and the record has none"
    )


def _json_text(value: str, column: str, what: str) -> Any:
    """A ``json``/``jsonb`` column: the JSON converter writes it as a JSON string."""
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        raise InvalidEventError(
            "schema_violation",
            f"column {column!r} ({what}) is text that is not JSON: {value[:80]!r}",
        ) from None


def _tags(value: Any, column: str) -> list[str] | None:
    if value is _MISSING or value is None:
        return None
    if isinstance(value, str):
        value = _json_text(value, column, "tags")
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise InvalidEventError(
            "schema_violation",
            f"column {column!r} (tags) must be a text[] or a JSON array of strings",
        )
    return list(dict.fromkeys(value))  # a set of tags: repeats are not an error here


def _chunks(value: Any, column: str) -> list[Any] | None:
    if value is _MISSING or value is None:
        return None
    if isinstance(value, str):
        value = _json_text(value, column, "chunks")
    if not isinstance(value, list):
        raise InvalidEventError(
            "schema_violation",
            f'column {column!r} (chunks) must be a JSON array of {{"chunk_id", "content_hash"}}',
        )
    return value
