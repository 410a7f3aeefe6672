"""LangChain: a drop-in ``Embeddings`` with cachebus's caches in front of any embedder.

``pip install 'cachebus[langchain]'`` (``langchain-core`` only)::

    from langchain_openai import OpenAIEmbeddings
    from cachebus import CacheBus
    from cachebus.integrations.langchain import CachedEmbeddings

    bus = CacheBus.from_settings()
    embeddings = CachedEmbeddings(
        OpenAIEmbeddings(model="text-embedding-3-small"), bus,
        model="text-embedding-3-small", model_version="1",
    )
    vector_store = InMemoryVectorStore(embeddings)   # nothing else changes
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from . import require

require("langchain_core.embeddings", "langchain", "cachebus.integrations.langchain")

from langchain_core.embeddings import Embeddings  # noqa: E402

from ..bus import AsyncCacheBus, CacheBus  # noqa: E402
from ..codecs import Vector, VectorCodec  # noqa: E402
from ..embedders import Embedder  # noqa: E402
from ..errors import ConfigError  # noqa: E402
from .core import (  # noqa: E402
    Chunk,
    EmbeddingFront,
    Vectors,
    cache_names,
    split_buses,
)


def _floats(vector: Vector) -> list[float]:
    values: list[float] = vector.tolist()
    return values


class CachedEmbeddings(Embeddings):
    """A LangChain ``Embeddings`` that caches in Redis through cachebus.

    ``embedder`` is any LangChain ``Embeddings`` (``OpenAIEmbeddings()``, ...) or a cachebus
    :class:`~cachebus.Embedder` (e.g. :class:`~cachebus.embedders_openai.OpenAICompatibleEmbedder`).
    ``bus`` is a :class:`~cachebus.CacheBus` or an :class:`~cachebus.AsyncCacheBus`; give
    both (``bus`` and ``async_bus``) to serve sync and async calls each on its own client
    (with only a sync bus, ``aembed_*`` run the sync path in a worker thread).
    ``model`` and ``model_version`` name the cache's keys (a cachebus embedder brings its
    own; for a LangChain embedder ``model_version`` is required).

    * ``embed_query`` / ``aembed_query``: the query-embedding cache; concurrent identical
      misses, in this process or any other, call the provider once (a Redis lease).
    * ``embed_documents`` / ``aembed_documents``: the same layer, keyed by the text's
      SHA-256 (under version ``<model_version>.documents`` for a LangChain embedder, whose
      ``embed_query`` and ``embed_documents`` may differ); only misses reach the provider,
      in one batch.
    * ``embed_chunks(doc_id, [(chunk_id, text, content_hash)])``: the document-embedding
      cache, for chunks whose ids you know. A chunk is served only for its content hash,
      and the worker's ``updated`` / ``deleted`` events for ``doc_id`` retire its vectors
      (a vector computed while the event ran is refused, not cached).

    Compared with LangChain's ``CacheBackedEmbeddings`` (JSON lists of floats in a byte
    store, no expiry, no invalidation, no herd control, queries not cached by default):
    vectors are stored binary (float32, or float16/int8 with ``codec``), with a TTL; keys
    carry the model version, and ``bus.invalidator.bump(models=[(model, version)])``
    retires a whole model in O(1); chunk vectors follow their documents' lifecycle;
    concurrent misses are computed once; a Redis outage fails open (the provider is
    called, nothing raises) instead of failing the request.
    """

    def __init__(
        self,
        embedder: Embeddings | Embedder,
        bus: CacheBus | AsyncCacheBus | None = None,
        *,
        model: str | None = None,
        model_version: str | None = None,
        async_bus: AsyncCacheBus | None = None,
        codec: VectorCodec | None = None,
    ) -> None:
        sync_bus, async_bus = split_buses(bus, async_bus)
        self.embedder = embedder
        if isinstance(embedder, Embeddings):
            name, version = cache_names(embedder, model, model_version, foreign="LangChain")
            lc = embedder

            def embed_query(texts: list[str]) -> Vectors:
                return [lc.embed_query(t) for t in texts]

            async def aembed_query(texts: list[str]) -> Vectors:
                return list(await asyncio.gather(*(lc.aembed_query(t) for t in texts)))

            async def aembed_documents(texts: list[str]) -> Vectors:
                return await lc.aembed_documents(texts)

            self.front = EmbeddingFront(
                model=name,
                model_version=version,
                embed_query=embed_query,
                embed_documents=lc.embed_documents,
                aembed_query=aembed_query,
                aembed_documents=aembed_documents,
                bus=sync_bus,
                async_bus=async_bus,
                codec=codec,
            )
        elif isinstance(embedder, Embedder):
            self.front = EmbeddingFront.of_embedder(
                embedder, model, model_version, bus=sync_bus, async_bus=async_bus, codec=codec
            )
        else:
            raise ConfigError(
                f"{type(embedder).__name__} is neither a LangChain Embeddings nor a cachebus "
                "Embedder (.model, .model_version, .embed(texts))"
            )

    @property
    def model(self) -> str:
        return self.front.model

    @property
    def model_version(self) -> str:
        return self.front.model_version

    def __repr__(self) -> str:
        return (
            f"CachedEmbeddings({type(self.embedder).__name__}, model={self.model!r}, "
            f"model_version={self.model_version!r})"
        )

    # LangChain's interface ------------------------------------------------------
    def embed_query(self, text: str) -> list[float]:
        return _floats(self.front.query(text))

    async def aembed_query(self, text: str) -> list[float]:
        return _floats(await self.front.aquery(text))

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [_floats(v) for v in self.front.documents(texts)]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return [_floats(v) for v in await self.front.adocuments(texts)]

    # cachebus's addition ------------------------------------------------------------
    def embed_chunks(self, doc_id: str, chunks: Sequence[Chunk]) -> list[list[float]]:
        """Vectors of ``doc_id``'s chunks, ``(chunk_id, text, content_hash)`` (the hash may
        be omitted: ``sha256:<hex>`` of the text), through the document-embedding cache."""
        return [_floats(v) for v in self.front.chunks(doc_id, chunks)]

    async def aembed_chunks(self, doc_id: str, chunks: Sequence[Chunk]) -> list[list[float]]:
        """The asyncio :meth:`embed_chunks`."""
        return [_floats(v) for v in await self.front.achunks(doc_id, chunks)]


__all__ = ["CachedEmbeddings"]
