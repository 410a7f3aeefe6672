"""Bad input end to end: the hostile corpus (tests/hostile_events.py) goes
through the real worker. Each record is dead-lettered with its reason or
processed safely; the worker keeps running; canary keys are intact."""

from __future__ import annotations

import base64

import numpy as np

from cachebus import CacheBus, ChunkVector, SearchHit
from tests.hostile_events import HOSTILE, MAX_BYTES, OK
from worker.stack import LocalStack, document_event


def test_hostile_corpus_is_dead_lettered_or_processed_safely(stack: LocalStack) -> None:
    """Every hostile record gets exactly one audit; bad ones land in the DLQ with
    the original bytes; none touches other documents' keys; the worker survives."""
    assert len(HOSTILE) >= 20
    bus = CacheBus(stack.redis.client(), stack.settings)
    canary_vec = np.ones(8, dtype=np.float32)
    bus.document_embeddings("m").set_many("canary-1", [ChunkVector("c", canary_vec, "h")])
    bus.search_results("canary").set("q", [SearchHit("canary-1", 1.0)])
    bus.query_embeddings("m").set("canary", canary_vec)

    worker = stack.start_worker(max_event_bytes=MAX_BYTES)
    stack.publish([value for _, value, _ in HOSTILE], key=b"hostile")  # one partition, in order
    audits = sorted(stack.read_audits(count=len(HOSTILE), timeout=120),
                    key=lambda a: a["source"]["offset"])
    assert len(audits) == len(HOSTILE)
    expected_dead = [(name, value, want) for name, value, want in HOSTILE if want != OK]
    dead = sorted(stack.read_dead_letters(count=len(expected_dead)),
                  key=lambda d: d["source"]["offset"])

    dead_by_offset = {d["source"]["offset"]: d for d in dead}
    for (name, value, want), audit in zip(HOSTILE, audits, strict=True):
        if want == OK:
            assert audit["outcome"] in ("applied", "skipped_stale", "skipped_duplicate"), name
            continue
        assert audit["outcome"] == "dead_lettered", name
        assert audit["reason"].startswith(want), (name, audit["reason"])
        envelope = dead_by_offset[audit["source"]["offset"]]
        assert envelope["reason"] == want, name
        kept = base64.b64decode(envelope["original_value_b64"])
        assert value.startswith(kept) and envelope["original_size"] == len(value), name

    # The worker is still alive and still applies good events.
    good = document_event("deleted", "after-the-storm", 1)
    stack.publish([good])
    last = stack.read_audits(count=len(HOSTILE) + 1)
    assert any(a["event_id"] == good["event_id"] and a["outcome"] == "applied" for a in last)
    assert worker.alive

    # Canaries: no hostile record reached another document's keys.
    assert bus.document_embeddings("m").get("canary-1", "c", "h") is not None
    assert bus.search_results("canary").get("q") is not None
    assert bus.query_embeddings("m").get("canary") is not None
