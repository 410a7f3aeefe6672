"""The extra hostile corpus (tests/hostile_more.py) through the real worker.

All records go, in order, to one partition (partition 0, each keyed by its doc_id as
the contract asks, or unkeyed when none can be read) of a fresh events topic
and are consumed by one real worker process. Then, per case: exactly one
audit with the expected outcome; a dead-lettered record has a DLQ envelope
with the reason and its original bytes and key; ``drops`` / ``keeps``
documents lost / kept their cached embedding. And for the whole run: the
worker never exited, it still applies a good event afterwards, and the
canaries (embeddings, search results, tagged results, query embeddings and
rerank scores of documents no case targets) are intact.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cachebus import CacheBus, SearchHit, Tag
from devtools.kafka_broker import LocalKafka
from devtools.redis_servers import RedisServer
from devtools.stack import LocalStack, document_event
from tests.hostile_events import HOSTILE
from tests.hostile_more import (
    CANARY_COLLECTION,
    CANARY_DOCS,
    CANARY_MODEL,
    CANARY_QUERY,
    CANARY_TAG,
    DEAD_LETTER_REASONS,
    HOSTILE_MORE,
    KNOWN_BUGS,
    MAX_BYTES,
    VALID_OUTCOMES,
    Case,
)
from worker.events import peek_field
from worker.settings import WorkerSettings

V = np.ones(8, dtype=np.float32)


def _key(value: bytes | None) -> bytes | None:
    """The key a well-behaved producer uses: the record's doc_id, or none (a record
    keyed otherwise is dead-lettered key_mismatch, which is not what these cases test).
    A record without a value (a Kafka tombstone) needs a key: it has no doc_id to match."""
    if value is None:
        return b"tombstone"
    doc_id = peek_field(value, "doc_id")
    return doc_id.encode("utf-8") if doc_id is not None else None
MAX_DLQ_ORIGINAL = 256 * 1024


@dataclass
class Run:
    """Everything the per-case tests look at, gathered in one worker run."""

    offsets: dict[str, int]
    audits: dict[int, list[dict[str, Any]]]
    dead: dict[int, list[dict[str, Any]]]
    cached_after: dict[str, bool]
    canaries: dict[str, bool]
    good_outcome: str | None
    worker_alive: bool
    worker_log: str
    extra: dict[str, Any] = field(default_factory=dict)


async def _publish_raw(settings: WorkerSettings, values: Sequence[bytes | None]) -> list[int]:
    """Publish in order, one record at a time (None = a record without value);
    return their offsets."""
    from aiokafka import AIOKafkaProducer

    from worker.kafka import client_config

    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        max_request_size=2 * 1024 * 1024,
        **client_config(settings),
    )
    await producer.start()
    try:
        offsets = []
        for value in values:
            meta = await (
                await producer.send(settings.events_topic, value, key=_key(value), partition=0)
            )
            offsets.append(meta.offset)
        return offsets
    finally:
        await producer.stop()


def _canaries(bus: CacheBus) -> dict[str, bool]:
    de = bus.document_embeddings(CANARY_MODEL)
    out = {f"embedding {doc!r}": de.get(doc, "c", "h") is not None for doc in CANARY_DOCS}
    per_doc = bus.search_results("canary-per-doc")
    out |= {f"search result of {doc!r}": per_doc.get(f"q-{doc}") is not None
            for doc in CANARY_DOCS}
    out["search results of collection 'canary'"] = (
        bus.search_results(CANARY_COLLECTION).get("q") is not None
    )
    out[f"entry tagged {CANARY_TAG!r}"] = bus.search_results("tagged").get("q") is not None
    out["query embedding"] = bus.query_embeddings(CANARY_MODEL).get(CANARY_QUERY) is not None
    out["rerank scores"] = bus.rerank_scores("rr").get("q", [("canary-1", 1)]) is not None
    return out


@pytest.fixture(scope="module")
def run(
    redis_server: RedisServer, kafka_broker: LocalKafka, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Run]:
    uid = uuid.uuid4().hex[:8]
    settings = WorkerSettings(
        prefix=f"h{uid}", events_topic=f"events-{uid}", audit_topic=f"audit-{uid}",
        dlq_topic=f"dlq-{uid}", consumer_group=f"group-{uid}", batch_wait_ms=10,
    )
    log_dir: Path = tmp_path_factory.mktemp("hostile-more")
    with LocalStack(redis=redis_server, kafka=kafka_broker, settings=settings,
                    log_dir=log_dir) as stack:
        client = stack.redis.client()
        bus = CacheBus(client, stack.settings)
        try:
            de = bus.document_embeddings(CANARY_MODEL)
            for doc in CANARY_DOCS:
                de.set(doc, "c", V, "h")
                bus.search_results("canary-per-doc").set(f"q-{doc}", [SearchHit(doc, 1.0)])
            bus.search_results(CANARY_COLLECTION).set("q", [SearchHit("canary-1", 1.0)])
            bus.search_results("tagged").set("q", [SearchHit("x", 1.0)],
                                             tags=[Tag.user(CANARY_TAG)])
            bus.query_embeddings(CANARY_MODEL).set(CANARY_QUERY, V)
            bus.rerank_scores("rr").set("q", [("canary-1", 1)], [0.5])
            watched = sorted({d for c in HOSTILE_MORE for d in (c.drops, c.keeps) if d})
            for doc in watched:
                de.set(doc, "c", V, "h")
            before = _canaries(bus)
            assert all(before.values()), before
            assert all(de.get(doc, "c", "h") is not None for doc in watched)

            worker = stack.start_worker(max_event_bytes=MAX_BYTES)
            offsets = asyncio.run(_publish_raw(stack.settings, [c.value for c in HOSTILE_MORE]))
            good = document_event("deleted", "hm-after-the-storm", 1)
            (good_offset,) = asyncio.run(_publish_raw(stack.settings, [json.dumps(good).encode()]))
            # The good event is last in the partition: once it is audited, all are.
            audits = stack.read_audits(
                count=len(HOSTILE_MORE) + 1, timeout=180,
                until=lambda got: any(a.get("event_id") == good["event_id"] for a in got),
            )
            dead = stack.read_dead_letters(
                count=stack.count_records(stack.settings.dlq_topic), timeout=60
            )
            by_offset: dict[int, list[dict[str, Any]]] = {}
            for audit in audits:
                by_offset.setdefault(audit["source"]["offset"], []).append(audit)
            dead_by_offset: dict[int, list[dict[str, Any]]] = {}
            for envelope in dead:
                dead_by_offset.setdefault(envelope["source"]["offset"], []).append(envelope)
            good_audits = by_offset.get(good_offset, [])
            yield Run(
                offsets={c.name: o for c, o in zip(HOSTILE_MORE, offsets, strict=True)},
                audits=by_offset,
                dead=dead_by_offset,
                cached_after={doc: de.get(doc, "c", "h") is not None for doc in watched},
                canaries=_canaries(bus),
                good_outcome=good_audits[0]["outcome"] if len(good_audits) == 1 else None,
                worker_alive=worker.alive,
                worker_log=worker.log_path.read_text("utf-8", "replace"),
                extra={"workers_started": len(stack.workers)},
            )
        finally:
            client.close()


# --------------------------------------------------------------------------- corpus


def test_corpus_is_big_new_and_well_formed() -> None:
    names = [c.name for c in HOSTILE_MORE]
    assert len(HOSTILE_MORE) >= 50
    assert len(set(names)) == len(names)
    assert not set(names) & {name for name, _, _ in HOSTILE}, "cases must be new"
    old_values = {value for _, value, _ in HOSTILE}
    assert not [c.name for c in HOSTILE_MORE if c.value in old_values]
    assert set(KNOWN_BUGS) <= set(names)
    for case in HOSTILE_MORE:
        assert case.expected in VALID_OUTCOMES + DEAD_LETTER_REASONS, case.name
        assert len(case.value or b"") < 1_000_000, case.name  # Kafka's default limit
        assert case.drops is None or case.expected == "applied", case.name
    kinds = Counter(c.expected for c in HOSTILE_MORE)
    assert kinds["applied"] >= 20 and sum(kinds[r] for r in DEAD_LETTER_REASONS) >= 30


# --------------------------------------------------------------------------- per case


def _param(case: Case) -> Any:
    marks = (
        [pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[case.name])]
        if case.name in KNOWN_BUGS
        else []
    )
    return pytest.param(case, id=case.name, marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in HOSTILE_MORE])
def test_case(run: Run, case: Case) -> None:
    offset = run.offsets[case.name]
    audits = run.audits.get(offset, [])
    assert len(audits) == 1, f"{len(audits)} audits for offset {offset}"
    (audit,) = audits
    dead = run.dead.get(offset, [])
    if case.expected in VALID_OUTCOMES:
        assert audit["outcome"] == case.expected, audit
        assert dead == []
    else:
        assert audit["outcome"] == "dead_lettered", audit
        assert audit["reason"].split(":", 1)[0] == case.expected, audit["reason"]
        assert len(dead) == 1, f"{len(dead)} dead letters"
        (envelope,) = dead
        value = case.value or b""
        assert envelope["reason"] == case.expected
        assert envelope["detail"]
        assert base64.b64decode(envelope["original_value_b64"]) == value[:MAX_DLQ_ORIGINAL]
        assert envelope["original_size"] == len(value)
        assert envelope["original_truncated"] == (len(value) > MAX_DLQ_ORIGINAL)
        key = _key(case.value)
        assert envelope["original_key_b64"] == (
            None if key is None else base64.b64encode(key).decode("ascii")
        )
    if case.drops is not None:
        assert run.cached_after[case.drops] is False, f"{case.drops!r} still cached"
    if case.keeps is not None:
        assert run.cached_after[case.keeps] is True, f"{case.keeps!r} dropped"


# --------------------------------------------------------------------------- whole run


def test_worker_survives_and_still_applies(run: Run) -> None:
    assert run.worker_alive
    assert run.extra["workers_started"] == 1
    assert "unexpected error" not in run.worker_log
    assert run.good_outcome == "applied"
    # one audit per record, nothing else (no re-delivery: the worker never restarted)
    assert all(len(a) == 1 for a in run.audits.values())
    assert len(run.audits) == len(HOSTILE_MORE) + 1


def test_canaries_intact(run: Run) -> None:
    broken = [label for label, ok in run.canaries.items() if not ok]
    assert broken == []
