"""Cache-aside services: what a search service calls instead of its embedder
and its search pipeline."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from .codecs import Vector
from .embedders import AsyncEmbedder, Embedder
from .errors import ConfigError
from .query_embeddings import AsyncQueryEmbeddingCache, QueryEmbeddingCache
from .querylog import AsyncQueryLog, QueryLog
from .search_results import (
    AsyncSearchResultsCache,
    Filters,
    Results,
    SearchHit,
    SearchRequest,
)


class SearchPipeline(Protocol):
    """The user's vector search: embedding in, hits out."""

    def search(
        self, collection: str, vector: Vector, filters: Filters, top_k: int
    ) -> Sequence[SearchHit]: ...


class AsyncSearchPipeline(Protocol):
    def search(
        self, collection: str, vector: Vector, filters: Filters, top_k: int
    ) -> Awaitable[Sequence[SearchHit]]: ...


def _unique(texts: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(texts))


def check_model(core: Any, embedder: object) -> None:
    """The cache's keys must name the embedder's model and version: a cache of another
    version would keep serving the old model's vectors after an upgrade."""
    model = getattr(embedder, "model", None)
    version = getattr(embedder, "model_version", None)
    if model is None or version is None:
        return  # an embedder without the attributes: the cache's own names are the truth
    if (str(model), str(version)) != (core.model, core.model_version):
        raise ConfigError(
            f"the embedder is {model!r} version {version!r} but the cache is for "
            f"{core.model!r} version {core.model_version!r}: build the cache with "
            f"bus.query_embeddings(embedder.model, embedder.model_version)"
        )


class CachedEmbeddingService:
    """``embed``/``embed_batch`` through the query embedding cache.

    Repeated texts in a batch are embedded once; hits come back in input order;
    only misses go to the embedder (one call per batch, herd-controlled across
    processes); an embedder error caches nothing. If Redis fails, the embedder
    is called directly (counted as an error) unless settings are strict.
    """

    def __init__(self, cache: QueryEmbeddingCache, embedder: Embedder) -> None:
        check_model(cache.core, embedder)
        self.cache = cache
        self.embedder = embedder

    def embed(self, text: str) -> Vector:
        return self.embed_batch([text])[0]

    def embed_batch(self, texts: Sequence[str]) -> list[Vector]:
        unique = _unique(texts)
        if not unique:
            return []

        def compute(todo: list[str]) -> Any:
            return self.embedder.embed(todo)

        def direct() -> list[Vector]:
            self.cache.metrics.provider_calls += 1
            return [np.asarray(v, dtype=np.float32) for v in self.embedder.embed(unique)]

        vectors = self.cache.run(
            self.cache.core.read_through(unique, compute),
            fallback=direct,
            what="embed_batch (embedder called directly)",
        )
        by_text = dict(zip(unique, vectors, strict=True))
        return [by_text[t] for t in texts]


class AsyncCachedEmbeddingService:
    """The asyncio twin of :class:`CachedEmbeddingService` (same program)."""

    def __init__(self, cache: AsyncQueryEmbeddingCache, embedder: AsyncEmbedder | Embedder):
        check_model(cache.core, embedder)
        self.cache = cache
        self.embedder = embedder

    async def embed(self, text: str) -> Vector:
        return (await self.embed_batch([text]))[0]

    async def embed_batch(self, texts: Sequence[str]) -> list[Vector]:
        unique = _unique(texts)
        if not unique:
            return []

        def compute(todo: list[str]) -> Any:
            return self.embedder.embed(todo)

        async def direct() -> list[Vector]:
            self.cache.metrics.provider_calls += 1
            raw = self.embedder.embed(unique)
            if isinstance(raw, Awaitable):
                raw = await raw
            return [np.asarray(v, dtype=np.float32) for v in raw]

        vectors = await self.cache.run(
            self.cache.core.read_through(unique, compute),
            fallback=direct,
            what="embed_batch (embedder called directly)",
        )
        by_text = dict(zip(unique, vectors, strict=True))
        return [by_text[t] for t in texts]


class CachedSearchService:
    """Search through the layers: results cache, then the embedding cache, then
    the search pipeline. Results are tagged with their documents, so the
    worker's invalidations retire them."""

    def __init__(
        self,
        results: Callable[[str], Any],
        embeddings: CachedEmbeddingService,
        pipeline: SearchPipeline,
        *,
        query_log: QueryLog | None = None,
    ) -> None:
        """``results`` maps a collection name to its :class:`SearchResultsCache`
        (e.g. ``bus.search_results``). With a ``query_log``, every query is
        counted (one pipelined round trip) for ``cachebus warm --top``."""
        self.results = results
        self.embeddings = embeddings
        self.pipeline = pipeline
        self.query_log = query_log

    def search(
        self,
        collection: str,
        query: str,
        filters: Mapping[str, Any] | None = None,
        top_k: int = 10,
    ) -> Results:
        if self.query_log is not None:
            self.query_log.record([query])
        cache = self.results(collection)
        request = SearchRequest(query, filters, top_k)

        def compute(requests: list[SearchRequest]) -> list[list[SearchHit]]:
            vector = self.embeddings.embed(query)
            return [list(self.pipeline.search(collection, vector, filters, top_k))]

        results: Results = cache.run(
            cache.core.read_through(request, compute),
            fallback=lambda: compute([request])[0],
            what="search (pipeline called directly)",
        )
        return results


class AsyncCachedSearchService:
    """The asyncio twin of :class:`CachedSearchService`."""

    def __init__(
        self,
        results: Callable[[str], AsyncSearchResultsCache],
        embeddings: AsyncCachedEmbeddingService,
        pipeline: AsyncSearchPipeline,
        *,
        query_log: AsyncQueryLog | None = None,
    ) -> None:
        self.results = results
        self.embeddings = embeddings
        self.pipeline = pipeline
        self.query_log = query_log

    async def search(
        self,
        collection: str,
        query: str,
        filters: Mapping[str, Any] | None = None,
        top_k: int = 10,
    ) -> Results:
        if self.query_log is not None:
            await self.query_log.record([query])
        cache = self.results(collection)
        request = SearchRequest(query, filters, top_k)

        async def compute(requests: list[SearchRequest]) -> list[list[SearchHit]]:
            vector = await self.embeddings.embed(query)
            return [list(await self.pipeline.search(collection, vector, filters, top_k))]

        async def direct() -> Results:
            return (await compute([request]))[0]

        return await cache.run(
            cache.core.read_through(request, compute),
            fallback=direct,
            what="search (pipeline called directly)",
        )
