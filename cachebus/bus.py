"""One entry point: every registered layer (:mod:`cachebus.registry`) and the
invalidator on one client."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, Literal, TypeVar

from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from .changes import ChangeReport
from .codecs import VectorCodec
from .document_embeddings import AsyncDocumentEmbeddingCache, DocumentEmbeddingCache
from .embedders import AsyncEmbedder, Embedder
from .invalidation import AsyncInvalidator, Invalidator
from .layer import AsyncShell, SyncShell
from .metrics import LayerMetrics
from .query_embeddings import AsyncQueryEmbeddingCache, QueryEmbeddingCache
from .registry import LAYERS
from .rerank_scores import AsyncRerankScoreCache, RerankScoreCache
from .runner import AnyClient, AsyncClient, SyncClient, check_client
from .search_results import AsyncSearchResultsCache, SearchResultsCache
from .services import AsyncCachedEmbeddingService, CachedEmbeddingService
from .settings import Settings
from .timeouts import bound_client

log = logging.getLogger("cachebus")

S = TypeVar("S", bound=SyncShell[Any])
A = TypeVar("A", bound=AsyncShell[Any])


def _bound(client: AnyClient, settings: Settings) -> None:
    """Every call the bus makes fails within ``settings.redis_timeout``: see
    :mod:`cachebus.timeouts`."""
    check_client(client)
    changed = bound_client(client, settings.redis_timeout)
    if changed:
        log.info(
            "cachebus: calls on the Redis client given to the CacheBus now fail within "
            "CACHEBUS_REDIS_TIMEOUT=%g s, one attempt each (it had %s); give cachebus its "
            "own client (cachebus.connect(settings)) if other code needs longer calls",
            settings.redis_timeout,
            ", ".join(changed),
        )


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


def _build(
    shell: type[Any], which: Literal["sync_shell", "async_shell"], *args: Any, **options: Any
) -> Any:
    """Build a shell of a layer of the registry (:mod:`cachebus.registry`): a bus
    builds no other."""
    if not any(spec.resolve(which) is shell for spec in LAYERS):
        kind = which.replace("_", " ")
        raise TypeError(f"{shell.__name__} is not the {kind} of a registered layer")
    factory: Callable[..., Any] = shell
    return factory(*args, **options)


def _stats(
    shells: Iterable[SyncShell[Any] | AsyncShell[Any]], used_memory: int | None
) -> dict[str, Any]:
    """Counters of every registered layer (in registry order), summed over its caches."""
    layers: dict[str, list[LayerMetrics]] = {spec.name: [] for spec in LAYERS}
    for shell in shells:
        layers.setdefault(shell.core.layer_name, []).append(shell.metrics)
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

    >>> with CacheBus.from_settings(Settings.from_env()) as bus:   # connects; closes
    ...     bus.query_embeddings("text-embedding-3-small").get("hello")

    Every Redis call the bus makes fails within ``settings.redis_timeout`` (one
    attempt): a client given here that allows longer (redis-py's defaults do) is
    bounded in place, see :mod:`cachebus.timeouts`. :meth:`close` (or leaving the
    ``with`` block) publishes the layers' metrics counters and closes a client the bus
    opened itself.
    """

    def __init__(
        self, client: SyncClient, settings: Settings | None = None, *, owns_client: bool = False
    ) -> None:
        self.settings = settings or Settings()
        _bound(client, self.settings)
        self.client = client
        self.owns_client = owns_client
        """Whether :meth:`close` closes the client (true for :meth:`from_settings`)."""
        self.invalidator = Invalidator(client, settings=self.settings)
        self._shells: dict[tuple[Any, ...], SyncShell[Any]] = {}
        self.closed = False

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> CacheBus:
        """A bus on its own client (:func:`cachebus.connect`: ``redis_url``, TLS, ACL
        user, cluster, ``redis_timeout``), closed by :meth:`close`. ``settings``
        defaults to ``Settings.from_env()``."""
        from .connection import connect

        settings = settings or Settings.from_env()
        return cls(connect(settings), settings, owns_client=True)

    def layer(self, shell: type[S], *args: str, **options: Any) -> S:
        """The cache of a registered layer (:mod:`cachebus.registry`) on this bus's
        client and settings, built on first use and kept: ``shell`` is the layer's
        sync shell class, ``args`` its identifying arguments (a model, a collection,
        ...), ``options`` keyword arguments used when it is built (e.g. ``codec``)::

            answers = bus.layer(AnswerCache, "handbook", "gpt-4o", "v3")
        """
        key = (shell, *args)
        if key not in self._shells:
            self._shells[key] = _build(
                shell, "sync_shell", self.client, *args, settings=self.settings, **options
            )
        found: S = self._shells[key]  # type: ignore[assignment]
        return found

    def _layers(self) -> list[SyncShell[Any]]:
        return list(self._shells.values())

    def flush(self) -> int:
        """Publish every layer's metrics counters to Redis now, for ``cachebus stats``
        (normally every ``metrics_flush_interval`` s, on a call). Fails open: a Redis
        error is logged and those counters go with the next flush (strict settings
        raise). Returns how many layers sent counters."""
        return sum(layer.flush_metrics() for layer in self._layers())

    def close(self) -> None:
        """:meth:`flush`, then close the client if the bus opened it. Idempotent."""
        if self.closed:
            return
        self.closed = True
        try:
            self.flush()
        finally:
            if self.owns_client:
                self.client.close()

    def __enter__(self) -> CacheBus:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def document_created(
        self,
        doc_id: str,
        collection: str,
        *,
        version: int | None = None,
        tags: Iterable[str] = (),
        chunks: Sequence[tuple[str, str]] | None = None,
    ) -> ChangeReport:
        """See :meth:`Invalidator.document_created`."""
        return self.invalidator.document_created(
            doc_id, collection, version=version, tags=tags, chunks=chunks
        )

    def document_updated(
        self,
        doc_id: str,
        collection: str,
        *,
        version: int | None = None,
        tags: Iterable[str] = (),
        chunks: Sequence[tuple[str, str]] | None = None,
    ) -> ChangeReport:
        """See :meth:`Invalidator.document_updated`."""
        return self.invalidator.document_updated(
            doc_id, collection, version=version, tags=tags, chunks=chunks
        )

    def document_deleted(
        self,
        doc_id: str,
        collection: str,
        *,
        version: int | None = None,
        tags: Iterable[str] = (),
    ) -> ChangeReport:
        """See :meth:`Invalidator.document_deleted`."""
        return self.invalidator.document_deleted(doc_id, collection, version=version, tags=tags)

    def query_embeddings(
        self, model: str, model_version: str = "1", *, codec: VectorCodec | None = None
    ) -> QueryEmbeddingCache:
        return self.layer(QueryEmbeddingCache, model, model_version, codec=codec)

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
        return self.layer(DocumentEmbeddingCache, model, model_version, codec=codec)

    def search_results(self, collection: str) -> SearchResultsCache:
        return self.layer(SearchResultsCache, collection)

    def rerank_scores(self, model: str) -> RerankScoreCache:
        return self.layer(RerankScoreCache, model)

    def stats(self) -> dict[str, Any]:
        """Hit rate and counters per layer (this process) and Redis memory used."""
        try:
            used: int | None = used_memory(info_per_node(self.client, "memory"))
        except (RedisError, RedisClusterException):
            used = None
        return _stats(self._layers(), used)


class AsyncCacheBus:
    """Factory and registry of the asyncio layers on one client (see :class:`CacheBus`).

    >>> async with await AsyncCacheBus.from_settings(settings) as bus:
    ...     await bus.query_embeddings("text-embedding-3-small").get("hello")
    """

    def __init__(
        self, client: AsyncClient, settings: Settings | None = None, *, owns_client: bool = False
    ) -> None:
        self.settings = settings or Settings()
        _bound(client, self.settings)
        self.client = client
        self.owns_client = owns_client
        self.invalidator = AsyncInvalidator(client, settings=self.settings)
        self._shells: dict[tuple[Any, ...], AsyncShell[Any]] = {}
        self.closed = False

    @classmethod
    async def from_settings(cls, settings: Settings | None = None) -> AsyncCacheBus:
        """A bus on its own client (:func:`cachebus.connect_async`), closed by
        :meth:`close`."""
        from .connection import connect_async

        settings = settings or Settings.from_env()
        return cls(await connect_async(settings), settings, owns_client=True)

    def layer(self, shell: type[A], *args: str, **options: Any) -> A:
        """The asyncio :meth:`CacheBus.layer` (``shell`` is the layer's async shell)."""
        key = (shell, *args)
        if key not in self._shells:
            self._shells[key] = _build(
                shell, "async_shell", self.client, *args, settings=self.settings, **options
            )
        found: A = self._shells[key]  # type: ignore[assignment]
        return found

    def _layers(self) -> list[AsyncShell[Any]]:
        return list(self._shells.values())

    async def flush(self) -> int:
        """See :meth:`CacheBus.flush`."""
        sent = 0
        for layer in self._layers():
            sent += await layer.flush_metrics()
        return sent

    async def close(self) -> None:
        """:meth:`flush`, then close the client if the bus opened it. Idempotent."""
        if self.closed:
            return
        self.closed = True
        try:
            await self.flush()
        finally:
            if self.owns_client:
                await self.client.aclose()

    async def __aenter__(self) -> AsyncCacheBus:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def document_created(
        self,
        doc_id: str,
        collection: str,
        *,
        version: int | None = None,
        tags: Iterable[str] = (),
        chunks: Sequence[tuple[str, str]] | None = None,
    ) -> ChangeReport:
        """See :meth:`Invalidator.document_created`."""
        return await self.invalidator.document_created(
            doc_id, collection, version=version, tags=tags, chunks=chunks
        )

    async def document_updated(
        self,
        doc_id: str,
        collection: str,
        *,
        version: int | None = None,
        tags: Iterable[str] = (),
        chunks: Sequence[tuple[str, str]] | None = None,
    ) -> ChangeReport:
        """See :meth:`Invalidator.document_updated`."""
        return await self.invalidator.document_updated(
            doc_id, collection, version=version, tags=tags, chunks=chunks
        )

    async def document_deleted(
        self,
        doc_id: str,
        collection: str,
        *,
        version: int | None = None,
        tags: Iterable[str] = (),
    ) -> ChangeReport:
        """See :meth:`Invalidator.document_deleted`."""
        return await self.invalidator.document_deleted(
            doc_id, collection, version=version, tags=tags
        )

    def query_embeddings(
        self, model: str, model_version: str = "1", *, codec: VectorCodec | None = None
    ) -> AsyncQueryEmbeddingCache:
        return self.layer(AsyncQueryEmbeddingCache, model, model_version, codec=codec)

    def embedding_service(
        self, embedder: AsyncEmbedder | Embedder, *, codec: VectorCodec | None = None
    ) -> AsyncCachedEmbeddingService:
        """The asyncio :meth:`CacheBus.embedding_service`."""
        cache = self.query_embeddings(embedder.model, embedder.model_version, codec=codec)
        return AsyncCachedEmbeddingService(cache, embedder)

    def document_embeddings(
        self, model: str, model_version: str = "1", *, codec: VectorCodec | None = None
    ) -> AsyncDocumentEmbeddingCache:
        return self.layer(AsyncDocumentEmbeddingCache, model, model_version, codec=codec)

    def search_results(self, collection: str) -> AsyncSearchResultsCache:
        return self.layer(AsyncSearchResultsCache, collection)

    def rerank_scores(self, model: str) -> AsyncRerankScoreCache:
        return self.layer(AsyncRerankScoreCache, model)

    async def stats(self) -> dict[str, Any]:
        try:
            used: int | None = used_memory(await ainfo_per_node(self.client, "memory"))
        except (RedisError, RedisClusterException):
            used = None
        return _stats(self._layers(), used)
