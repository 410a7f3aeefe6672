"""Query embedding cache: model + model version + namespace generation + sha256(text)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy.typing as npt

from .codecs import Vector, VectorCodec, decode_vectors
from .commands import Call, Program
from .layer import AsyncShell, LayerCore, SyncShell
from .lookup import Lookup, read_through
from .runner import AsyncClient, SyncClient
from .settings import Settings
from .tags import Ticket, as_text, take_ticket

Pairs = Mapping[str, npt.ArrayLike] | Sequence[tuple[str, npt.ArrayLike]]


class QueryEmbeddingCore(LayerCore):
    """Keys, encoding and programs of the query embedding layer (no I/O)."""

    layer_name = "query_embeddings"

    def __init__(
        self,
        settings: Settings,
        model: str,
        model_version: str = "1",
        *,
        codec: VectorCodec | None = None,
        dim: int | None = None,
    ) -> None:
        super().__init__(settings)
        self.model = model
        self.model_version = model_version
        self.codec = codec or VectorCodec.parse(settings.codec)
        self.dim = dim
        self.namespace = self.keys.query_namespace(model, model_version)
        self._generation = 0
        self._epoch = "-"
        """The generation and fence epoch seen last; a lookup confirms them in the same
        round trip."""
        self._seen: tuple[bytes, bytes] = (b"", b"")
        """Their raw replies, to skip parsing when nothing changed."""

    def entry_keys(self, texts: Sequence[str], ticket: Ticket) -> list[str]:
        return self._keys(texts, ticket.generations.get(self.namespace, 0), ticket.epoch or "-")

    def lookup(self, texts: Sequence[str], count: bool = True) -> Program[Lookup[Vector]]:
        """One round trip in the common case: the namespace generation, the fence
        epoch and the entries under the generation and epoch seen last are read in
        one MGET. Only when a bump or a fence changed them is a second MGET needed.
        A missing generation or epoch (lost, evicted) makes every entry a miss; the
        ticket re-creates it at a value never used before."""
        guess = (self._generation, self._epoch)
        (raw,) = yield [
            Call(
                "MGET",
                (
                    self.keys.generation(self.namespace),
                    self.keys.epoch(),
                    *self._keys(texts, *guess),
                ),
            )
        ]
        replies: list[Any]
        if raw[0] is None or raw[1] is None:
            replies = [None] * len(texts)
            ticket = yield from take_ticket(self.keys, [self.namespace])
            self._generation, self._epoch = ticket.generations[self.namespace], ticket.epoch
            self._seen = (b"", b"")
        else:
            replies = raw[2:]
            if (raw[0], raw[1]) != self._seen:  # parsed only when they change
                seen = (int(raw[0]), as_text(raw[1]) or "-")
                if seen != guess:
                    self._generation, self._epoch = seen
                    replies = []
                    if texts:
                        (replies,) = yield [Call("MGET", tuple(self._keys(texts, *seen)))]
                self._seen = (raw[0], raw[1])
            # Query embeddings carry no tags: their ticket is the generation and epoch.
            ticket = Ticket(0, {self.namespace: self._generation}, self._epoch)
        values = decode_vectors(replies, self.dim)
        if count:
            self.count(values)
        return Lookup(values, ticket)

    def _keys(self, texts: Sequence[str], generation: int, epoch: str) -> list[str]:
        return self.keys.query_embeddings(self.model, self.model_version, generation, texts, epoch)

    def store(
        self,
        texts: Sequence[str],
        vectors: Sequence[npt.ArrayLike],
        ticket: Ticket | None,
        ttl: int | None = None,
    ) -> Program[int]:
        """SET ... EX in one round trip; under the ticket's generation."""
        if ticket is None:
            ticket = yield from take_ticket(self.keys, [self.namespace])
            self._generation, self._epoch = ticket.generations[self.namespace], ticket.epoch
            self._seen = (b"", b"")
        if ticket.age() > self.settings.max_ticket_age:
            self.metrics.writes_refused += len(texts)
            return 0
        ex = ttl or self.settings.query_embedding_ttl
        payloads = self.codec.encode_many(vectors)
        keys = self.entry_keys(texts, ticket)
        yield [Call.of("SET", k, p, "EX", ex) for k, p in zip(keys, payloads, strict=True)]
        self.metrics.writes += len(payloads)
        self.metrics.bytes_written += sum(len(p) for p in payloads)
        return len(payloads)

    def read_through(
        self, texts: Sequence[str], compute: Callable[[list[str]], Any]
    ) -> Program[list[Vector]]:
        def store(items: Sequence[str], values: Sequence[Any], t: Ticket | None) -> Program[int]:
            return self.store(items, values, t)

        raw = yield from read_through(
            texts,
            keys=self.keys,
            metrics=self.metrics,
            lookup=self.lookup,
            entry_keys=self.entry_keys,
            store=store,
            compute=compute,
            lease_ms=self.settings.lease_ms,
            wait_ms=self.settings.lease_wait_ms,
        )
        return [decode_or_cast(v) for v in raw]


def decode_or_cast(value: Any) -> Vector:
    import numpy as np

    return np.asarray(value, dtype=np.float32)


def _split(pairs: Pairs) -> tuple[list[str], list[npt.ArrayLike]]:
    items = list(pairs.items()) if isinstance(pairs, Mapping) else list(pairs)
    return [t for t, _ in items], [v for _, v in items]


class QueryEmbeddingCache(SyncShell[QueryEmbeddingCore]):
    """Query embeddings on a sync ``redis.Redis`` or ``RedisCluster``.

    >>> cache = QueryEmbeddingCache(redis.Redis(), model="text-embedding-3-small")
    >>> cache.set("what is a vector?", vector)
    >>> cache.get("what is a vector?")
    """

    def __init__(
        self,
        client: SyncClient,
        model: str,
        model_version: str = "1",
        *,
        settings: Settings | None = None,
        codec: VectorCodec | None = None,
        dim: int | None = None,
    ) -> None:
        core = QueryEmbeddingCore(
            settings or Settings(), model, model_version, codec=codec, dim=dim
        )
        super().__init__(client, core)

    def lookup_many(self, texts: Sequence[str]) -> Lookup[Vector]:
        """Values plus the ticket to pass to :meth:`set_many` for race-free writes."""
        return self._soft(self.core.lookup(texts), Lookup([None] * len(texts), None), "read")

    def get_many(self, texts: Sequence[str]) -> list[Vector | None]:
        return self.lookup_many(texts).values

    def get(self, text: str) -> Vector | None:
        return self.get_many([text])[0]

    def set_many(
        self, pairs: Pairs, *, ticket: Ticket | None = None, ttl: int | None = None
    ) -> int:
        texts, vectors = _split(pairs)
        return self._soft(self.core.store(texts, vectors, ticket, ttl), 0, "write")

    def set(
        self,
        text: str,
        vector: npt.ArrayLike,
        *,
        ticket: Ticket | None = None,
        ttl: int | None = None,
    ) -> int:
        return self.set_many([(text, vector)], ticket=ticket, ttl=ttl)


class AsyncQueryEmbeddingCache(AsyncShell[QueryEmbeddingCore]):
    """Query embeddings on ``redis.asyncio.Redis`` or its ``RedisCluster``."""

    def __init__(
        self,
        client: AsyncClient,
        model: str,
        model_version: str = "1",
        *,
        settings: Settings | None = None,
        codec: VectorCodec | None = None,
        dim: int | None = None,
    ) -> None:
        core = QueryEmbeddingCore(
            settings or Settings(), model, model_version, codec=codec, dim=dim
        )
        super().__init__(client, core)

    async def lookup_many(self, texts: Sequence[str]) -> Lookup[Vector]:
        return await self._soft(self.core.lookup(texts), Lookup([None] * len(texts), None), "read")

    async def get_many(self, texts: Sequence[str]) -> list[Vector | None]:
        return (await self.lookup_many(texts)).values

    async def get(self, text: str) -> Vector | None:
        return (await self.get_many([text]))[0]

    async def set_many(
        self, pairs: Pairs, *, ticket: Ticket | None = None, ttl: int | None = None
    ) -> int:
        texts, vectors = _split(pairs)
        return await self._soft(self.core.store(texts, vectors, ticket, ttl), 0, "write")

    async def set(
        self,
        text: str,
        vector: npt.ArrayLike,
        *,
        ticket: Ticket | None = None,
        ttl: int | None = None,
    ) -> int:
        return await self.set_many([(text, vector)], ticket=ticket, ttl=ttl)
