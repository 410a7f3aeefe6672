"""A search service's four caches on one client, used the way the README tells a new
user to, with every read checked by the :class:`~consistency.oracle.Oracle`.

* reads are cache-aside: ``lookup()`` gives the value or a ticket; on a miss the value is
  computed from the oracle's current versions and written with ``set(..., ticket=)``;
* :meth:`Workload.prepare_search` / :meth:`PendingWrite.commit` split that in two, so a
  scenario can let an invalidation (or a failure) happen while a value is computed;
* invalidations go through ``bus.invalidator`` and are recorded as completed in the oracle
  when the call returns (or raised an error listed in ``done_on``, or ``RedisFullError``,
  which promises the invalidation took effect).

Works with today's library (git 077cbd4) and the new one: only the public API is used.
"""

from __future__ import annotations

import hashlib
import random
import struct
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .model import error_named
from .oracle import Oracle


def sr_namespace(collection: str) -> str:
    return f"sr:{collection}"


def qe_namespace(model: str, version: str) -> str:
    return f"qe:{model}:{version}"


@dataclass
class InvalidationResult:
    ok: bool
    """The call returned."""
    counted: bool
    """The oracle records it as completed (returned, or an error that promises effect)."""
    error: BaseException | None = None


@dataclass
class PendingWrite:
    """A search result computed under a ticket taken before computing; not written yet."""

    workload: Workload
    collection: str
    query: str
    ticket: Any
    value: list[Any]

    def commit(self) -> int:
        """``set(..., ticket=)`` as the service would after computing (maybe much later)."""
        cache = self.workload.bus.search_results(self.collection)
        return int(cache.set(self.query, self.value, ticket=self.ticket))


class Workload:
    """Documents, collections, one embedding model and one reranker, cached through
    ``CacheBus`` on ``client`` with ``settings``; the oracle holds the source versions."""

    def __init__(
        self,
        client: Any,
        settings: Any,
        oracle: Oracle | None = None,
        *,
        seed: int = 0,
        docs: int = 1000,
        hits_per_result: int = 5,
        model: tuple[str, str] = ("embed-model", "1"),
        dim: int = 64,
        reranker: str = "rerank-model",
        chunks_per_doc: int = 2,
        content_bytes: int = 40,
    ) -> None:
        from cachebus import CacheBus

        self.client = client
        self.settings = settings
        self.bus = CacheBus(client, settings)
        self.oracle = oracle if oracle is not None else Oracle()
        self.seed = seed
        self.doc_ids = [f"doc-{i:05d}" for i in range(docs)]
        self.hits_per_result = hits_per_result
        self.model = model
        self.dim = dim
        self.reranker = reranker
        self.chunks_per_doc = chunks_per_doc
        self.content_bytes = content_bytes
        self.errors: Counter[str] = Counter()
        """Invalidation errors by class name."""
        self._picks: dict[tuple[str, str], list[str]] = {}
        self._full = error_named("RedisFullError")
        from cachebus.errors import CacheBusError

        self._cachebus_error = CacheBusError

    # ------------------------------------------------------------------ providers

    def result_docs(self, collection: str, query: str) -> list[str]:
        """The documents a search for ``query`` finds in ``collection`` (deterministic;
        deleted documents are not found)."""
        key = (collection, query)
        picks = self._picks.get(key)
        if picks is None:
            rng = random.Random(f"{self.seed}:{collection}:{query}")
            picks = rng.sample(self.doc_ids, min(len(self.doc_ids), self.hits_per_result * 3))
            self._picks[key] = picks
        deleted = self.oracle.deleted
        return [d for d in picks if d not in deleted][: self.hits_per_result]

    def pin_results(self, collection: str, query: str, doc_ids: Sequence[str]) -> None:
        """Make a search for ``query`` find exactly these documents."""
        self._picks[(collection, query)] = list(doc_ids)

    def compute_search(self, collection: str, query: str) -> list[Any]:
        """Search results carrying the versions they were computed from."""
        from cachebus import SearchHit

        oracle = self.oracle
        bump = oracle.bump_counter(sr_namespace(collection))
        pad = "x" * self.content_bytes
        return [
            SearchHit(
                doc_id=d,
                score=1.0 - i / 100,
                chunk_id=f"c{i}",
                doc_version=oracle.version(d),
                content=pad,
                metadata={"bump": bump} if i == 0 else {},
            )
            for i, d in enumerate(self.result_docs(collection, query))
        ]

    def compute_rerank(self, candidates: Sequence[tuple[str, int]]) -> list[float]:
        """Score ``i`` is the version of candidate ``i``'s document now."""
        return [float(self.oracle.version(d)) for d, _ in candidates]

    def compute_query_embedding(self, text: str) -> np.ndarray[Any, np.dtype[np.float32]]:
        """Component 0 is the model's bump counter; the rest depends on the text only."""
        seed = struct.unpack("<Q", hashlib.blake2b(text.encode(), digest_size=8).digest())[0]
        vec = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
        vec[0] = self.oracle.bump_counter(qe_namespace(*self.model))
        return vec

    def chunk_ids(self, doc_id: str) -> list[str]:
        return [f"c{i}" for i in range(self.chunks_per_doc)]

    def compute_chunks(self, doc_id: str) -> list[Any]:
        """Chunk vectors whose component 0 is the document's version now."""
        from cachebus import ChunkVector

        v = self.oracle.version(doc_id)
        out = []
        for i, chunk in enumerate(self.chunk_ids(doc_id)):
            vec = np.full(self.dim, 0.5 + i, dtype=np.float32)
            vec[0] = v
            out.append(ChunkVector(chunk, vec, f"sha256:{doc_id}:{chunk}:v{v}"))
        return out

    # ------------------------------------------------------------------ caches

    def search_cache(self, collection: str) -> Any:
        return self.bus.search_results(collection)

    @property
    def query_cache(self) -> Any:
        return self.bus.query_embeddings(*self.model)

    @property
    def document_cache(self) -> Any:
        return self.bus.document_embeddings(*self.model)

    @property
    def rerank_cache(self) -> Any:
        return self.bus.rerank_scores(self.reranker)

    # ------------------------------------------------------------------ reads

    def read_search(self, collection: str, query: str, *, refill: bool = True) -> bool:
        """One checked cache-aside read; True on a hit."""
        cache = self.search_cache(collection)
        lookup = cache.lookup(query)
        value = lookup.values[0]
        if value is not None:
            self.oracle.record(
                "search_results", True, self.oracle.search_stale(sr_namespace(collection), value)
            )
            return True
        self.oracle.record("search_results", False, None)
        if refill:
            cache.set(query, self.compute_search(collection, query), ticket=lookup.ticket)
        return False

    def read_rerank(
        self, query: str, candidates: Sequence[tuple[str, int]], *, refill: bool = True
    ) -> bool:
        cache = self.rerank_cache
        lookup = cache.lookup(query, candidates)
        value = lookup.values[0]
        if value is not None:
            self.oracle.record("rerank_scores", True, self.oracle.rerank_stale(candidates, value))
            return True
        self.oracle.record("rerank_scores", False, None)
        if refill:
            scores = self.compute_rerank(candidates)
            cache.set(query, candidates, scores, ticket=lookup.ticket)
        return False

    def read_query_embeddings(self, texts: Sequence[str], *, refill: bool = True) -> int:
        """Checked reads of several texts in one lookup; returns the hits."""
        cache = self.query_cache
        lookup = cache.lookup_many(list(texts))
        namespace = qe_namespace(*self.model)
        missing = []
        for text, vec in zip(texts, lookup.values, strict=True):
            if vec is None:
                self.oracle.record("query_embeddings", False, None)
                missing.append(text)
            else:
                self.oracle.record(
                    "query_embeddings", True, self.oracle.query_embedding_stale(namespace, vec)
                )
        if refill and missing:
            cache.set_many(
                [(t, self.compute_query_embedding(t)) for t in missing], ticket=lookup.ticket
            )
        return len(texts) - len(missing)

    def read_document(self, doc_id: str, *, refill: bool = True) -> bool:
        """All chunks of one document (without content hashes: the strictest read)."""
        from cachebus import ChunkRef

        cache = self.document_cache
        chunks = self.chunk_ids(doc_id)
        lookup = cache.lookup_chunks([ChunkRef(doc_id, c) for c in chunks])
        found = [v for v in lookup.values if v is not None]
        why = None
        for vec in found:
            why = why or self.oracle.document_embedding_stale(doc_id, vec)
        hit = len(found) == len(chunks)
        # A partial read still served what it found: count it, stale or not.
        self.oracle.record("document_embeddings", hit, why)
        if not hit and refill and doc_id not in self.oracle.deleted:
            cache.set_many(doc_id, self.compute_chunks(doc_id), ticket=lookup.ticket)
        return hit

    # ------------------------------------------------------------------ writes

    def write_search(self, collection: str, query: str) -> int:
        """lookup (ticket) -> compute -> set: what a miss does."""
        return self.prepare_search(collection, query).commit()

    def store_search(self, collection: str, query: str) -> int:
        """compute -> ``set()`` without a ticket (it takes one at write time): what the
        README allows when nothing can change while the value is computed."""
        cache = self.search_cache(collection)
        return int(cache.set(query, self.compute_search(collection, query)))

    def prepare_search(self, collection: str, query: str) -> PendingWrite:
        """Take the ticket and compute now; write later with :meth:`PendingWrite.commit`."""
        lookup = self.search_cache(collection).lookup(query)
        return PendingWrite(
            self, collection, query, lookup.ticket, self.compute_search(collection, query)
        )

    def write_query_embeddings(self, texts: Sequence[str], *, ttl: int | None = None) -> int:
        cache = self.query_cache
        lookup = cache.lookup_many(list(texts))
        pairs = [(t, self.compute_query_embedding(t)) for t in texts]
        return int(cache.set_many(pairs, ticket=lookup.ticket, ttl=ttl))

    def write_document(self, doc_id: str) -> int:
        from cachebus import ChunkRef

        cache = self.document_cache
        lookup = cache.lookup_chunks([ChunkRef(doc_id, c) for c in self.chunk_ids(doc_id)])
        return int(cache.set_many(doc_id, self.compute_chunks(doc_id), ticket=lookup.ticket))

    def write_rerank(self, query: str, candidates: Sequence[tuple[str, int]]) -> int:
        cache = self.rerank_cache
        lookup = cache.lookup(query, candidates)
        scores = self.compute_rerank(candidates)
        return int(cache.set(query, candidates, scores, ticket=lookup.ticket))

    # ------------------------------------------------------------------ invalidations

    def _invalidate(
        self,
        call: Callable[[], Any],
        done: Callable[[], None],
        done_on: tuple[type[BaseException], ...],
    ) -> InvalidationResult:
        try:
            call()
        except self._cachebus_error as exc:
            self.errors[type(exc).__name__] += 1
            counted = isinstance(exc, done_on) or (
                self._full is not None and isinstance(exc, self._full)
            )
            if counted:
                done()
            return InvalidationResult(False, counted, exc)
        done()
        return InvalidationResult(True, True)

    def invalidate_documents(
        self,
        doc_ids: Sequence[str],
        *,
        deleted: bool = False,
        done_on: tuple[type[BaseException], ...] = (),
    ) -> InvalidationResult:
        """The documents change (or are deleted) now; then ``invalidate_documents``."""
        versions = {d: self.oracle.change_document(d, deleted=deleted) for d in doc_ids}
        return self._invalidate(
            lambda: self.bus.invalidator.invalidate_documents(list(doc_ids), deleted=deleted),
            lambda: self.oracle.document_invalidated(versions),
            done_on,
        )

    def retry_documents(
        self, doc_ids: Sequence[str], *, deleted: bool = False
    ) -> InvalidationResult:
        """Send the invalidation of already-changed documents again (a retry)."""
        versions = {d: self.oracle.version(d) for d in doc_ids}
        return self._invalidate(
            lambda: self.bus.invalidator.invalidate_documents(list(doc_ids), deleted=deleted),
            lambda: self.oracle.document_invalidated(versions),
            (),
        )

    def bump_collection(
        self, collection: str, *, done_on: tuple[type[BaseException], ...] = (), retry: bool = False
    ) -> InvalidationResult:
        """The collection's index changes now; then ``bump(collections=[...])``."""
        namespace = sr_namespace(collection)
        n = self.oracle.bump_counter(namespace) if retry else self.oracle.begin_bump(namespace)
        return self._invalidate(
            lambda: self.bus.invalidator.bump(collections=[collection]),
            lambda: self.oracle.bump_completed({namespace: n}),
            done_on,
        )

    def invalidate_collection_tag(
        self, collection: str, *, done_on: tuple[type[BaseException], ...] = ()
    ) -> InvalidationResult:
        """Retire a collection's results with ``invalidate_tags([Tag.collection(...)])``
        (for the oracle, like a bump: everything computed before is stale)."""
        from cachebus import Tag

        namespace = sr_namespace(collection)
        n = self.oracle.begin_bump(namespace)
        return self._invalidate(
            lambda: self.bus.invalidator.invalidate_tags([Tag.collection(collection)]),
            lambda: self.oracle.bump_completed({namespace: n}),
            done_on,
        )

    def bump_model(
        self, *, done_on: tuple[type[BaseException], ...] = (), retry: bool = False
    ) -> InvalidationResult:
        """The embedding model changes now; then ``bump(models=[...])``."""
        namespace = qe_namespace(*self.model)
        n = self.oracle.bump_counter(namespace) if retry else self.oracle.begin_bump(namespace)
        return self._invalidate(
            lambda: self.bus.invalidator.bump(models=[self.model]),
            lambda: self.oracle.bump_completed({namespace: n}),
            done_on,
        )
