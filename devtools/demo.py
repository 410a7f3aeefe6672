"""``make demo``: a whole deployment on this machine, and a content pipeline
scenario that shows cached search results being retired, with the audit trail.

Starts redis-server, a single-node Apache Kafka (KRaft) and the worker, then
plays: documents created, searched and cached, updated, deleted; a late write
that the invalidation refuses; a broken event that is dead-lettered.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cachebus import (
    CacheBus,
    CachedSearchService,
    ChunkRef,
    ChunkVector,
    HashingEmbedder,
    SearchHit,
)
from cachebus.codecs import Vector
from devtools.stack import LocalStack, document_event
from worker.audit_tail import format_audit
from worker.settings import WorkerSettings

COLLECTION = "handbook"
DOCS = {
    "vacation-policy": [
        "Employees get 25 vacation days per year.",
        "Unused vacation days carry over until March.",
    ],
    "remote-work": [
        "Remote work is allowed three days a week.",
        "Remote workers get a home office budget.",
    ],
    "expenses": ["Submit expenses within 30 days.", "Travel is booked through the portal."],
}


def say(text: str = "") -> None:
    print(text, flush=True)


def step(text: str) -> None:
    say(f"\n== {text}")


def chunk_hash(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Index:
    """The search backend stand-in (a vector DB in real life): chunk vectors."""

    embedder: HashingEmbedder
    docs: dict[str, tuple[int, list[str]]]
    chunks: dict[tuple[str, str], Vector]
    searches: int = 0

    def search(self, collection: str, vector: Vector, filters: Any, top_k: int) -> list[SearchHit]:
        self.searches += 1
        best: dict[str, tuple[float, str]] = {}
        for (doc, chunk), v in self.chunks.items():
            score = float(np.dot(vector, v))
            if doc not in best or score > best[doc][0]:
                best[doc] = (score, chunk)
        ranked = sorted(best.items(), key=lambda kv: -kv[1][0])[:top_k]
        out = []
        for doc, (score, chunk) in ranked:
            version, texts = self.docs[doc]
            out.append(SearchHit(doc, round(score, 3), chunk, version, texts[int(chunk[1:])]))
        return out


class ContentPipeline:
    """Writes documents to the index (embedding chunks through the document
    embedding cache) and then publishes the event, as real pipelines do."""

    def __init__(self, stack: LocalStack, bus: CacheBus, index: Index) -> None:
        self.stack, self.bus, self.index = stack, bus, index
        self.published = 0
        self.audited: set[tuple[int, int]] = set()

    def upsert(self, doc_id: str, version: int, texts: list[str], kind: str) -> None:
        refs = [ChunkRef(doc_id, f"c{i}", chunk_hash(t)) for i, t in enumerate(texts)]
        lookup = self.bus.document_embeddings(self.index.embedder.model).lookup_chunks(refs)
        todo = [i for i, v in enumerate(lookup.values) if v is None]
        vectors = list(self.index.embedder.embed([texts[i] for i in todo])) if todo else []
        self.bus.document_embeddings(self.index.embedder.model).set_many(
            doc_id,
            [
                ChunkVector(f"c{i}", v, chunk_hash(texts[i]))
                for i, v in zip(todo, vectors, strict=True)
            ],
            ticket=lookup.ticket,
        )
        for i, cached in enumerate(lookup.values):
            vec = cached if cached is not None else vectors[todo.index(i)]
            self.index.chunks[(doc_id, f"c{i}")] = vec
        for key in [k for k in self.index.chunks if k[0] == doc_id and int(k[1][1:]) >= len(texts)]:
            del self.index.chunks[key]
        self.index.docs[doc_id] = (version, texts)
        say(
            f"   {kind} {doc_id} v{version}: {len(todo)} of {len(texts)} chunks embedded, "
            f"{len(texts) - len(todo)} reused from the document embedding cache"
        )
        chunks = [{"chunk_id": r.chunk_id, "content_hash": r.content_hash} for r in refs]
        self.publish(document_event(kind, doc_id, version, collection=COLLECTION, chunks=chunks))

    def delete(self, doc_id: str, version: int) -> None:
        self.index.docs.pop(doc_id)
        for key in [k for k in self.index.chunks if k[0] == doc_id]:
            del self.index.chunks[key]
        say(f"   deleted {doc_id} v{version} from the index")
        self.publish(document_event("deleted", doc_id, version, collection=COLLECTION))

    def publish(self, event: dict[str, Any] | bytes) -> None:
        self.stack.publish([event])
        self.published += 1

    def wait_for_worker(self) -> list[dict[str, Any]]:
        """Wait for the audit of the event just published; all audits so far, in the
        order they were written. (Read back, the audit topic comes partition by
        partition: the new audit is the one whose source record was not audited yet.)"""
        started = time.monotonic()
        audits = self.stack.read_audits(count=self.published, timeout=60)
        audits.sort(key=lambda a: (a["processed_at"], a["source"]["offset"]))
        new = [a for a in audits if _source(a) not in self.audited] or audits[-1:]
        self.audited |= {_source(a) for a in audits}
        waited = 1000 * (time.monotonic() - started)
        for audit in new:
            what = ", ".join(f"{a['kind']} {a['target']}" for a in audit["actions"])
            say(
                f"   worker audited it after {waited:.0f} ms: {audit['outcome']}, "
                + (f"actions: {what}" if what else f"reason: {audit['reason']}")
            )
        return audits


def _source(audit: dict[str, Any]) -> tuple[int, int]:
    return (audit["source"]["partition"], audit["source"]["offset"])


def search(
    service: CachedSearchService, bus: CacheBus, index: Index, query: str
) -> list[SearchHit]:
    layer = bus.search_results(COLLECTION)
    hits_before, searches_before = layer.metrics.hits, index.searches
    started = time.perf_counter()
    results = service.search(COLLECTION, query, top_k=2)
    ms = (time.perf_counter() - started) * 1000
    where = "cache HIT " if layer.metrics.hits > hits_before else "cache MISS"
    backend = "searched the index" if index.searches > searches_before else "index not touched"
    say(f"   search {query!r}: {where} ({backend}, {ms:.1f} ms)")
    for hit in results:
        say(f"      {hit.score:5.3f}  {hit.doc_id} v{hit.doc_version}: {hit.content}")
    return results


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``--help`` prints what the demo does and exits before anything starts."""
    parser = argparse.ArgumentParser(
        prog="python -m devtools.demo",
        description=(
            "make demo: start redis-server, a single-node Apache Kafka (KRaft) and the "
            "invalidation worker on loopback, then play a content pipeline: documents "
            "created, searched and cached, updated, deleted (with a late write the "
            "invalidation refuses), a broken event dead-lettered, and the audit trail. "
            "Everything stops at the end. Needs a source checkout (make setup)."
        ),
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    parse_args(argv)
    say("cachebus demo: Redis + Apache Kafka + the invalidation worker, all on loopback")
    started = time.monotonic()
    step("starting services")
    with LocalStack(settings=WorkerSettings(prefix="demo", topic_partitions=3)) as stack:
        say(f"   redis-server  {stack.redis.url}")
        say(
            f"   Apache Kafka  {stack.kafka.bootstrap} (KRaft, single node; topics "
            f"{stack.settings.events_topic}, {stack.settings.audit_topic}, "
            f"{stack.settings.dlq_topic})"
        )
        worker = stack.start_worker("demo-worker")
        say(
            f"   worker        ready after {time.monotonic() - started:.1f} s "
            f"(faust, group {stack.settings.consumer_group}); log {worker.log_path}"
        )

        bus = CacheBus(stack.redis.client(), stack.settings)
        embedder = HashingEmbedder(dim=256)
        index = Index(embedder, {}, {})
        pipeline = ContentPipeline(stack, bus, index)
        embeddings = bus.embedding_service(embedder)
        service = CachedSearchService(bus.search_results, embeddings, index)

        step("the content pipeline creates three documents")
        for doc_id, texts in DOCS.items():
            pipeline.upsert(doc_id, 1, texts, "created")
        pipeline.wait_for_worker()

        step("the search service answers queries through the caches")
        search(service, bus, index, "how many vacation days do I get")
        search(service, bus, index, "how many vacation days do I get")
        search(service, bus, index, "remote work policy")

        step("vacation-policy is updated: 30 days instead of 25 (one chunk changed)")
        pipeline.upsert(
            "vacation-policy",
            2,
            ["Employees get 30 vacation days per year.", DOCS["vacation-policy"][1]],
            "updated",
        )
        pipeline.wait_for_worker()
        search(service, bus, index, "how many vacation days do I get")

        step("remote-work is deleted, while a slow search is still computing")
        layer = bus.search_results(COLLECTION)
        slow = layer.lookup("remote work home office")  # ticket taken before computing
        stale = index.search(COLLECTION, embedder.embed(["remote work home office"])[0], None, 2)
        pipeline.delete("remote-work", 2)
        pipeline.wait_for_worker()
        layer.set("remote work home office", stale, ticket=slow.ticket)  # the late write
        say("   the slow search wrote its (stale) results after the delete was processed;")
        served = layer.get("remote work home office")
        say(f"   reading them back: {'SERVED (bug!)' if served else 'not served (retired)'}")
        search(service, bus, index, "remote work policy")

        step("a broken event, then an old update of vacation-policy (v1, after v2), arrive")
        pipeline.publish(b'{"event_type": "updated", "doc_id": ')
        pipeline.publish(document_event("updated", "vacation-policy", 1, collection=COLLECTION))
        audits = pipeline.wait_for_worker()
        dead = stack.read_dead_letters(count=1)
        say(
            f"   {stack.settings.dlq_topic} holds it: {dead[0]['reason']}, with the original "
            f"{dead[0]['original_size']} bytes"
        )

        step(f"audit trail ({stack.settings.audit_topic}): one audit event per input event")
        for audit in audits:
            say("   " + format_audit(audit))

        step("cache statistics (this process)")
        stats = bus.stats()
        for name, layer_stats in stats["layers"].items():
            if layer_stats["hits"] + layer_stats["misses"]:
                say(
                    f"   {name:<20} hit rate {layer_stats['hit_rate']:.0%}  "
                    f"hits {layer_stats['hits']}  misses {layer_stats['misses']}  "
                    f"writes refused {layer_stats['writes_refused']}"
                )
        say(
            f"   embedder calls: {embedder.calls}; index searches: {index.searches}; "
            f"Redis memory: {stats['redis_used_memory'] / 1e6:.1f} MB"
        )
        say(f"\ndone in {time.monotonic() - started:.1f} s; everything stops now.")
        return 1 if served else 0


if __name__ == "__main__":
    sys.exit(main())
