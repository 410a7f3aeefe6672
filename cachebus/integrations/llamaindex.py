"""LlamaIndex: a ``BaseEmbedding`` with cachebus's caches in front of any embedder.

``pip install 'cachebus[llamaindex]'`` (``llama-index-core``)::

    from llama_index.core import Settings as LlamaSettings
    from llama_index.embeddings.openai import OpenAIEmbedding
    from cachebus import CacheBus
    from cachebus.integrations.llamaindex import CachedEmbedding

    bus = CacheBus.from_settings()
    LlamaSettings.embed_model = CachedEmbedding(
        OpenAIEmbedding(model="text-embedding-3-small"), bus, model_version="1"
    )
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from . import require

require("llama_index.core.base.embeddings.base", "llamaindex", "cachebus.integrations.llamaindex")

from llama_index.core.base.embeddings.base import BaseEmbedding  # noqa: E402
from llama_index.core.schema import BaseNode, MetadataMode  # noqa: E402
from pydantic import Field, PrivateAttr  # noqa: E402

from ..bus import AsyncCacheBus, CacheBus  # noqa: E402
from ..codecs import Vector, VectorCodec  # noqa: E402
from ..embedders import Embedder  # noqa: E402
from ..errors import ConfigError  # noqa: E402
from ..warming import content_hash  # noqa: E402
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


def _chunks(texts: list[str], indexes: list[int]) -> list[Chunk]:
    """Nodes as chunks named by their content (``sha256:<hex>`` as id and hash)."""
    out: list[Chunk] = []
    for i in indexes:
        digest = content_hash(texts[i])
        out.append((digest, texts[i], digest))
    return out


class CachedEmbedding(BaseEmbedding):
    """A LlamaIndex ``BaseEmbedding`` that caches in Redis through cachebus.

    ``embedder``: any LlamaIndex ``BaseEmbedding`` or a cachebus
    :class:`~cachebus.Embedder`; ``bus``: a :class:`~cachebus.CacheBus` or an
    :class:`~cachebus.AsyncCacheBus` (give both, as ``bus`` and ``async_bus``, to serve
    sync and async calls each on its own client). ``model_name`` defaults to the
    embedder's; ``model_version`` is required for a LlamaIndex embedder (it is part of
    every key: change it and the old vectors are never served).

    * query embeddings (``get_query_embedding``, ``aget_query_embedding``): the
      query-embedding cache, concurrent identical misses computed once (a Redis lease);
    * text embeddings (``get_text_embedding(s)``, batches): the same layer keyed by the
      text's SHA-256 (version ``<model_version>.documents`` for a LlamaIndex embedder,
      whose query and text embeddings may differ);
    * nodes (``embed_model(nodes)``, what ``IngestionPipeline`` and ``VectorStoreIndex``
      call): a node with a source document is cached in the **document-embedding
      layer** under its source's id, keyed by the SHA-256 of the text it embeds (node
      ids are random UUIDs in most pipelines, so the content is the stable name), and
      the worker's ``updated`` / ``deleted`` events for that document retire it
      (``cache_nodes_by_document=False``: cached like texts);
    * ``embed_chunks(doc_id, [(chunk_id, text, content_hash)])``: the document layer
      directly.

    Unlike LlamaIndex's ``embeddings_cache`` (a key-value store of JSON by text, no
    expiry, no model in the key, no invalidation), vectors are binary with a TTL, keys
    carry the model version, documents' vectors follow their lifecycle, and a Redis
    outage fails open.
    """

    model_version: str = Field(description="Version of the embedding model (part of the keys).")
    cache_nodes_by_document: bool = Field(
        default=True,
        description="Cache nodes with a source document in the document-embedding layer.",
    )
    _front: EmbeddingFront = PrivateAttr()
    _inner: Any = PrivateAttr()

    def __init__(
        self,
        embedder: BaseEmbedding | Embedder,
        bus: CacheBus | AsyncCacheBus | None = None,
        *,
        model_name: str | None = None,
        model_version: str | None = None,
        async_bus: AsyncCacheBus | None = None,
        codec: VectorCodec | None = None,
        **kwargs: Any,
    ) -> None:
        sync_bus, async_bus = split_buses(bus, async_bus)
        if isinstance(embedder, BaseEmbedding):
            if model_name is None and embedder.model_name in ("", "unknown"):
                raise ConfigError(
                    f"{type(embedder).__name__} names no model (model_name is "
                    f"{embedder.model_name!r}): pass model_name='...' (it is part of every "
                    "cache key)"
                )
            name, version = cache_names(
                embedder, model_name or embedder.model_name, model_version, foreign="LlamaIndex"
            )
            kwargs.setdefault("embed_batch_size", embedder.embed_batch_size)
            inner = embedder

            def embed_query(texts: list[str]) -> Vectors:
                return [inner.get_query_embedding(t) for t in texts]

            def embed_texts(texts: list[str]) -> Vectors:
                return inner.get_text_embedding_batch(texts)

            async def aembed_query(texts: list[str]) -> Vectors:
                return list(await asyncio.gather(*(inner.aget_query_embedding(t) for t in texts)))

            async def aembed_texts(texts: list[str]) -> Vectors:
                return await inner.aget_text_embedding_batch(texts)

            front = EmbeddingFront(
                model=name,
                model_version=version,
                embed_query=embed_query,
                embed_documents=embed_texts,
                aembed_query=aembed_query,
                aembed_documents=aembed_texts,
                bus=sync_bus,
                async_bus=async_bus,
                codec=codec,
            )
        elif isinstance(embedder, Embedder):
            front = EmbeddingFront.of_embedder(
                embedder, model_name, model_version, bus=sync_bus, async_bus=async_bus, codec=codec
            )
            name, version = front.model, front.model_version
        else:
            raise ConfigError(
                f"{type(embedder).__name__} is neither a LlamaIndex BaseEmbedding nor a "
                "cachebus Embedder (.model, .model_version, .embed(texts))"
            )
        kwargs["model_version"] = version
        super().__init__(model_name=name, **kwargs)
        self._front = front
        self._inner = embedder

    @classmethod
    def class_name(cls) -> str:
        return "CachebusCachedEmbedding"

    @property
    def front(self) -> EmbeddingFront:
        """The framework-free caches this adapter delegates to."""
        return self._front

    # BaseEmbedding's abstract interface -------------------------------------------
    def _get_query_embedding(self, query: str) -> list[float]:
        return _floats(self._front.query(query))

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return _floats(await self._front.aquery(query))

    def _get_text_embedding(self, text: str) -> list[float]:
        return _floats(self._front.documents([text])[0])

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return _floats((await self._front.adocuments([text]))[0])

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return [_floats(v) for v in self._front.documents(texts)]

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return [_floats(v) for v in await self._front.adocuments(texts)]

    # the document-embedding layer ----------------------------------------------------
    def embed_chunks(self, doc_id: str, chunks: Sequence[Chunk]) -> list[list[float]]:
        """Vectors of ``doc_id``'s chunks, ``(chunk_id, text, content_hash)`` (the hash
        may be omitted: ``sha256:<hex>`` of the text), through the document cache."""
        return [_floats(v) for v in self._front.chunks(doc_id, chunks)]

    async def aembed_chunks(self, doc_id: str, chunks: Sequence[Chunk]) -> list[list[float]]:
        """The asyncio :meth:`embed_chunks`."""
        return [_floats(v) for v in await self._front.achunks(doc_id, chunks)]

    def _by_document(self, nodes: Sequence[BaseNode]) -> tuple[dict[str, list[int]], list[int]]:
        groups: dict[str, list[int]] = {}
        loose: list[int] = []
        for i, node in enumerate(nodes):
            source = node.source_node if self.cache_nodes_by_document else None
            if source is not None and source.node_id:
                groups.setdefault(source.node_id, []).append(i)
            else:
                loose.append(i)
        return groups, loose

    def __call__(self, nodes: Sequence[BaseNode], **kwargs: Any) -> Sequence[BaseNode]:
        groups, loose = self._by_document(nodes)
        texts = [n.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
        for doc_id, idx in groups.items():
            vectors = self._front.chunks(doc_id, _chunks(texts, idx))
            for i, v in zip(idx, vectors, strict=True):
                nodes[i].embedding = _floats(v)
        if loose:
            embedded = self.get_text_embedding_batch([texts[i] for i in loose], **kwargs)
            for i, e in zip(loose, embedded, strict=True):
                nodes[i].embedding = e
        return nodes

    async def acall(self, nodes: Sequence[BaseNode], **kwargs: Any) -> Sequence[BaseNode]:
        groups, loose = self._by_document(nodes)
        texts = [n.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
        for doc_id, idx in groups.items():
            vectors = await self._front.achunks(doc_id, [(nodes[i].node_id, texts[i]) for i in idx])
            for i, v in zip(idx, vectors, strict=True):
                nodes[i].embedding = _floats(v)
        if loose:
            embedded = await self.aget_text_embedding_batch([texts[i] for i in loose], **kwargs)
            for i, e in zip(loose, embedded, strict=True):
                nodes[i].embedding = e
        return nodes


__all__ = ["CachedEmbedding"]
