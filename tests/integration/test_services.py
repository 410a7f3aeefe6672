"""Cache-aside services and herd control on real Redis (and Redis Cluster)."""

from __future__ import annotations

import logging
import multiprocessing as mp
import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest
import redis

from cachebus import (
    CacheBus,
    CachedEmbeddingService,
    CachedSearchService,
    CacheUnavailableError,
    HashingEmbedder,
    SearchHit,
    Settings,
)
from cachebus.ratelog import FAIL_OPEN
from devtools.redis_servers import RedisServer

S = Settings(prefix="t")


class CountingEmbedder(HashingEmbedder):
    """A hashing embedder that records every text it was asked for."""

    def __init__(self, dim: int = 32, delay: float = 0.0, fail: bool = False) -> None:
        super().__init__(dim=dim)
        self.seen: list[str] = []
        self.delay = delay
        self.fail = fail

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.seen.extend(texts)
        if self.delay:
            time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("provider down")
        return super().embed(texts)


class TestCachedEmbeddingService:
    def test_batch_dedupes_orders_and_sends_only_misses(self, any_redis) -> None:
        """Repeated texts embed once; partial hits keep input order; misses only."""
        emb = CountingEmbedder()
        svc = CachedEmbeddingService(CacheBus(any_redis, S).query_embeddings(emb.model), emb)
        first = svc.embed_batch(["a", "b", "a", "c"])
        assert emb.seen == ["a", "b", "c"] and emb.calls == 1
        assert np.array_equal(first[0], first[2])
        second = svc.embed_batch(["c", "d", "a", "d"])
        assert emb.seen == ["a", "b", "c", "d"] and emb.calls == 2
        reference = HashingEmbedder(dim=32).embed(["c", "d", "a", "d"])
        for got, want in zip(second, reference, strict=True):
            assert np.allclose(got, want)
        assert svc.cache.metrics.provider_calls_avoided >= 2

    def test_provider_error_caches_nothing(self, any_redis) -> None:
        """An embedder error propagates, caches nothing and releases leases."""
        emb = CountingEmbedder(fail=True)
        cache = CacheBus(any_redis, S).query_embeddings(emb.model)
        svc = CachedEmbeddingService(cache, emb)
        with pytest.raises(RuntimeError, match="provider down"):
            svc.embed_batch(["x", "y"])
        assert cache.get_many(["x", "y"]) == [None, None]
        emb.fail = False
        start = time.monotonic()
        svc.embed_batch(["x", "y"])  # leases released: no waiting
        assert time.monotonic() - start < 1.0
        assert cache.get("x") is not None

    def test_fail_open_when_redis_is_down(self) -> None:
        """Redis down: embed still works (provider called), errors are counted;
        strict mode raises CacheUnavailableError instead."""
        with RedisServer(use_env=False) as server:
            client = server.client(socket_timeout=0.5, socket_connect_timeout=0.5,
                                   retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0))
            emb = CountingEmbedder()
            bus = CacheBus(client, S)
            svc = CachedEmbeddingService(bus.query_embeddings(emb.model), emb)
            svc.embed("warm")
            server.stop()
            out = svc.embed_batch(["warm", "cold"])
            assert len(out) == 2 and svc.cache.metrics.errors >= 1
            assert bus.query_embeddings(emb.model).get("warm") is None  # miss, no raise
            strict = CacheBus(client, S.with_(strict=True)).query_embeddings(emb.model)
            with pytest.raises(CacheUnavailableError):
                strict.get("warm")
            client.close()


def test_fail_open_is_logged_once_per_interval_per_layer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis down: every call through the layers and the services fails open (counted)
    but the log gets one WARNING per (layer, error type) per 10 s, not one per call."""
    with RedisServer(use_env=False) as server:
        client = server.client(socket_timeout=0.5, socket_connect_timeout=0.5,
                               retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0))
        emb = CountingEmbedder()
        bus = CacheBus(client, S)
        embeddings = bus.embedding_service(emb)
        index = FakeIndex()
        index.docs["d"] = emb.embed(["d"])[0]
        search = CachedSearchService(bus.search_results, embeddings, index)
        server.stop()
        FAIL_OPEN.reset()
        with caplog.at_level(logging.WARNING, logger="cachebus"):
            for i in range(20):
                assert len(embeddings.embed_batch([f"q{i}", "a"])) == 2
                assert bus.query_embeddings(emb.model).get_many(["x"]) == [None]
                assert search.search("kb", f"query {i}", top_k=1)[0].doc_id == "d"
        failed = [r.getMessage() for r in caplog.records if "failed open" in r.getMessage()]
        assert len(failed) == 2, failed
        assert failed[0].startswith(
            "cachebus query_embeddings embed_batch (embedder called directly) failed open "
            "(CacheUnavailableError): "
        )
        assert failed[1].startswith(
            "cachebus search_results search (pipeline called directly) failed open "
            "(CacheUnavailableError): "
        )
        assert bus.query_embeddings(emb.model).metrics.errors >= 40
        assert FAIL_OPEN.suppressed(("query_embeddings", "CacheUnavailableError")) >= 39
        client.close()


class FakeIndex:
    """A tiny in-memory vector index standing in for the user's search backend."""

    def __init__(self) -> None:
        self.docs: dict[str, np.ndarray] = {}
        self.calls = 0

    def search(self, collection: str, vector: np.ndarray, filters, top_k: int):
        self.calls += 1
        scored = sorted(
            ((float(np.dot(vector, dv)), d) for d, dv in self.docs.items()), reverse=True
        )
        return [SearchHit(d, s) for s, d in scored[:top_k]]


def test_cached_search_service_layers_and_invalidation(any_redis) -> None:
    """Results layer first, then the embedding layer, then the pipeline; a
    document invalidation retires the results that contain it."""
    emb = CountingEmbedder()
    bus = CacheBus(any_redis, S)
    index = FakeIndex()
    for doc in ["red apple", "green pear", "blue sky"]:
        index.docs[doc] = emb.embed([doc])[0]
    emb.seen.clear()
    svc = CachedSearchService(
        bus.search_results, CachedEmbeddingService(bus.query_embeddings(emb.model), emb), index
    )
    first = svc.search("fruit", "apple", top_k=2)
    assert first[0].doc_id == "red apple" and index.calls == 1 and emb.seen == ["apple"]
    assert svc.search("fruit", "apple", top_k=2) == first and index.calls == 1
    bus.invalidator.invalidate_documents(["red apple"], deleted=True)
    del index.docs["red apple"]
    again = svc.search("fruit", "apple", top_k=2)
    assert index.calls == 2 and emb.seen == ["apple"]  # embedding still cached
    assert "red apple" not in [h.doc_id for h in again]


# -- herd control across processes ------------------------------------------

TEXTS = [f"popular query {i}" for i in range(8)]


class RedisCountingEmbedder(HashingEmbedder):
    """Counts provider calls per text in Redis, so several processes can be checked."""

    def __init__(self, url: str, cluster: bool) -> None:
        super().__init__(dim=32)
        self.url, self.cluster = url, cluster

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        counter = _client(self.url, self.cluster)
        for t in texts:
            counter.incr(f"count:{{{t}}}")
        counter.close()
        time.sleep(0.3)  # a slow provider widens the herd window
        return super().embed(texts)


def _client(url: str, cluster: bool):
    if cluster:
        return redis.cluster.RedisCluster.from_url(url)
    return redis.Redis.from_url(url)


def _herd_process(url: str, cluster: bool, threads: int, barrier, errors) -> None:
    client = _client(url, cluster)
    svc = CachedEmbeddingService(
        CacheBus(client, S).query_embeddings("hashing-bow"), RedisCountingEmbedder(url, cluster)
    )
    local = threading.Barrier(threads)

    def call(i: int) -> None:
        try:
            local.wait()
            texts = TEXTS[i % 3 :] + TEXTS[: i % 3]  # same keys, different orders
            out = svc.embed_batch(texts)
            assert len(out) == len(TEXTS)
        except Exception as exc:  # reported to the parent
            errors.put(repr(exc))

    barrier.wait()
    workers = [threading.Thread(target=call, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    client.close()


@pytest.mark.parametrize("topology", ["standalone", "cluster"])
def test_herd_one_provider_call_per_key(request, topology: str) -> None:
    """50 concurrent callers in 4 processes miss the same keys at once: the
    provider is called once per key."""
    if topology == "standalone":
        client = request.getfixturevalue("redis_client")
        url, cluster = request.getfixturevalue("redis_server").url, False
    else:
        client = request.getfixturevalue("cluster_client")
        url, cluster = request.getfixturevalue("redis_cluster").url, True
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(4)
    errors = ctx.Queue()
    per_process = [13, 13, 12, 12]
    procs = [
        ctx.Process(target=_herd_process, args=(url, cluster, n, barrier, errors))
        for n in per_process
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    assert errors.empty(), errors.get()
    counts = {t: int(client.get(f"count:{{{t}}}") or 0) for t in TEXTS}
    assert counts == {t: 1 for t in TEXTS}


def test_provider_error_is_not_taken_for_a_redis_failure(any_redis) -> None:
    """A retriable cachebus error out of the embedder (an API that kept answering 503)
    reaches the caller as itself: the service does not fail open on it, does not call
    the provider a second time, and counts no cache error."""
    from cachebus.errors import EmbeddingProviderError

    class ExhaustedProvider(CountingEmbedder):
        def embed(self, texts: Sequence[str]) -> np.ndarray:
            self.seen.extend(texts)
            raise EmbeddingProviderError("503 from the provider", status=503, retriable=True)

    emb = ExhaustedProvider()
    qe = CacheBus(any_redis, S).query_embeddings(emb.model)
    svc = CachedEmbeddingService(qe, emb)
    with pytest.raises(EmbeddingProviderError, match="503"):
        svc.embed_batch(["a", "b"])
    assert emb.seen == ["a", "b"], "the provider was called again after its own error"
    assert qe.metrics.errors == 0
