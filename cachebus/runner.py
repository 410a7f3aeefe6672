"""Drive :mod:`cachebus.commands` programs on real Redis clients.

Works with ``redis.Redis``, ``redis.asyncio.Redis`` and both ``RedisCluster``
classes. Commands of one step go out in one pipeline; on a cluster the
pipeline fans out per node and multi-key ``MGET``/``UNLINK`` are split per key.
An :class:`~cachebus.commands.EachPrimary` step goes to every primary, one
pipeline on one connection each.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.crc import key_slot
from redis.exceptions import (
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    RedisClusterException,
    RedisError,
    ResponseError,
)

from .commands import (
    SCAN_COUNT,
    STANDALONE_NODE_TAG,
    Call,
    EachPrimary,
    Invoke,
    Program,
    ScanEachPrimary,
    Script,
    Sleep,
    node_tags,
)
from .errors import (
    CacheUnavailableError,
    ConfigError,
    PermissionDeniedError,
    RedisFullError,
)

T = TypeVar("T")

SyncClient = redis.Redis | redis.cluster.RedisCluster
AsyncClient = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster
AnyClient = SyncClient | AsyncClient

_SPLIT = frozenset({"MGET", "UNLINK", "DEL", "EXISTS"})


def is_cluster(client: AnyClient) -> bool:
    return isinstance(client, redis.cluster.RedisCluster | redis.asyncio.cluster.RedisCluster)


def check_client(client: AnyClient) -> None:
    """Values are binary: a client that decodes responses would corrupt them."""
    if not isinstance(
        client,
        redis.Redis
        | redis.cluster.RedisCluster
        | redis.asyncio.Redis
        | redis.asyncio.cluster.RedisCluster,
    ):
        raise ConfigError(f"expected a redis-py client, got {type(client).__name__}")
    if client.get_encoder().decode_responses:
        raise ConfigError(
            "cachebus needs a Redis client with decode_responses=False (values are binary)"
        )


# A refusal inside a Lua script is not NOPERM (Redis 7.0 / 7.2+ wording).
_SCRIPT_ACL_ERRORS = ("The user executing the script can't", "ACL failure in script")


def translate(exc: RedisError) -> Exception:
    """Map redis-py errors into the cachebus hierarchy."""
    if isinstance(exc, NoPermissionError) or (
        isinstance(exc, ResponseError) and str(exc).startswith("NOPERM")
    ):
        return PermissionDeniedError(f"Redis denied the command (check the ACL user): {exc}")
    if isinstance(exc, ResponseError) and any(s in str(exc) for s in _SCRIPT_ACL_ERRORS):
        return PermissionDeniedError(
            "Redis denied a command inside a cachebus Lua script (check the ACL user: "
            f"scripts run with the caller's permissions): {exc}"
        )
    text = str(exc)
    # redis-py strips the "OOM" code into the type (OutOfMemoryError), also for a write
    # refused inside a script; older versions keep it in the text.
    if isinstance(exc, OutOfMemoryError) or text.startswith("OOM "):
        return RedisFullError(
            "Redis is full (maxmemory reached under noeviction) and refused a write: "
            f"OOM {text.removeprefix('OOM ')}"
        )
    if isinstance(exc, ResponseError) and "unknown command" in text and "waitaof" in text.lower():
        return ConfigError(
            f"durability_fsync needs WAITAOF (Redis >= 7.2); this server does not know it: {text}"
        )
    if isinstance(exc, ResponseError) and "WAITAOF cannot be used" in text:
        return ConfigError(f"durability_fsync needs appendonly yes on every primary: {text}")
    return CacheUnavailableError(f"Redis call failed: {text}")


def split_per_key(calls: list[Call], cluster: bool) -> tuple[list[Call], list[int]]:
    """On a cluster, split multi-key commands (``MGET``, ``UNLINK``, ``DEL``,
    ``EXISTS``) into one command per key, so each can go to its key's node. Returns
    the commands to send and, per original call, how many it became (-1: sent as
    is); :func:`regroup` puts the replies back. Not a cluster: unchanged, ``[]``."""
    if not cluster:
        return calls, []
    flat: list[Call] = []
    sizes: list[int] = []
    for call in calls:
        if call.name in _SPLIT and len(call.args) > 1:
            # An MGET becomes one GET per key (a one-key MGET would answer a list).
            name = "GET" if call.name == "MGET" else call.name
            flat.extend(Call(name, (key,)) for key in call.args)
            sizes.append(len(call.args))
        else:
            flat.append(call)
            sizes.append(-1)
    return flat, sizes


def regroup(calls: list[Call], replies: list[Any], sizes: list[int]) -> list[Any]:
    """The replies of :func:`split_per_key`'s commands as replies of ``calls``: an
    MGET's list of values, the sum of an UNLINK's (DEL's, EXISTS') counts."""
    if not sizes:
        return replies
    out: list[Any] = []
    pos = 0
    for call, size in zip(calls, sizes, strict=True):
        if size < 0:
            out.append(replies[pos])
            pos += 1
        else:
            part = replies[pos : pos + size]
            pos += size
            out.append(part if call.name == "MGET" else sum(int(r) for r in part))
    return out


def _raise_first_error(replies: list[Any]) -> None:
    for reply in replies:
        if isinstance(reply, RedisError):
            raise reply


def missing_scripts(calls: list[Call], replies: list[Any]) -> list[int]:
    """Indexes of EVALSHA calls the server did not know (first use, or its
    script cache was emptied by a restart or SCRIPT FLUSH)."""
    return [
        i
        for i, (call, reply) in enumerate(zip(calls, replies, strict=True))
        if call.name == "EVALSHA" and isinstance(reply, NoScriptError)
    ]


def check_each(calls: list[Call]) -> list[Call]:
    """The calls of an EachPrimary step, refused if they call a script (sent as they
    are on one connection per primary, with no NOSCRIPT recovery)."""
    if any(call.name == "EVALSHA" for call in calls):
        raise ConfigError("EachPrimary steps cannot call scripts (no NOSCRIPT recovery)")
    return calls


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
            _raise_first_error(replies)
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
            _raise_first_error(replies)
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
            if not (self.cluster and call.name in _SPLIT and len(call.args) > 1):
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
        _raise_first_error(replies)
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
            _raise_first_error(replies)
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
            _raise_first_error(replies)
            out[tag] = replies
        return out

    async def _execute(self, calls: list[Call]) -> list[Any]:
        if not calls:
            return []
        client = self.client
        if len(calls) == 1:
            call = calls[0]
            if not (self.cluster and call.name in _SPLIT and len(call.args) > 1):
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
        _raise_first_error(replies)
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


def invoke(step: Invoke) -> Any:
    """Call an :class:`Invoke` step's user code."""
    return step.fn(*step.args)


def drive(
    program: Program[T],
    execute: Callable[[list[Call]], list[Any]],
    each_primary: Callable[[Callable[[str], list[Call]]], dict[str, list[Any]]],
    sleep: Callable[[float], None],
    call: Callable[[Invoke], Any] = invoke,
) -> T:
    """The sync run loop, apart from I/O: ``execute`` answers a list step,
    ``each_primary`` an :class:`EachPrimary` step's ``make``, ``sleep`` a
    :class:`Sleep`, ``call`` an :class:`Invoke` (user code; an awaitable result is
    a :class:`ConfigError`). A user-code error, and an error from a step (Redis
    errors come translated into cachebus errors), is thrown into the program at the
    step that failed: its ``finally`` blocks run and may send cleanup steps (a
    read-through releases its leases), then the error comes out of the program and
    of ``drive``. (Closing the program instead would turn such a ``finally`` into a
    ``RuntimeError: generator ignored GeneratorExit`` that no fail-open catches.)

    :class:`SyncRunner` drives programs with it on Redis; ``devtools.scripted``
    with a script, so unit tests run this very loop."""
    try:
        step = next(program)
        while True:
            if isinstance(step, Sleep):
                sleep(step.seconds)
                reply: Any = None
            elif isinstance(step, Invoke):
                try:
                    reply = call(step)
                    if inspect.isawaitable(reply):
                        if inspect.iscoroutine(reply):
                            reply.close()  # closed, so it is not reported as never awaited
                        raise ConfigError("a sync cache was given an async callable")
                except Exception as exc:
                    # Let the program clean up (release leases), then re-raise.
                    step = program.throw(exc)
                    continue
            else:
                try:
                    if isinstance(step, EachPrimary):
                        reply = each_primary(step.make)
                    else:
                        reply = execute(step)
                except Exception as exc:
                    # Thrown in like a user-code error, not closed: a program whose
                    # ``finally`` sends a cleanup step (read-through releasing its
                    # leases) gets it run, then the error comes out of the program.
                    step = program.throw(exc)
                    continue
            step = program.send(reply)
    except StopIteration as stop:
        value: T = stop.value
        return value


async def drive_async(
    program: Program[T],
    execute: Callable[[list[Call]], Awaitable[list[Any]]],
    each_primary: Callable[[Callable[[str], list[Call]]], Awaitable[dict[str, list[Any]]]],
    sleep: Callable[[float], Awaitable[None]],
    call: Callable[[Invoke], Any] = invoke,
) -> T:
    """The asyncio run loop (see :func:`drive`); an awaitable from user code is awaited."""
    try:
        step = next(program)
        while True:
            if isinstance(step, Sleep):
                await sleep(step.seconds)
                reply: Any = None
            elif isinstance(step, Invoke):
                try:
                    reply = call(step)
                    if inspect.isawaitable(reply):
                        reply = await reply
                except Exception as exc:
                    step = program.throw(exc)
                    continue
            else:
                try:
                    if isinstance(step, EachPrimary):
                        reply = await each_primary(step.make)
                    else:
                        reply = await execute(step)
                except Exception as exc:
                    step = program.throw(exc)
                    continue
            step = program.send(reply)
    except StopIteration as stop:
        value: T = stop.value
        return value
