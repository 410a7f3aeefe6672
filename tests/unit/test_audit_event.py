"""The typed audit (worker.audit_event.AuditEvent, worker.results): its encoding is the
JSON schemas/audit-event.schema.json describes, byte for byte as the worker has always
written it; its rendering is the line `cachebus audit tail` prints (pure)."""

from __future__ import annotations

import json
from typing import get_args

import pytest

from cachebus.planning import Action
from worker.audit import to_bytes
from worker.audit_event import AuditEvent, Source, render_audit
from worker.audit_tail import format_audit
from worker.debezium import Tombstone
from worker.results import (
    ActionResult,
    Applied,
    AuditOutcome,
    DeadLettered,
    Result,
    Skipped,
    SkippedTombstone,
)
from worker.schemas import validator

SOURCE = Source("documents.events", 3, 18422, 1_764_000_000_000)
EVENT_ID = "0b7c5d3e-2f41-4a8e-9c6d-1e2f3a4b5c6d"
UPDATED = Applied(
    (
        ActionResult(Action("tag", "doc:kb/1")),
        ActionResult(
            Action("drop_embeddings", "doc:kb/1", {"mode": "changed", "chunks_in_event": 2}),
            embeddings_removed=1,
        ),
        ActionResult(Action("tag", "tag:pricing")),
        ActionResult(Action("bump", "search_results:handbook"), generation=58),
        ActionResult(Action("scan", "cb:legacy:docembed:kb/1:*"), keys_removed=3),
    ),
    keys_removed=4,
    generations={"search_results:handbook": 58},
)
DELETED = Applied(
    (
        ActionResult(Action("tombstone", "doc:kb/1")),
        ActionResult(Action("drop_embeddings", "doc:kb/1", {"mode": "all"}), embeddings_removed=0),
    )
)
CREATED = Applied(
    (
        ActionResult(Action("revive", "doc:kb/1")),
        ActionResult(Action("bump", "search_results:handbook"), generation=59),
    ),
    generations={"search_results:handbook": 59},
)
DRY_RUN = Applied.planned((Action("tag", "doc:kb/1", {"why": "race-free drop"}),))
SAMPLES: dict[str, Result] = {
    "applied_updated": UPDATED,
    "applied_deleted": DELETED,
    "applied_created": CREATED,
    "applied_dry_run": DRY_RUN,
    "skipped_stale": Skipped.below_mark(6, 7),
    "skipped_stale_overtaken": Skipped.overtaken(),
    "skipped_duplicate": Skipped.duplicate(),
    "dead_lettered": DeadLettered("schema_violation", "at doc_version: NaN is not a JSON number"),
    "skipped_tombstone": SkippedTombstone(Tombstone.REASON),
}


def audit(result: Result, *, readable: bool = True, replay: bool = False) -> AuditEvent:
    known = readable or not isinstance(result, DeadLettered)
    return AuditEvent(
        event_id=EVENT_ID if known else None,
        doc_id="kb/1" if known else None,
        collection="handbook" if known else None,
        event_type="updated" if known else None,
        doc_version=7 if not isinstance(result, DeadLettered) else None,
        result=result,
        source=SOURCE,
        lag_ms=812.4,
        processed_at="2026-11-26T20:00:00.123Z",
        worker_id="host:1",
        replay=replay,
    )


def test_samples_cover_every_outcome() -> None:
    assert {r.outcome for r in SAMPLES.values()} == set(get_args(AuditOutcome))


@pytest.mark.parametrize("name", list(SAMPLES))
@pytest.mark.parametrize("replay", [False, True])
def test_every_outcome_validates_against_the_schema(name: str, replay: bool) -> None:
    """Encoded with to_json (and through to_bytes), valid for the worker's validator."""
    check = validator("audit-event")
    for readable in (True, False):
        event = audit(SAMPLES[name], readable=readable, replay=replay)
        doc = event.to_json()
        assert [e.message for e in check.iter_errors(doc)] == []
        assert check.is_valid(json.loads(to_bytes(doc)))
        assert doc["outcome"] == event.outcome == SAMPLES[name].outcome


def test_encoding_is_byte_compatible() -> None:
    """The exact bytes of audit_version 1 (field names and order as since the start)."""
    assert to_bytes(audit(UPDATED).to_json()) == (
        b'{"audit_version":1,"event_id":"0b7c5d3e-2f41-4a8e-9c6d-1e2f3a4b5c6d",'
        b'"doc_id":"kb/1","collection":"handbook","event_type":"updated","doc_version":7,'
        b'"outcome":"applied","reason":null,"actions":[{"kind":"tag","target":"doc:kb/1"},'
        b'{"kind":"drop_embeddings","target":"doc:kb/1","detail":{"mode":"changed",'
        b'"chunks_in_event":2,"removed":1}},{"kind":"tag","target":"tag:pricing"},'
        b'{"kind":"bump","target":"search_results:handbook","detail":{"generation":58}},'
        b'{"kind":"scan","target":"cb:legacy:docembed:kb/1:*","detail":{"keys_removed":3}}],'
        b'"keys_removed":4,"generations_bumped":{"search_results:handbook":58},'
        b'"source":{"topic":"documents.events","partition":3,"offset":18422,'
        b'"timestamp_ms":1764000000000},"lag_ms":812.4,"processed_at":"2026-11-26T20:00:00.123Z",'
        b'"worker_id":"host:1","replay":false}'
    )
    dead = audit(SAMPLES["dead_lettered"], readable=False).to_json()
    assert (dead["reason"], dead["actions"], dead["keys_removed"]) == (
        "schema_violation: at doc_version: NaN is not a JSON number",
        [],
        0,
    )
    assert dead["generations_bumped"] == {} and dead["doc_version"] is None


def test_skips_and_dry_runs_carry_no_facts() -> None:
    """A skip: reason, no actions; a dry run: the plan's details only."""
    skipped = audit(Skipped.duplicate()).to_json()
    assert (skipped["reason"], skipped["actions"]) == ("event already applied", [])
    assert audit(DRY_RUN).to_json()["actions"] == [
        {"kind": "tag", "target": "doc:kb/1", "detail": {"why": "race-free drop"}}
    ]


def test_dead_letter_reason_keeps_the_start_of_the_detail() -> None:
    assert DeadLettered("oversize", "x" * 1000).reason == "oversize: " + "x" * 300


def test_key_is_the_doc_id() -> None:
    assert audit(UPDATED).key() == b"kb/1"
    assert audit(SAMPLES["dead_lettered"], readable=False).key() is None


def test_render_is_what_audit_tail_prints() -> None:
    """AuditEvent.render is the tail's line; the tail renders wire JSON the same way."""
    event = audit(UPDATED, replay=True)
    assert event.render() == format_audit(event.to_json()) == render_audit(event.to_json())
    assert event.render() == (
        "2026-11-26T20:00:00.123Z  p3@18422  applied           updated kb/1 v7"
        + " " * 18
        + "removed=4 lag=812ms [replay]  | tag doc:kb/1, drop_embeddings doc:kb/1 "
        "{'mode': 'changed', 'chunks_in_event': 2, 'removed': 1}, tag tag:pricing, "
        "bump search_results:handbook {'generation': 58}, scan cb:legacy:docembed:kb/1:* "
        "{'keys_removed': 3}"
    )
    stale = audit(Skipped.below_mark(6, 7)).render()
    assert stale.endswith("| doc_version 6 is not above the document's high-water mark 7")
    dead = audit(DeadLettered("invalid_json", "bad"), readable=False).render()
    assert "dead_lettered     ? ?" in dead and dead.endswith("| invalid_json: bad")


def test_render_tolerates_partial_json() -> None:
    """The tail reads whatever is on the topic: missing fields do not raise."""
    assert render_audit({}) == "  pNone@None  " + " " * 18 + "? ?" + " " * 30 + "removed=0"
