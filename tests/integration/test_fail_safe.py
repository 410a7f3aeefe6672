"""A lost control key costs a miss, never a stale read, and caching recovers by
itself: every layer, sync and asyncio, standalone and a 3-primary cluster.

Each case writes a value through the public API, invalidates it, then deletes the
control key that recorded the invalidation (as an eviction, a failover to a
replica that never had it, or an operator's DEL would) and reads again. Before
the fail-safe design every one of these reads returned the invalidated value.
"""

from __future__ import annotations

import numpy as np

from cachebus import (
    AsyncCacheBus,
    CacheBus,
    ChunkRef,
    ChunkVector,
    SearchHit,
    Settings,
)
from cachebus.keys import Tag

S = Settings(prefix="fs")
V1 = np.full(8, 1.0, dtype=np.float32)
V2 = np.full(8, 2.0, dtype=np.float32)


def _delete(client, *keys: str) -> None:
    for key in keys:  # one key per call: on a cluster they live in different slots
        client.delete(key)


class TestSync:
    def test_search_results_lost_stamp(self, any_redis) -> None:
        bus = CacheBus(any_redis, S)
        sr = bus.search_results("col")
        lk = sr.lookup("q")
        sr.set("q", [SearchHit("doc", 1.0, doc_version=1)], ticket=lk.ticket)
        assert sr.get("q") is not None
        bus.invalidator.invalidate_documents(["doc"])
        _delete(any_redis, sr.core.keys.stamp(Tag.doc("doc")))
        assert sr.get("q") is None, "an entry whose stamp was lost must not serve"
        _recovers_search(sr)

    def test_search_results_lost_generation(self, any_redis) -> None:
        bus = CacheBus(any_redis, S)
        sr = bus.search_results("col")
        sr.set("q", [SearchHit("doc", 1.0, doc_version=1)])
        bus.invalidator.bump(collections=["col"])
        _delete(any_redis, sr.core.keys.generation(sr.core.namespace))
        assert sr.get("q") is None
        _recovers_search(sr)

    def test_rerank_lost_stamp(self, any_redis) -> None:
        bus = CacheBus(any_redis, S)
        rr = bus.rerank_scores("rr-model")
        cands = [("doc", 1), ("other", 2)]
        lk = rr.lookup("q", cands)
        rr.set("q", cands, [0.5, 0.25], ticket=lk.ticket)
        assert rr.get("q", cands) == [0.5, 0.25]
        bus.invalidator.invalidate_documents(["doc"], deleted=True)
        _delete(any_redis, rr.core.keys.stamp(Tag.doc("doc")))
        assert rr.get("q", cands) is None, "a lost tombstone must not resurrect scores"
        for _ in range(2):  # recovers: at most one extra miss to re-create the stamp
            lk = rr.lookup("q", cands)
            if lk.values[0] is not None:
                break
            rr.set("q", cands, [0.75, 0.125], ticket=lk.ticket)
        assert rr.get("q", cands) == [0.75, 0.125]

    def test_query_embeddings_lost_generation(self, any_redis) -> None:
        bus = CacheBus(any_redis, S)
        qe = bus.query_embeddings("m", "1")
        qe.set("hello", V1)
        bus.invalidator.bump(models=[("m", "1")])
        _delete(any_redis, qe.core.keys.generation(qe.core.namespace))
        assert qe.get("hello") is None
        qe.set("hello", V2)
        assert np.array_equal(qe.get("hello"), V2)

    def test_every_layer_lost_epoch(self, any_redis) -> None:
        """A missing epoch (FLUSHALL of control keys, restart from empty): all miss."""
        bus = CacheBus(any_redis, S)
        qe, sr = bus.query_embeddings("m"), bus.search_results("col")
        de, rr = bus.document_embeddings("m"), bus.rerank_scores("r")
        qe.set("t", V1)
        sr.set("q", [SearchHit("doc", 1.0)])
        de.set("doc", "c1", V1, "h1")
        rr.set("q", [("doc", 1)], [0.5])
        assert qe.get("t") is not None and sr.get("q") is not None
        assert de.get("doc", "c1", "h1") is not None and rr.get("q", [("doc", 1)]) is not None
        _delete(any_redis, qe.core.keys.epoch())
        assert qe.get("t") is None and sr.get("q") is None
        assert de.get("doc", "c1", "h1") is None and rr.get("q", [("doc", 1)]) is None
        # ...and every layer caches again under the new epoch.
        qe.set("t", V2)
        de.set("doc", "c1", V2, "h1")
        assert np.array_equal(qe.get("t"), V2)
        assert np.array_equal(de.get("doc", "c1", "h1"), V2)
        _recovers_search(sr)

    def test_fence_retires_everything_at_once(self, any_redis) -> None:
        """Writing a new epoch (what a detected data loss does) makes every entry a miss."""
        bus = CacheBus(any_redis, S)
        qe, sr = bus.query_embeddings("m"), bus.search_results("col")
        qe.set("t", V1)
        sr.set("q", [SearchHit("doc", 1.0)])
        any_redis.set(qe.core.keys.epoch(), b"fenced01")
        assert qe.get("t") is None and sr.get("q") is None

    def test_document_embeddings_late_write_after_lost_stamp(self, any_redis) -> None:
        """A chunk computed before an invalidation is refused even if the stamp that
        recorded the invalidation was lost meanwhile."""
        bus = CacheBus(any_redis, S)
        de = bus.document_embeddings("m")
        lk = de.lookup_chunks([ChunkRef("doc", "c1", "h1")])
        bus.invalidator.invalidate_documents(["doc"])
        _delete(any_redis, de.core.keys.stamp(Tag.doc("doc")))
        assert de.set_many("doc", [ChunkVector("c1", V1, "h1")], ticket=lk.ticket) == 0
        assert de.get("doc", "c1", "h1") is None
        # A fresh ticket (taken after the loss) re-creates the stamp and writes.
        for _ in range(2):
            lk = de.lookup_chunks([ChunkRef("doc", "c1", "h1")])
            de.set_many("doc", [ChunkVector("c1", V2, "h1")], ticket=lk.ticket)
        assert np.array_equal(de.get("doc", "c1", "h1"), V2)

    def test_stale_ticket_after_lost_stamp(self, any_redis) -> None:
        """The stale-set race with the stamp evicted in between: the old value,
        computed under a ticket from before the invalidation, never serves."""
        bus = CacheBus(any_redis, S)
        sr = bus.search_results("col")
        sr.set("q", [SearchHit("doc", 1.0, doc_version=0)])  # stamps exist
        _delete(any_redis, sr.core.keys.stamp(Tag.doc("doc")))
        lk = sr.lookup("q")  # miss: the stamp is gone
        assert lk.values == [None]
        bus.invalidator.invalidate_documents(["doc"])  # raises the stamp again
        _delete(any_redis, sr.core.keys.stamp(Tag.doc("doc")))  # ... and loses it
        sr.set("q", [SearchHit("doc", 1.0, doc_version=1)], ticket=lk.ticket)
        assert sr.get("q") is None


def _recovers_search(sr) -> None:
    for _ in range(2):  # at most one extra miss to re-create lost control keys
        lk = sr.lookup("q")
        if lk.values[0] is not None:
            break
        sr.set("q", [SearchHit("doc", 1.0, doc_version=2)], ticket=lk.ticket)
    got = sr.get("q")
    assert got is not None and got[0].doc_version == 2


class TestAsync:
    async def test_lost_stamp_generation_and_epoch(self, any_async_redis) -> None:
        client = any_async_redis
        bus = AsyncCacheBus(client, S)
        sr = bus.search_results("col")
        qe = bus.query_embeddings("m")
        lk = await sr.lookup("q")
        await sr.set("q", [SearchHit("doc", 1.0, doc_version=1)], ticket=lk.ticket)
        await qe.set("t", V1)
        assert await sr.get("q") is not None and await qe.get("t") is not None
        await bus.invalidator.invalidate_documents(["doc"])
        await client.delete(sr.core.keys.stamp(Tag.doc("doc")))
        assert await sr.get("q") is None
        await bus.invalidator.bump(models=[("m", "1")])
        await client.delete(qe.core.keys.generation(qe.core.namespace))
        assert await qe.get("t") is None
        for _ in range(2):
            lk = await sr.lookup("q")
            if lk.values[0] is not None:
                break
            await sr.set("q", [SearchHit("doc", 1.0, doc_version=2)], ticket=lk.ticket)
        got = await sr.get("q")
        assert got is not None and got[0].doc_version == 2
        await qe.set("t", V2)
        assert np.array_equal(await qe.get("t"), V2)
        await client.delete(qe.core.keys.epoch())
        assert await qe.get("t") is None and await sr.get("q") is None


def test_control_keys_carry_no_ttl(redis_client) -> None:
    """No control key carries a TTL, so no volatile-* policy can evict it."""
    bus = CacheBus(redis_client, S)
    bus.search_results("col").set("q", [SearchHit("doc", 1.0)])
    bus.invalidator.invalidate_documents(["doc"])
    bus.invalidator.invalidate_documents(["gone"], deleted=True)
    bus.invalidator.bump(collections=["col"], models=[("m", "1")])
    control = [k for k in redis_client.scan_iter(match="fs:*") if not k.startswith(b"fs:sr:")]
    assert len(control) >= 6  # seq, epoch, 2 stamps + tombstone, 2 generations
    assert {k: redis_client.ttl(k) for k in control} == {k: -1 for k in control}
