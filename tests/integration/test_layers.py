"""The four cache layers on a real redis-server and a real 3-primary Redis
Cluster (every test runs on both through ``any_redis``/``any_async_redis``)."""

from __future__ import annotations

import numpy as np
import pytest

from cachebus import (
    AsyncCacheBus,
    CacheBus,
    ChunkRef,
    ChunkVector,
    ConfigError,
    SearchHit,
    Settings,
    VectorCodec,
)

S = Settings(prefix="t")
rng = np.random.default_rng(1)


def vec(dim: int = 64) -> np.ndarray:
    return rng.standard_normal(dim).astype(np.float32)


class TestQueryEmbeddings:
    def test_round_trip_and_batches(self, any_redis) -> None:
        """set_many/get_many return vectors in input order, misses as None."""
        cache = CacheBus(any_redis, S).query_embeddings("m", "1")
        vectors = {f"q{i}": vec() for i in range(50)}
        assert cache.set_many(vectors) == 50
        texts = ["missing", *vectors, "also missing"]
        got = cache.get_many(texts)
        assert got[0] is None and got[-1] is None
        for text, value in zip(texts[1:-1], got[1:-1], strict=True):
            assert np.array_equal(value, vectors[text])
        assert cache.metrics.hits == 50 and cache.metrics.misses == 2

    def test_ttl_set_with_value(self, any_redis) -> None:
        """TTL comes from the layer default or the call, set in the same command."""
        bus = CacheBus(any_redis, S)
        cache = bus.query_embeddings("m")
        cache.set("a", vec())
        cache.set("b", vec(), ttl=30)
        lk = cache.lookup_many(["a"])
        key_a, key_b = cache.core.entry_keys(["a", "b"], lk.ticket)
        assert 47 * 3600 < any_redis.ttl(key_a) <= 48 * 3600
        assert 0 < any_redis.ttl(key_b) <= 30

    def test_version_bump_retires_everything(self, any_redis) -> None:
        """A model-namespace bump makes every old entry a miss in O(1)."""
        bus = CacheBus(any_redis, S)
        cache = bus.query_embeddings("m", "1")
        other = bus.query_embeddings("m", "2")
        cache.set_many([(f"q{i}", vec()) for i in range(20)])
        other.set("q0", vec())
        gens = bus.invalidator.bump(models=[("m", "1")])
        (gen,) = gens.values()
        # A generation created where none was (or one was lost) is random in
        # [2^52, 2^53): a namespace no key was ever written in. Bumps move it forward.
        assert 2**52 <= gen < 2**53
        assert next(iter(bus.invalidator.bump(models=[("m", "1")]).values())) > gen
        assert cache.get_many([f"q{i}" for i in range(20)]) == [None] * 20
        assert other.get("q0") is not None  # other model version untouched

    @pytest.mark.parametrize("codec", ["float16", "int8", "float32+zlib", "int8+zlib"])
    def test_codecs(self, any_redis, codec: str) -> None:
        """Every codec stores and reads back within its fidelity."""
        cache = CacheBus(any_redis, S).query_embeddings("m", codec=VectorCodec.parse(codec))
        v = vec(384)
        cache.set("x", v)
        out = cache.get("x")
        assert out is not None
        assert float(np.dot(out, v) / np.linalg.norm(out) / np.linalg.norm(v)) > 0.999

    def test_foreign_value_is_a_miss(self, any_redis) -> None:
        """A value with a bad header or another dimension is a miss, not a crash."""
        bus = CacheBus(any_redis, S)
        cache = bus.query_embeddings("m")
        lk = cache.lookup_many(["x", "y"])
        key_x, _key_y = cache.core.entry_keys(["x", "y"], lk.ticket)
        any_redis.set(key_x, b"[0.1, 0.2]")  # the lesson's JSON format
        cache.set("y", vec(32))
        strict_dim = bus.query_embeddings("m")
        strict_dim.core.dim = 64
        assert strict_dim.get_many(["x", "y"]) == [None, None]


class TestDocumentEmbeddings:
    def test_content_hash_gates_reads(self, any_redis) -> None:
        """A read with a content hash only returns a vector of that content."""
        de = CacheBus(any_redis, S).document_embeddings("m")
        v = vec()
        de.set_many("doc*1", [ChunkVector("c1", v, "h1"), ChunkVector("c2", vec(), "h2")])
        assert np.array_equal(de.get("doc*1", "c1", "h1"), v)
        assert de.get("doc*1", "c1") is not None
        assert de.get("doc*1", "c1", "changed") is None
        assert de.get_many("doc*1", ["c1", "c2", "c3"], ["h1", "h2", "h3"])[2] is None

    def test_other_models_vectors_never_served(self, any_redis) -> None:
        """Chunks are per embedding model: another model's vector is a miss, and a
        document invalidation drops every model's chunks."""
        bus = CacheBus(any_redis, S)
        bus.document_embeddings("model-a").set("d", "c1", vec(), "h")
        assert bus.document_embeddings("model-b").get("d", "c1", "h") is None
        assert bus.document_embeddings("model-a", "2").get("d", "c1", "h") is None
        bus.document_embeddings("model-b").set("d", "c1", vec(), "h")
        report = bus.invalidator.invalidate_documents(["d"])
        assert report.embeddings_removed == {"d": 2}

    def test_cross_document_lookup_one_round_trip(self, any_redis) -> None:
        """Chunks of many documents in one call, in request order."""
        de = CacheBus(any_redis, S).document_embeddings("m")
        vs = {f"d{i}": vec() for i in range(10)}
        de.set_chunks({d: [ChunkVector("c", v, "h")] for d, v in vs.items()})
        refs = [ChunkRef(d, "c", "h") for d in reversed(list(vs))]
        got = de.lookup_chunks(refs).values
        for ref, value in zip(refs, got, strict=True):
            assert np.array_equal(value, vs[ref.doc_id])

    def test_update_drops_only_changed_chunks(self, any_redis) -> None:
        """Invalidating a doc with an explicit chunk list keeps unchanged chunks."""
        from cachebus import DocumentInvalidation

        bus = CacheBus(any_redis, S)
        de = bus.document_embeddings("m")
        de.set_many("d", [ChunkVector("c1", vec(), "h1"), ChunkVector("c2", vec(), "h2")])
        report = bus.invalidator.invalidate(
            documents=[DocumentInvalidation("d", "bump", "fields", ("c2",))]
        )
        assert report.embeddings_removed == {"d": 1}
        assert de.get("d", "c1", "h1") is not None
        assert de.get("d", "c2", "h2") is None

    def test_delete_drops_all_and_refuses_late_writes(self, any_redis) -> None:
        """A deleted document's embeddings go, and stay gone, until revived."""
        bus = CacheBus(any_redis, S)
        de = bus.document_embeddings("m")
        de.set("gone", "c1", vec(), "h")
        bus.invalidator.invalidate_documents(["gone"], deleted=True)
        assert de.get("gone", "c1") is None
        assert de.set("gone", "c1", vec(), "h") == 0  # fresh ticket, still refused
        assert de.metrics.writes_refused == 1


class TestSearchResults:
    def test_round_trip(self, any_redis) -> None:
        """Results come back as SearchHit lists; filters are canonical (order-free)."""
        sr = CacheBus(any_redis, S).search_results("news")
        hits = [SearchHit("a", 0.9, "c1", 3, "text", {"k": 1}), SearchHit("b", 0.5)]
        sr.set("q", hits, {"lang": "en", "year": 2024}, 5)
        assert sr.get("q", {"year": 2024, "lang": "en"}, 5) == hits
        assert sr.get("q", {"year": 2024, "lang": "en"}, 6) is None
        assert sr.get("q", None, 5) is None

    def test_doc_invalidation_retires_results_containing_it(self, any_redis) -> None:
        """Invalidating doc X retires exactly the result lists that contain X."""
        bus = CacheBus(any_redis, S)
        sr = bus.search_results("news")
        sr.set("with-x", [SearchHit("x", 1.0), SearchHit("y", 0.5)])
        sr.set("without-x", [SearchHit("y", 1.0)])
        bus.invalidator.invalidate_documents(["x"])
        assert sr.get("with-x") is None
        assert sr.get("without-x") is not None

    def test_collection_bump(self, any_redis) -> None:
        """A new document bumps the collection: all its cached lists retire."""
        bus = CacheBus(any_redis, S)
        news, blog = bus.search_results("news"), bus.search_results("blog")
        news.set("q", [SearchHit("a", 1.0)])
        blog.set("q", [SearchHit("a", 1.0)])
        bus.invalidator.bump(collections=["news"])
        assert news.get("q") is None
        assert blog.get("q") is not None

    def test_ttl_cannot_outlive_stamps(self, any_redis) -> None:
        """A tagged entry with a TTL above stamp_ttl is refused clearly."""
        sr = CacheBus(any_redis, S).search_results("news")
        with pytest.raises(ConfigError):
            sr.set("q", [SearchHit("a", 1.0)], ttl=S.stamp_ttl + 1)


class TestRerankScores:
    def test_round_trip_and_version_in_key(self, any_redis) -> None:
        """Scores align with candidates; a new doc version is a new key."""
        rr = CacheBus(any_redis, S).rerank_scores("bge-reranker")
        rr.set("q", [("a", 1), ("b", 7)], [0.25, 0.75])
        assert rr.get("q", [("a", 1), ("b", 7)]) == [0.25, 0.75]
        assert rr.get("q", [("a", 2), ("b", 7)]) is None

    def test_deleted_doc_scores_never_serve(self, any_redis) -> None:
        """Scores that include a deleted document are retired."""
        bus = CacheBus(any_redis, S)
        rr = bus.rerank_scores("m")
        rr.set("q", [("a", 1), ("b", 1)], [0.1, 0.2])
        bus.invalidator.invalidate_documents(["b"], deleted=True)
        assert rr.get("q", [("a", 1), ("b", 1)]) is None


class TestAsyncLayers:
    async def test_all_layers(self, any_async_redis) -> None:
        """The asyncio shells run the same programs."""
        bus = AsyncCacheBus(any_async_redis, S)
        qe = bus.query_embeddings("m")
        v = vec()
        await qe.set_many([("a", v), ("b", v)])
        got = await qe.get_many(["a", "zz", "b"])
        assert got[1] is None and np.array_equal(got[0], v)
        await bus.document_embeddings("m").set("d", "c", v, "h")
        assert await bus.document_embeddings("m").get("d", "c", "h") is not None
        sr = bus.search_results("news")
        await sr.set("q", [SearchHit("d", 1.0)])
        rr = bus.rerank_scores("m")
        await rr.set("q", [("d", 1)], [0.5])
        assert await sr.get("q") is not None and await rr.get("q", [("d", 1)]) == [0.5]
        await bus.invalidator.invalidate_documents(["d"], deleted=True)
        assert await sr.get("q") is None
        assert await rr.get("q", [("d", 1)]) is None
        assert await bus.document_embeddings("m").get("d", "c") is None
        stats = await bus.stats()
        assert stats["redis_used_memory"] > 0
        assert stats["layers"]["search_results"]["hits"] == 1


def test_stats(any_redis) -> None:
    """stats() reports per-layer hit rates and Redis memory."""
    bus = CacheBus(any_redis, S)
    qe = bus.query_embeddings("m")
    qe.set("a", vec())
    qe.get_many(["a", "a", "a", "b"])
    stats = bus.stats()
    assert stats["layers"]["query_embeddings"]["hit_rate"] == 0.75
    assert stats["layers"]["query_embeddings"]["bytes_written"] > 64 * 4
    assert stats["redis_used_memory"] > 0


def test_decoding_client_refused(redis_server) -> None:
    """A client that decodes responses would corrupt vectors: clear error."""
    client = redis_server.client(decode_responses=True)
    try:
        with pytest.raises(ConfigError, match="decode_responses"):
            CacheBus(client, S)
    finally:
        client.close()


def test_batches_are_one_mget(redis_client) -> None:
    """get_many of 100 texts is one MGET (the generation and the epoch ride along),
    and set_many one pipeline of SET ... EX after one ticket round trip (no EXPIRE)."""
    cache = CacheBus(redis_client, S).query_embeddings("m")
    cache.set("warm-up", vec())  # creates the sequence, epoch and generation
    texts = [f"q{i}" for i in range(100)]
    redis_client.config_resetstat()
    cache.set_many([(t, vec()) for t in texts])
    cache.get_many(texts)
    stats = redis_client.info("commandstats")
    assert stats["cmdstat_mget"]["calls"] == 1
    assert stats["cmdstat_set"]["calls"] == 100
    assert "cmdstat_expire" not in stats and "cmdstat_setex" not in stats
    # set_many's ticket: the sequence script (sequence, epoch, server time) and the
    # generation script, sent together.
    assert stats["cmdstat_evalsha"]["calls"] == 2
