"""A library user's code, type-checked with ``mypy --strict`` against the *installed*
package by ``scripts/check-install.sh`` (the wheel carries ``py.typed``). It only needs
the base install (redis, numpy); nothing here runs at import."""

from __future__ import annotations

import numpy as np
import redis
import redis.asyncio

from cachebus import (
    AsyncCacheBus,
    CacheBus,
    CacheBusError,
    ChunkVector,
    HashingEmbedder,
    SearchHit,
    Settings,
    Tag,
)


def cached_search(client: redis.Redis) -> list[SearchHit] | None:
    bus = CacheBus(client, Settings.from_env())
    embedder = HashingEmbedder(dim=64)
    qe = bus.query_embeddings(embedder.model, embedder.model_version)
    vectors = embedder.embed(["what is a vector?"])
    qe.set_many({"what is a vector?": vectors[0]})
    found: list[np.ndarray | None] = list(qe.get_many(["what is a vector?", "unknown"]))
    assert len(found) == 2

    de = bus.document_embeddings(embedder.model, embedder.model_version)
    de.set_many("doc-42", [ChunkVector("c0", vectors[0], "sha256:ab")])

    sr = bus.search_results("handbook")
    sr.set("vacation days", [SearchHit("doc-42", 0.91)], {"lang": "en"}, 10)
    hits = sr.get("vacation days", {"lang": "en"}, 10)
    try:
        bus.invalidator.invalidate_documents(["doc-42"])
        bus.invalidator.invalidate_tags([Tag.user("pricing")])
    except CacheBusError as exc:
        print(f"invalidation failed (retriable: {exc.retriable})")
    return hits


async def cached_search_async(client: redis.asyncio.Redis) -> list[SearchHit] | None:
    bus = AsyncCacheBus(client, Settings())
    sr = bus.search_results("handbook")
    await sr.set("vacation days", [SearchHit("doc-7", 0.55)], None, 10)
    return await sr.get("vacation days", None, 10)
