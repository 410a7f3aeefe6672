"""Sans-IO building blocks: the cache logic is written once as generators
("programs") that yield what they need done and receive the results.

A program yields one of:

* ``list[Call]``: Redis commands to send in one round trip (a pipeline; on a
  cluster, one round trip per node). It receives the list of replies.
* :class:`Sleep`: wait; receives ``None``.
* :class:`Invoke`: call user code (an embedder, a search pipeline); receives
  its return value (awaited if it is a coroutine).
* :class:`EachPrimary`: commands for every primary, each primary's sent as one
  pipeline on one connection; receives ``{node_tag: [replies]}``.

:class:`ScanEachPrimary` builds on :class:`EachPrimary`: SCAN MATCH/COUNT over
every primary (never KEYS), one cursor per primary, the primaries in parallel.
It is the one implementation of "every key matching a pattern" (pattern
invalidation, ``cachebus stats``, the control state, the stamp cleanup).

:mod:`cachebus.runner` drives programs on sync or asyncio clients, standalone
or cluster. So keys, encoding and validation live in one place, and the sync
and async classes are thin shells.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Generator
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Call:
    """One Redis command. ``MGET``/``UNLINK`` with several keys are split per key
    on a cluster by the runner, so programs may use them freely."""

    name: str
    args: tuple[Any, ...]

    @classmethod
    def of(cls, name: str, *args: Any) -> Call:
        return cls(name, args)


class Script:
    """A Lua script sent by SHA (EVALSHA): the body crosses the network once per
    server, not with every call. Runners load it on a NOSCRIPT reply and retry."""

    registry: dict[str, str] = {}
    """sha1 -> source of every script, for the runners' NOSCRIPT recovery."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode("utf-8")).hexdigest()
        Script.registry[self.sha] = source

    def call(self, numkeys: int, *keys_and_args: Any) -> Call:
        return Call("EVALSHA", (self.sha, numkeys, *keys_and_args))


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class Invoke:
    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()


STANDALONE_NODE_TAG: Final = "0"
"""The node tag of a standalone server (a cluster's are computed from its slot map)."""


@dataclass(frozen=True, slots=True)
class EachPrimary:
    """Send ``make(node_tag)`` to every primary: one pipeline on ONE connection per
    primary (so a ``WAIT`` after an ``INCR`` counts that ``INCR``'s replication
    offset), the primaries in parallel. The program receives
    ``dict[node_tag, list[reply]]``; an error reply raises (translated), like a
    list step.

    ``node_tag`` is a short string whose hash slot the primary owns (``"0"`` on a
    standalone server; on a cluster the smallest non-negative integer, as a
    string, that hashes to one of the primary's slots, see :func:`node_tags`): a
    key ``...{<node_tag>}`` lives on that primary. ``make`` is called once per
    primary just before the sends, so what it reads (e.g. the witness values seen
    so far) predates every reply. Calls are sent as they are: no multi-key
    splitting, no ``EVALSHA`` (no NOSCRIPT recovery)."""

    make: Callable[[str], list[Call]]


Step = list[Call] | Sleep | Invoke | EachPrimary
Program = Generator[Step, Any, T]


SCAN_COUNT: Final = 1000
"""The default ``COUNT`` hint of :class:`ScanEachPrimary`."""


class ScanEachPrimary:
    """``SCAN <cursor> MATCH <match> COUNT <count>`` on every primary, sans-IO.

    Each :meth:`round` is a program of one :class:`EachPrimary` step: one SCAN per
    primary whose cursor is not back to 0, the primaries in parallel. Cursors are
    kept per node tag; a primary not seen before (the cluster grew or its slot map
    changed between rounds) starts at cursor 0; a primary that finished gets no
    command. The scan is :attr:`done` when every primary of the last round is
    finished. Like SCAN itself it may return a key twice and misses no key that
    exists for the whole scan.

    Inside a program::

        scan = ScanEachPrimary("cb:sr:*")
        while not scan.done:
            batches = yield from scan.round()  # {node_tag: [key, ...]}
    """

    def __init__(self, match: str, count: int = SCAN_COUNT) -> None:
        if count <= 0:
            raise ValueError(f"SCAN COUNT must be positive, got {count}")
        self.match = match
        self.count = count
        self.cursors: dict[str, int] = {}
        """node tag -> the cursor to send next (0 after the last reply: finished)."""
        self.done = False
        self._asked: list[str] = []

    def _make(self, node_tag: str) -> list[Call]:
        if self.cursors.get(node_tag, -1) == 0:
            return []  # this primary is finished
        self._asked.append(node_tag)
        cursor = self.cursors.get(node_tag, 0)
        return [Call.of("SCAN", cursor, "MATCH", self.match, "COUNT", self.count)]

    def round(self) -> Program[dict[str, list[bytes]]]:
        """One SCAN per unfinished primary; returns ``{node_tag: keys}`` for the
        primaries asked this round (a batch may be empty)."""
        if self.done:
            return {}
        self._asked = []
        replies: dict[str, list[Any]] = yield EachPrimary(self._make)
        batches: dict[str, list[bytes]] = {}
        for tag in self._asked:
            cursor, keys = parse_scan_reply(replies[tag][0])
            self.cursors[tag] = cursor
            batches[tag] = keys
        # Done when every primary the runner knows now (make was called for each) is
        # finished: asked nothing this round.
        self.done = not self._asked or all(self.cursors[t] == 0 for t in self._asked)
        return batches

    def keys(self) -> Program[list[bytes]]:
        """The whole scan: every matching key (for small key sets: operator tools)."""
        found: list[bytes] = []
        while not self.done:
            for batch in (yield from self.round()).values():
                found += batch
        return found


def parse_scan_reply(reply: Any) -> tuple[int, list[bytes]]:
    """``(cursor, keys)`` of one SCAN reply, parsed by redis-py (``(int, list)``)
    or raw (``[b"cursor", [...]]``); keys as bytes."""
    cursor, keys = reply
    return int(cursor), [k if isinstance(k, bytes) else str(k).encode() for k in keys]


def node_tags(owner: Callable[[int], str | None], primaries: Collection[str]) -> dict[str, str]:
    """``{primary name: node tag}``: for each primary, the smallest non-negative
    integer string whose hash slot ``owner(slot)`` says it owns. Deterministic for a
    given slot map. Primaries that own no slot get no tag."""
    owning = {owner(slot) for slot in range(REDIS_CLUSTER_HASH_SLOTS)} & set(primaries)
    tags: dict[str, str] = {}
    i = 0
    # Decimal strings reach every one of the 16384 slots well before 10**6.
    while len(tags) < len(owning) and i < 10**6:
        name = owner(key_slot(str(i).encode()))
        if name in owning and name not in tags:
            assert name is not None
            tags[name] = str(i)
        i += 1
    return tags


def done(value: T) -> Program[T]:
    """A program that needs nothing and returns ``value``."""
    return value
    yield  # pragma: no cover - makes this a generator
