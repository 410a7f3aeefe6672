"""Scale-out: two worker processes in one consumer group over six partitions,
with the 3-primary Redis Cluster as the cache (and, for the guarantees, a
standalone Redis too).

* One of the two workers is SIGKILLed mid-run: the group gives its partitions
  to the survivor after the session timeout; every event is applied and
  audited, every high-water mark is right, per-document order holds.
* Guarantees 1-3 (created / updated / deleted retire exactly what they
  should, canaries stay) hold while two workers share the partitions.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from cachebus import CacheBus, ChunkVector, SearchHit
from soak import AuditChecker, SteadyProducer, check_marks, collect_audits, last_versions, stream
from worker.stack import LocalStack, by_event_id, document_event

V = np.ones(16, dtype=np.float32)
SESSION_TIMEOUT = 6.0


def _audited(stack: LocalStack) -> int:
    return stack.count_records(stack.settings.audit_topic)


def _wait_both_working(stack: LocalStack, names: set[str], timeout: float = 60.0) -> None:
    """Until audits of every worker in ``names`` exist (both own partitions)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        count = _audited(stack)
        if count:
            audits = stack.read_audits(count=count)
            if names <= {a["worker_id"] for a in audits}:
                return
        time.sleep(0.5)
    raise TimeoutError(f"not every worker of {names} audited within {timeout}s")


def test_two_workers_on_redis_cluster_one_killed(cluster_stack: LocalStack) -> None:
    """2 workers, 6 partitions, Redis Cluster; w1 SIGKILLed while events keep
    arriving: w2 takes over w1's partitions, nothing is lost."""
    stack = cluster_stack
    assert stack.settings.redis_cluster and stack.settings.topic_partitions == 6
    events = stream(400, 8, doc_prefix="so")  # 3200 events
    w1 = stack.start_worker("w1", batch_max=20, kafka_session_timeout=SESSION_TIMEOUT)
    w2 = stack.start_worker("w2", batch_max=20, kafka_session_timeout=SESSION_TIMEOUT)
    producer = SteadyProducer(stack.settings, events, rate=250)
    producer.start()
    try:
        _wait_both_working(stack, {"w1", "w2"})
        w1.kill()
        audited = _audited(stack)
        assert producer.is_alive(), "the stream ended before the kill"
    finally:
        producer.finish()
    assert 0 < audited < len(events), f"not killed mid-run: {audited} audited"

    checker = AuditChecker()
    checker.expect(events)
    collect_audits(stack.settings, checker, timeout=90)
    client = stack.redis.client()
    try:
        mismatches = check_marks(client, stack.settings.prefix, last_versions(events))
    finally:
        client.close()
    verdict = checker.verdict(mismatches)
    assert verdict.ok, verdict.summary()
    assert w2.alive
    partitions = set(range(stack.settings.topic_partitions))
    # w1 had partitions of its own, and w2 ended up with all of them.
    assert checker.by_worker_partition["w1"] and checker.by_worker_partition["w1"] < partitions
    assert checker.by_worker_partition["w2"] == partitions


# --------------------------------------------------------------------------- guarantees


def _populate(bus: CacheBus) -> None:
    kb, other = bus.search_results("kb"), bus.search_results("other")
    kb.set("q-ab", [SearchHit("A", 0.9), SearchHit("B", 0.8)])
    kb.set("q-b", [SearchHit("B", 0.9)])
    other.set("q-a", [SearchHit("A", 0.9)])
    other.set("q-c", [SearchHit("C", 0.9)])
    de = bus.document_embeddings("m")
    de.set_many("A", [ChunkVector("c1", V, "h1"), ChunkVector("c2", V, "h2")])
    de.set_many("B", [ChunkVector("c1", V, "hb")])
    de.set_many("C", [ChunkVector("c1", V, "hc")])
    rr = bus.rerank_scores("rr")
    rr.set("q", [("A", 1), ("B", 1)], [0.1, 0.2])
    rr.set("q", [("C", 1)], [0.3])
    bus.query_embeddings("m").set("hello", V)


def _wait_applied(stack: LocalStack, event: dict[str, Any]) -> str:
    """Wait for the event's audit; return the worker that applied it."""
    audits = stack.read_audits(
        count=1, until=lambda got: any(a["event_id"] == event["event_id"] for a in got)
    )
    (audit,) = by_event_id(audits)[event["event_id"]]
    assert audit["outcome"] == "applied"
    return str(audit["worker_id"])


@pytest.fixture(params=["standalone", "cluster"])
def any_stack(request: pytest.FixtureRequest) -> LocalStack:
    name = "stack" if request.param == "standalone" else "cluster_stack"
    stack: LocalStack = request.getfixturevalue(name)
    return stack


def test_guarantees_with_two_workers_sharing_partitions(any_stack: LocalStack) -> None:
    """Guarantees 1-3 with two workers in the group: whichever worker owns a
    document's partition, created/updated/deleted retire exactly what they
    should, late writes are refused, canaries stay."""
    stack = any_stack
    stack.start_worker("w1")
    stack.start_worker("w2")
    bus = CacheBus(stack.redis.client(), stack.settings)
    _populate(bus)
    kb, other = bus.search_results("kb"), bus.search_results("other")
    de, rr = bus.document_embeddings("m"), bus.rerank_scores("rr")
    appliers = []

    # Guarantee 3: created D in kb retires kb's cached results, nothing else.
    created = document_event("created", "D", 1, collection="kb")
    stack.publish([created])
    appliers.append(_wait_applied(stack, created))
    assert kb.get("q-ab") is None and kb.get("q-b") is None
    assert other.get("q-a") is not None and other.get("q-c") is not None
    assert de.get("A", "c1", "h1") is not None and de.get("B", "c1") is not None
    assert rr.get("q", [("A", 1), ("B", 1)]) is not None
    assert bus.query_embeddings("m").get("hello") is not None

    # Guarantee 2: updated A (chunk c2 changed) retires what was computed from old A.
    kb.set("q-b", [SearchHit("B", 0.9)])
    lookup = other.lookup("q-a2")  # a value being computed while the event arrives
    updated = document_event(
        "updated", "A", 2, collection="kb",
        chunks=[
            {"chunk_id": "c1", "content_hash": "h1"},
            {"chunk_id": "c2", "content_hash": "NEW"},
        ],
    )
    stack.publish([updated])
    appliers.append(_wait_applied(stack, updated))
    other.set("q-a2", [SearchHit("A", 0.5)], ticket=lookup.ticket)  # late write
    assert other.get("q-a") is None and other.get("q-a2") is None
    assert other.get("q-c") is not None
    assert de.get("A", "c1", "h1") is not None  # unchanged chunk kept
    assert de.get("A", "c2") is None
    assert rr.get("q", [("A", 1), ("B", 1)]) is None
    assert rr.get("q", [("C", 1)]) is not None
    assert de.get("B", "c1") is not None and kb.get("q-b") is None  # kb bumped again

    # Guarantee 1: deleted B retires all of B, including late writes.
    kb.set("q-b", [SearchHit("B", 0.9)])
    kb.set("q-x", [SearchHit("X", 0.9)])
    lookup = kb.lookup("q-b2")
    chunk_lookup = de.lookup_chunks([])
    deleted = document_event("deleted", "B", 2, collection="kb")
    stack.publish([deleted])
    appliers.append(_wait_applied(stack, deleted))
    kb.set("q-b2", [SearchHit("B", 0.1)], ticket=lookup.ticket)
    assert de.set("B", "c1", V, "hb", ticket=chunk_lookup.ticket) == 0
    assert kb.get("q-b") is None and kb.get("q-b2") is None
    assert de.get("B", "c1") is None
    assert kb.get("q-x") is not None  # deletion is not a collection bump
    assert de.get("A", "c1", "h1") is not None and de.get("C", "c1", "hc") is not None
    assert other.get("q-c") is not None and rr.get("q", [("C", 1)]) is not None
    assert bus.query_embeddings("m").get("hello") is not None

    # Both workers really share the group: documents of every partition.
    spread = [document_event("created", f"spread-{i}", 1, collection="spread") for i in range(60)]
    stack.publish(spread)
    audits = stack.read_audits(
        count=len(spread) + 3,
        until=lambda got: {e["event_id"] for e in spread} <= {a["event_id"] for a in got},
    )
    workers = {a["worker_id"] for a in audits if a["collection"] == "spread"}
    assert workers == {"w1", "w2"}, (workers, appliers)
    assert all(a["outcome"] == "applied" for a in audits)
