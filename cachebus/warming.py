"""Cache warming (the lesson's "precomputed" layer): embed popular queries and
upcoming documents off-peak, so the first real request is a hit.

Both jobs read what is cached first (one lookup per batch, which also takes
the ticket), send only the misses to the embedder, and write them under that
ticket: a model bump or a document invalidation that lands while a batch is
being embedded retires the batch's values instead of letting them serve.
Redis errors raise here (a warming job must not spend provider calls on
writes that fail open).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import islice
from typing import Any

import numpy.typing as npt

from .document_embeddings import ChunkRef, ChunkVector, DocumentEmbeddingCache
from .embedders import Embedder
from .keys import sha256_hex
from .query_embeddings import QueryEmbeddingCache
from .querylog import QueryLog


@dataclass(slots=True)
class WarmReport:
    """What a warming run did (running totals while it runs)."""

    considered: int = 0
    """Texts (queries or chunks) looked at."""
    warmed: int = 0
    """Values embedded and written."""
    already_cached: int = 0
    """Values found in the cache (not embedded)."""
    batches: int = 0
    provider_calls: int = 0
    """Calls to the embedder (one per batch with misses)."""
    seconds: float = 0.0
    refused: int = 0
    """Values embedded but not written: invalidated while they were computed."""

    @property
    def rate(self) -> float:
        """Values warmed per second."""
        return self.warmed / self.seconds if self.seconds > 0 else 0.0


Progress = Callable[[WarmReport], None]


class RateLimiter:
    """Paces work to ``rate_per_s`` items per second (``None``: no limit).

    The bucket starts empty: ``n`` items may go when their share of time has
    passed, so N items take at least N / rate seconds overall.
    """

    def __init__(
        self,
        rate_per_s: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate_per_s is not None and rate_per_s <= 0:
            raise ValueError(f"rate_per_s must be positive, got {rate_per_s}")
        self.rate = rate_per_s
        self._clock = clock
        self._sleep = sleep
        self._ready = clock()

    def acquire(self, n: int) -> None:
        """Wait until ``n`` more items are allowed."""
        if self.rate is None or n <= 0:
            return
        self._ready = max(self._ready, self._clock()) + n / self.rate
        wait = self._ready - self._clock()
        if wait > 0:
            self._sleep(wait)


def _limiter(rate_per_s: float | None, batch_size: int, max_ticket_age: float) -> RateLimiter:
    # A batch's ticket is taken before its wait; the wait must leave it young
    # enough to write with (Settings.max_ticket_age).
    if rate_per_s is not None and rate_per_s > 0 and batch_size / rate_per_s > max_ticket_age / 2:
        raise ValueError(
            f"a batch of {batch_size} at {rate_per_s}/s waits longer than half of "
            f"max_ticket_age ({max_ticket_age} s): use a smaller batch"
        )
    return RateLimiter(rate_per_s)


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    if size <= 0:
        raise ValueError(f"batch_size must be positive, got {size}")
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


def _embed(embedder: Embedder, texts: list[str]) -> list[npt.ArrayLike]:
    vectors = list(embedder.embed(texts))
    if len(vectors) != len(texts):
        raise ValueError(f"embedder returned {len(vectors)} vectors for {len(texts)} texts")
    return vectors


def warm_queries(
    query_cache: QueryEmbeddingCache,
    embedder: Embedder,
    query_log: QueryLog,
    top_n: int,
    *,
    batch_size: int = 64,
    rate_per_s: float | None = None,
    days: int = 7,
    progress: Progress | None = None,
) -> WarmReport:
    """Embed the ``top_n`` most frequent logged queries that are not cached.

    ``embedder`` must produce the vectors of ``query_cache``'s model and
    version (they are written under its keys). ``rate_per_s`` limits texts
    sent to the embedder per second. ``progress`` gets the running report
    after every batch.
    """
    started = time.monotonic()
    core = query_cache.core
    limiter = _limiter(rate_per_s, batch_size, core.settings.max_ticket_age)
    report = WarmReport()
    texts = [text for text, _ in query_log.top(top_n, days)]
    for batch in _batches(texts, batch_size):
        lookup = query_cache.run(core.lookup(batch))
        misses = [t for t, v in zip(batch, lookup.values, strict=True) if v is None]
        report.considered += len(batch)
        report.already_cached += len(batch) - len(misses)
        report.batches += 1
        if misses:
            limiter.acquire(len(misses))
            report.provider_calls += 1
            core.metrics.provider_calls += 1
            vectors = _embed(embedder, misses)
            stored = query_cache.run(core.store(misses, vectors, lookup.ticket))
            report.warmed += stored
            report.refused += len(misses) - stored
        report.seconds = time.monotonic() - started
        if progress is not None:
            progress(replace(report))
    report.seconds = time.monotonic() - started
    return report


@dataclass(frozen=True, slots=True)
class _Chunk:
    doc_id: str
    chunk_id: str
    text: str
    content_hash: str


def content_hash(text: str) -> str:
    """The default content hash of a chunk: ``sha256:<hex of its UTF-8 text>``."""
    return "sha256:" + sha256_hex(text)


def _chunks(documents: Iterable[Mapping[str, Any]]) -> Iterator[_Chunk]:
    for number, doc in enumerate(documents, 1):
        doc_id = doc.get("doc_id") if isinstance(doc, Mapping) else None
        if not isinstance(doc_id, str) or not doc_id:
            raise ValueError(f"document {number}: 'doc_id' must be a non-empty string")
        chunks = doc.get("chunks")
        if not isinstance(chunks, list):
            raise ValueError(f"document {doc_id!r}: 'chunks' must be a list")
        for chunk in chunks:
            chunk_id = chunk.get("chunk_id") if isinstance(chunk, Mapping) else None
            text = chunk.get("text") if isinstance(chunk, Mapping) else None
            if not isinstance(chunk_id, str) or not chunk_id or not isinstance(text, str):
                raise ValueError(
                    f"document {doc_id!r}: every chunk needs a 'chunk_id' and a 'text' string"
                )
            given = chunk.get("content_hash")
            if given is not None and (not isinstance(given, str) or not given):
                raise ValueError(f"document {doc_id!r} chunk {chunk_id!r}: bad 'content_hash'")
            yield _Chunk(doc_id, chunk_id, text, given or content_hash(text))


def warm_documents(
    doc_cache: DocumentEmbeddingCache,
    embedder: Embedder,
    documents: Iterable[Mapping[str, Any]],
    *,
    batch_size: int = 64,
    rate_per_s: float | None = None,
    progress: Progress | None = None,
) -> WarmReport:
    """Embed the chunks of ``documents`` whose embedding is not cached for their
    content hash (changed chunks are re-embedded, unchanged ones skipped).

    ``documents``: ``{"doc_id", "chunks": [{"chunk_id", "text", "content_hash"?}]}``
    mappings, read lazily; ``content_hash`` defaults to :func:`content_hash` of
    the text. Chunks of a deleted (tombstoned) document are refused, not written.
    """
    started = time.monotonic()
    core = doc_cache.core
    limiter = _limiter(rate_per_s, batch_size, core.settings.max_ticket_age)
    report = WarmReport()
    for raw_batch in _batches(_chunks(documents), batch_size):
        # The same chunk twice in a batch: the later one wins, embedded once.
        batch: Sequence[_Chunk] = list({(c.doc_id, c.chunk_id): c for c in raw_batch}.values())
        refs = [ChunkRef(c.doc_id, c.chunk_id, c.content_hash) for c in batch]
        lookup = doc_cache.run(core.lookup(refs))
        misses = [c for c, v in zip(batch, lookup.values, strict=True) if v is None]
        report.considered += len(batch)
        report.already_cached += len(batch) - len(misses)
        report.batches += 1
        if misses:
            limiter.acquire(len(misses))
            report.provider_calls += 1
            core.metrics.provider_calls += 1
            vectors = _embed(embedder, [c.text for c in misses])
            by_doc: dict[str, list[ChunkVector]] = {}
            for chunk, vector in zip(misses, vectors, strict=True):
                by_doc.setdefault(chunk.doc_id, []).append(
                    ChunkVector(chunk.chunk_id, vector, chunk.content_hash)
                )
            stored = doc_cache.run(core.store(by_doc, lookup.ticket))
            report.warmed += stored
            report.refused += len(misses) - stored
        report.seconds = time.monotonic() - started
        if progress is not None:
            progress(replace(report))
    report.seconds = time.monotonic() - started
    return report
