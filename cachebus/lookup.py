"""Results of cache reads, and the herd-controlled read-through program."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

from .commands import Call, Invoke, Program, Script, Sleep
from .keys import KeyScheme
from .metrics import LayerMetrics
from .tags import Ticket

V = TypeVar("V")
I = TypeVar("I")  # noqa: E741 - an item key (text, request, chunk)

# Delete a lease only if we still hold it (it may have expired and been retaken).
RELEASE_SCRIPT: Final = Script("""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
""")


@dataclass(frozen=True, slots=True)
class Lookup(Generic[V]):
    """Values in request order (``None`` = miss) and the ticket to write misses under."""

    values: list[V | None]
    ticket: Ticket | None

    @property
    def hits(self) -> int:
        return sum(v is not None for v in self.values)

    @property
    def misses(self) -> int:
        return len(self.values) - self.hits


LookupFn = Callable[[Sequence[I], bool], Program[Lookup[V]]]
"""(items, count_metrics) -> lookup program."""
KeysFn = Callable[[Sequence[I], Ticket], list[str]]
StoreFn = Callable[[Sequence[I], Sequence[V], Ticket | None], Program[int]]


def read_through(
    items: Sequence[I],
    *,
    keys: KeyScheme,
    metrics: LayerMetrics,
    lookup: LookupFn[I, V],
    entry_keys: KeysFn[I],
    store: StoreFn[I, V],
    compute: Callable[[list[I]], Any],
    lease_ms: int,
    wait_ms: int,
) -> Program[list[V]]:
    """Cache-aside with herd control, like memcache leases.

    Misses try to take a short lease per key (``SET NX PX``). The caller computes
    only the items it leased (one provider call), writes them under the ticket
    taken before computing, and releases the leases. Items leased by someone
    else are polled for until ``wait_ms``, then computed here as a fallback.
    A provider error caches nothing and releases our leases.
    """
    first = yield from lookup(items, True)
    values = list(first.values)
    metrics.provider_calls_avoided += first.hits
    missing = [i for i, v in enumerate(values) if v is None]
    if not missing:
        return [v for v in values if v is not None]
    ticket = first.ticket
    leased: list[int] = missing
    waiting: list[int] = []
    lease_keys: list[str] = []
    token = uuid.uuid4().hex
    if ticket is not None and lease_ms > 0:
        lease_keys = [keys.lease(k) for k in entry_keys([items[i] for i in missing], ticket)]
        replies = yield [Call.of("SET", k, token, "NX", "PX", lease_ms) for k in lease_keys]
        leased = [i for i, ok in zip(missing, replies, strict=True) if ok]
        waiting = [i for i, ok in zip(missing, replies, strict=True) if not ok]
        lease_keys = [k for k, ok in zip(lease_keys, replies, strict=True) if ok]
    if leased:
        try:
            yield from _compute_and_store(items, leased, values, metrics, compute, store, ticket)
        finally:
            if lease_keys:
                yield [RELEASE_SCRIPT.call(1, k, token) for k in lease_keys]
    deadline = time.monotonic() + wait_ms / 1000.0
    pause = 0.005
    while waiting and time.monotonic() < deadline:
        yield Sleep(pause)
        pause = min(pause * 1.5, 0.05)
        again = yield from lookup([items[i] for i in waiting], False)
        found = [(i, v) for i, v in zip(waiting, again.values, strict=True) if v is not None]
        for i, v in found:
            values[i] = v
        metrics.provider_calls_avoided += len(found)
        waiting = [i for i in waiting if values[i] is None]
    if waiting:
        yield from _compute_and_store(items, waiting, values, metrics, compute, store, ticket)
    return [v for v in values if v is not None]


def _compute_and_store(
    items: Sequence[I],
    indexes: list[int],
    values: list[V | None],
    metrics: LayerMetrics,
    compute: Callable[[list[I]], Any],
    store: StoreFn[I, V],
    ticket: Ticket | None,
) -> Program[None]:
    todo = [items[i] for i in indexes]
    metrics.provider_calls += 1
    computed = yield Invoke(compute, (todo,))
    results = list(computed)
    if len(results) != len(todo):
        raise ValueError(f"provider returned {len(results)} values for {len(todo)} inputs")
    for i, v in zip(indexes, results, strict=True):
        values[i] = v
    yield from store(todo, results, ticket)
