"""Bad input end to end: the hostile corpus (tests/hostile_events.py) goes
through the real worker. Each record is dead-lettered with its reason or
processed safely; the worker keeps running; canary keys are intact."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import numpy as np

from cachebus import CacheBus, ChunkVector, SearchHit
from devtools.stack import LocalStack, document_event
from tests.hostile_events import HOSTILE, MAX_BYTES, OK
from worker.events import peek_field
from worker.kafka import OVERSIZE_HEADROOM, client_config


def publish_in_order(stack: LocalStack, records: list[tuple[bytes | None, bytes]]) -> None:
    """Produce (key, value) records to partition 0 of the events topic, in order."""
    from aiokafka import AIOKafkaProducer

    async def run() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=stack.settings.kafka_bootstrap,
            acks="all",
            max_request_size=8 * 1024 * 1024,
            **client_config(stack.settings),
        )
        await producer.start()
        try:
            for key, value in records:
                await producer.send_and_wait(
                    stack.settings.events_topic, value, key=key, partition=0
                )
        finally:
            await producer.stop()

    asyncio.run(run())


def keyed_by_doc_id(value: bytes) -> bytes | None:
    """What a well-behaved producer uses as the key: the doc_id, or none if unreadable."""
    doc_id = peek_field(value, "doc_id")
    return doc_id.encode("utf-8") if doc_id is not None else None


def read_keyed(stack: LocalStack, topic: str, count: int) -> list[tuple[bytes | None, Any]]:
    """(key, JSON value) of the first ``count`` records of ``topic``."""
    from aiokafka import AIOKafkaConsumer

    async def run() -> list[tuple[bytes | None, Any]]:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=stack.settings.kafka_bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            **client_config(stack.settings),
        )
        await consumer.start()
        out: list[tuple[bytes | None, Any]] = []
        try:
            async with asyncio.timeout(60):
                while len(out) < count:
                    for records in (await consumer.getmany(timeout_ms=200)).values():
                        out += [(r.key, json.loads(r.value)) for r in records]
        finally:
            await consumer.stop()
        return out

    return asyncio.run(run())


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
    publish_in_order(stack, [(keyed_by_doc_id(value), value) for _, value, _ in HOSTILE])
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


def test_key_mismatch_is_dead_lettered_and_audits_are_keyed_by_doc_id(
    stack: LocalStack,
) -> None:
    """A record whose key is not its doc_id goes to the DLQ (reason key_mismatch, the
    original key kept); a record without a key is applied; every audit is keyed by the
    event's doc_id (schemas/README.md), not by the record's key."""
    stack.start_worker()
    wrong = document_event("updated", "kb/article-1", 2, collection="kb")
    unkeyed = document_event("updated", "kb/article-2", 2, collection="kb")
    right = document_event("updated", "kb/article-3", 2, collection="kb")
    publish_in_order(
        stack,
        [
            (b"kb", json.dumps(wrong).encode()),
            (None, json.dumps(unkeyed).encode()),
            (b"kb/article-3", json.dumps(right).encode()),
        ],
    )
    audits = read_keyed(stack, stack.settings.audit_topic, 3)
    by_event = {audit["event_id"]: (key, audit) for key, audit in audits}
    key, audit = by_event[wrong["event_id"]]
    assert (key, audit["outcome"]) == (b"kb/article-1", "dead_lettered")
    assert audit["reason"].startswith("key_mismatch: record key 'kb' is not the event's doc_id")
    for event in (unkeyed, right):
        key, audit = by_event[event["event_id"]]
        assert (key, audit["outcome"]) == (event["doc_id"].encode(), "applied")
    ((dlq_key, envelope),) = read_keyed(stack, stack.settings.dlq_topic, 1)
    assert (dlq_key, envelope["reason"]) == (b"kb", "key_mismatch")
    assert base64.b64decode(envelope["original_key_b64"]) == b"kb"


def test_oversize_records_reach_the_worker_and_are_dead_lettered(stack: LocalStack) -> None:
    """With the default limit (1,000,000 bytes) a 1.5 MB event is over the broker's
    default max.message.bytes; the events topic the worker creates takes records up to
    max_event_bytes + 1 MiB, so it reaches the worker and is dead-lettered (oversize)."""
    assert stack.settings.max_event_bytes == 1_000_000
    big = document_event("updated", "big-doc", 1, collection="kb")
    big["metadata"] = {"body": "x" * 1_500_000}
    value = json.dumps(big).encode()
    assert 1_048_588 < len(value) < stack.settings.max_event_bytes + OVERSIZE_HEADROOM
    stack.start_worker()
    publish_in_order(stack, [(b"big-doc", value)])
    ((key, audit),) = read_keyed(stack, stack.settings.audit_topic, 1)
    # An oversize value is not parsed: its audit has no doc_id, hence no key.
    assert (key, audit["doc_id"], audit["outcome"]) == (None, None, "dead_lettered")
    assert audit["reason"].startswith("oversize: ")
    ((_, envelope),) = read_keyed(stack, stack.settings.dlq_topic, 1)
    assert envelope["reason"] == "oversize" and envelope["original_truncated"] is True
    assert envelope["original_size"] == len(value)
