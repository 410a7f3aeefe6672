"""Drive :mod:`cachebus.commands` programs on real Redis clients.

Works with ``redis.Redis``, ``redis.asyncio.Redis`` and both ``RedisCluster``
classes. Commands of one step go out in one pipeline; on a cluster the
pipeline fans out per node and multi-key ``MGET``/``UNLINK`` are split per key.
An :class:`~cachebus.commands.EachPrimary` step goes to every primary, one
pipeline on one connection each.

The run loops are :mod:`cachebus.drive`'s; client checks, error translation and the
per-key cluster split are :mod:`cachebus.wire`'s (both re-exported here).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.crc import key_slot
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from .commands import (
    SCAN_COUNT,
    STANDALONE_NODE_TAG,
    Call,
    Program,
    ScanEachPrimary,
    Script,
    node_tags,
)
from .drive import drive as drive
from .drive import drive_async as drive_async
from .drive import invoke as invoke
from .errors import CacheUnavailableError
from .wire import SPLIT_PER_KEY, raise_first_error
from .wire import AnyClient as AnyClient
from .wire import AsyncClient as AsyncClient
from .wire import SyncClient as SyncClient
from .wire import check_client as check_client
from .wire import check_each as check_each
from .wire import is_cluster as is_cluster
from .wire import missing_scripts as missing_scripts
from .wire import regroup as regroup
from .wire import split_per_key as split_per_key
from .wire import translate as translate

T = TypeVar("T")


def _standalone_address(client: Any) -> str:
    kwargs = client.connection_pool.connection_kwargs
    if kwargs.get("path"):
        return f"unix:{kwargs['path']}"
    return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"


class _PrimaryTags:
    """The node tag of every primary of a cluster client, computed from its slot map
    and cached while the map says the same (checked with one lookup per primary)."""

    def __init__(self) -> None:
        self._map_id = 0
        self._primaries: frozenset[str] = frozenset()
        self._tags: dict[str, str] = {}  # primary name -> node tag
        self.addresses: dict[str, str] = {}  # node tag -> primary name (host:port)

    def targets(self, nodes_manager: Any, primaries: list[Any]) -> list[tuple[str, Any]]:
        slots: dict[int, list[Any]] = nodes_manager.slots_cache
        names = frozenset(node.name for node in primaries)
        if not (
            id(slots) == self._map_id
            and names == self._primaries
            and all(
                (owners := slots.get(key_slot(tag.encode()))) and owners[0].name == name
                for name, tag in self._tags.items()
            )
        ):

            def owner(slot: int) -> str | None:
                owners = slots.get(slot)
                return owners[0].name if owners else None

            self._tags = node_tags(owner, names)
            self._map_id = id(slots)
            self._primaries = names
            self.addresses = {tag: name for name, tag in self._tags.items()}
        return [(self._tags[n.name], n) for n in primaries if n.name in self._tags]


class SyncRunner:
    """Runs programs on a sync client; Redis errors come out as cachebus errors."""

    def __init__(self, client: SyncClient) -> None:
        check_client(client)
        self.client = client
        self.cluster = is_cluster(client)
        self._tags = _PrimaryTags()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def execute(self, calls: list[Call]) -> list[Any]:
        """Send one step's commands in one round trip (per node)."""
        try:
            return self._execute(calls)
        except RedisError as exc:
            raise translate(exc) from exc
        except RedisClusterException as exc:  # e.g. no node answered a slot-map refresh
            raise CacheUnavailableError(f"Redis Cluster call failed: {exc}") from exc

    def primary_address(self, node_tag: str) -> str:
        """``host:port`` of the primary a node tag stood for at the last EachPrimary."""
        if not self.cluster:
            return _standalone_address(self.client)
        return self._tags.addresses.get(node_tag, f"node {node_tag}")

    def each_primary(self, make: Callable[[str], list[Call]]) -> dict[str, list[Any]]:
        """Run an :class:`EachPrimary` step: ``make(tag)`` as one pipeline on one
        connection per primary, the primaries in parallel."""
        try:
            return self._each_primary(make)
        except RedisError as exc:
            if self.cluster:  # a moved slot or a failed-over primary: refresh the map
                with contextlib.suppress(Exception):
                    self.client.nodes_manager.initialize()  # type: ignore[union-attr]
            raise translate(exc) from exc

    def _each_primary(self, make: Callable[[str], list[Call]]) -> dict[str, list[Any]]:
        if not isinstance(self.client, redis.cluster.RedisCluster):
            calls = check_each(make(STANDALONE_NODE_TAG))
            replies = self._pipeline(calls) if calls else []
            raise_first_error(replies)
            return {STANDALONE_NODE_TAG: replies}
        cluster = self.client
        primaries = cluster.get_primaries()  # type: ignore[no-untyped-call]
        targets = self._tags.targets(cluster.nodes_manager, primaries)
        work = [(tag, node, check_each(make(tag))) for tag, node in targets]

        def send(node: Any, calls: list[Call]) -> list[Any]:
            if not calls:
                return []
            pipe = cluster.get_redis_connection(node).pipeline(transaction=False)
            for call in calls:
                pipe.execute_command(call.name, *call.args)  # type: ignore[no-untyped-call]
            replies: list[Any] = pipe.execute(raise_on_error=False)
            return replies

        if len(work) == 1:
            results = [send(work[0][1], work[0][2])]
        else:
            pool = self._executor()
            futures = [pool.submit(send, node, calls) for _, node, calls in work]
            results = [f.result() for f in futures]
        out: dict[str, list[Any]] = {}
        for (tag, _, _), replies in zip(work, results, strict=True):
            raise_first_error(replies)
            out[tag] = replies
        return out

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(8, thread_name_prefix="cachebus-primaries")
            return self._pool

    def _execute(self, calls: list[Call]) -> list[Any]:
        if not calls:
            return []
        client = self.client
        if len(calls) == 1:
            call = calls[0]
            if not (self.cluster and call.name in SPLIT_PER_KEY and len(call.args) > 1):
                try:
                    return [client.execute_command(call.name, *call.args)]  # type: ignore[no-untyped-call]
                except NoScriptError:
                    self._load(call)
                    return [client.execute_command(call.name, *call.args)]  # type: ignore[no-untyped-call]
            if call.name == "MGET" and isinstance(client, redis.cluster.RedisCluster):
                return [client.mget_nonatomic(list(call.args))]
        flat, sizes = split_per_key(calls, self.cluster)
        replies = self._pipeline(flat)
        missing = missing_scripts(flat, replies)
        if missing:
            for i in missing:
                self._load(flat[i])
            retried = self._pipeline([flat[i] for i in missing])
            for i, reply in zip(missing, retried, strict=True):
                replies[i] = reply
        raise_first_error(replies)
        return regroup(calls, replies, sizes)

    def _pipeline(self, calls: list[Call]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for call in calls:
            pipe.execute_command(call.name, *call.args)
        replies: list[Any] = pipe.execute(raise_on_error=False)
        return replies

    def _load(self, call: Call) -> None:
        self.client.script_load(Script.registry[call.args[0]])

    def run(self, program: Program[T]) -> T:
        """Drive ``program`` to its end and return its value (see :func:`drive`)."""
        return drive(program, self.execute, self.each_primary, time.sleep)

    def scan(self, match: str, count: int = SCAN_COUNT) -> Iterator[tuple[str, list[bytes]]]:
        """``(node_tag, keys)`` batches of :class:`~cachebus.commands.ScanEachPrimary`
        as they come, one round at a time, for plain code that acts between rounds
        (``cachebus stats``, the stamp cleanup). Programs use the class directly."""
        scan = ScanEachPrimary(match, count)
        while not scan.done:
            yield from self.run(scan.round()).items()

    def close(self) -> None:
        """Stop the threads of :meth:`each_primary` (the client is the caller's)."""
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)

    def __enter__(self) -> SyncRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncRunner:
    """Runs programs on an asyncio client; Redis errors come out as cachebus errors."""

    def __init__(self, client: AsyncClient) -> None:
        check_client(client)
        self.client = client
        self.cluster = is_cluster(client)
        self._tags = _PrimaryTags()

    async def execute(self, calls: list[Call]) -> list[Any]:
        """Send one step's commands in one round trip (per node)."""
        try:
            return await self._execute(calls)
        except RedisError as exc:
            raise translate(exc) from exc
        except RedisClusterException as exc:  # e.g. no node answered a slot-map refresh
            raise CacheUnavailableError(f"Redis Cluster call failed: {exc}") from exc

    def primary_address(self, node_tag: str) -> str:
        """``host:port`` of the primary a node tag stood for at the last EachPrimary."""
        if not self.cluster:
            return _standalone_address(self.client)
        return self._tags.addresses.get(node_tag, f"node {node_tag}")

    async def each_primary(self, make: Callable[[str], list[Call]]) -> dict[str, list[Any]]:
        """Run an :class:`EachPrimary` step: ``make(tag)`` as one pipeline on one
        connection per primary, the primaries concurrently."""
        try:
            return await self._each_primary(make)
        except RedisError as exc:
            if self.cluster:
                with contextlib.suppress(Exception):
                    await self.client.nodes_manager.initialize()  # type: ignore[union-attr]
            raise translate(exc) from exc

    async def _each_primary(self, make: Callable[[str], list[Call]]) -> dict[str, list[Any]]:
        if not isinstance(self.client, redis.asyncio.cluster.RedisCluster):
            calls = check_each(make(STANDALONE_NODE_TAG))
            replies = await self._pipeline(calls) if calls else []
            raise_first_error(replies)
            return {STANDALONE_NODE_TAG: replies}
        cluster = await self.client.initialize()
        targets = self._tags.targets(cluster.nodes_manager, cluster.get_primaries())
        work = [(tag, node, check_each(make(tag))) for tag, node in targets]

        async def send(node: Any, calls: list[Call]) -> list[Any]:
            # ClusterNode.execute_pipeline: one connection, every command sent, then
            # every reply read (error replies come back as exceptions).
            commands = [
                redis.asyncio.cluster.PipelineCommand(i, call.name, *call.args)
                for i, call in enumerate(calls)
            ]
            if commands:
                await node.execute_pipeline(commands)
            return [c.result for c in commands]

        results = await asyncio.gather(*(send(node, calls) for _, node, calls in work))
        out: dict[str, list[Any]] = {}
        for (tag, _, _), replies in zip(work, results, strict=True):
            raise_first_error(replies)
            out[tag] = replies
        return out

    async def _execute(self, calls: list[Call]) -> list[Any]:
        if not calls:
            return []
        client = self.client
        if len(calls) == 1:
            call = calls[0]
            if not (self.cluster and call.name in SPLIT_PER_KEY and len(call.args) > 1):
                try:
                    return [await client.execute_command(call.name, *call.args)]
                except NoScriptError:
                    await self._load(call)
                    return [await client.execute_command(call.name, *call.args)]
            if call.name == "MGET" and isinstance(client, redis.asyncio.cluster.RedisCluster):
                return [await client.mget_nonatomic(list(call.args))]
        flat, sizes = split_per_key(calls, self.cluster)
        replies = await self._pipeline(flat)
        missing = missing_scripts(flat, replies)
        if missing:
            for i in missing:
                await self._load(flat[i])
            retried = await self._pipeline([flat[i] for i in missing])
            for i, reply in zip(missing, retried, strict=True):
                replies[i] = reply
        raise_first_error(replies)
        return regroup(calls, replies, sizes)

    async def _pipeline(self, calls: list[Call]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for call in calls:
            pipe.execute_command(call.name, *call.args)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies

    async def _load(self, call: Call) -> None:
        await self.client.script_load(Script.registry[call.args[0]])

    async def run(self, program: Program[T]) -> T:
        """Drive ``program`` to its end and return its value (see :func:`drive_async`)."""
        return await drive_async(program, self.execute, self.each_primary, asyncio.sleep)


