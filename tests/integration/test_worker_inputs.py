"""The worker's other input formats end to end on the real local Kafka + Redis:
Debezium-shaped change events (record key = the primary key JSON, as Debezium writes
it) on a ``[[debezium]]`` topic, and binary-mode CloudEvents (one of them the README's
example) on the events topic; the caches checked through the library, and the audit."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from cachebus import CacheBus, SearchHit
from devtools.stack import LocalStack
from tests import debezium_shapes as dbz
from tests.guarantees import V
from tests.readme_examples import run_example
from worker.kafka import acreate_topics
from worker.replay import ReplayOptions, replay

Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]


async def _produce(stack: LocalStack, topic: str, records: Sequence[Record]) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=stack.settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for key, value, headers in records:  # in order: one document's changes
            await producer.send_and_wait(topic, value, key=key, headers=headers)
    finally:
        await producer.stop()


def _ce_headers(doc_id: str, ce_type: str) -> list[tuple[str, bytes]]:
    return [
        ("ce_specversion", b"1.0"),
        ("ce_id", f"cms-{uuid.uuid4().hex[:8]}".encode()),  # not a UUID: derived event_id
        ("ce_source", b"/cms/test"),
        ("ce_type", ce_type.encode()),
        ("ce_subject", doc_id.encode()),
        ("content-type", b"application/json"),
    ]


def test_debezium_and_cloudevents_reach_the_caches(
    stack: LocalStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = f"{dbz.TOPIC}-{uuid.uuid4().hex[:6]}"
    # Kafka Connect creates Debezium's topics: 3 partitions here, not the worker's 6.
    asyncio.run(acreate_topics(stack.settings.kafka_bootstrap, {topic: 3}))
    rules = tmp_path / "rules.toml"
    rules.write_text(
        dbz.RULES.replace(dbz.TOPIC, topic)
        + '\n[cloudevents]\ntypes = { "com.example.document.published" = "created" }\n'
    )
    bus = CacheBus(stack.redis.client(), stack.settings)
    emb = bus.document_embeddings("m")
    results = bus.search_results("handbook")
    for doc in ("101", "102", "103", "kb/1", "kb/article-1042"):
        emb.set(doc, "c", V, "h-old")
        bus.search_results("other").set(f"q-{doc}", [SearchHit(doc, 1.0)])
    results.set("q", [SearchHit("103", 1.0)])
    stack.start_worker(rules_file=str(rules))

    chunks = [{"chunk_id": "c", "content_hash": "h-new"}]
    changes: list[Record] = [
        # 101: updated at LSN 2000 (its chunk changed), then an older change re-sent.
        (dbz.key(101), dbz.encode(dbz.with_schema(dbz.envelope(
            "u", before=dbz.row(101), after=dbz.row(101, chunks=chunks), lsn=2000))), []),
        (dbz.key(101), dbz.encode(dbz.with_schema(dbz.envelope(
            "u", before=dbz.row(101), after=dbz.row(101, chunks=chunks), lsn=1500))), []),
        # 102: deleted (REPLICA IDENTITY FULL), then Debezium's tombstone.
        (dbz.key(102), dbz.encode(dbz.with_schema(dbz.envelope(
            "d", before=dbz.row(102), lsn=2100))), []),
        (dbz.key(102), None, []),
        # 104: a delete with only the key (REPLICA IDENTITY DEFAULT): dead-lettered.
        (dbz.key(104), dbz.encode(dbz.envelope("d", before={"id": 104}, lsn=2200)), []),
        (dbz.key(105), b"not json", []),
        # 106: created (without schemas): the collection's result lists retire.
        (dbz.key(106, schemas=False), dbz.encode(dbz.envelope(
            "c", after=dbz.row(106), lsn=2300)), []),
    ]  # fmt: skip
    asyncio.run(_produce(stack, topic, changes))
    events: list[Record] = [
        (b"kb/1", json.dumps({"collection": "kb", "doc_version": 3}).encode(),
         _ce_headers("kb/1", "com.example.document.deleted")),
        (None, json.dumps({"collection": "kb", "doc_version": 1}).encode(),
         [*_ce_headers("kb/9", "x.created")[1:], ("ce_specversion", b"0.3")]),
    ]  # fmt: skip
    asyncio.run(_produce(stack, stack.settings.events_topic, events))
    # The README's example: one binary-mode CloudEvent, published with aiokafka.
    monkeypatch.setenv("CACHEBUS_KAFKA_BOOTSTRAP", stack.settings.kafka_bootstrap)
    monkeypatch.setenv("CACHEBUS_EVENTS_TOPIC", stack.settings.events_topic)
    run_example("cloudevents")

    audits = stack.read_audits(count=10)
    by: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    for audit in audits:
        by.setdefault((audit["source"]["topic"], audit["doc_id"]), []).append(audit)
    outcomes = {k: [a["outcome"] for a in v] for k, v in by.items()}
    assert outcomes[(topic, "101")] == ["applied", "skipped_stale"]
    assert by[(topic, "101")][0]["doc_version"] == 2000
    assert outcomes[(topic, "102")] == ["applied", "skipped_tombstone"]
    assert "tombstone" in by[(topic, "102")][1]["reason"]
    assert outcomes[(topic, "106")] == ["applied"]
    dead = [a for a in audits if a["outcome"] == "dead_lettered"]
    assert len(dead) == 3
    assert any("REPLICA IDENTITY FULL" in a["reason"] for a in dead)
    assert any(a["reason"].startswith(("invalid_json", "invalid_encoding")) for a in dead)
    assert any("specversion '0.3'" in a["reason"] for a in dead)
    events_topic = stack.settings.events_topic
    assert outcomes[(events_topic, "kb/1")] == ["applied"]
    readme = by[(events_topic, "kb/article-1042")][0]
    assert (readme["outcome"], readme["event_type"], readme["doc_version"]) == (
        "applied",
        "updated",
        8,
    )
    assert len(stack.read_dead_letters(count=3)) == 3  # the tombstone is not one

    # The caches, through the library.
    assert emb.get("101", "c") is None  # its chunk's hash changed
    assert emb.get("102", "c") is None and emb.get("kb/1", "c") is None  # deleted
    assert emb.get("kb/article-1042", "c") is None  # the README's update
    assert bus.search_results("other").get("q-102") is None
    assert bus.search_results("other").get("q-kb/1") is None
    assert results.get("q") is None  # 106 created in handbook
    assert emb.get("103", "c") is not None  # untouched documents keep their entries
    assert bus.search_results("other").get("q-103") is not None
    assert not stack.agent_crashes()

    # `cachebus replay` reads the Debezium topic too: everything is already applied.
    settings = stack.settings.with_(rules_file=str(rules))
    report = asyncio.run(replay(settings, ReplayOptions(audit=False, progress=False)))
    assert report.events == 10
    assert report.outcomes == {
        "skipped_duplicate": 5,
        "skipped_stale": 1,
        "skipped_tombstone": 1,
        "dead_lettered": 3,
    }
    assert {k.rsplit(":", 1)[0] for k in report.start} == {events_topic, topic}


async def _topics(stack: LocalStack) -> dict[str, int]:
    """Every topic and its partition count, asked without naming a topic (a metadata
    request naming a missing topic may create it on this broker)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=stack.settings.kafka_bootstrap)
    await admin.start()
    try:
        names = await admin.list_topics()
        found = await admin.describe_topics(names)
        return {t["topic"]: len(t["partitions"]) for t in found}
    finally:
        await admin.close()


def test_a_debezium_topic_created_after_the_worker_started(
    stack: LocalStack, tmp_path: Path
) -> None:
    """Kafka Connect creates a Debezium topic on the table's first change, and the
    worker is often started first. It starts, says once that the topic is not there
    yet, never creates it (this broker auto-creates topics, Kafka's default: the
    worker's own metadata requests must not), and consumes it once Connect has
    created it with its own partition count."""
    topic = f"{dbz.TOPIC}-{uuid.uuid4().hex[:6]}"
    rules = tmp_path / "rules.toml"
    rules.write_text(dbz.RULES.replace(dbz.TOPIC, topic))
    bus = CacheBus(stack.redis.client(), stack.settings)
    emb = bus.document_embeddings("m")
    emb.set("7", "c", V, "h-old")
    worker = stack.start_worker(rules_file=str(rules))  # Ready without the topic

    waiting = "debezium topic does not exist yet"
    deadline = time.monotonic() + 20
    while waiting not in worker.log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert waiting in worker.log_path.read_text(), worker.log_tail()
    assert topic not in asyncio.run(_topics(stack))  # metadata refreshed: still not created

    asyncio.run(acreate_topics(stack.settings.kafka_bootstrap, {topic: 3}))  # Kafka Connect
    change = dbz.encode(dbz.with_schema(dbz.envelope("d", before=dbz.row(7), lsn=5000)))
    asyncio.run(_produce(stack, topic, [(dbz.key(7), change, [])]))

    (audit,) = stack.read_audits(count=1, timeout=40)
    assert (audit["source"]["topic"], audit["doc_id"]) == (topic, "7")
    assert (audit["outcome"], audit["event_type"], audit["doc_version"]) == (
        "applied",
        "deleted",
        5000,
    )
    assert emb.get("7", "c") is None  # the document's entries are gone
    assert asyncio.run(_topics(stack))[topic] == 3  # Connect's partition count
    lines = worker.log_path.read_text().splitlines()
    assert sum(waiting in line for line in lines) == 1
    assert any("debezium topic appeared" in line and topic in line for line in lines)
    noise = ("not found in cluster metadata", "Ignoring missing topic")
    assert not [line for line in lines if topic in line and any(n in line for n in noise)]
    assert worker.alive
