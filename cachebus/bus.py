"""One entry point: all four layers and the invalidator on one client."""

from __future__ import annotations

from typing import Any

from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from redis.exceptions import RedisError

from .codecs import VectorCodec
from .document_embeddings import AsyncDocumentEmbeddingCache, DocumentEmbeddingCache
from .embedders import AsyncEmbedder, Embedder
from .invalidation import AsyncInvalidator, Invalidator
from .metrics import LayerMetrics
from .query_embeddings import AsyncQueryEmbeddingCache, QueryEmbeddingCache
from .rerank_scores import AsyncRerankScoreCache, RerankScoreCache
from .runner import AsyncClient, SyncClient
from .search_results import AsyncSearchResultsCache, SearchResultsCache
from .services import AsyncCachedEmbeddingService, CachedEmbeddingService
from .settings import Settings


def _per_node(info: Any) -> list[dict[str, Any]]:
    """An INFO reply as one dict per node: a cluster answers node name -> section."""
    if isinstance(info, dict) and info and all(isinstance(v, dict) for v in info.values()):
        return list(info.values())
    return [info] if isinstance(info, dict) else []


def info_per_node(client: SyncClient, section: str) -> list[dict[str, Any]]:
    """One INFO section per node: the server, or every primary of a cluster."""
    if isinstance(client, RedisCluster):
        return _per_node(client.info(section, target_nodes=RedisCluster.PRIMARIES))
    return _per_node(client.info(section))


async def ainfo_per_node(client: AsyncClient, section: str) -> list[dict[str, Any]]:
    """:func:`info_per_node` on an asyncio client."""
    if isinstance(client, AsyncRedisCluster):
        return _per_node(await client.info(section, target_nodes=AsyncRedisCluster.PRIMARIES))
    return _per_node(await client.info(section))


def used_memory(nodes: list[dict[str, Any]]) -> int:
    """INFO used_memory summed over nodes."""
    return sum(int(node["used_memory"]) for node in nodes)


def _stats(layers: dict[str, list[LayerMetrics]], used_memory: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {"layers": {}, "redis_used_memory": used_memory}
    for name, metrics in layers.items():
        total = LayerMetrics()
        for m in metrics:
            for field_name in LayerMetrics.__slots__:
                setattr(total, field_name, getattr(total, field_name) + getattr(m, field_name))
        out["layers"][name] = total.as_dict()
    return out


class CacheBus:
    """Factory and registry of the sync layers on one client.

    >>> settings = Settings.from_env()
    >>> bus = CacheBus(cachebus.connect(settings), settings)
    >>> bus.query_embeddings("text-embedding-3-small").get("hello")
    """

    def __init__(self, client: SyncClient, settings: Settings | None = None) -> None:
        self.client = client
        self.settings = settings or Settings()
        self.invalidator = Invalidator(client, settings=self.settings)
        self._qe: dict[tuple[str, str], QueryEmbeddingCache] = {}
        self._de: dict[tuple[str, str], DocumentEmbeddingCache] = {}
        self._sr: dict[str, SearchResultsCache] = {}
        self._rr: dict[str, RerankScoreCache] = {}

    def query_embeddings(
        self, model: str, model_version: str = "1", *, codec: VectorCodec | None = None
    ) -> QueryEmbeddingCache:
        key = (model, model_version)
        if key not in self._qe:
            self._qe[key] = QueryEmbeddingCache(
                self.client, model, model_version, settings=self.settings, codec=codec
            )
        return self._qe[key]

    def embedding_service(
        self, embedder: Embedder, *, codec: VectorCodec | None = None
    ) -> CachedEmbeddingService:
        """``embed``/``embed_batch`` through the query-embedding cache of the embedder's
        own model and version (``embedder.model``, ``embedder.model_version``)."""
        cache = self.query_embeddings(embedder.model, embedder.model_version, codec=codec)
        return CachedEmbeddingService(cache, embedder)

    def document_embeddings(
        self, model: str, model_version: str = "1", *, codec: VectorCodec | None = None
    ) -> DocumentEmbeddingCache:
        key = (model, model_version)
        if key not in self._de:
            self._de[key] = DocumentEmbeddingCache(
                self.client, model, model_version, settings=self.settings, codec=codec
            )
        return self._de[key]

    def search_results(self, collection: str) -> SearchResultsCache:
        if collection not in self._sr:
            self._sr[collection] = SearchResultsCache(
                self.client, collection, settings=self.settings
            )
        return self._sr[collection]

    def rerank_scores(self, model: str) -> RerankScoreCache:
        if model not in self._rr:
            self._rr[model] = RerankScoreCache(self.client, model, settings=self.settings)
        return self._rr[model]

    def stats(self) -> dict[str, Any]:
        """Hit rate and counters per layer (this process) and Redis memory used."""
        try:
            used: int | None = used_memory(info_per_node(self.client, "memory"))
        except RedisError:
            used = None
        return _stats(
            {
                "query_embeddings": [c.metrics for c in self._qe.values()],
                "document_embeddings": [c.metrics for c in self._de.values()],
                "search_results": [c.metrics for c in self._sr.values()],
                "rerank_scores": [c.metrics for c in self._rr.values()],
            },
            used,
        )


class AsyncCacheBus:
    """Factory and registry of the asyncio layers on one client."""

    def __init__(self, client: AsyncClient, settings: Settings | None = None) -> None:
        self.client = client
        self.settings = settings or Settings()
        self.invalidator = AsyncInvalidator(client, settings=self.settings)
        self._qe: dict[tuple[str, str], AsyncQueryEmbeddingCache] = {}
        self._de: dict[tuple[str, str], AsyncDocumentEmbeddingCache] = {}
        self._sr: dict[str, AsyncSearchResultsCache] = {}
        self._rr: dict[str, AsyncRerankScoreCache] = {}

    def query_embeddings(
        self, model: str, model_version: str = "1", *, codec: VectorCodec | None = None
    ) -> AsyncQueryEmbeddingCache:
        key = (model, model_version)
        if key not in self._qe:
            self._qe[key] = AsyncQueryEmbeddingCache(
                self.client, model, model_version, settings=self.settings, codec=codec
            )
        return self._qe[key]

    def embedding_service(
        self, embedder: AsyncEmbedder | Embedder, *, codec: VectorCodec | None = None
    ) -> AsyncCachedEmbeddingService:
        """The asyncio :meth:`CacheBus.embedding_service`."""
        cache = self.query_embeddings(embedder.model, embedder.model_version, codec=codec)
        return AsyncCachedEmbeddingService(cache, embedder)

    def document_embeddings(
        self, model: str, model_version: str = "1", *, codec: VectorCodec | None = None
    ) -> AsyncDocumentEmbeddingCache:
        key = (model, model_version)
        if key not in self._de:
            self._de[key] = AsyncDocumentEmbeddingCache(
                self.client, model, model_version, settings=self.settings, codec=codec
            )
        return self._de[key]

    def search_results(self, collection: str) -> AsyncSearchResultsCache:
        if collection not in self._sr:
            self._sr[collection] = AsyncSearchResultsCache(
                self.client, collection, settings=self.settings
            )
        return self._sr[collection]

    def rerank_scores(self, model: str) -> AsyncRerankScoreCache:
        if model not in self._rr:
            self._rr[model] = AsyncRerankScoreCache(self.client, model, settings=self.settings)
        return self._rr[model]

    async def stats(self) -> dict[str, Any]:
        try:
            used: int | None = used_memory(await ainfo_per_node(self.client, "memory"))
        except RedisError:
            used = None
        return _stats(
            {
                "query_embeddings": [c.metrics for c in self._qe.values()],
                "document_embeddings": [c.metrics for c in self._de.values()],
                "search_results": [c.metrics for c in self._sr.values()],
                "rerank_scores": [c.metrics for c in self._rr.values()],
            },
            used,
        )
