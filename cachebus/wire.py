"""What every round trip to Redis shares, sync or async: the client types, the check that a
client is usable, the translation of redis-py errors into cachebus errors, and the
cluster split of multi-key commands per key (and the regrouping of their replies).
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.exceptions import (
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    RedisError,
    ResponseError,
)

from .commands import Call
from .errors import CacheUnavailableError, ConfigError, PermissionDeniedError, RedisFullError

SyncClient = redis.Redis | redis.cluster.RedisCluster
AsyncClient = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster
AnyClient = SyncClient | AsyncClient
SPLIT_PER_KEY = frozenset({"MGET", "UNLINK", "DEL", "EXISTS"})


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
        if call.name in SPLIT_PER_KEY and len(call.args) > 1:
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


def raise_first_error(replies: list[Any]) -> None:
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
