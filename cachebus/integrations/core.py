"""The framework-free part of the integrations: caches in front of an embedder.

:class:`EmbeddingFront` is what the LangChain and LlamaIndex adapters delegate to, and
what an adapter for another framework would use. It builds on the layers' own
read-through programs; it adds no cache of its own:

* **queries** go through the query-embedding layer's read-through
  (:class:`cachebus.CachedEmbeddingService` / its asyncio twin): keys name the model and
  its version, misses are embedded in one provider call, concurrent identical misses
  (in any process) are computed once under a lease;
* **texts without ids** (``embed_documents``) go through the same layer, content-addressed
  by the text's SHA-256 (a text's vector never goes stale; a model change is a new
  version, or a namespace bump);
* **chunks with ids and content hashes** go through the document-embedding layer, where
  the worker's ``updated`` / ``deleted`` events retire them, with the same lease-based herd
  control (:func:`cachebus.lookup.read_through` driving the layer's own lookup and
  conditional write).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..bus import AsyncCacheBus, CacheBus
from ..codecs import Vector, VectorCodec
from ..commands import Program
from ..document_embeddings import (
    AsyncDocumentEmbeddingCache,
    ChunkRef,
    ChunkVector,
    DocumentEmbeddingCache,
    DocumentEmbeddingCore,
)
from ..embedders import Embedder
from ..errors import ConfigError
from ..keys import sha256_hex
from ..lookup import Lookup, read_through
from ..services import AsyncCachedEmbeddingService, CachedEmbeddingService
from ..tags import Ticket
from ..warming import content_hash as default_content_hash

Vectors = Sequence[Any]
"""What a provider returns: one vector (any array-like) per text."""
EmbedFn = Callable[[list[str]], Vectors]
AsyncEmbedFn = Callable[[list[str]], Awaitable[Vectors]]

Chunk = tuple[str, str] | tuple[str, str, str | None]
"""``(chunk_id, text)`` or ``(chunk_id, text, content_hash)``; a missing hash is
``sha256:<hex of the text>`` (:func:`cachebus.warming.content_hash`, as ``cachebus warm``)."""


@dataclass(frozen=True, slots=True)
class _ChunkItem:
    doc_id: str
    chunk_id: str
    text: str
    content_hash: str


class _Provider:
    """An :class:`cachebus.Embedder` view of one embed function, named for its cache."""

    def __init__(self, model: str, model_version: str, fn: EmbedFn | AsyncEmbedFn) -> None:
        self.model = model
        self.model_version = model_version
        self._fn = fn

    def embed(self, texts: Sequence[str]) -> Any:
        return self._fn(list(texts))


def _vectors(raw: Vectors, n: int) -> list[Vector]:
    out = [np.asarray(v, dtype=np.float32) for v in raw]
    if len(out) != n:
        raise ValueError(f"the embedder returned {len(out)} vectors for {n} texts")
    return out


def to_thread(fn: EmbedFn) -> AsyncEmbedFn:
    """An async embed function running a sync one in a worker thread (the event loop
    is never blocked by a provider call)."""

    async def run(texts: list[str]) -> Vectors:
        return await asyncio.to_thread(fn, texts)

    return run


def async_embed_of(embedder: Any) -> AsyncEmbedFn:
    """The async embed function of a cachebus embedder: its ``aembed`` if it has one,
    its ``embed`` if that is a coroutine function (an :class:`AsyncEmbedder`), else its
    ``embed`` in a worker thread."""
    aembed = getattr(embedder, "aembed", None)
    if callable(aembed):
        fn: AsyncEmbedFn = aembed
        return fn
    if inspect.iscoroutinefunction(embedder.embed):
        afn: AsyncEmbedFn = embedder.embed
        return afn
    return to_thread(embedder.embed)


def split_buses(
    bus: CacheBus | AsyncCacheBus | None, async_bus: AsyncCacheBus | None
) -> tuple[CacheBus | None, AsyncCacheBus | None]:
    """The adapters' ``bus`` argument (sync or async) and ``async_bus``, as the sync and
    the async bus to use (either may be None)."""
    if isinstance(bus, AsyncCacheBus):
        if async_bus is not None:
            raise ConfigError("two AsyncCacheBus given: pass the sync one as bus")
        return None, bus
    return bus, async_bus


def cache_names(
    embedder: Any, model: str | None, model_version: str | None, *, foreign: str | None = None
) -> tuple[str, str]:
    """The cache's model and version. A cachebus embedder (``foreign=None``) brings its
    own (given names must agree). A ``foreign`` (framework) embedder's model defaults to
    its ``model`` / ``model_name`` attribute; its version must be given."""
    if foreign is None:
        own_model, own_version = str(embedder.model), str(embedder.model_version)
        if model is not None and model != own_model:
            raise ConfigError(f"model={model!r} but the embedder is {own_model!r}")
        if model_version is not None and model_version != own_version:
            raise ConfigError(
                f"model_version={model_version!r} but the embedder's is {own_version!r}"
            )
        return own_model, own_version
    if model is None:
        found = getattr(embedder, "model", None)
        if not isinstance(found, str) or not found:
            found = getattr(embedder, "model_name", None)
        if not isinstance(found, str) or not found:
            raise ConfigError(
                f"{type(embedder).__name__} names no model: pass model='...' (it is part "
                "of every cache key)"
            )
        model = found
    if not model_version:
        raise ConfigError(
            f"pass model_version='...' for a {foreign} embedder: it is part of every cache "
            "key, and changing it (a new model revision, other dimensions) retires the old "
            "vectors"
        )
    return model, model_version


class EmbeddingFront:
    """Caches in front of one embedding model (see the module docstring).

    ``bus`` serves the sync methods and ``async_bus`` the ``a*`` ones (without an async
    bus, the ``a*`` methods run the sync path in a worker thread). ``embed_query`` /
    ``embed_documents`` are the provider's functions for queries and for documents;
    ``aembed_*`` their asyncio versions (default: the sync one in a thread).
    ``shared_namespace``: whether queries and documents embed alike (one function); if
    not, texts without ids are cached under version ``<model_version>.documents``, so a
    model with query instructions (E5, BGE, ...) never serves a query vector for a
    document. Provider errors cache nothing and propagate; a Redis outage fails open
    (the provider is called directly), as everywhere in cachebus.
    """

    def __init__(
        self,
        *,
        model: str,
        model_version: str,
        embed_query: EmbedFn,
        embed_documents: EmbedFn,
        aembed_query: AsyncEmbedFn | None = None,
        aembed_documents: AsyncEmbedFn | None = None,
        bus: CacheBus | None = None,
        async_bus: AsyncCacheBus | None = None,
        codec: VectorCodec | None = None,
        shared_namespace: bool = False,
    ) -> None:
        if bus is None and async_bus is None:
            raise ConfigError("give a CacheBus (sync calls) and/or an AsyncCacheBus (async calls)")
        if not model or not model_version:
            raise ConfigError("the cache needs the embedding model's name and version")
        self.model = model
        self.model_version = model_version
        self.documents_version = model_version if shared_namespace else f"{model_version}.documents"
        self.bus = bus
        self.async_bus = async_bus
        self.codec = codec
        self._embed_query = embed_query
        self._embed_documents = embed_documents
        self._aembed_query = aembed_query or to_thread(embed_query)
        self._aembed_documents = aembed_documents or to_thread(embed_documents)
        self._sync: dict[str, CachedEmbeddingService] = {}
        self._async: dict[str, AsyncCachedEmbeddingService] = {}

    @classmethod
    def of_embedder(
        cls,
        embedder: Embedder,
        model: str | None,
        model_version: str | None,
        *,
        bus: CacheBus | None,
        async_bus: AsyncCacheBus | None,
        codec: VectorCodec | None,
    ) -> EmbeddingFront:
        """The caches in front of a cachebus :class:`~cachebus.embedders.Embedder` (one
        function for queries and documents; its own name and version unless given)."""
        name, version = cache_names(embedder, model, model_version)
        aembed = async_embed_of(embedder)

        def embed(texts: list[str]) -> Vectors:
            return list(embedder.embed(texts))

        return cls(
            model=name,
            model_version=version,
            embed_query=embed,
            embed_documents=embed,
            aembed_query=aembed,
            aembed_documents=aembed,
            bus=bus,
            async_bus=async_bus,
            codec=codec,
            shared_namespace=True,
        )

    # ------------------------------------------------------------------ services
    def _need_bus(self) -> CacheBus:
        if self.bus is None:
            raise ConfigError(
                "this cached embedder was built with an AsyncCacheBus only: use the async "
                "methods, or give it a CacheBus for sync calls"
            )
        return self.bus

    def query_service(self) -> CachedEmbeddingService:
        """The query-embedding service of this model (sync)."""
        return self._service("query", self.model_version, self._embed_query)

    def documents_service(self) -> CachedEmbeddingService:
        """The service caching texts without ids (sync)."""
        return self._service("documents", self.documents_version, self._embed_documents)

    def _service(self, kind: str, version: str, fn: EmbedFn) -> CachedEmbeddingService:
        if kind not in self._sync:
            bus = self._need_bus()
            cache = bus.query_embeddings(self.model, version, codec=self.codec)
            self._sync[kind] = CachedEmbeddingService(cache, _Provider(self.model, version, fn))
        return self._sync[kind]

    def _aservice(
        self, kind: str, version: str, fn: AsyncEmbedFn
    ) -> AsyncCachedEmbeddingService | None:
        if self.async_bus is None:
            return None
        if kind not in self._async:
            cache = self.async_bus.query_embeddings(self.model, version, codec=self.codec)
            self._async[kind] = AsyncCachedEmbeddingService(
                cache, _Provider(self.model, version, fn)
            )
        return self._async[kind]

    # ------------------------------------------------------------------ queries
    def query(self, text: str) -> Vector:
        return self.queries([text])[0]

    def queries(self, texts: Sequence[str]) -> list[Vector]:
        return self.query_service().embed_batch(texts)

    async def aquery(self, text: str) -> Vector:
        return (await self.aqueries([text]))[0]

    async def aqueries(self, texts: Sequence[str]) -> list[Vector]:
        service = self._aservice("query", self.model_version, self._aembed_query)
        if service is None:
            return await asyncio.to_thread(self.queries, texts)
        return await service.embed_batch(texts)

    # ------------------------------------------------------------------ texts without ids
    def documents(self, texts: Sequence[str]) -> list[Vector]:
        return self.documents_service().embed_batch(texts)

    async def adocuments(self, texts: Sequence[str]) -> list[Vector]:
        service = self._aservice("documents", self.documents_version, self._aembed_documents)
        if service is None:
            return await asyncio.to_thread(self.documents, texts)
        return await service.embed_batch(texts)

    # ------------------------------------------------------------------ chunks with ids
    def document_cache(self) -> DocumentEmbeddingCache:
        return self._need_bus().document_embeddings(
            self.model, self.model_version, codec=self.codec
        )

    def chunks(self, doc_id: str, chunks: Sequence[Chunk]) -> list[Vector]:
        """Vectors of a document's chunks, through the document-embedding cache."""
        items = _items(doc_id, chunks)
        if not items:
            return []
        cache = self.document_cache()
        unique = _unique(items)

        def compute(todo: list[_ChunkItem]) -> Vectors:
            return self._embed_documents([c.text for c in todo])

        def direct() -> list[Vector]:
            cache.metrics.provider_calls += 1
            texts = [c.text for c in unique]
            return _vectors(self._embed_documents(texts), len(texts))

        vectors = cache.run(
            chunk_read_through(cache.core, unique, compute),
            fallback=direct,
            what="embed_chunks (embedder called directly)",
        )
        return _in_order(items, unique, vectors)

    async def achunks(self, doc_id: str, chunks: Sequence[Chunk]) -> list[Vector]:
        """The asyncio :meth:`chunks`."""
        if self.async_bus is None:
            return await asyncio.to_thread(self.chunks, doc_id, chunks)
        items = _items(doc_id, chunks)
        if not items:
            return []
        cache: AsyncDocumentEmbeddingCache = self.async_bus.document_embeddings(
            self.model, self.model_version, codec=self.codec
        )
        unique = _unique(items)

        def compute(todo: list[_ChunkItem]) -> Awaitable[Vectors]:
            return self._aembed_documents([c.text for c in todo])

        async def direct() -> list[Vector]:
            cache.metrics.provider_calls += 1
            texts = [c.text for c in unique]
            return _vectors(await self._aembed_documents(texts), len(texts))

        vectors = await cache.run(
            chunk_read_through(cache.core, unique, compute),
            fallback=direct,
            what="embed_chunks (embedder called directly)",
        )
        return _in_order(items, unique, vectors)


def _items(doc_id: str, chunks: Sequence[Chunk]) -> list[_ChunkItem]:
    if not isinstance(doc_id, str) or not doc_id:
        raise ValueError("doc_id must be a non-empty string")
    out: list[_ChunkItem] = []
    for chunk in chunks:
        if len(chunk) not in (2, 3):
            raise ValueError(f"a chunk is (chunk_id, text[, content_hash]), got {chunk!r:.80}")
        chunk_id, text = chunk[0], chunk[1]
        given = chunk[2] if len(chunk) == 3 else None
        if not isinstance(chunk_id, str) or not chunk_id or not isinstance(text, str):
            raise ValueError(f"chunk ids and texts must be strings, got {chunk!r:.80}")
        out.append(_ChunkItem(doc_id, chunk_id, text, given or default_content_hash(text)))
    return out


def _unique(items: list[_ChunkItem]) -> list[_ChunkItem]:
    """One item per chunk id (the later one wins, as in ``warm_documents``)."""
    return list({c.chunk_id: c for c in items}.values())


def _in_order(
    items: list[_ChunkItem], unique: list[_ChunkItem], vectors: list[Vector]
) -> list[Vector]:
    by_id = {
        c.chunk_id: np.asarray(v, dtype=np.float32) for c, v in zip(unique, vectors, strict=True)
    }
    return [by_id[c.chunk_id] for c in items]


def chunk_read_through(
    core: DocumentEmbeddingCore, items: Sequence[_ChunkItem], compute: Callable[[list[Any]], Any]
) -> Program[list[Vector]]:
    """The document-embedding layer's lookup and conditional write, driven by the
    herd-controlled :func:`cachebus.lookup.read_through`: a chunk is served only for its
    content hash; misses take a lease per (chunk, content hash), are embedded in one
    provider call, and are written under the ticket taken before computing, so a
    document invalidated meanwhile refuses them (they are returned, not cached)."""
    metrics = core.metrics

    def lookup(todo: Sequence[_ChunkItem], count: bool) -> Program[Lookup[Vector]]:
        found = yield from core.lookup(
            [ChunkRef(c.doc_id, c.chunk_id, c.content_hash) for c in todo]
        )
        if not count:  # a lease holder's value being polled for: not a new hit or miss
            metrics.hits -= found.hits
            metrics.misses -= found.misses
        return found

    def entry_keys(todo: Sequence[_ChunkItem], ticket: Ticket) -> list[str]:
        # In the document's slot (its hash tag), one per chunk and content.
        return [
            f"{core.keys.document_embeddings(c.doc_id)}:"
            f"{sha256_hex(core.field(c.chunk_id) + chr(0) + c.content_hash)[:32]}"
            for c in todo
        ]

    def store(
        todo: Sequence[_ChunkItem], values: Sequence[Any], ticket: Ticket | None
    ) -> Program[int]:
        by_doc: dict[str, list[ChunkVector]] = {}
        for c, v in zip(todo, values, strict=True):
            by_doc.setdefault(c.doc_id, []).append(ChunkVector(c.chunk_id, v, c.content_hash))
        stored: int = yield from core.store(by_doc, ticket)
        return stored

    raw = yield from read_through(
        items,
        keys=core.keys,
        metrics=metrics,
        lookup=lookup,
        entry_keys=entry_keys,
        store=store,
        compute=compute,
        lease_ms=core.settings.lease_ms,
        wait_ms=core.settings.lease_wait_ms,
    )
    return [np.asarray(v, dtype=np.float32) for v in raw]


__all__ = [
    "Chunk",
    "EmbeddingFront",
    "async_embed_of",
    "cache_names",
    "chunk_read_through",
    "to_thread",
]
