"""Document (chunk) embedding cache.

All chunks of a document live in one hash ``<prefix>:de:{d.<doc>}`` (field =
``<model>.<version>:<chunk id>``, value = content hash + encoded vector; a
vector of another embedding model is never served), in the same cluster slot as
the document's stamp. Writes are conditional (one Lua script per document):
a value computed under a ticket older than the document's last invalidation
is refused, and so is one whose document stamp is missing (it may have been
lost) unless the writer saw it missing before reading the sequence it re-creates
it at. Records carry the fence epoch: a record of another epoch is a miss. A
read that passes a content hash gets a vector only if the stored hash matches,
so unchanged chunks are not re-embedded after an update.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy.typing as npt

from .codecs import Vector, VectorCodec, decode_vector, pack_chunk, unpack_chunk
from .commands import Call, Program, Script
from .errors import CodecError
from .keys import Tag, encode_part
from .layer import AsyncShell, LayerCore, SyncShell
from .lookup import Lookup
from .runner import AsyncClient, SyncClient
from .settings import Settings
from .tags import Ticket, prepare_write, take_ticket

# KEYS[1] embeddings hash, KEYS[2] document stamp; ARGV: ticket seq, ttl s, the sequence
# to re-create a missing stamp at ('0': refuse instead), field, value, ...
CONDITIONAL_WRITE: Final = Script("""
local raw = redis.call('GET', KEYS[2])
if not raw then
  if ARGV[3] == '0' then return 0 end
  redis.call('SET', KEYS[2], ARGV[3])
  raw = ARGV[3]
end
if tonumber(raw) > tonumber(ARGV[1]) then return 0 end
for i = 4, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
""")


@dataclass(frozen=True, slots=True)
class ChunkRef:
    """One chunk to read; with ``content_hash`` only a vector of that content matches."""

    doc_id: str
    chunk_id: str
    content_hash: str | None = None


@dataclass(frozen=True, slots=True)
class ChunkVector:
    """One chunk to write."""

    chunk_id: str
    vector: npt.ArrayLike
    content_hash: str | None = None


class DocumentEmbeddingCore(LayerCore):
    layer_name = "document_embeddings"

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
        self.field_prefix = f"{encode_part(model)}.{encode_part(model_version)}:"

    def field(self, chunk_id: str) -> str:
        """The hash field of a chunk (the model part is encoded: no ':')."""
        return self.field_prefix + chunk_id

    def decode(
        self, raw: bytes | None, want_hash: str | None, epoch: bytes | None
    ) -> Vector | None:
        if raw is None or epoch is None:
            return None
        try:
            stored_hash, stored_epoch, body = unpack_chunk(raw)
            if stored_epoch != epoch or (want_hash is not None and stored_hash != want_hash):
                return None
            return decode_vector(body, self.dim)
        except CodecError:
            return None

    def lookup(self, refs: Sequence[ChunkRef]) -> Program[Lookup[Vector]]:
        """One round trip (one HMGET per document and the fence epoch); a miss adds
        one to read the ticket (hits never touch the sequence key)."""
        by_doc: dict[str, list[int]] = {}
        for i, ref in enumerate(refs):
            by_doc.setdefault(ref.doc_id, []).append(i)
        docs = list(by_doc)
        calls = [
            Call.of(
                "HMGET",
                self.keys.document_embeddings(d),
                *(self.field(refs[i].chunk_id) for i in by_doc[d]),
            )
            for d in docs
        ]
        *per_doc, epoch = yield [*calls, Call.of("GET", self.keys.epoch())]
        values: list[Vector | None] = [None] * len(refs)
        for doc, raws in zip(docs, per_doc, strict=True):
            for i, raw in zip(by_doc[doc], raws, strict=True):
                values[i] = self.decode(raw, refs[i].content_hash, epoch)
        self.count(values)
        # A hit reads no sequence: its ticket (0) cannot vouch for a later computation.
        ticket = Ticket(0)
        if not values or any(v is None for v in values):  # an empty lookup asks for a ticket
            ticket = yield from take_ticket(self.keys)
        return Lookup(values, ticket)

    def store(
        self,
        chunks: Mapping[str, Sequence[ChunkVector]],
        ticket: Ticket | None,
        ttl: int | None = None,
    ) -> Program[int]:
        """One conditional script per document, all in one round trip.
        Returns how many chunks were stored (refused documents count zero)."""
        if ticket is None:
            ticket = yield from take_ticket(self.keys)
        total = sum(len(c) for c in chunks.values())
        docs = [d for d, items in chunks.items() if items]
        check = yield from prepare_write(
            self.keys, ticket, [Tag.doc(d).token for d in docs], self.settings.max_ticket_age
        )
        if not check.allowed:
            self.metrics.writes_refused += total
            return 0
        # Missing stamps are re-created inside each document's conditional write.
        recreate = {self.keys.stamp(Tag(t)): check.create_at for t in check.missing}
        ex = ttl or self.settings.document_embedding_ttl
        calls: list[Call] = []
        sizes: list[tuple[int, int]] = []
        for doc_id, items in chunks.items():
            if not items:
                continue
            args: list[bytes | str] = []
            nbytes = 0
            for item in items:
                record = pack_chunk(
                    self.codec.encode(item.vector), item.content_hash, ticket.epoch
                )
                nbytes += len(record)
                args += [self.field(item.chunk_id), record]
            stamp = self.keys.stamp(Tag.doc(doc_id))
            calls.append(
                CONDITIONAL_WRITE.call(
                    2,
                    self.keys.document_embeddings(doc_id),
                    stamp,
                    ticket.seq,
                    ex,
                    recreate.get(stamp, 0),
                    *args,
                )
            )
            sizes.append((len(items), nbytes))
        replies = yield calls
        stored = 0
        for ok, (count, nbytes) in zip(replies, sizes, strict=True):
            if int(ok):
                stored += count
                self.metrics.writes += count
                self.metrics.bytes_written += nbytes
            else:
                self.metrics.writes_refused += count
        return stored


def _refs(
    doc_id: str, chunk_ids: Sequence[str], hashes: Sequence[str | None] | None
) -> list[ChunkRef]:
    if hashes is not None and len(hashes) != len(chunk_ids):
        raise ValueError("content_hashes must align with chunk_ids")
    hs: Sequence[str | None] = hashes if hashes is not None else [None] * len(chunk_ids)
    return [ChunkRef(doc_id, c, h) for c, h in zip(chunk_ids, hs, strict=True)]


class DocumentEmbeddingCache(SyncShell[DocumentEmbeddingCore]):
    """Chunk embeddings per document on a sync client."""

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
        core = DocumentEmbeddingCore(
            settings or Settings(), model, model_version, codec=codec, dim=dim
        )
        super().__init__(client, core)

    def lookup_chunks(self, refs: Sequence[ChunkRef]) -> Lookup[Vector]:
        """Chunks of any documents in one round trip, plus a ticket for writes."""
        return self._soft(self.core.lookup(refs), Lookup([None] * len(refs), None), "read")

    def get_many(
        self,
        doc_id: str,
        chunk_ids: Sequence[str],
        content_hashes: Sequence[str | None] | None = None,
    ) -> list[Vector | None]:
        return self.lookup_chunks(_refs(doc_id, chunk_ids, content_hashes)).values

    def get(self, doc_id: str, chunk_id: str, content_hash: str | None = None) -> Vector | None:
        return self.get_many(doc_id, [chunk_id], [content_hash])[0]

    def set_chunks(
        self,
        chunks: Mapping[str, Sequence[ChunkVector]],
        *,
        ticket: Ticket | None = None,
        ttl: int | None = None,
    ) -> int:
        """Write chunks of several documents: ``{doc_id: [ChunkVector, ...]}``."""
        return self._soft(self.core.store(chunks, ticket, ttl), 0, "write")

    def set_many(
        self,
        doc_id: str,
        chunks: Sequence[ChunkVector],
        *,
        ticket: Ticket | None = None,
        ttl: int | None = None,
    ) -> int:
        return self.set_chunks({doc_id: chunks}, ticket=ticket, ttl=ttl)

    def set(
        self,
        doc_id: str,
        chunk_id: str,
        vector: npt.ArrayLike,
        content_hash: str | None = None,
        *,
        ticket: Ticket | None = None,
        ttl: int | None = None,
    ) -> int:
        return self.set_many(
            doc_id, [ChunkVector(chunk_id, vector, content_hash)], ticket=ticket, ttl=ttl
        )


class AsyncDocumentEmbeddingCache(AsyncShell[DocumentEmbeddingCore]):
    """Chunk embeddings per document on an asyncio client."""

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
        core = DocumentEmbeddingCore(
            settings or Settings(), model, model_version, codec=codec, dim=dim
        )
        super().__init__(client, core)

    async def lookup_chunks(self, refs: Sequence[ChunkRef]) -> Lookup[Vector]:
        return await self._soft(self.core.lookup(refs), Lookup([None] * len(refs), None), "read")

    async def get_many(
        self,
        doc_id: str,
        chunk_ids: Sequence[str],
        content_hashes: Sequence[str | None] | None = None,
    ) -> list[Vector | None]:
        return (await self.lookup_chunks(_refs(doc_id, chunk_ids, content_hashes))).values

    async def get(
        self, doc_id: str, chunk_id: str, content_hash: str | None = None
    ) -> Vector | None:
        return (await self.get_many(doc_id, [chunk_id], [content_hash]))[0]

    async def set_chunks(
        self,
        chunks: Mapping[str, Sequence[ChunkVector]],
        *,
        ticket: Ticket | None = None,
        ttl: int | None = None,
    ) -> int:
        return await self._soft(self.core.store(chunks, ticket, ttl), 0, "write")

    async def set_many(
        self,
        doc_id: str,
        chunks: Sequence[ChunkVector],
        *,
        ticket: Ticket | None = None,
        ttl: int | None = None,
    ) -> int:
        return await self.set_chunks({doc_id: chunks}, ticket=ticket, ttl=ttl)

    async def set(
        self,
        doc_id: str,
        chunk_id: str,
        vector: npt.ArrayLike,
        content_hash: str | None = None,
        *,
        ticket: Ticket | None = None,
        ttl: int | None = None,
    ) -> int:
        return await self.set_many(
            doc_id, [ChunkVector(chunk_id, vector, content_hash)], ticket=ticket, ttl=ttl
        )
