"""Common logic of the tagged layers (search results, rerank scores): entries
carry the ticket sequence they were computed under and their tags; a read
checks the tags' stamps (see :mod:`cachebus.tags`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Generic, TypeVar

from .codecs import TaggedEntry, pack_tagged, unpack_tagged
from .commands import Call, Program
from .errors import CodecError, ConfigError
from .keys import Tag
from .layer import LayerCore
from .tags import Ticket, as_int

V = TypeVar("V")


class TaggedCore(LayerCore, Generic[V]):
    """Subclasses define how a value is encoded; this class does tags and stamps."""

    default_ttl: int = 600

    def encode_value(self, value: V) -> bytes:
        raise NotImplementedError

    def decode_value(self, payload: bytes) -> V:
        raise NotImplementedError

    def read_entries(
        self, keys: Sequence[str], count: bool, with_calls: Sequence[Call] = ()
    ) -> Program[tuple[list[V | None], list[Any], int | None]]:
        """One MGET (sent with ``with_calls``, whose replies are returned too), then
        one MGET of the stamps of every tag found.

        The invalidation sequence is read only when some value is a miss (with
        the stamps, or in one more round trip if a stamp retired an entry): hits
        never touch the sequence key, which on a cluster is one hot slot. It is
        read before the caller computes the misses, as a ticket must be.
        """
        if not keys:
            extra: list[Any] = (yield list(with_calls)) if with_calls else []
            return [], extra, None
        *extra, raw = yield [*with_calls, Call("MGET", tuple(keys))]
        entries: list[TaggedEntry | None] = []
        for item in raw:
            try:
                entries.append(None if item is None else unpack_tagged(item))
            except CodecError:
                entries.append(None)
        tokens = sorted({t for e in entries if e is not None for t in e.tags})
        want_seq = any(e is None for e in entries)
        calls = [Call("MGET", tuple(self.keys.stamp(Tag(t)) for t in tokens))] if tokens else []
        if want_seq:
            calls.append(Call.of("GET", self.keys.seq()))
        replies = (yield calls) if calls else []
        stamps = dict(zip(tokens, (as_int(r) for r in replies[0]), strict=True)) if tokens else {}
        seq = as_int(replies[-1]) if want_seq else None
        values: list[V | None] = []
        for entry in entries:
            value: V | None = None
            if entry is not None and all(stamps.get(t, 0) <= entry.seq for t in entry.tags):
                try:
                    value = self.decode_value(entry.payload)
                except (CodecError, ValueError):
                    value = None
            values.append(value)
        if seq is None and any(v is None for v in values):
            (reply,) = yield [Call.of("GET", self.keys.seq())]
            seq = as_int(reply)
        if count:
            self.count(values)
        return values, extra, seq

    def check_ttl(self, ttl: int | None) -> int:
        ex = ttl or self.default_ttl
        if ex > self.settings.stamp_ttl:
            raise ConfigError(
                f"ttl {ex} s exceeds stamp_ttl {self.settings.stamp_ttl} s: a tagged entry "
                "must not outlive its tags' invalidation stamps"
            )
        return ex

    def write_entries(
        self,
        keys: Sequence[str],
        values: Sequence[V],
        tags: Sequence[Sequence[Tag]],
        ticket: Ticket,
        ttl: int | None,
    ) -> Program[int]:
        ex = self.check_ttl(ttl)
        if ticket.age() > self.settings.max_ticket_age:
            self.metrics.writes_refused += len(keys)
            return 0
        payloads = [
            pack_tagged(ticket.seq, sorted({t.token for t in entry_tags}), self.encode_value(v))
            for v, entry_tags in zip(values, tags, strict=True)
        ]
        yield [Call.of("SET", k, p, "EX", ex) for k, p in zip(keys, payloads, strict=True)]
        self.metrics.writes += len(payloads)
        self.metrics.bytes_written += sum(len(p) for p in payloads)
        return len(payloads)
