"""The oracle: what every cached value was computed from, and which invalidations had
completed when a read started. No clocks: versions and counters only.

The workload's "source data" lives here: each document has a version (it goes up when
the document is updated or deleted) and each namespace (a collection's search results,
a model's query embeddings) a bump counter. Every value the workload computes records
the versions it was computed from *inside the value*:

* search results: each ``SearchHit.doc_version`` is the document's version at compute
  time, and the first hit's ``metadata["bump"]`` the collection's bump counter;
* rerank scores: score ``i`` is the version of candidate ``i``'s document (the key holds
  the candidate versions too, so only a document-tag invalidation that keeps them, a
  delete, can make a cached score stale);
* query embeddings: component 0 is the model's bump counter;
* document embeddings: component 0 is the document's version.

A change is announced before its invalidation runs (:meth:`Oracle.change_document`,
:meth:`Oracle.begin_bump`): from then on values are computed from the new version. When
the invalidation call returns, :meth:`Oracle.document_invalidated` /
:meth:`Oracle.bump_completed` record it as *completed*. A read is **stale** iff its value
was computed from a version below a completed one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

LAYERS = ("search_results", "rerank_scores", "query_embeddings", "document_embeddings")
MAX_EXAMPLES = 5


@dataclass
class Counts:
    reads: int = 0
    hits: int = 0
    stale: int = 0

    def add(self, other: Counts) -> None:
        self.reads += other.reads
        self.hits += other.hits
        self.stale += other.stale


@dataclass
class Oracle:
    """Source versions, completed invalidations and read counts (per layer)."""

    versions: dict[str, int] = field(default_factory=dict)
    """Current version of each document (1 when first seen)."""
    completed: dict[str, int] = field(default_factory=dict)
    """Per document, the highest version whose invalidation call has returned."""
    deleted: set[str] = field(default_factory=set)
    bumps: dict[str, int] = field(default_factory=dict)
    """Current bump counter per namespace (``sr:<collection>``, ``qe:<model>:<version>``)."""
    completed_bumps: dict[str, int] = field(default_factory=dict)
    counts: dict[str, Counts] = field(default_factory=lambda: {n: Counts() for n in LAYERS})
    invalidations: int = 0
    """Invalidation calls recorded as completed."""
    examples: list[str] = field(default_factory=list)
    """The first few stale reads, in words (for the report's notes)."""

    # ------------------------------------------------------------------ source data

    def version(self, doc_id: str) -> int:
        return self.versions.get(doc_id, 1)

    def change_document(self, doc_id: str, *, deleted: bool = False) -> int:
        """The document changes now (before its invalidation is sent): new version."""
        v = self.version(doc_id) + 1
        self.versions[doc_id] = v
        if deleted:
            self.deleted.add(doc_id)
        else:
            self.deleted.discard(doc_id)
        return v

    def document_invalidated(self, versions: Mapping[str, int]) -> None:
        """An invalidation call for these documents (at these versions) returned."""
        for doc_id, v in versions.items():
            if v > self.completed.get(doc_id, 0):
                self.completed[doc_id] = v
        self.invalidations += 1

    def bump_counter(self, namespace: str) -> int:
        return self.bumps.get(namespace, 0)

    def begin_bump(self, namespace: str) -> int:
        """The namespace's source changes now (a new index or model): new counter."""
        n = self.bump_counter(namespace) + 1
        self.bumps[namespace] = n
        return n

    def bump_completed(self, counters: Mapping[str, int]) -> None:
        for namespace, n in counters.items():
            if n > self.completed_bumps.get(namespace, 0):
                self.completed_bumps[namespace] = n
        self.invalidations += 1

    # ------------------------------------------------------------------ staleness

    def _doc_stale(self, doc_id: str, computed_from: int) -> bool:
        return computed_from < self.completed.get(doc_id, 0)

    def _bump_stale(self, namespace: str, computed_from: int) -> bool:
        return computed_from < self.completed_bumps.get(namespace, 0)

    def search_stale(self, namespace: str, hits: Sequence[Any]) -> str | None:
        """Why a cached result list (``SearchHit`` objects) is stale, or None."""
        if hits:
            first = hits[0]
            bump = int((first.metadata or {}).get("bump", 0))
            if self._bump_stale(namespace, bump):
                return f"{namespace} bump {bump} < completed {self.completed_bumps[namespace]}"
        for hit in hits:
            v = int(hit.doc_version or 0)
            if self._doc_stale(hit.doc_id, v):
                return f"{hit.doc_id} v{v} < completed v{self.completed[hit.doc_id]}"
        return None

    def rerank_stale(
        self, candidates: Sequence[tuple[str, int]], scores: Sequence[float]
    ) -> str | None:
        for (doc_id, _), score in zip(candidates, scores, strict=True):
            if self._doc_stale(doc_id, round(score)):
                return f"rerank {doc_id} v{round(score)} < completed v{self.completed[doc_id]}"
        return None

    def query_embedding_stale(self, namespace: str, vector: Sequence[float]) -> str | None:
        bump = round(float(vector[0]))
        if self._bump_stale(namespace, bump):
            return f"{namespace} bump {bump} < completed {self.completed_bumps[namespace]}"
        return None

    def document_embedding_stale(self, doc_id: str, vector: Sequence[float]) -> str | None:
        v = round(float(vector[0]))
        if self._doc_stale(doc_id, v):
            return f"embedding {doc_id} v{v} < completed v{self.completed[doc_id]}"
        return None

    # ------------------------------------------------------------------ counting

    def record(self, layer: str, hit: bool, why_stale: str | None) -> bool:
        """Count one checked read; returns whether it was stale."""
        c = self.counts[layer]
        c.reads += 1
        if hit:
            c.hits += 1
        if why_stale is not None:
            c.stale += 1
            if len(self.examples) < MAX_EXAMPLES:
                self.examples.append(f"{layer}: {why_stale}")
        return why_stale is not None

    def total(self, layers: Iterable[str] = LAYERS) -> Counts:
        out = Counts()
        for name in layers:
            out.add(self.counts[name])
        return out

    def reset_counts(self) -> None:
        """Forget the read counts (e.g. after a warm-up phase); versions stay."""
        self.counts = {n: Counts() for n in LAYERS}
        self.examples = []
