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

from .audit import SourceRecord, _lag_ms, now_rfc3339
from .audit_event import AuditEvent
from .cloudevents import decode_binary, decode_structured, is_binary, is_structured
from .debezium import Tombstone, decode_debezium
from .events import DocumentEvent, check_key, loads_json, parse_event
from .results import SkippedTombstone
from .rules import Rules
from .sources import sources_of

__all__ = ["Tombstone", "decode", "tombstone_audit"]

_SPECVERSION = b'"specversion"'


def decode(record: SourceRecord, rules: Rules, *, max_bytes: int) -> DocumentEvent | Tombstone:
    """The record's document event (or a Debezium tombstone). Raises
    :class:`~worker.errors.InvalidEventError` with the dead-letter reason."""
    try:
        sources = sources_of(rules)  # checked at start-up (worker, replay): cached here
    except ConfigError as exc:  # not the record's fault: never dead-letter for it
        raise RuntimeError(f"the rules' input tables are invalid: {exc}") from None
    debezium = sources.debezium.get(record.topic)
    if debezium is not None:
        return decode_debezium(record, debezium, max_bytes=max_bytes)
    if is_binary(record):
        event = decode_binary(record, sources.cloudevents, max_bytes=max_bytes)
    else:
        value = record.value
        data = None
        if value is not None and len(value) <= max_bytes and _SPECVERSION in value:
            data = loads_json(value)
        if is_structured(data):
            event = decode_structured(record, data, sources.cloudevents)
        else:
            event = parse_event(value, max_bytes=max_bytes)
    check_key(record.key, event)
    return event


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
