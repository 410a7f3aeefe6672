"""Drive :mod:`cachebus.commands` programs on real Redis clients.

Works with ``redis.Redis``, ``redis.asyncio.Redis`` and both ``RedisCluster``
classes. Commands of one step go out in one pipeline; on a cluster the
pipeline fans out per node and multi-key ``MGET``/``UNLINK`` are split per key.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any, TypeVar

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.exceptions import NoPermissionError, NoScriptError, RedisError, ResponseError

from .commands import Call, Invoke, Program, Script, Sleep
from .errors import CacheBusError, CacheUnavailableError, ConfigError, PermissionDeniedError

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
    return CacheUnavailableError(f"Redis call failed: {exc}")


def _expand(calls: list[Call], cluster: bool) -> tuple[list[Call], list[int]]:
    """On a cluster, split multi-key commands into one command per key."""
    if not cluster:
        return calls, []
    flat: list[Call] = []
    sizes: list[int] = []
    for call in calls:
        if call.name in _SPLIT and len(call.args) > 1:
            flat.extend(Call(call.name, (key,)) for key in call.args)
            sizes.append(len(call.args))
        else:
            flat.append(call)
            sizes.append(-1)
    return flat, sizes


def _regroup(calls: list[Call], replies: list[Any], sizes: list[int]) -> list[Any]:
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


def _missing_scripts(calls: list[Call], replies: list[Any]) -> list[int]:
    """Indexes of EVALSHA calls the server did not know (first use, or its
    script cache was emptied by a restart or SCRIPT FLUSH)."""
    return [
        i
        for i, (call, reply) in enumerate(zip(calls, replies, strict=True))
        if call.name == "EVALSHA" and isinstance(reply, NoScriptError)
    ]


class SyncRunner:
    """Runs programs on a sync client; Redis errors come out as cachebus errors."""

    def __init__(self, client: SyncClient) -> None:
        check_client(client)
        self.client = client
        self.cluster = is_cluster(client)

    def execute(self, calls: list[Call]) -> list[Any]:
        """Send one step's commands in one round trip (per node)."""
        try:
            return self._execute(calls)
        except RedisError as exc:
            raise translate(exc) from exc

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
        flat, sizes = _expand(calls, self.cluster)
        replies = self._pipeline(flat)
        missing = _missing_scripts(flat, replies)
        if missing:
            for i in missing:
                self._load(flat[i])
            retried = self._pipeline([flat[i] for i in missing])
            for i, reply in zip(missing, retried, strict=True):
                replies[i] = reply
        _raise_first_error(replies)
        return _regroup(calls, replies, sizes)

    def _pipeline(self, calls: list[Call]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for call in calls:
            pipe.execute_command(call.name, *call.args)
        replies: list[Any] = pipe.execute(raise_on_error=False)
        return replies

    def _load(self, call: Call) -> None:
        self.client.script_load(Script.registry[call.args[0]])

    def run(self, program: Program[T]) -> T:
        try:
            step = next(program)
            while True:
                if isinstance(step, Sleep):
                    time.sleep(step.seconds)
                    reply: Any = None
                elif isinstance(step, Invoke):
                    try:
                        reply = step.fn(*step.args)
                        if inspect.isawaitable(reply):
                            raise ConfigError("a sync cache was given an async callable")
                    except Exception as exc:
                        # Let the program clean up (release leases), then re-raise.
                        step = program.throw(exc)
                        continue
                else:
                    try:
                        reply = self.execute(step)
                    except CacheBusError:
                        program.close()
                        raise
                step = program.send(reply)
        except StopIteration as stop:
            value: T = stop.value
            return value


class AsyncRunner:
    """Runs programs on an asyncio client; Redis errors come out as cachebus errors."""

    def __init__(self, client: AsyncClient) -> None:
        check_client(client)
        self.client = client
        self.cluster = is_cluster(client)

    async def execute(self, calls: list[Call]) -> list[Any]:
        """Send one step's commands in one round trip (per node)."""
        try:
            return await self._execute(calls)
        except RedisError as exc:
            raise translate(exc) from exc

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
        flat, sizes = _expand(calls, self.cluster)
        replies = await self._pipeline(flat)
        missing = _missing_scripts(flat, replies)
        if missing:
            for i in missing:
                await self._load(flat[i])
            retried = await self._pipeline([flat[i] for i in missing])
            for i, reply in zip(missing, retried, strict=True):
                replies[i] = reply
        _raise_first_error(replies)
        return _regroup(calls, replies, sizes)

    async def _pipeline(self, calls: list[Call]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for call in calls:
            pipe.execute_command(call.name, *call.args)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies

    async def _load(self, call: Call) -> None:
        await self.client.script_load(Script.registry[call.args[0]])

    async def run(self, program: Program[T]) -> T:
        try:
            step = next(program)
            while True:
                if isinstance(step, Sleep):
                    await asyncio.sleep(step.seconds)
                    reply: Any = None
                elif isinstance(step, Invoke):
                    try:
                        reply = step.fn(*step.args)
                        if inspect.isawaitable(reply):
                            reply = await reply
                    except Exception as exc:
                        step = program.throw(exc)
                        continue
                else:
                    try:
                        reply = await self.execute(step)
                    except CacheBusError:
                        program.close()
                        raise
                step = program.send(reply)
        except StopIteration as stop:
            value: T = stop.value
            return value
