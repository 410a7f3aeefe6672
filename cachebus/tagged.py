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
from .tags import Ticket, prepare_write, stamps_valid, take_ticket, ticket_calls, ticket_from

V = TypeVar("V")


class TaggedCore(LayerCore, Generic[V]):
    """Subclasses define how a value is encoded; this class does tags and stamps."""

    default_ttl: int = 600

    def encode_value(self, value: V) -> bytes:
        raise NotImplementedError

    def decode_value(self, payload: bytes) -> V:
        raise NotImplementedError

    def read_entries(
        self,
        keys: Sequence[str],
        count: bool,
        with_calls: Sequence[Call] = (),
        namespaces: Sequence[str] = (),
    ) -> Program[tuple[list[V | None], list[Any], Ticket | None]]:
        """One MGET of the entries and the fence epoch (sent with ``with_calls``,
        whose replies are returned too), then one MGET of the stamps of every tag
        found.

        An entry serves only if it was written under the current epoch and every
        one of its tags has a stamp no higher than the entry's sequence (a missing
        stamp counts as invalidated: :func:`cachebus.tags.stamps_valid`). When some
        value is a miss, a ticket (sequence, epoch, server time, the generations of
        ``namespaces``) is read with the stamps, before the caller computes: hits
        never touch the sequence key, which on a cluster is one hot slot.
        """
        if not keys:
            extra: list[Any] = (yield list(with_calls)) if with_calls else []
            return [], extra, None
        *extra, raw = yield [*with_calls, Call("MGET", (*keys, self.keys.epoch()))]
        epoch = raw[-1]
        entries: list[TaggedEntry | None] = []
        for item in raw[:-1]:
            try:
                entry = None if item is None else unpack_tagged(item)
            except CodecError:
                entry = None
            entries.append(entry if entry is not None and entry.epoch == epoch else None)
        tokens = sorted({t for e in entries if e is not None for t in e.tags})
        want_ticket = any(e is None for e in entries)
        calls = [Call("MGET", tuple(self.keys.stamp(Tag(t)) for t in tokens))] if tokens else []
        if want_ticket:
            calls += ticket_calls(self.keys, namespaces)
        replies = (yield calls) if calls else []
        stamps: dict[str, int | None] = {}
        if tokens:
            stamps = {
                t: (None if r is None else int(r))
                for t, r in zip(tokens, replies[0], strict=True)
            }
            replies = replies[1:]
        ticket = ticket_from(replies, namespaces) if want_ticket else None
        values: list[V | None] = []
        for entry in entries:
            value: V | None = None
            if entry is not None and stamps_valid(stamps, entry.tags, entry.seq):
                try:
                    value = self.decode_value(entry.payload)
                except (CodecError, ValueError):
                    value = None
            values.append(value)
        if ticket is None and any(v is None for v in values):
            ticket = yield from take_ticket(self.keys, namespaces)
        if count:
            self.count(values)
        return values, extra, ticket

    def check_ttl(self, ttl: int | None) -> int:
        ex = ttl or self.default_ttl
        if ex + self.settings.max_ticket_age > self.settings.stamp_ttl:
            raise ConfigError(
                f"ttl {ex} s + max_ticket_age {self.settings.max_ticket_age:g} s exceeds "
                f"stamp_ttl {self.settings.stamp_ttl} s: a tagged entry must not outlive "
                "its tags' invalidation stamps"
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
        """SET .. EX of every entry in one round trip, after one that checks the
        ticket's age on the server clock and finds missing stamps (created with the
        write, see :func:`cachebus.tags.prepare_write`)."""
        ex = self.check_ttl(ttl)
        tokens = [sorted({t.token for t in entry_tags}) for entry_tags in tags]
        every = sorted({t for entry_tokens in tokens for t in entry_tokens})
        check = yield from prepare_write(self.keys, ticket, every, self.settings.max_ticket_age)
        if not check.allowed:
            self.metrics.writes_refused += len(keys)
            return 0
        payloads = [
            pack_tagged(ticket.seq, entry_tokens, self.encode_value(v), ticket.epoch)
            for v, entry_tokens in zip(values, tokens, strict=True)
        ]
        yield [
            *check.create_calls(self.keys),
            *(Call.of("SET", k, p, "EX", ex) for k, p in zip(keys, payloads, strict=True)),
        ]
        self.metrics.writes += len(payloads)
        self.metrics.bytes_written += sum(len(p) for p in payloads)
        return len(payloads)
