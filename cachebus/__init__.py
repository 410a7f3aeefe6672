"""cachebus: event-driven cache invalidation for embedding and search caches."""

from __future__ import annotations

from .bus import AsyncCacheBus, CacheBus
from .changes import ChangeReport
from .codecs import VectorCodec, decode_vector
from .connection import connect, connect_async
from .document_embeddings import (
    AsyncDocumentEmbeddingCache,
    ChunkRef,
    ChunkVector,
    DocumentEmbeddingCache,
)
from .embedders import AsyncEmbedder, Embedder, HashingEmbedder
from .errors import (
    CacheBusError,
    CacheUnavailableError,
    CodecError,
    ConfigError,
    DurabilityError,
    KeyEncodingError,
    PermissionDeniedError,
    RedisFullError,
)
from .invalidation import AsyncInvalidator, Invalidator
from .keys import KeyScheme, Tag
from .lookup import Lookup
from .metrics import LayerMetrics
from .query_embeddings import AsyncQueryEmbeddingCache, QueryEmbeddingCache
from .querylog import AsyncQueryLog, QueryLog
from .rerank_scores import AsyncRerankScoreCache, RerankScoreCache
from .search_results import AsyncSearchResultsCache, SearchHit, SearchResultsCache
from .services import (
    AsyncCachedEmbeddingService,
    AsyncCachedSearchService,
    CachedEmbeddingService,
    CachedSearchService,
    SearchPipeline,
)
from .settings import Settings
from .tags import DocumentInvalidation, InvalidationReport, Ticket
from .warming import WarmReport, warm_documents, warm_queries

__version__ = "0.1.0"

__all__ = [
    "AsyncCacheBus",
    "AsyncCachedEmbeddingService",
    "AsyncCachedSearchService",
    "AsyncDocumentEmbeddingCache",
    "AsyncEmbedder",
    "AsyncInvalidator",
    "AsyncQueryEmbeddingCache",
    "AsyncQueryLog",
    "AsyncRerankScoreCache",
    "AsyncSearchResultsCache",
    "CacheBus",
    "CacheBusError",
    "CacheUnavailableError",
    "CachedEmbeddingService",
    "CachedSearchService",
    "ChangeReport",
    "ChunkRef",
    "ChunkVector",
    "CodecError",
    "ConfigError",
    "DocumentEmbeddingCache",
    "DocumentInvalidation",
    "DurabilityError",
    "Embedder",
    "HashingEmbedder",
    "InvalidationReport",
    "Invalidator",
    "KeyEncodingError",
    "KeyScheme",
    "LayerMetrics",
    "Lookup",
    "PermissionDeniedError",
    "QueryEmbeddingCache",
    "QueryLog",
    "RedisFullError",
    "RerankScoreCache",
    "SearchHit",
    "SearchPipeline",
    "SearchResultsCache",
    "Settings",
    "Tag",
    "Ticket",
    "VectorCodec",
    "WarmReport",
    "__version__",
    "connect",
    "connect_async",
    "decode_vector",
    "warm_documents",
    "warm_queries",
]
