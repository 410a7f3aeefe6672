"""The LangChain adapter on a real redis-server, with langchain-core's own fake embeddings."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding, Embeddings
from langchain_core.vectorstores import InMemoryVectorStore

from cachebus import AsyncCacheBus, CacheBus, ConfigError, HashingEmbedder, Settings
from cachebus.integrations.langchain import CachedEmbeddings
from tests.readme_examples import run_example

S = Settings(prefix="t")


class Counting(Embeddings):
    """A LangChain embedder that records its calls (around DeterministicFakeEmbedding)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.inner = DeterministicFakeEmbedding(size=32)
        self.delay = delay
        self.queries: list[str] = []
        self.documents: list[list[str]] = []
        self._lock = threading.Lock()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        with self._lock:
            self.documents.append(list(texts))
        time.sleep(self.delay)
        return self.inner.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        with self._lock:
            self.queries.append(text)
        time.sleep(self.delay)
        return self.inner.embed_query(text)

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        self.documents.append(list(texts))
        await asyncio.sleep(self.delay)
        return self.inner.embed_documents(texts)

    async def aembed_query(self, text: str) -> list[float]:
        self.queries.append(text)
        await asyncio.sleep(self.delay)
        return self.inner.embed_query(text)


def cached(bus: CacheBus | AsyncCacheBus, fake: Embeddings, version: str = "1") -> CachedEmbeddings:
    return CachedEmbeddings(fake, bus, model="fake-32", model_version=version)


def test_query_hit_after_first_call(redis_client) -> None:
    fake = Counting()
    emb = cached(CacheBus(redis_client, S), fake)
    first = emb.embed_query("what is a vector?")
    second = emb.embed_query("what is a vector?")
    assert fake.queries == ["what is a vector?"]  # the second call was a hit
    assert first == second and len(first) == 32
    want = np.asarray(fake.inner.embed_query("what is a vector?"), dtype=np.float32)
    assert np.array_equal(np.asarray(second, dtype=np.float32), want)
    metrics = emb.front.query_service().cache.metrics
    assert (metrics.hits, metrics.misses, metrics.provider_calls) == (1, 1, 1)


def test_documents_embed_only_misses_in_one_batch(redis_client) -> None:
    fake = Counting()
    emb = cached(CacheBus(redis_client, S), fake)
    a = emb.embed_documents(["a", "b"])
    b = emb.embed_documents(["b", "c", "a", "c"])
    assert fake.documents == [["a", "b"], ["c"]]
    assert b[0] == a[1] and b[2] == a[0] and b[1] == b[3]
    # A query is cached apart from documents (a LangChain model may embed them differently).
    emb.embed_query("a")
    assert fake.queries == ["a"]


def test_model_version_change_misses(redis_client) -> None:
    fake = Counting()
    bus = CacheBus(redis_client, S)
    cached(bus, fake, "1").embed_query("q")
    cached(bus, fake, "1").embed_query("q")
    assert fake.queries == ["q"]
    cached(bus, fake, "2").embed_query("q")  # another version: other keys
    assert fake.queries == ["q", "q"]
    bus.invalidator.bump(models=[("fake-32", "1")])  # retire version 1 in O(1)
    cached(bus, fake, "1").embed_query("q")
    assert fake.queries == ["q", "q", "q"]


def test_chunks_follow_their_document(any_redis) -> None:
    """Chunks go to the document-embedding layer: served for their content hash only,
    retired by the document's update and deletion (the worker's planner and rules); on a
    server and on a cluster (leases share their document's slot)."""
    fake = Counting()
    bus = CacheBus(any_redis, S)
    emb = cached(bus, fake)
    chunks = [("c0", "vacation days", "h0"), ("c1", "sick leave", "h1")]
    first = emb.embed_chunks("doc-1", chunks)
    assert emb.embed_chunks("doc-1", chunks) == first
    assert fake.documents == [["vacation days", "sick leave"]]
    # The content changed for c1 only: c0 stays a hit.
    emb.embed_chunks("doc-1", [("c0", "vacation days", "h0"), ("c1", "sick days", "h1b")])
    assert fake.documents[-1] == ["sick days"]
    # The document was updated: its embeddings are retired.
    bus.document_updated("doc-1", "handbook")
    emb.embed_chunks("doc-1", chunks)
    assert fake.documents[-1] == ["vacation days", "sick leave"]
    assert bus.document_embeddings("fake-32", "1").get("doc-1", "c0", "h0") is not None
    # Deleted: nothing served, and late writes are refused (embedded every time).
    bus.document_deleted("doc-1", "handbook")
    for _ in range(2):
        emb.embed_chunks("doc-1", chunks)
        assert fake.documents[-1] == ["vacation days", "sick leave"]
    assert len(fake.documents) == 5
    assert bus.document_embeddings("fake-32", "1").get("doc-1", "c0", "h0") is None


def test_chunk_hash_defaults_to_text_digest(redis_client) -> None:
    fake = Counting()
    bus = CacheBus(redis_client, S)
    emb = cached(bus, fake)
    emb.embed_chunks("doc-2", [("c0", "text")])
    emb.embed_chunks("doc-2", [("c0", "text")])
    emb.embed_chunks("doc-2", [("c0", "new text")])
    assert fake.documents == [["text"], ["new text"]]


def test_concurrent_identical_queries_call_the_provider_once(redis_client) -> None:
    fake = Counting(delay=0.3)
    emb = cached(CacheBus(redis_client, S), fake)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: emb.embed_query("hot query"), range(8)))
    assert fake.queries == ["hot query"]
    assert all(r == results[0] for r in results)


async def test_async_paths(async_redis_client) -> None:
    fake = Counting()
    bus = AsyncCacheBus(async_redis_client, S)
    emb = cached(bus, fake)
    q1 = await emb.aembed_query("async q")
    q2 = await emb.aembed_query("async q")
    d1 = await emb.aembed_documents(["x", "y"])
    d2 = await emb.aembed_documents(["y", "x"])
    c1 = await emb.aembed_chunks("doc-a", [("c0", "x", "hx")])
    c2 = await emb.aembed_chunks("doc-a", [("c0", "x", "hx")])
    assert q1 == q2 and d1 == d2[::-1] and c1 == c2
    assert fake.queries == ["async q"]
    assert fake.documents == [["x", "y"], ["x"]]
    await bus.document_updated("doc-a", "kb")
    await emb.aembed_chunks("doc-a", [("c0", "x", "hx")])
    assert fake.documents[-1] == ["x"] and len(fake.documents) == 3
    with pytest.raises(ConfigError, match="AsyncCacheBus only"):
        emb.embed_query("sync call without a sync bus")


async def test_async_concurrent_identical_queries_call_the_provider_once(
    async_redis_client,
) -> None:
    fake = Counting(delay=0.3)
    emb = cached(AsyncCacheBus(async_redis_client, S), fake)
    results = await asyncio.gather(*(emb.aembed_query("hot") for _ in range(10)))
    assert fake.queries == ["hot"]
    assert all(r == results[0] for r in results)


def test_cachebus_embedder_shares_one_namespace(redis_client) -> None:
    """A cachebus Embedder brings its model and version; queries and documents share."""
    hashing = HashingEmbedder(dim=16, model="hashing", model_version="7")
    bus = CacheBus(redis_client, S)
    emb = CachedEmbeddings(hashing, bus)
    assert (emb.model, emb.model_version) == ("hashing", "7")
    emb.embed_documents(["alpha", "beta"])
    assert emb.embed_query("alpha") == emb.embed_documents(["alpha"])[0]
    assert hashing.calls == 1
    assert bus.query_embeddings("hashing", "7").get("beta") is not None
    with pytest.raises(ConfigError, match="model_version"):
        CachedEmbeddings(hashing, bus, model_version="8")


def test_foreign_embedder_needs_a_version(redis_client) -> None:
    with pytest.raises(ConfigError, match="model_version="):
        CachedEmbeddings(Counting(), CacheBus(redis_client, S), model="fake-32")
    with pytest.raises(ConfigError, match="names no model"):
        CachedEmbeddings(Counting(), CacheBus(redis_client, S), model_version="1")


def test_drop_in_for_a_vector_store(redis_client) -> None:
    """Used where LangChain expects Embeddings: a vector store embeds through the cache."""
    fake = Counting()
    store = InMemoryVectorStore(cached(CacheBus(redis_client, S), fake))
    store.add_texts(["the cat sat", "dogs bark", "vectors are lists of numbers"])
    hits = store.similarity_search("dogs bark", k=1)
    store.similarity_search("dogs bark", k=1)
    assert hits[0].page_content == "dogs bark"
    assert fake.queries == ["dogs bark"]
    assert len(fake.documents) == 1


def test_readme_example(redis_server, redis_client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHEBUS_REDIS_URL", redis_server.url)
    monkeypatch.setenv("CACHEBUS_PREFIX", "readme")
    scope = run_example("langchain")
    assert scope["docs"][0].page_content == "Vacation is 25 days a year."
    assert len(scope["vectors"]) == 1 and len(scope["vectors"][0]) == 384
    assert scope["bus"].closed
    stats = scope["embeddings"].front.query_service().cache.metrics
    assert stats.misses == 1 and stats.provider_calls == 1
    assert redis_client.exists("readme:de:{d.handbook-7}") == 1
    assert redis_client.keys("readme:qe:fake-384:1.documents:*")


async def test_concurrent_identical_chunks_call_the_provider_once(async_redis_client) -> None:
    fake = Counting(delay=0.3)
    emb = cached(AsyncCacheBus(async_redis_client, S), fake)
    chunks = [("c0", "alpha", "ha"), ("c1", "beta", "hb")]
    results = await asyncio.gather(*(emb.aembed_chunks("doc-h", chunks) for _ in range(6)))
    assert fake.documents == [["alpha", "beta"]]
    assert all(r == results[0] for r in results)
