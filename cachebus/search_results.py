"""Search results cache: collection + its generation + sha256(canonical query,
sorted filters, top_k); entries are tagged with ``doc:<id>`` of every result
and with ``collection:<name>``."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .commands import Call, Program
from .errors import CodecError, ConfigError
from .keys import Tag, key_digest
from .layer import AsyncShell, SyncShell
from .lookup import Lookup, read_through
from .runner import AsyncClient, SyncClient
from .settings import Settings
from .tagged import TaggedCore
from .tags import Ticket, take_ticket

Filters = Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One search result. ``doc_id`` is what invalidation tags it by."""

    doc_id: str
    score: float
    chunk_id: str | None = None
    doc_version: int | None = None
    content: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchHit:
        return cls(
            doc_id=str(data["doc_id"]),
            score=float(data["score"]),
            chunk_id=data.get("chunk_id"),
            doc_version=data.get("doc_version"),
            content=data.get("content"),
            metadata=data.get("metadata") or {},
        )


@dataclass(frozen=True, slots=True)
class SearchRequest:
    """What identifies a result list inside a collection."""

    query: str
    filters: Filters = None
    top_k: int = 10

    def digest(self) -> str:
        try:
            canonical = json.dumps(
                {"q": self.query, "f": self.filters or {}, "k": self.top_k},
                sort_keys=True,
                separators=(",", ":"),
                ensure_ascii=False,
                allow_nan=False,
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"search filters must be JSON-serializable: {exc}") from None
        return key_digest(canonical)


Results = list[SearchHit]


class SearchResultsCore(TaggedCore[Results]):
    """Programs of the search results layer for one collection."""

    layer_name = "search_results"

    def __init__(self, settings: Settings, collection: str) -> None:
        super().__init__(settings)
        self.collection = collection
        self.namespace = self.keys.search_namespace(collection)
        self.default_ttl = settings.search_results_ttl
        self.collection_tag = Tag.collection(collection)
        self._generation = 0
        """The generation seen last; a lookup confirms it in the same round trip."""

    def encode_value(self, value: Results) -> bytes:
        return json.dumps([asdict(h) for h in value], separators=(",", ":")).encode()

    def decode_value(self, payload: bytes) -> Results:
        data = json.loads(payload)
        if not isinstance(data, list):
            raise CodecError("search results payload is not a list")
        return [SearchHit.from_dict(d) for d in data]

    def entry_keys(self, requests: Sequence[SearchRequest], ticket: Ticket) -> list[str]:
        gen = ticket.generations.get(self.namespace, 0)
        return [self.keys.search_results(self.collection, gen, r.digest()) for r in requests]

    def lookup(
        self, requests: Sequence[SearchRequest], count: bool = True
    ) -> Program[Lookup[Results]]:
        """Two round trips in the common case: the generation and the entries under
        the generation seen last in one step, then the tag stamps (and, on a miss,
        the ticket). A bumped generation costs one more. A missing generation (lost,
        evicted) makes every entry a miss; the ticket re-creates it at a value never
        used before."""
        gen_key = self.keys.generation(self.namespace)
        guess = Ticket(0, {self.namespace: self._generation})
        ns = [self.namespace]
        values, replies, ticket = yield from self.read_entries(
            self.entry_keys(requests, guess), False, [Call.of("GET", gen_key)], ns
        )
        generation = None if replies[0] is None else int(replies[0])
        if generation is None:
            values = [None] * len(requests)
            if ticket is None:
                ticket = yield from take_ticket(self.keys, ns)
        elif generation != self._generation:
            self._generation = generation
            values, _, ticket = yield from self.read_entries(
                self.entry_keys(requests, Ticket(0, {self.namespace: generation})), False, (), ns
            )
        if ticket is not None:
            self._generation = ticket.generations[self.namespace]
        else:
            # With no miss there is nothing to compute, and no sequence was read: a
            # value computed after this lookup cannot be written under its ticket.
            ticket = Ticket(0, {self.namespace: self._generation})
        if count:
            self.count(values)
        return Lookup(values, ticket)

    def store(
        self,
        requests: Sequence[SearchRequest],
        results: Sequence[Results],
        ticket: Ticket | None,
        ttl: int | None = None,
        extra_tags: Sequence[Tag] = (),
    ) -> Program[int]:
        if ticket is None:
            ticket = yield from take_ticket(self.keys, [self.namespace])
        tags = [
            [self.collection_tag, *extra_tags, *(Tag.doc(h.doc_id) for h in hits)]
            for hits in results
        ]
        keys = self.entry_keys(requests, ticket)
        return (yield from self.write_entries(keys, list(results), tags, ticket, ttl))

    def read_through(
        self, request: SearchRequest, compute: Callable[[list[SearchRequest]], Any]
    ) -> Program[Results]:
        def store(
            items: Sequence[SearchRequest], values: Sequence[Any], t: Ticket | None
        ) -> Program[int]:
            return self.store(items, [list(v) for v in values], t)

        values = yield from read_through(
            [request],
            keys=self.keys,
            metrics=self.metrics,
            lookup=self.lookup,
            entry_keys=self.entry_keys,
            store=store,
            compute=compute,
            lease_ms=self.settings.lease_ms,
            wait_ms=self.settings.lease_wait_ms,
        )
        return list(values[0])


class SearchResultsCache(SyncShell[SearchResultsCore]):
    """Search results of one collection on a sync client."""

    def __init__(
        self, client: SyncClient, collection: str, *, settings: Settings | None = None
    ) -> None:
        super().__init__(client, SearchResultsCore(settings or Settings(), collection))

    def lookup(self, query: str, filters: Filters = None, top_k: int = 10) -> Lookup[Results]:
        """The cached list or ``None``, plus the ticket for a race-free :meth:`set`."""
        request = SearchRequest(query, filters, top_k)
        return self._soft(self.core.lookup([request]), Lookup([None], None), "read")

    def get(self, query: str, filters: Filters = None, top_k: int = 10) -> Results | None:
        return self.lookup(query, filters, top_k).values[0]

    def set(
        self,
        query: str,
        results: Sequence[SearchHit],
        filters: Filters = None,
        top_k: int = 10,
        *,
        ticket: Ticket | None = None,
        ttl: int | None = None,
        tags: Sequence[Tag] = (),
    ) -> int:
        request = SearchRequest(query, filters, top_k)
        program = self.core.store([request], [list(results)], ticket, ttl, tags)
        return self._soft(program, 0, "write")


class AsyncSearchResultsCache(AsyncShell[SearchResultsCore]):
    """Search results of one collection on an asyncio client."""

    def __init__(
        self, client: AsyncClient, collection: str, *, settings: Settings | None = None
    ) -> None:
        super().__init__(client, SearchResultsCore(settings or Settings(), collection))

    async def lookup(self, query: str, filters: Filters = None, top_k: int = 10) -> Lookup[Results]:
        request = SearchRequest(query, filters, top_k)
        return await self._soft(self.core.lookup([request]), Lookup([None], None), "read")

    async def get(self, query: str, filters: Filters = None, top_k: int = 10) -> Results | None:
        return (await self.lookup(query, filters, top_k)).values[0]

    async def set(
        self,
        query: str,
        results: Sequence[SearchHit],
        filters: Filters = None,
        top_k: int = 10,
        *,
        ticket: Ticket | None = None,
        ttl: int | None = None,
        tags: Sequence[Tag] = (),
    ) -> int:
        request = SearchRequest(query, filters, top_k)
        program = self.core.store([request], [list(results)], ticket, ttl, tags)
        return await self._soft(program, 0, "write")
