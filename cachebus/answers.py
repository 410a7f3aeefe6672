"""Generated answers cache (RAG): the LLM's answer to a query over a retrieved context.

Key: collection, LLM model, prompt template version, then the SHA-256 of the query
and the *set* of (doc_id, doc_version) pairs of the context (sorted, deduplicated:
the order retrieval returned them in does not matter; an updated document has a new
version, hence a new key). Entries are tagged with every context document and the
collection, so the events that retire search results and rerank scores retire
answers too, race-free (see :mod:`cachebus.tagged`).

>>> answers = bus.layer(AnswerCache, "handbook", "gpt-4o", "v3")
>>> answers.set("vacation days?", [("doc-42", 3), ("doc-7", 1)], Answer("25 days", ["doc-42"]))
>>> service = CachedAnswerService(answers, my_llm)     # my_llm(query, context) -> Answer | str
>>> service.answer("vacation days?", [("doc-7", 1), ("doc-42", 3)])   # the same entry
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .commands import Program
from .errors import CodecError
from .keys import Tag, key_digest
from .layer import AsyncShell, SyncShell
from .lookup import Lookup, read_through
from .registry import spec
from .runner import AsyncClient, SyncClient
from .settings import Settings
from .tagged import TaggedCore
from .tags import Ticket, take_ticket

LAYER = "answers"
Context = Sequence[tuple[str, int]]
"""The retrieved context: (doc_id, doc_version) pairs, in any order."""


@dataclass(frozen=True, slots=True)
class Answer:
    """A generated answer: its text, the doc ids it cites, and free metadata
    (JSON-serializable: token counts, finish reason, ...)."""

    text: str
    citations: tuple[str, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "citations", tuple(str(c) for c in self.citations))

    def encode(self) -> bytes:
        """Compact JSON, ``{"t": text, "c": [citations], "m": {metadata}}``, empty
        parts left out."""
        data: dict[str, Any] = {"t": self.text}
        if self.citations:
            data["c"] = list(self.citations)
        if self.metadata:
            data["m"] = dict(self.metadata)
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def decode(cls, payload: bytes) -> Answer:
        try:
            data = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CodecError(f"answer payload is not JSON: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("t"), str):
            raise CodecError("answer payload has no text")
        return cls(data["t"], tuple(data.get("c") or ()), data.get("m") or {})


def canonical_context(context: Context) -> tuple[tuple[str, int], ...]:
    """The context as a set: sorted, each (doc_id, doc_version) once."""
    return tuple(sorted({(str(d), int(v)) for d, v in context}))


@dataclass(frozen=True, slots=True)
class AnswerRequest:
    """What identifies an answer within one (collection, model, template version)."""

    query: str
    context: tuple[tuple[str, int], ...]

    @classmethod
    def of(cls, query: str, context: Context) -> AnswerRequest:
        return cls(query, canonical_context(context))

    def digest(self) -> str:
        body = json.dumps(
            [self.query, [[d, v] for d, v in self.context]],
            separators=(",", ":"),
            ensure_ascii=False,
        )
        return key_digest(body)


class AnswerCore(TaggedCore[Answer]):
    """Programs of the answers layer for one collection, LLM model and prompt version."""

    layer_name = LAYER

    def __init__(
        self, settings: Settings, collection: str, model: str, template_version: str
    ) -> None:
        super().__init__(settings)
        self.collection = collection
        self.model = model
        self.template_version = template_version
        self.default_ttl = int(getattr(settings, spec(LAYER).ttl_setting))
        self.collection_tag = Tag.collection(collection)

    def encode_value(self, value: Answer) -> bytes:
        return value.encode()

    def decode_value(self, payload: bytes) -> Answer:
        return Answer.decode(payload)

    def key(self, request: AnswerRequest) -> str:
        parts = (self.collection, self.model, self.template_version)
        return self.keys.entry(LAYER, parts, request.digest())

    def entry_keys(
        self, requests: Sequence[AnswerRequest], ticket: Ticket | None = None
    ) -> list[str]:
        return [self.key(r) for r in requests]

    def lookup(
        self, requests: Sequence[AnswerRequest], count: bool = True
    ) -> Program[Lookup[Answer]]:
        """Two round trips: the entries, then their tags' stamps (with the ticket's
        sequence when some entry is a miss)."""
        values, _, ticket = yield from self.read_entries(self.entry_keys(requests), count)
        # A hit reads no sequence: its ticket (0) cannot vouch for a later computation.
        return Lookup(values, ticket or Ticket(0))

    def store(
        self,
        requests: Sequence[AnswerRequest],
        answers: Sequence[Answer],
        ticket: Ticket | None,
        ttl: int | None = None,
    ) -> Program[int]:
        if ticket is None:
            ticket = yield from take_ticket(self.keys)
        tags = [[self.collection_tag, *(Tag.doc(d) for d, _ in r.context)] for r in requests]
        return (
            yield from self.write_entries(
                self.entry_keys(requests), list(answers), tags, ticket, ttl
            )
        )

    def read_through(
        self, request: AnswerRequest, compute: Callable[[list[AnswerRequest]], Any]
    ) -> Program[Answer]:
        """Cache-aside with a lease (:func:`cachebus.lookup.read_through`): of the
        callers missing the same answer at once, one calls ``compute``."""

        def store(
            items: Sequence[AnswerRequest], values: Sequence[Any], t: Ticket | None
        ) -> Program[int]:
            return self.store(items, [as_answer(v) for v in values], t)

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
        return as_answer(values[0])


def as_answer(value: Answer | str) -> Answer:
    """What a generator returns (an :class:`Answer` or just its text) as an Answer."""
    return value if isinstance(value, Answer) else Answer(str(value))


class AnswerCache(SyncShell[AnswerCore]):
    """Generated answers of one collection, LLM model and prompt template version
    on a sync client (``bus.layer(AnswerCache, collection, model, template_version)``)."""

    def __init__(
        self,
        client: SyncClient,
        collection: str,
        model: str,
        template_version: str = "1",
        *,
        settings: Settings | None = None,
    ) -> None:
        core = AnswerCore(settings or Settings(), collection, model, template_version)
        super().__init__(client, core)

    def lookup(self, query: str, context: Context) -> Lookup[Answer]:
        """The cached answer or ``None``, plus the ticket for a race-free :meth:`set`."""
        program = self.core.lookup([AnswerRequest.of(query, context)])
        return self._soft(program, Lookup([None], None), "read")

    def get(self, query: str, context: Context) -> Answer | None:
        return self.lookup(query, context).values[0]

    def set(
        self,
        query: str,
        context: Context,
        answer: Answer | str,
        *,
        ticket: Ticket | None = None,
        ttl: int | None = None,
    ) -> int:
        request = AnswerRequest.of(query, context)
        program = self.core.store([request], [as_answer(answer)], ticket, ttl)
        return self._soft(program, 0, "write")


class AsyncAnswerCache(AsyncShell[AnswerCore]):
    """The asyncio :class:`AnswerCache`."""

    def __init__(
        self,
        client: AsyncClient,
        collection: str,
        model: str,
        template_version: str = "1",
        *,
        settings: Settings | None = None,
    ) -> None:
        core = AnswerCore(settings or Settings(), collection, model, template_version)
        super().__init__(client, core)

    async def lookup(self, query: str, context: Context) -> Lookup[Answer]:
        program = self.core.lookup([AnswerRequest.of(query, context)])
        return await self._soft(program, Lookup([None], None), "read")

    async def get(self, query: str, context: Context) -> Answer | None:
        return (await self.lookup(query, context)).values[0]

    async def set(
        self,
        query: str,
        context: Context,
        answer: Answer | str,
        *,
        ticket: Ticket | None = None,
        ttl: int | None = None,
    ) -> int:
        request = AnswerRequest.of(query, context)
        program = self.core.store([request], [as_answer(answer)], ticket, ttl)
        return await self._soft(program, 0, "write")


Generate = Callable[[str, Context], Answer | str]
"""The user's LLM call: (query, context as (doc_id, doc_version) pairs) -> answer."""
AsyncGenerate = Callable[[str, Context], Awaitable[Answer | str]]


class CachedAnswerService:
    """``answer(query, context)`` through the answers cache: concurrent identical
    requests (in any number of processes) call the LLM once (a lease); a generator
    error caches nothing; if Redis fails, the LLM is called directly (counted as an
    error) unless settings are strict."""

    def __init__(self, cache: AnswerCache, generate: Generate) -> None:
        self.cache = cache
        self.generate = generate

    def answer(self, query: str, context: Context) -> Answer:
        request = AnswerRequest.of(query, context)

        def compute(requests: list[AnswerRequest]) -> list[Answer]:
            return [as_answer(self.generate(r.query, r.context)) for r in requests]

        def direct() -> Answer:
            self.cache.metrics.provider_calls += 1
            return compute([request])[0]

        return self.cache.run(
            self.cache.core.read_through(request, compute),
            fallback=direct,
            what="answer (generator called directly)",
        )


class AsyncCachedAnswerService:
    """The asyncio :class:`CachedAnswerService` (``generate`` is awaited)."""

    def __init__(self, cache: AsyncAnswerCache, generate: AsyncGenerate) -> None:
        self.cache = cache
        self.generate = generate

    async def answer(self, query: str, context: Context) -> Answer:
        request = AnswerRequest.of(query, context)

        async def compute(requests: list[AnswerRequest]) -> list[Answer]:
            return [as_answer(await self.generate(r.query, r.context)) for r in requests]

        async def direct() -> Answer:
            self.cache.metrics.provider_calls += 1
            return (await compute([request]))[0]

        return await self.cache.run(
            self.cache.core.read_through(request, compute),
            fallback=direct,
            what="answer (generator called directly)",
        )
