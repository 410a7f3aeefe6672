"""OpenAICompatibleEmbedder against a local OpenAI-compatible server on 127.0.0.1
(devtools.openai_server), and through the cache on a real redis-server."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from cachebus import AsyncCacheBus, CacheBus, Embedder, HashingEmbedder, Settings
from cachebus.embedders_openai import OpenAICompatibleEmbedder
from cachebus.errors import CacheBusError, EmbeddingProviderError
from cachebus.integrations.langchain import CachedEmbeddings
from devtools.openai_server import OpenAIServer
from tests.readme_examples import run_example

S = Settings(prefix="t")
KEY = "sk-test-DO-NOT-LEAK-4f1c"
DIM = 16


@pytest.fixture(scope="module")
def module_server() -> Iterator[OpenAIServer]:
    with OpenAIServer(dim=DIM) as server:
        yield server


_made: list[OpenAICompatibleEmbedder] = []


@pytest.fixture
def server(module_server: OpenAIServer) -> Iterator[OpenAIServer]:
    module_server.reset()
    module_server.delay = 0.0
    yield module_server
    while _made:
        _made.pop().close()


def make(server: OpenAIServer, **options: Any) -> OpenAICompatibleEmbedder:
    options.setdefault("backoff", 0.01)
    embedder = OpenAICompatibleEmbedder(
        "text-embedding-test", base_url=server.base_url, api_key=KEY, **options
    )
    _made.append(embedder)
    return embedder


def expected(texts: list[str]) -> np.ndarray:
    return HashingEmbedder(DIM).embed(texts)


def test_batches_keep_order(server: OpenAIServer) -> None:
    texts = [f"text {i}" for i in range(8)]
    embedder = make(server, max_batch_size=3)
    assert isinstance(embedder, Embedder)  # the protocol the cache services take
    got = embedder.embed(texts)
    assert got.dtype == np.float32 and got.shape == (8, DIM)
    assert np.allclose(got, expected(texts))
    sizes = sorted(len(r.inputs) for r in server.requests)
    assert sizes == [2, 3, 3]
    assert all(r.body["model"] == "text-embedding-test" for r in server.requests)
    assert all(r.body["encoding_format"] == "float" for r in server.requests)
    assert embedder.embed([]).shape[0] == 0


def test_concurrency_limit_sync_across_threads(server: OpenAIServer) -> None:
    server.delay = 0.15
    embedder = make(server, max_batch_size=1, max_concurrency=2)
    threads = [
        threading.Thread(target=embedder.embed, args=([f"t{i}-{j}" for j in range(3)],))
        for i in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(server.requests) == 6
    assert server.max_in_flight == 2


async def test_concurrency_limit_async(server: OpenAIServer) -> None:
    server.delay = 0.15
    embedder = make(server, max_batch_size=1, max_concurrency=3)
    texts = [f"a{i}" for i in range(7)]
    got = await embedder.aembed(texts)
    await embedder.aclose()
    assert np.allclose(got, expected(texts))
    assert len(server.requests) == 7 and server.max_in_flight == 3


def test_retry_after_429_then_500_then_success(server: OpenAIServer) -> None:
    server.fail_next((429, {"Retry-After": "0.3"}), (500, {}))
    embedder = make(server)
    got = embedder.embed(["retry me"])
    assert np.allclose(got, expected(["retry me"]))
    reqs = sorted(server.requests, key=lambda r: r.started)
    assert [r.status for r in reqs] == [429, 500, 200]
    assert reqs[1].started - reqs[0].started >= 0.29  # Retry-After honoured
    assert embedder.requests == 3


async def test_async_retry_then_success(server: OpenAIServer) -> None:
    server.fail_next((429, {"retry-after-ms": "50"}), (503, {}))
    embedder = make(server)
    got = await embedder.aembed(["async retry"])
    await embedder.aclose()
    assert np.allclose(got, expected(["async retry"]))
    assert [r.status for r in sorted(server.requests, key=lambda r: r.started)] == [429, 503, 200]


def test_retries_exhausted(server: OpenAIServer) -> None:
    server.fail_next((500, {}), (502, {}), (500, {}))
    embedder = make(server, max_retries=2)
    with pytest.raises(EmbeddingProviderError) as info:
        embedder.embed(["never"])
    err = info.value
    assert isinstance(err, CacheBusError)
    assert err.retriable and err.status == 500 and err.attempts == 3
    assert "failed after 3 attempt(s): HTTP 500" in str(err)
    assert server.base_url in str(err)
    assert len(server.requests) == 3


def test_4xx_is_not_retried_and_says_why(server: OpenAIServer) -> None:
    server.fail_next((400, {}))
    embedder = make(server)
    with pytest.raises(EmbeddingProviderError) as info:
        embedder.embed(["too long"])
    err = info.value
    assert not err.retriable and err.status == 400 and err.attempts == 1
    assert str(err) == (
        f"the embeddings API at {server.base_url} (model 'text-embedding-test') refused the "
        "request: HTTP 400: This model's maximum context length is 8192 tokens"
    )
    assert len(server.requests) == 1


def test_api_key_is_a_bearer_header_and_never_shown(
    server: OpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        embedder = make(server)
        server.fail_next((429, {"Retry-After": "0"}))
        embedder.embed(["hello"])
        server.fail_next((401, {}))
        with pytest.raises(EmbeddingProviderError) as info:
            embedder.embed(["again"])
    assert {r.headers["authorization"] for r in server.requests} == {f"Bearer {KEY}"}
    shown = [repr(embedder), str(embedder), repr(embedder.as_async()), str(info.value)]
    shown += [r.getMessage() for r in caplog.records]
    assert any("retrying" in line for line in shown)  # the retry was logged...
    assert not [line for line in shown if KEY in line]  # ...without the key
    assert "api_key='***'" in repr(embedder)


def test_through_the_cache(server: OpenAIServer, redis_client) -> None:
    embedder = make(server)
    service = CacheBus(redis_client, S).embedding_service(embedder)
    first = service.embed_batch(["a", "b", "a"])
    second = service.embed_batch(["b", "a"])
    assert len(server.requests) == 1 and server.requests[0].inputs == ["a", "b"]
    assert np.array_equal(first[1], second[0])


async def test_through_the_async_cache(server: OpenAIServer, async_redis_client) -> None:
    embedder = make(server)
    bus = AsyncCacheBus(async_redis_client, S)
    service = bus.embedding_service(embedder.as_async())
    await service.embed("q")
    await service.embed("q")
    # The LangChain adapter uses the embedder's aembed on the async path.
    emb = CachedEmbeddings(embedder, bus)
    results = await asyncio.gather(*(emb.aembed_query("hot") for _ in range(5)))
    await embedder.aclose()
    assert all(r == results[0] for r in results)
    assert [r.inputs for r in server.requests] == [["q"], ["hot"]]


def test_readme_example(
    server: OpenAIServer, redis_server, redis_client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CACHEBUS_REDIS_URL", redis_server.url)
    monkeypatch.setenv("CACHEBUS_PREFIX", "readme")
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    scope = run_example("openai")
    _made.append(scope["embedder"])
    assert [r.inputs for r in server.requests] == [["what is a vector?", "reset password"]]
    assert server.requests[0].headers["authorization"] == f"Bearer {KEY}"
    assert np.array_equal(scope["again"], scope["vectors"][0])
    assert scope["vectors"][1].shape == (DIM,)
    assert redis_client.keys("readme:qe:text-embedding-3-small:1:*")


def test_provider_error_through_the_adapter_is_not_a_redis_failure(
    server: OpenAIServer, redis_client, caplog: pytest.LogCaptureFixture
) -> None:
    """An exhausted provider (a retriable cachebus error) propagates as itself: not taken
    for a Redis failure (no fail-open, no second round of requests), nothing cached."""
    embedder = make(server, max_retries=1)
    emb = CachedEmbeddings(embedder, CacheBus(redis_client, S))
    server.fail_next((503, {}), (503, {}), (503, {}), (503, {}))
    with caplog.at_level(logging.WARNING, logger="cachebus"):
        with pytest.raises(EmbeddingProviderError, match="HTTP 503"):
            emb.embed_query("down")
        with pytest.raises(EmbeddingProviderError, match="HTTP 503"):
            emb.embed_chunks("doc-1", [("c0", "down")])
    assert len(server.requests) == 4  # 2 attempts each, not 4
    assert not [r for r in caplog.records if "failed open" in r.getMessage()]
    assert emb.front.query_service().cache.metrics.errors == 0
    assert emb.embed_query("down") == emb.embed_query("down")  # leases were released


def test_dimensions_are_sent_and_name_the_version(server: OpenAIServer) -> None:
    embedder = make(server, dimensions=8)
    assert embedder.model_version == "1-d8"
    assert embedder.embed(["short"]).shape == (1, 8)
    assert server.requests[0].body["dimensions"] == 8
