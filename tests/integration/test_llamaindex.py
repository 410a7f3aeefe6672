"""The LlamaIndex adapter on a real redis-server, with llama-index-core's MockEmbedding."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
from pydantic import PrivateAttr

from cachebus import AsyncCacheBus, CacheBus, ConfigError, HashingEmbedder, Settings
from cachebus.integrations.llamaindex import CachedEmbedding
from cachebus.warming import content_hash
from tests.readme_examples import run_example

S = Settings(prefix="t")


class CountingMock(MockEmbedding):
    """MockEmbedding with a vector per text (HashingEmbedder) and a record of calls."""

    delay: float = 0.0
    _calls: list[tuple[str, str]] = PrivateAttr(default_factory=list)
    _lock: Any = PrivateAttr(default_factory=threading.Lock)

    def _vector(self, kind: str, text: str) -> list[float]:
        with self._lock:
            self._calls.append((kind, text))
        values: list[float] = HashingEmbedder(self.embed_dim).embed([text])[0].tolist()
        return values

    def _get_query_embedding(self, query: str) -> list[float]:
        time.sleep(self.delay)
        return self._vector("query", query)

    def _get_text_embedding(self, text: str) -> list[float]:
        time.sleep(self.delay)
        return self._vector("text", text)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        await asyncio.sleep(self.delay)
        return self._vector("query", query)

    async def _aget_text_embedding(self, text: str) -> list[float]:
        await asyncio.sleep(self.delay)
        return self._vector("text", text)

    @property
    def calls(self) -> list[tuple[str, str]]:
        return list(self._calls)


def cached(
    bus: CacheBus | AsyncCacheBus, mock: MockEmbedding, version: str = "1"
) -> CachedEmbedding:
    return CachedEmbedding(mock, bus, model_name="mock-16", model_version=version)


def test_query_and_text_hits_after_first_call(redis_client) -> None:
    mock = CountingMock(embed_dim=16)
    emb = cached(CacheBus(redis_client, S), mock)
    q1 = emb.get_query_embedding("what is a vector?")
    q2 = emb.get_query_embedding("what is a vector?")
    t = emb.get_text_embedding_batch(["a", "b", "a"])
    t2 = emb.get_text_embedding_batch(["b", "c"])
    assert q1 == q2 and t[0] == t[2] and t2[0] == t[1]
    assert mock.calls == [
        ("query", "what is a vector?"),
        ("text", "a"),
        ("text", "b"),
        ("text", "c"),
    ]
    want = HashingEmbedder(16).embed(["what is a vector?"])[0]
    assert np.array_equal(np.asarray(q2, dtype=np.float32), want)
    assert emb.model_name == "mock-16" and emb.model_version == "1"


def test_model_version_change_misses(redis_client) -> None:
    mock = CountingMock(embed_dim=16)
    bus = CacheBus(redis_client, S)
    cached(bus, mock, "1").get_query_embedding("q")
    cached(bus, mock, "1").get_query_embedding("q")
    cached(bus, mock, "2").get_query_embedding("q")
    assert mock.calls == [("query", "q"), ("query", "q")]


def test_nodes_are_cached_per_source_document_and_retired_with_it(redis_client) -> None:
    """embed_model(nodes), as IngestionPipeline calls it: nodes with a source document go
    to the document-embedding layer, so the document's update retires them."""
    mock = CountingMock(embed_dim=16)
    bus = CacheBus(redis_client, S)
    emb = cached(bus, mock)

    def nodes() -> list[TextNode]:
        source = RelatedNodeInfo(node_id="doc-9")
        return [
            TextNode(id_=f"doc-9-{i}", text=t, relationships={NodeRelationship.SOURCE: source})
            for i, t in enumerate(["first chunk", "second chunk"])
        ] + [TextNode(id_="loose", text="no source")]

    first = emb(nodes())
    again = emb(nodes())
    assert [n.embedding for n in first] == [n.embedding for n in again]
    assert len(mock.calls) == 3  # each text embedded once
    # Named by content (node ids are random in most pipelines): sha256 of the text.
    digest = content_hash("first chunk")
    assert bus.document_embeddings("mock-16", "1").get("doc-9", digest, digest) is not None
    bus.document_updated("doc-9", "kb")
    emb(nodes())
    assert [t for _, t in mock.calls[3:]] == ["first chunk", "second chunk"]


def test_embed_chunks_and_deletion(redis_client) -> None:
    mock = CountingMock(embed_dim=16)
    bus = CacheBus(redis_client, S)
    emb = cached(bus, mock)
    chunks = [("c0", "alpha", "sha256:a"), ("c1", "beta", "sha256:b")]
    emb.embed_chunks("doc-3", chunks)
    emb.embed_chunks("doc-3", chunks)
    assert len(mock.calls) == 2
    bus.document_deleted("doc-3", "kb")
    emb.embed_chunks("doc-3", chunks)
    assert len(mock.calls) == 4


async def test_async_paths_and_herd(async_redis_client) -> None:
    mock = CountingMock(embed_dim=16, delay=0.3)
    bus = AsyncCacheBus(async_redis_client, S)
    emb = cached(bus, mock)
    results = await asyncio.gather(*(emb.aget_query_embedding("hot") for _ in range(10)))
    assert all(r == results[0] for r in results)
    assert mock.calls == [("query", "hot")]
    mock.delay = 0.0
    t1 = await emb.aget_text_embedding_batch(["x", "y"])
    t2 = await emb.aget_text_embedding_batch(["y", "x"])
    assert t1 == t2[::-1]
    c1 = await emb.aembed_chunks("doc-5", [("c0", "x")])
    c2 = await emb.aembed_chunks("doc-5", [("c0", "x")])
    assert c1 == c2
    assert mock.calls[1:] == [("text", "x"), ("text", "y"), ("text", "x")]
    nodes = [
        TextNode(
            id_="n0",
            text="z",
            relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id="doc-5")},
        )
    ]
    await emb.acall(nodes)
    await emb.acall(nodes)
    assert mock.calls[-1] == ("text", "z") and len(mock.calls) == 5


def test_sync_herd(redis_client) -> None:
    mock = CountingMock(embed_dim=16, delay=0.3)
    emb = cached(CacheBus(redis_client, S), mock)
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: emb.get_query_embedding("hot"), range(6)))
    assert all(r == results[0] for r in results)
    assert mock.calls == [("query", "hot")]


def test_cachebus_embedder_and_names(redis_client) -> None:
    bus = CacheBus(redis_client, S)
    hashing = HashingEmbedder(dim=8, model="hashing", model_version="3")
    emb = CachedEmbedding(hashing, bus)
    assert (emb.model_name, emb.model_version) == ("hashing", "3")
    assert emb.get_query_embedding("a") == emb.get_text_embedding("a")
    assert hashing.calls == 1
    with pytest.raises(ConfigError, match="model_version="):
        CachedEmbedding(CountingMock(embed_dim=8), bus, model_name="m")
    with pytest.raises(ConfigError, match="names no model"):
        CachedEmbedding(CountingMock(embed_dim=8), bus, model_version="1")


def test_readme_example(redis_server, redis_client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHEBUS_REDIS_URL", redis_server.url)
    monkeypatch.setenv("CACHEBUS_PREFIX", "readme")
    scope = run_example("llamaindex")
    assert scope["hits"][0].node.get_content() == "Vacation is 25 days a year."
    assert all(n.embedding is not None and len(n.embedding) == 384 for n in scope["nodes"])
    front = scope["embed_model"].front
    assert front.document_cache().metrics.writes == 1  # the chunk, under handbook-7
    assert front.query_service().cache.metrics.provider_calls == 1
    # The example's last step retired the chunk (document_updated drops its embeddings).
    assert redis_client.exists("readme:de:{d.handbook-7}") == 0
    assert scope["bus"].closed
