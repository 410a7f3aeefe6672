"""Build Redis clients from the settings, with a patient first PING."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import AuthenticationError, RedisClusterException, RedisError

from .errors import CacheBusError, CacheUnavailableError, PermissionDeniedError
from .runner import AsyncClient, SyncClient, translate
from .settings import Settings

try:
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - hiredis is a dependency (redis[hiredis])
    _hiredis_pack = None  # type: ignore[assignment]

log = logging.getLogger("cachebus")
PING_ATTEMPTS = 5


class _HiredisPacking:
    """Packs commands with hiredis, in C. redis-py's sync connections do; its
    asyncio connections pack in Python, re-joining a growing buffer for every
    argument, which made packing the worker's batched script calls (thousands of
    arguments) a fifth of its CPU time. Same bytes on the wire (floats too);
    anything unusual (a command name with a space, another encoding, an argument
    type hiredis refuses) takes redis-py's own path and its errors. (Standalone
    clients only: redis-py's asyncio ``RedisCluster`` takes no connection class.)"""

    def pack_command(self, *args: Any) -> list[bytes]:
        encoder = self.encoder  # type: ignore[attr-defined]
        name = args[0] if args else None
        if (
            _hiredis_pack is not None
            and isinstance(name, str)
            and " " not in name
            and encoder.encoding == "utf-8"
            and encoder.encoding_errors == "strict"
        ):
            try:
                return [_hiredis_pack(args)]
            except (TypeError, UnicodeEncodeError):
                pass
        packed: list[bytes] = super().pack_command(*args)  # type: ignore[misc]
        return packed


class _FastConnection(_HiredisPacking, Connection):
    pass


class _FastSSLConnection(_HiredisPacking, SSLConnection):
    pass


class _FastUnixConnection(_HiredisPacking, UnixDomainSocketConnection):
    pass


def _connection_class(url: str) -> type[Connection] | type[UnixDomainSocketConnection]:
    scheme = url.partition("://")[0].lower()
    if scheme == "rediss":
        return _FastSSLConnection
    if scheme == "unix":
        return _FastUnixConnection
    return _FastConnection


def connect(settings: Settings, *, ping: bool = True) -> SyncClient:
    """A sync client (``RedisCluster`` when ``settings.redis_cluster``)."""
    kwargs = {
        "socket_timeout": settings.redis_timeout,
        "socket_connect_timeout": settings.redis_timeout,
    }
    client: SyncClient
    try:
        if settings.redis_cluster:
            client = redis.cluster.RedisCluster.from_url(settings.redis_url, **kwargs)
        else:
            client = redis.Redis.from_url(settings.redis_url, **kwargs)
    except (RedisError, RedisClusterException) as exc:
        raise _failure(settings, exc) from exc
    if ping:
        for attempt in range(1, PING_ATTEMPTS + 1):
            try:
                client.ping()
                break
            except (RedisError, RedisClusterException) as exc:
                error = _failure(settings, exc)
                if attempt == PING_ATTEMPTS or not error.retriable:
                    raise error from exc
                log.warning("Redis not reachable yet (attempt %d): %s", attempt, exc)
                time.sleep(0.2 * 2**attempt)
    return client


async def connect_async(settings: Settings, *, ping: bool = True) -> AsyncClient:
    """An asyncio client (``RedisCluster`` when ``settings.redis_cluster``)."""
    kwargs: dict[str, Any] = {
        "socket_timeout": settings.redis_timeout,
        "socket_connect_timeout": settings.redis_timeout,
    }
    client: AsyncClient
    if settings.redis_cluster:
        client = redis.asyncio.cluster.RedisCluster.from_url(settings.redis_url, **kwargs)
    else:
        client = redis.asyncio.Redis.from_url(
            settings.redis_url, connection_class=_connection_class(settings.redis_url), **kwargs
        )
    if ping:
        for attempt in range(1, PING_ATTEMPTS + 1):
            try:
                await client.ping()
                break
            except (RedisError, RedisClusterException) as exc:
                error = _failure(settings, exc)
                if attempt == PING_ATTEMPTS or not error.retriable:
                    raise error from exc
                log.warning("Redis not reachable yet (attempt %d): %s", attempt, exc)
                await asyncio.sleep(0.2 * 2**attempt)
    return client


def _failure(settings: Settings, exc: Exception) -> CacheBusError:
    """A connection failure as a cachebus error. Refused credentials and ACL
    denials are not retriable (a deployment problem): they fail at once."""
    where = _safe(settings.redis_url)
    text = str(exc)
    if (
        isinstance(exc, AuthenticationError)
        or isinstance(exc.__cause__, AuthenticationError)
        or "invalid username-password" in text
    ):
        return PermissionDeniedError(
            f"Redis at {where} refused the credentials (missing or wrong user name or "
            f"password, or the ACL user is disabled): {exc}"
        )
    if isinstance(exc, RedisError):
        error = translate(exc)
        if isinstance(error, PermissionDeniedError):
            return error
        return CacheUnavailableError(f"cannot reach Redis at {where}: {exc}")
    hint = ""
    if "Cluster mode is not enabled" in text:
        # What redis-py reports when CLUSTER SLOTS is refused, too.
        hint = " (an ACL user also needs +cluster|slots and +command: see docs/security.md)"
    return CacheUnavailableError(f"cannot connect to Redis Cluster at {where}: {exc}{hint}")


def _safe(url: str) -> str:
    """Never log a password."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.split('@', 1)[1]}"
