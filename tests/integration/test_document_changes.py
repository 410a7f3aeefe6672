"""Library-only invalidation with the worker's plan: ``document_created/updated/deleted``
on real Redis and Redis Cluster (sync and asyncio)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import cachebus.planning
import worker.events
import worker.planner
import worker.rules
from cachebus import AsyncCacheBus, CacheBus, ChunkVector, SearchHit, Settings
from cachebus.changes import change_event
from cachebus.keys import Tag
from cachebus.planning import plan
from cachebus.rules import load_rules

S = Settings(prefix="dc")


def vec(x: float = 1.0) -> np.ndarray:
    return np.full(8, x, dtype=np.float32)


def test_one_planner_for_worker_and_library() -> None:
    """The worker's planner and rules are the library's (not copies)."""
    assert worker.planner.plan is cachebus.planning.plan
    assert worker.planner.Plan is cachebus.planning.Plan
    assert worker.events.DocumentEvent is cachebus.planning.DocumentEvent
    assert worker.rules.load_rules is load_rules


def test_updated_doc_that_now_matches_retires_the_collection(any_redis) -> None:
    """The issue's case: doc-0 changed and now matches a cached query whose list did not
    contain it. invalidate_documents(["doc-0"]) keeps serving the old list;
    document_updated (the worker's plan: also bump the collection) does not."""
    bus = CacheBus(any_redis, S)
    sr = bus.search_results("handbook")
    sr.set("vacation days", [SearchHit("doc-7", 0.9)])
    bus.invalidator.invalidate_documents(["doc-0"])
    assert sr.get("vacation days") == [SearchHit("doc-7", 0.9)]  # the old list, stale
    change = bus.document_updated("doc-0", "handbook")
    assert sr.get("vacation days") is None
    assert change.applied
    assert [(a.kind, a.target) for a in change.actions] == [
        ("tag", "doc:doc-0"),
        ("drop_embeddings", "doc:doc-0"),
        ("bump", "search_results:handbook"),
    ]
    namespace = bus.invalidator.core.keys.search_namespace("handbook")
    assert list(change.generations) == [namespace] and change.generations[namespace] > 0
    # The plan is exactly the worker's for the same event.
    assert change.plan == plan(change.event, load_rules(), bus.invalidator.core.keys)


def test_updated_drops_changed_chunks_and_user_tags(any_redis) -> None:
    bus = CacheBus(any_redis, S)
    de = bus.document_embeddings("m")
    de.set_many("d1", [ChunkVector("c0", vec(1), "h0"), ChunkVector("c1", vec(2), "h1")])
    tagged = bus.search_results("other")
    tagged.set("q", [SearchHit("x", 1.0)], tags=[Tag.user("pricing")])
    change = bus.document_updated(
        "d1", "kb", tags=["pricing"], chunks=[("c0", "h0"), ("c1", "h1-new")]
    )
    assert de.get("d1", "c0", "h0") is not None  # unchanged chunk kept
    assert de.get("d1", "c1") is None  # changed chunk dropped
    assert tagged.get("q") is None  # user tag invalidated
    assert change.keys_removed == 1


def test_deleted_tombstones_and_refuses_late_writes(any_redis) -> None:
    bus = CacheBus(any_redis, S)
    sr = bus.search_results("kb")
    sr.set("with", [SearchHit("gone", 0.9), SearchHit("kept", 0.5)])
    sr.set("without", [SearchHit("kept", 0.5)])
    late = sr.lookup("late")  # a value computed from "gone" before its delete
    bus.document_embeddings("m").set("gone", "c0", vec(), "h")
    change = bus.document_deleted("gone", "kb")
    assert [a.kind for a in change.actions] == ["tombstone", "drop_embeddings"]
    assert sr.get("with") is None
    assert sr.get("without") == [SearchHit("kept", 0.5)]  # no collection bump on delete
    assert bus.document_embeddings("m").get("gone", "c0") is None
    sr.set("late", [SearchHit("gone", 0.1)], ticket=late.ticket)
    assert sr.get("late") is None
    sr.set("fresh", [SearchHit("gone", 0.1)])  # even computed after: deleted stays deleted
    assert sr.get("fresh") is None


def test_created_bumps_the_collection_and_revives(any_redis) -> None:
    bus = CacheBus(any_redis, S)
    sr = bus.search_results("kb")
    bus.document_deleted("doc-9", "kb")
    sr.set("q", [SearchHit("doc-1", 0.5)])
    change = bus.document_created("doc-9", "kb")
    assert [a.kind for a in change.actions] == ["revive", "bump"]
    assert sr.get("q") is None  # a new document may answer cached queries
    sr.set("q", [SearchHit("doc-9", 0.9)])  # created again: cacheable again
    assert sr.get("q") == [SearchHit("doc-9", 0.9)]


def test_version_guard_skips_what_the_worker_already_applied(any_redis) -> None:
    """With a version at or below the document's high-water mark (the worker applied a
    newer change), the document part is skipped, as the worker's guard does."""
    bus = CacheBus(any_redis, S)
    keys = bus.invalidator.core.keys
    any_redis.set(keys.hwm("d5"), "5:worker-event")
    sr = bus.search_results("kb")
    sr.set("q", [SearchHit("d5", 0.9)])
    stale = bus.document_deleted("d5", "kb", version=4)
    assert not stale.applied and sr.get("q") == [SearchHit("d5", 0.9)]
    newer = bus.document_deleted("d5", "kb", version=6)
    assert newer.applied and sr.get("q") is None
    assert any_redis.get(keys.hwm("d5")) == b"5:worker-event"  # the library writes no mark


def test_rules_file_is_honoured(any_redis, tmp_path: Path) -> None:
    """CACHEBUS_RULES_FILE applies to the library calls as it does to the worker."""
    rules = tmp_path / "rules.toml"
    rules.write_text("[updated]\nbump_collection = false\n", "utf-8")
    bus = CacheBus(any_redis, S.with_(rules_file=str(rules)))
    sr = bus.search_results("kb")
    sr.set("q", [SearchHit("other", 0.5)])
    change = bus.document_updated("d", "kb")
    assert "bump" not in [a.kind for a in change.actions]
    assert sr.get("q") == [SearchHit("other", 0.5)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"doc_id": ""}, "doc_id must be a non-empty string"),
        ({"collection": ""}, "collection must be a non-empty string"),
        ({"version": -1}, "version must be an integer >= 0"),
        ({"version": True}, "version must be an integer >= 0"),
        ({"tags": [""]}, "tags must be non-empty strings"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"doc_id": "d", "collection": "kb", **kwargs}
    with pytest.raises(ValueError, match=message):
        change_event("updated", **args)  # type: ignore[arg-type]


async def test_async_twins(any_async_redis) -> None:
    bus = AsyncCacheBus(any_async_redis, S)
    sr = bus.search_results("kb")
    await sr.set("q", [SearchHit("d0", 0.5)])
    await sr.set("z", [SearchHit("d9", 0.5)])
    await bus.invalidator.invalidate_documents(["d1"])
    assert await sr.get("q") is not None
    updated = await bus.document_updated("d1", "kb")
    assert updated.applied and await sr.get("q") is None
    await sr.set("q", [SearchHit("d1", 0.9)])
    deleted = await bus.invalidator.document_deleted("d1", "kb")
    assert [a.kind for a in deleted.actions] == ["tombstone", "drop_embeddings"]
    assert await sr.get("q") is None
    created = await bus.document_created("d1", "kb")
    assert [a.kind for a in created.actions] == ["revive", "bump"]
