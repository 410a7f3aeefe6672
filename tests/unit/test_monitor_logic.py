"""The consistency monitor's pure parts: settings, the bounded check schedule, nines,
windows, and which audited events a canary may be checked against (no services)."""

from __future__ import annotations

import random
from typing import Any

import pytest
import redis.asyncio

from cachebus.errors import ConfigError
from cachebus.keys import KeyScheme
from devtools.stack import document_event
from worker.audit import SourceRecord
from worker.monitor import (
    DEFAULT_CHECK_AFTER,
    BatchSample,
    Canary,
    Consistency,
    Monitor,
    MonitorConfig,
    Schedule,
    bucket_key,
    invalidates_doc,
    parse_offsets,
    parse_window,
    safe_doc_id,
    window_label,
    window_minutes,
)
from worker.processor import Outbound
from worker.settings import WorkerSettings

# -- settings ----------------------------------------------------------------------


def test_config_defaults_and_env() -> None:
    config = MonitorConfig.from_env({})
    assert config.sample_rate == 0.01 and config.enabled
    assert config.check_after == DEFAULT_CHECK_AFTER == (0.0, 5.0, 60.0, 300.0)
    assert config.max_pending == 10_000 and config.max_canaries == 10_000
    config = MonitorConfig.from_env(
        {
            "CACHEBUS_MONITOR_SAMPLE_RATE": "0",
            "CACHEBUS_MONITOR_CHECK_AFTER": " 1, 2.5 ,10",
            "CACHEBUS_MONITOR_MAX_PENDING": "5",
            "CACHEBUS_MONITOR_MAX_CANARIES": "7",
        }
    )
    assert not config.enabled
    assert config.check_after == (1.0, 2.5, 10.0)
    assert (config.max_pending, config.max_canaries) == (5, 7)


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("CACHEBUS_MONITOR_SAMPLE_RATE", "often", "is not a valid float"),
        ("CACHEBUS_MONITOR_SAMPLE_RATE", "nan", "is not a valid float"),
        ("CACHEBUS_MONITOR_SAMPLE_RATE", "1.5", "between 0 (off) and 1"),
        ("CACHEBUS_MONITOR_SAMPLE_RATE", "-0.1", "between 0 (off) and 1"),
        ("CACHEBUS_MONITOR_CHECK_AFTER", "0,five", "comma-separated seconds"),
        ("CACHEBUS_MONITOR_CHECK_AFTER", "", "comma-separated seconds"),
        ("CACHEBUS_MONITOR_CHECK_AFTER", "5,5", "strictly increasing"),
        ("CACHEBUS_MONITOR_CHECK_AFTER", "60,5", "strictly increasing"),
        ("CACHEBUS_MONITOR_CHECK_AFTER", "-1,5", ">= 0"),
        ("CACHEBUS_MONITOR_CHECK_AFTER", "0,inf", ">= 0"),
        ("CACHEBUS_MONITOR_CHECK_AFTER", "0,90000", "within a day"),
        ("CACHEBUS_MONITOR_MAX_PENDING", "1e4", "is not a valid int"),
        ("CACHEBUS_MONITOR_MAX_PENDING", "0", "1 or more"),
        ("CACHEBUS_MONITOR_MAX_CANARIES", "-3", "1 or more"),
    ],
)
def test_config_refuses_bad_values_naming_the_variable(name: str, raw: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        MonitorConfig.from_env({name: raw})
    assert name in str(info.value) and message in str(info.value)


def test_canary_ttl_covers_the_last_check_or_refuses() -> None:
    settings = WorkerSettings()
    assert MonitorConfig().canary_ttl(settings) == settings.rerank_scores_ttl  # 600 > 300 + 60
    late = MonitorConfig(check_after=(0.0, 3600.0))
    assert late.canary_ttl(settings) == 3660
    tight = WorkerSettings(
        stamp_ttl=2000,
        document_embedding_ttl=1000,
        search_results_ttl=600,
        rerank_scores_ttl=600,
        max_ticket_age=600,
    )
    with pytest.raises(ConfigError, match=r"CACHEBUS_MONITOR_CHECK_AFTER.*stamp_ttl"):
        MonitorConfig(check_after=(0.0, 1500.0)).checked(tight)
    MonitorConfig(sample_rate=0, check_after=(0.0, 1500.0)).checked(tight)  # off: not checked


def test_parse_offsets_direct() -> None:
    assert parse_offsets("0") == (0.0,)
    with pytest.raises(ConfigError, match="X="):
        parse_offsets("a", "X")


# -- the schedule ------------------------------------------------------------------


def test_schedule_runs_each_item_at_every_offset_in_due_order() -> None:
    s: Schedule[str] = Schedule((0.0, 5.0, 60.0), max_pending=100)
    s.add("a", 100.0)
    s.add("b", 101.0)
    assert len(s) == 2 and s.next_due() == 100.0
    seen: list[tuple[str, int, float]] = []
    for now in (100.0, 101.0, 104.9, 105.0, 106.0, 159.0, 160.0, 161.0, 500.0):
        for due in s.pop_due(now):
            seen.append((due.item, due.index, now))
            s.advance(due)
    assert seen == [
        ("a", 0, 100.0),
        ("b", 0, 101.0),
        ("a", 1, 105.0),
        ("b", 1, 106.0),
        ("a", 2, 160.0),
        ("b", 2, 161.0),
    ]
    assert len(s) == 0 and s.next_due() is None


def test_schedule_advance_reports_the_last_check_and_pop_respects_limit() -> None:
    s: Schedule[int] = Schedule((0.0, 1.0), max_pending=100)
    for i in range(5):
        s.add(i, 0.0)
    first = s.pop_due(0.0, limit=3)
    assert [d.item for d in first] == [0, 1, 2] and len(s) == 2
    assert all(s.advance(d) for d in first) and len(s) == 5
    rest = s.pop_due(0.0)
    assert [d.item for d in rest] == [3, 4]
    later = s.pop_due(1.0)
    assert [d.item for d in later] == [0, 1, 2]
    assert not any(s.advance(d) for d in later)  # that was their last check


def test_schedule_drops_the_oldest_beyond_max_pending() -> None:
    s: Schedule[str] = Schedule((0.0, 5.0, 60.0), max_pending=3)
    s.add("a", 0.0)
    for due in s.pop_due(0.0):
        s.advance(due)  # "a" waits for its +5 s check
    assert s.add("b", 1.0) == [] and s.add("c", 2.0) == []
    assert s.add("d", 3.0) == ["a"]  # the oldest, with its 2 remaining checks
    assert s.dropped_checks == 2
    assert s.add("e", 4.0) == ["b"] and s.dropped_checks == 5
    assert len(s) == 3
    assert sorted(d.item for d in s.pop_due(1000.0)) == ["c", "d", "e"]


def test_schedule_needs_offsets() -> None:
    with pytest.raises(ValueError):
        Schedule((), 1)


# -- nines -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("checks", "violations", "nines", "percent", "line"),
    [
        (
            12_345,
            1,
            4,
            "99.99",
            "consistency: 99.99% (4 nines) over 15 min: 12,345 checks, 1 violation",
        ),
        (
            12_345,
            0,
            4,
            "100",
            "consistency: 100% (at least 4 nines) over 15 min: 12,345 checks, 0 violations",
        ),
        (1000, 1, 3, "99.9", "consistency: 99.9% (3 nines) over 15 min: 1,000 checks, 1 violation"),
        (999, 1, 2, "99", "consistency: 99% (2 nines) over 15 min: 999 checks, 1 violation"),
        (10, 1, 1, "90", "consistency: 90% (1 nine) over 15 min: 10 checks, 1 violation"),
        (3, 2, 0, "33", "consistency: 33% (0 nines) over 15 min: 3 checks, 2 violations"),
        (1, 1, 0, "0", "consistency: 0% (0 nines) over 15 min: 1 check, 1 violation"),
        (
            10**7,
            1,
            7,
            "99.99999",
            "consistency: 99.99999% (7 nines) over 15 min: 10,000,000 checks, 1 violation",
        ),
    ],
)
def test_nines(checks: int, violations: int, nines: int, percent: str, line: str) -> None:
    found = Consistency(900, checks, violations)
    assert found.nines == nines and found.percent == percent and found.line() == line
    data = found.as_dict()
    assert data["checks"] == checks and data["violations"] == violations
    assert data["nines_lower_bound"] == (violations == 0) and data["line"] == line


def test_a_violation_never_rounds_to_100_percent() -> None:
    for checks in (10**6, 10**6 + 1, 123_456_789):
        found = Consistency(60, checks, 1)
        assert not found.percent.startswith("100")  # type: ignore[union-attr]


def test_no_checks() -> None:
    found = Consistency(3600, 0, 0)
    assert found.nines is None and found.percent is None
    assert found.line().startswith("consistency: no checks over 1 h (")
    assert "CACHEBUS_MONITOR_SAMPLE_RATE" in found.line()


def test_windows() -> None:
    assert parse_window("15m") == 900 and parse_window("2h") == 7200
    assert parse_window("1d") == 86400 and parse_window("900") == 900
    assert parse_window("90s") == 120 and parse_window("1") == 60  # whole minutes, up
    assert parse_window(" 1.5H ") == 5400
    for bad in ("", "15 minutes", "-5m", "2d", "m"):
        with pytest.raises(ConfigError, match="window"):
            parse_window(bad)
    assert window_label(900) == "15 min" and window_label(7200) == "2 h"
    assert window_label(90) == "90 s"
    assert window_minutes(120.0 * 60 + 59, 900) == list(range(106, 121))
    assert window_minutes(60.0, 1) == [1]
    assert bucket_key(KeyScheme("cb"), 7) == "cb:metrics:{consistency}:7"


# -- which audits retire a canary --------------------------------------------------


def _audit(event_type: str, actions: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "doc_id": "d",
        "event_id": "e",
        "event_type": event_type,
        "doc_version": 2,
        "outcome": "applied",
        "actions": actions,
        **extra,
    }


def test_invalidates_doc() -> None:
    assert invalidates_doc(_audit("updated", [{"kind": "tag", "target": "doc:d"}]))
    assert invalidates_doc(_audit("deleted", [{"kind": "tombstone", "target": "doc:d"}]))
    assert not invalidates_doc(_audit("created", [{"kind": "revive", "target": "doc:d"}]))
    assert not invalidates_doc(_audit("updated", [{"kind": "tag", "target": "tag:doc:d"}]))
    assert not invalidates_doc(_audit("updated", [{"kind": "tag", "target": "doc:other"}]))
    skipped = _audit("updated", [{"kind": "tag", "target": "doc:d"}], outcome="skipped_stale")
    assert not invalidates_doc(skipped)
    assert not invalidates_doc({"outcome": "applied", "doc_id": None, "actions": []})


def test_safe_doc_id() -> None:
    assert safe_doc_id("plain-1") == "plain-1"
    assert safe_doc_id('a b\n"{x}*') == "a%20b%0A%22%7Bx%7D%2A"
    assert len(safe_doc_id("x" * 5000)) <= 200
    assert safe_doc_id("") == "''"


# -- the monitor's bookkeeping (no Redis is contacted) -----------------------------


def _monitor(**config: Any) -> Monitor:
    client = redis.asyncio.Redis()  # never connected: only bookkeeping runs here
    return Monitor(
        client,
        WorkerSettings(prefix="u"),
        MonitorConfig(**{"sample_rate": 1.0, **config}),
        worker_id="w",
        rng=random.Random(1),
        clock=lambda: 1000.0,
        wall=lambda: 60_000.0,
    )


def _canary(doc: str, first_batch: int, settled: int | None = None) -> Canary:
    settled = first_batch - 1 if settled is None else settled
    return Canary(doc, f"q-{doc}", ((doc, 1),), f"u:rr:k-{doc}", first_batch, 5000.0, settled)


def _out(*audits: dict[str, Any]) -> Outbound:
    out = Outbound()
    out.audit_docs = [(None, a) for a in audits]
    return out


def test_after_checks_only_canaries_armed_before_the_batch() -> None:
    m = _monitor()
    m.live["d"] = _canary("d", first_batch=3)
    updated = _audit("updated", [{"kind": "tag", "target": "doc:d"}])
    m.after(BatchSample(2), _out(updated))  # applied before its ticket: not its business
    assert "d" in m.live and len(m.schedule) == 0
    m.after(BatchSample(3), _out(updated))
    assert "d" not in m.live and len(m.schedule) == 1
    (due,) = m.schedule.pop_due(1000.0)
    assert due.item.event_id == "e" and due.item.event_type == "updated"
    assert list(m._rearm) == ["d"]  # the document gets a fresh canary for its next event


def test_after_retires_without_checks_on_events_that_promise_nothing() -> None:
    m = _monitor()
    for doc in ("c", "s"):
        m.live[doc] = _canary(doc, first_batch=1)
    created = _audit("created", [{"kind": "revive", "target": "doc:c"}], doc_id="c")
    stale = _audit("updated", [{"kind": "tag", "target": "doc:s"}], doc_id="s")
    stale["outcome"] = "skipped_stale"
    m.after(BatchSample(1), _out(created, stale))
    assert "c" not in m.live and m._unlink == ["u:rr:k-c"] and list(m._rearm) == ["c"]
    assert "s" in m.live  # nothing was applied to it
    assert len(m.schedule) == 0


def test_after_is_a_no_op_when_off_or_unsampled_and_never_raises() -> None:
    m = _monitor(sample_rate=0.0)
    m.after(BatchSample(1), _out(_audit("updated", [])))
    m = _monitor()
    m.after(None, _out(_audit("updated", [])))
    broken = Outbound()
    broken.audit_docs = None  # type: ignore[assignment]
    m.after(BatchSample(1), broken)  # counted, not raised
    assert m.counts.errors == 1


def test_pick_samples_parsable_events_of_documents_without_a_live_canary() -> None:
    m = _monitor()
    m.live["has"] = _canary("has", first_batch=1)
    m._rearm["queued"] = 1
    events = [
        document_event("updated", "has", 2),
        document_event("updated", "new", 2),
        document_event("deleted", "new", 3),  # same document: one canary
        document_event("updated", "queued", 4),
    ]
    records = [_record(e) for e in events] + [_record(None), _record({"doc_id": "x"})]
    assert m._pick(records) == [("new", 2), ("queued", 4)]
    assert "queued" not in m._rearm  # armed before the apply instead
    rate = _monitor(sample_rate=0.25)
    many = [_record(document_event("updated", f"d{i}", 1)) for i in range(400)]
    assert len(rate._pick(many)) == 64  # a quarter of 400 is above MAX_ARM_PER_BATCH


def test_pick_replaces_a_canary_too_old_to_outlive_its_checks() -> None:
    m = _monitor()
    old = _canary("d", first_batch=1)
    old.expires_at = 1000.0 + 299.0  # the +300 s check would come after its TTL
    m.live["d"] = old
    assert m._pick([_record(document_event("updated", "d", 2))]) == [("d", 2)]
    assert "d" not in m.live and m._unlink == [old.key]


def test_keep_bounds_live_canaries_and_prefers_the_earlier_one() -> None:
    m = _monitor(max_canaries=2)
    for doc in ("a", "b", "c"):
        m._keep(_canary(doc, first_batch=1))
    assert list(m.live) == ["b", "c"] and m._unlink == ["u:rr:k-a"]
    later = _canary("b", first_batch=9)
    later.key = "u:rr:later"
    m._keep(later)
    assert m.live["b"].first_batch == 1 and m._unlink[-1] == "u:rr:later"


def test_schedule_overflow_unlinks_and_counts() -> None:
    m = _monitor(max_pending=1)
    m.live["a"] = _canary("a", 1)
    m.live["b"] = _canary("b", 1)
    m.after(
        BatchSample(1),
        _out(
            _audit("updated", [{"kind": "tag", "target": "doc:a"}], doc_id="a"),
            _audit("updated", [{"kind": "tag", "target": "doc:b"}], doc_id="b"),
        ),
    )
    assert len(m.schedule) == 1 and m._unlink == ["u:rr:k-a"]
    assert m.counts.dropped_checks == len(DEFAULT_CHECK_AFTER)


def _record(event: dict[str, Any] | None) -> SourceRecord:
    import json

    value = None if event is None else json.dumps(event).encode()
    return SourceRecord("t", 0, 0, None, None, value)


def test_after_drops_a_canary_whose_ticket_may_follow_the_apply() -> None:
    """A re-armed canary's ticket came while batch 4 was being applied (settled 3, first
    batch 5): an event of batch 4 may or may not have retired it. Neither a check nor
    keeping it would be sound: dropped."""
    m = _monitor()
    m.live["d"] = _canary("d", first_batch=5, settled=3)
    m.after(BatchSample(4), _out(_audit("updated", [{"kind": "tag", "target": "doc:d"}])))
    assert "d" not in m.live and len(m.schedule) == 0 and m._unlink == ["u:rr:k-d"]


def test_pick_samples_debezium_and_cloudevents_through_the_decode_step() -> None:
    """The canaries follow the processor's decode step: a Debezium change (version:
    its LSN) on a ``[[debezium]]`` topic and CloudEvents in both modes get one; a
    Debezium tombstone, a record the processor dead-letters (a CloudEvent keyed by
    another document) and a Debezium-shaped record on another topic get none."""
    import json

    from cachebus.rules import parse_rules
    from tests import debezium_shapes as dbz

    rules = parse_rules(
        {"debezium": [{"topic": dbz.TOPIC, "doc_id": "id", "collection": "collection"}]}
    )
    m = _monitor()
    m.rules = rules
    change = dbz.encode(dbz.with_schema(dbz.envelope("u", after=dbz.row(42), lsn=900)))

    def headers(subject: str) -> tuple[tuple[str, bytes], ...]:
        attrs = {
            "ce_specversion": "1.0",
            "ce_id": f"cms-{subject}",
            "ce_source": "/cms",
            "ce_type": "com.example.document.updated",
            "ce_subject": subject,
        }
        return tuple((k, v.encode()) for k, v in attrs.items())

    data = json.dumps({"collection": "kb", "doc_version": 7}).encode()
    structured = {
        "specversion": "1.0",
        "id": "cms-2",
        "source": "/cms",
        "type": "x.deleted",
        "subject": "kb/2",
        "data": {"collection": "kb", "doc_version": 3},
    }
    records = [
        SourceRecord(dbz.TOPIC, 0, 0, None, dbz.key(42), change),
        SourceRecord(dbz.TOPIC, 0, 1, None, dbz.key(43), None),  # tombstone
        SourceRecord("t", 0, 0, None, b"kb/1", data, headers("kb/1")),
        SourceRecord("t", 0, 1, None, None, json.dumps(structured).encode()),
        SourceRecord("t", 0, 2, None, b"kb/other", data, headers("kb/9")),  # key_mismatch
        SourceRecord("t", 0, 3, None, None, change),  # not a Debezium topic: not native
    ]
    assert m._pick(records) == [("42", 900), ("kb/1", 7), ("kb/2", 3)]
    assert _monitor()._pick(records[:1]) == []  # without the rules' table: not read
