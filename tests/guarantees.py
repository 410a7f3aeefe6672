"""The created/updated/deleted scenario of the README's guarantees 1-3, shared by
the end-to-end tests with one worker and with two workers in one group."""

from __future__ import annotations

from typing import Any

import numpy as np

from cachebus import CacheBus, ChunkVector, SearchHit
from devtools.stack import LocalStack, by_event_id, document_event

V = np.ones(16, dtype=np.float32)


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


def wait_applied(stack: LocalStack, event: dict[str, Any]) -> str:
    """Wait for the event's audit (audits of different partitions come in any
    order); return the worker that applied it."""
    audits = stack.read_audits(
        count=1, until=lambda got: any(a["event_id"] == event["event_id"] for a in got)
    )
    (audit,) = by_event_id(audits)[event["event_id"]]
    assert audit["outcome"] == "applied"
    return str(audit["worker_id"])


def check_guarantees(stack: LocalStack) -> list[str]:
    """created/updated/deleted retire exactly what guarantees 1-3 say, late writes
    are refused, canaries stay. Returns the workers that applied the 3 events."""
    bus = CacheBus(stack.redis.client(), stack.settings)
    _populate(bus)
    kb, other = bus.search_results("kb"), bus.search_results("other")
    de, rr = bus.document_embeddings("m"), bus.rerank_scores("rr")
    appliers = []

    # Guarantee 3: created D in kb retires kb's cached results, nothing else.
    created = document_event("created", "D", 1, collection="kb")
    stack.publish([created])
    appliers.append(wait_applied(stack, created))
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
    appliers.append(wait_applied(stack, updated))
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
    appliers.append(wait_applied(stack, deleted))
    kb.set("q-b2", [SearchHit("B", 0.1)], ticket=lookup.ticket)
    assert de.set("B", "c1", V, "hb", ticket=chunk_lookup.ticket) == 0
    assert kb.get("q-b") is None and kb.get("q-b2") is None
    assert de.get("B", "c1") is None
    assert kb.get("q-x") is not None  # deletion is not a collection bump
    assert de.get("A", "c1", "h1") is not None and de.get("C", "c1", "hc") is not None
    assert other.get("q-c") is not None and rr.get("q", [("C", 1)]) is not None
    assert bus.query_embeddings("m").get("hello") is not None

    return appliers
