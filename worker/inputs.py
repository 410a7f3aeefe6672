"""The decode step: one consumed record -> a document event, whatever its format.

* a record of a ``[[debezium]]`` topic: a Debezium change event
  (:mod:`worker.debezium`), or its tombstone (:class:`~worker.debezium.Tombstone`);
* else, a record with a ``ce_specversion`` header: a binary-mode CloudEvent;
* else, a JSON object with ``specversion``: a structured-mode CloudEvent
  (:mod:`worker.cloudevents`);
* else: a native event (:func:`worker.events.parse_event`).

Native events and CloudEvents must have key = doc_id or no key
(:func:`worker.events.check_key`). Debezium records are keyed by the row's primary key
(JSON), which is not compared: Debezium partitions by that key, so one row's changes
stay in one partition, in order, as long as doc_id is the primary key or a function
of it. Everything wrong with a record raises :class:`~worker.errors.InvalidEventError`
(dead-lettered by the processor).
"""

from __future__ import annotations

from cachebus.errors import ConfigError

from .audit import MAX_DLQ_ORIGINAL, SourceRecord, _lag_ms, now_rfc3339
from .audit_event import AuditEvent
from .cloudevents import (
    decode_binary,
    decode_structured,
    is_binary,
    is_structured,
    peek_binary,
    peek_structured,
)
from .debezium import Tombstone, decode_debezium, peek_debezium
from .errors import InvalidEventError
from .events import (
    PEEKED,
    DocumentEvent,
    check_key,
    event_fields,
    loads_json,
    parse_event,
    peek_fields,
)
from .results import SkippedTombstone
from .rules import Rules
from .sources import sources_of

__all__ = ["Tombstone", "decode", "tombstone_audit"]

_SPECVERSION = b'"specversion"'


def decode(record: SourceRecord, rules: Rules, *, max_bytes: int) -> DocumentEvent | Tombstone:
    """The record's document event (or a Debezium tombstone). Raises
    :class:`~worker.errors.InvalidEventError` with the dead-letter reason, and in its
    ``fields`` what the record says about itself as far as it could be read (through
    the format's mapping: a CloudEvent's id, subject and type, a Debezium row's
    doc_id, collection and op), for the audit and the dead letter."""
    try:
        sources = sources_of(rules)  # checked at start-up (worker, replay): cached here
    except ConfigError as exc:  # not the record's fault: never dead-letter for it
        raise RuntimeError(f"the rules' input tables are invalid: {exc}") from None
    debezium = sources.debezium.get(record.topic)
    if debezium is not None:
        try:
            return decode_debezium(record, debezium, max_bytes=max_bytes)
        except InvalidEventError as exc:
            exc.fields = peek_debezium(record, debezium, max_bytes=max_bytes)
            raise
    config = sources.cloudevents
    if is_binary(record):
        try:
            event = decode_binary(record, config, max_bytes=max_bytes)
        except InvalidEventError as exc:
            exc.fields = peek_binary(record, config, max_bytes=max_bytes)
            raise
    else:
        value = record.value
        data = None
        if value is not None and len(value) <= max_bytes and _SPECVERSION in value:
            try:
                data = loads_json(value)
            except InvalidEventError as exc:  # as before: a native event's own fields
                exc.fields = _peek_native(value)
                raise
        if is_structured(data):
            try:
                event = decode_structured(record, data, config)
            except InvalidEventError as exc:
                exc.fields = peek_structured(data, config)
                raise
        else:
            try:
                event = parse_event(value, max_bytes=max_bytes)
            except InvalidEventError as exc:
                exc.fields = _peek_native(value)
                raise
    try:
        check_key(record.key, event)
    except InvalidEventError as exc:
        exc.fields = event_fields(event)
        raise
    return event


def _peek_native(value: bytes | None) -> dict[str, str]:
    """A native event's own fields, when its value is small enough to be kept whole in
    the dead letter."""
    if not value or len(value) > MAX_DLQ_ORIGINAL:
        return {}
    return peek_fields(value, PEEKED)


def tombstone_audit(
    record: SourceRecord,
    tombstone: Tombstone,
    *,
    worker_id: str,
    replay: bool,
    processed_at: str | None = None,
) -> AuditEvent:
    """The ``skipped_tombstone`` audit of a Debezium tombstone."""
    return AuditEvent(
        event_id=None,
        doc_id=tombstone.doc_id,
        collection=tombstone.collection,
        event_type=None,
        doc_version=None,
        result=SkippedTombstone(Tombstone.REASON),
        source=record.source(),
        lag_ms=_lag_ms(record, None),
        processed_at=processed_at or now_rfc3339(),
        worker_id=worker_id,
        replay=replay,
    )
