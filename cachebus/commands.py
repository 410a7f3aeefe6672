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
