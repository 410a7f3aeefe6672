"""Rerank score cache: reranker model + sha256(query, (doc_id, doc_version)
pairs); tagged with the doc ids, so a deleted document's scores never serve.
An updated document has a new version, hence a new key."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from .commands import Program
from .errors import CodecError
from .keys import Tag, key_digest
from .layer import AsyncShell, SyncShell
from .lookup import Lookup
from .runner import AsyncClient, SyncClient
from .settings import Settings
from .tagged import TaggedCore
from .tags import Ticket, take_ticket

Candidates = Sequence[tuple[str, int]]
Scores = list[float]


class RerankScoreCore(TaggedCore[Scores]):
    layer_name = "rerank_scores"

    def __init__(self, settings: Settings, model: str) -> None:
        super().__init__(settings)
        self.model = model
        self.default_ttl = settings.rerank_scores_ttl

    def encode_value(self, value: Scores) -> bytes:
        return np.asarray(value, dtype=np.float32).tobytes()

    def decode_value(self, payload: bytes) -> Scores:
        if len(payload) % 4:
            raise CodecError("rerank payload is not float32 scores")
        return [float(x) for x in np.frombuffer(payload, dtype=np.float32)]

    def key(self, query: str, candidates: Candidates) -> str:
        body = json.dumps(
            [query, [[str(d), int(v)] for d, v in candidates]],
            separators=(",", ":"),
            ensure_ascii=False,
        )
        return self.keys.rerank_scores(self.model, key_digest(body))

    def lookup(self, query: str, candidates: Candidates) -> Program[Lookup[Scores]]:
        """Two round trips: the entry, then its tags' stamps (with the sequence for
        the ticket when it is a miss)."""
        values, _, ticket = yield from self.read_entries([self.key(query, candidates)], True)
        value = values[0]
        if value is not None and len(value) != len(candidates):
            value = None
            if ticket is None:
                ticket = yield from take_ticket(self.keys)
        # A hit reads no sequence: its ticket (0) cannot vouch for a later computation.
        return Lookup([value], ticket or Ticket(0))

    def store(
        self,
        query: str,
        candidates: Candidates,
        scores: Sequence[float],
        ticket: Ticket | None,
        ttl: int | None = None,
    ) -> Program[int]:
        if len(scores) != len(candidates):
            raise ValueError(f"{len(scores)} scores for {len(candidates)} candidates")
        if ticket is None:
            ticket = yield from take_ticket(self.keys)
        tags = [[Tag.doc(d) for d, _ in candidates]]
        return (
            yield from self.write_entries(
                [self.key(query, candidates)], [list(scores)], tags, ticket, ttl
            )
        )


class RerankScoreCache(SyncShell[RerankScoreCore]):
    """Rerank scores of one reranker model on a sync client."""

    def __init__(self, client: SyncClient, model: str, *, settings: Settings | None = None):
        super().__init__(client, RerankScoreCore(settings or Settings(), model))

    def lookup(self, query: str, candidates: Candidates) -> Lookup[Scores]:
        return self._soft(self.core.lookup(query, candidates), Lookup([None], None), "read")

    def get(self, query: str, candidates: Candidates) -> Scores | None:
        """Scores aligned with ``candidates`` ((doc_id, doc_version) pairs), or None."""
        return self.lookup(query, candidates).values[0]

    def set(
        self,
        query: str,
        candidates: Candidates,
        scores: Sequence[float],
        *,
        ticket: Ticket | None = None,
        ttl: int | None = None,
    ) -> int:
        program = self.core.store(query, candidates, scores, ticket, ttl)
        return self._soft(program, 0, "write")


class AsyncRerankScoreCache(AsyncShell[RerankScoreCore]):
    """Rerank scores of one reranker model on an asyncio client."""

    def __init__(self, client: AsyncClient, model: str, *, settings: Settings | None = None):
        super().__init__(client, RerankScoreCore(settings or Settings(), model))

    async def lookup(self, query: str, candidates: Candidates) -> Lookup[Scores]:
        return await self._soft(self.core.lookup(query, candidates), Lookup([None], None), "read")

    async def get(self, query: str, candidates: Candidates) -> Scores | None:
        return (await self.lookup(query, candidates)).values[0]

    async def set(
        self,
        query: str,
        candidates: Candidates,
        scores: Sequence[float],
        *,
        ticket: Ticket | None = None,
        ttl: int | None = None,
    ) -> int:
        program = self.core.store(query, candidates, scores, ticket, ttl)
        return await self._soft(program, 0, "write")
