"""Common logic of the tagged layers (search results, rerank scores): entries
carry the ticket sequence they were computed under and their tags; a read
checks the tags' stamps (see :mod:`cachebus.tags`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Generic, TypeVar

from .codecs import pack_tagged, unpack_tagged
from .commands import Call, Program
from .errors import CodecError, ConfigError
from .keys import Tag
from .layer import LayerCore
from .tags import Ticket, valid_entries

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
    ) -> Program[tuple[list[V | None], list[Any]]]:
        """One MGET (sent with ``with_calls``, whose replies are returned too),
        then one MGET of the stamps of every tag found."""
        if not keys:
            return [], (yield list(with_calls)) if with_calls else []
        *extra, raw = yield [*with_calls, Call("MGET", tuple(keys))]
        entries: list[tuple[int, tuple[str, ...]] | None] = []
        payloads: list[bytes | None] = []
        for item in raw:
            if item is None:
                entries.append(None)
                payloads.append(None)
                continue
            try:
                entry = unpack_tagged(item)
            except CodecError:
                entries.append(None)
                payloads.append(None)
                continue
            entries.append((entry.seq, entry.tags))
            payloads.append(entry.payload)
        ok = yield from valid_entries(self.keys, entries)
        values: list[V | None] = []
        for good, payload in zip(ok, payloads, strict=True):
            value: V | None = None
            if good and payload is not None:
                try:
                    value = self.decode_value(payload)
                except (CodecError, ValueError):
                    value = None
            values.append(value)
        if count:
            self.count(values)
        return values, extra

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
