"""Sans-IO building blocks: the cache logic is written once as generators
("programs") that yield what they need done and receive the results.

A program yields one of:

* ``list[Call]``: Redis commands to send in one round trip (a pipeline; on a
  cluster, one round trip per node). It receives the list of replies.
* :class:`Sleep`: wait; receives ``None``.
* :class:`Invoke`: call user code (an embedder, a search pipeline); receives
  its return value (awaited if it is a coroutine).

:mod:`cachebus.runner` drives programs on sync or asyncio clients, standalone
or cluster. So keys, encoding and validation live in one place, and the sync
and async classes are thin shells.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

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


Step = list[Call] | Sleep | Invoke
Program = Generator[Step, Any, T]


def done(value: T) -> Program[T]:
    """A program that needs nothing and returns ``value``."""
    return value
    yield  # pragma: no cover - makes this a generator
