"""Bound every Redis call a :class:`~cachebus.CacheBus` makes by ``settings.redis_timeout``,
whatever client it was given.

A redis-py client built by hand usually allows far longer than a cache may wait:
``redis.Redis()`` (redis-py 8) waits up to 5 s per attempt and retries a timed-out call
10 times with backoff, so a frozen Redis held ``embed_batch`` for about a minute; older
redis-py versions had no socket timeout at all. :func:`bound_client` makes the client
fail a call within the settings' timeout instead:

* ``socket_timeout`` and ``socket_connect_timeout`` missing, ``None`` or longer than
  ``timeout`` become ``timeout``: for connections made from now on (the pool's
  connection kwargs, on a cluster those of every node) and for the client's existing
  connections (idle ones are closed and reconnect with the new timeout);
* a retry policy that would try a failed call again becomes "no retry": a retry after a
  timeout waits the whole timeout again, and redis-py's backoff sleeps on top. A call
  that fails is a miss (reads and writes fail open), an invalidation raises a retriable
  error its caller retries.

Nothing else about the client changes. It is changed in place (the caller's client is
the client cachebus uses), and :func:`bound_client` reports what it changed.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from .runner import AnyClient

TIMEOUT_KWARGS = ("socket_timeout", "socket_connect_timeout")


def _too_long(value: Any, timeout: float) -> bool:
    return value is None or not isinstance(value, int | float) or value > timeout


def _retries(retry: Any) -> int:
    """How often ``retry`` tries a failed call again (0 for none)."""
    if retry is None:
        return 0
    getter = getattr(retry, "get_retries", None)
    count = getter() if callable(getter) else getattr(retry, "_retries", 1)
    return int(count) if isinstance(count, int) else 1


def _bound_kwargs(kwargs: MutableMapping[str, Any], timeout: float, changes: set[str]) -> None:
    for name in TIMEOUT_KWARGS:
        current = kwargs.get(name)
        if _too_long(current, timeout):
            kwargs[name] = timeout
            changes.add(f"{name} {'default' if current is None else current!r}")


def _bound_connection(conn: Any, timeout: float, changes: set[str], *, idle: bool) -> None:
    changed = False
    for name in TIMEOUT_KWARGS:
        current = getattr(conn, name, None)
        if _too_long(current, timeout):
            setattr(conn, name, timeout)
            changed = True
            changes.add(f"{name} {'none' if current is None else current!r}")
    if changed and getattr(conn, "orig_socket_timeout", None) is not None:
        conn.orig_socket_timeout = timeout  # redis-py 8 restores it after maintenance
    if changed and idle and hasattr(conn, "_sock"):
        # A sync connection applied its timeout to the socket when it connected:
        # reconnect. (asyncio connections read their timeout at every call.)
        conn.disconnect()


def _pool_connections(pool: Any) -> tuple[list[Any], list[Any]]:
    """(idle, in use) connections of a redis-py pool (sync or asyncio)."""
    idle = list(getattr(pool, "_available_connections", None) or [])
    busy = list(getattr(pool, "_in_use_connections", None) or [])
    every = getattr(pool, "_connections", None)  # BlockingConnectionPool: all of them,
    if every is not None:  # the idle ones also in its queue
        queued = getattr(getattr(pool, "pool", None), "queue", None) or []
        idle += [c for c in queued if c is not None]
        seen = {id(c) for c in idle}
        busy += [c for c in every if c is not None and id(c) not in seen]
    return idle, busy


def _bound_standalone(client: Any, timeout: float, changes: set[str], retry: Any) -> None:
    pool = client.connection_pool
    _bound_kwargs(pool.connection_kwargs, timeout, changes)
    idle, busy = _pool_connections(pool)
    for conn in idle:
        _bound_connection(conn, timeout, changes, idle=True)
    for conn in busy:
        _bound_connection(conn, timeout, changes, idle=False)
    current = client.get_retry()
    if _retries(current) > 0 or any(_retries(getattr(c, "retry", None)) for c in idle + busy):
        changes.add(f"{_retries(current)} retries")
        client.set_retry(retry)


def _unique(nodes: Iterable[Any]) -> list[Any]:
    return list({id(node): node for node in nodes}.values())


def bound_client(client: AnyClient, timeout: float) -> list[str]:
    """Make every call of ``client`` fail within about ``timeout`` seconds (one attempt,
    socket and connect timeouts at most ``timeout``). Changes the client in place;
    returns what was changed (empty if nothing was needed)."""
    changes: set[str] = set()
    if isinstance(client, redis.cluster.RedisCluster):
        manager: Any = client.nodes_manager
        _bound_kwargs(manager.connection_kwargs, timeout, changes)
        nodes = _unique([*manager.nodes_cache.values(), *manager.startup_nodes.values()])
        for node in nodes:
            if node.redis_connection is not None:
                _bound_standalone(node.redis_connection, timeout, changes, Retry(NoBackoff(), 0))
        if _retries(client.retry) > 0:
            changes.add(f"{_retries(client.retry)} cluster retries")
            client.set_retry(Retry(NoBackoff(), 0))
    elif isinstance(client, redis.asyncio.cluster.RedisCluster):
        _bound_kwargs(client.connection_kwargs, timeout, changes)
        manager = client.nodes_manager
        if manager.connection_kwargs is not client.connection_kwargs:
            _bound_kwargs(manager.connection_kwargs, timeout, changes)
        nodes = _unique([*client.get_nodes(), *manager.startup_nodes.values()])
        for node in nodes:
            _bound_kwargs(node.connection_kwargs, timeout, changes)
            for conn in getattr(node, "_connections", None) or []:
                _bound_connection(conn, timeout, changes, idle=False)
        if _retries(client.retry) > 0:
            changes.add(f"{_retries(client.retry)} cluster retries")
            client.set_retry(AsyncRetry(NoBackoff(), 0))
    elif isinstance(client, redis.asyncio.Redis):
        _bound_standalone(client, timeout, changes, AsyncRetry(NoBackoff(), 0))
    elif isinstance(client, redis.Redis):
        _bound_standalone(client, timeout, changes, Retry(NoBackoff(), 0))
    return sorted(changes)
