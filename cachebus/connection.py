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
from redis.exceptions import RedisError

from .errors import CacheUnavailableError
from .runner import AsyncClient, SyncClient, translate
from .settings import Settings

log = logging.getLogger("cachebus")
PING_ATTEMPTS = 5


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
    except RedisError as exc:
        raise translate(exc) from exc
    if ping:
        for attempt in range(1, PING_ATTEMPTS + 1):
            try:
                client.ping()
                break
            except RedisError as exc:
                if attempt == PING_ATTEMPTS:
                    raise CacheUnavailableError(
                        f"cannot reach Redis at {_safe(settings.redis_url)}: {exc}"
                    ) from exc
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
        client = redis.asyncio.Redis.from_url(settings.redis_url, **kwargs)
    if ping:
        for attempt in range(1, PING_ATTEMPTS + 1):
            try:
                await client.ping()
                break
            except RedisError as exc:
                if attempt == PING_ATTEMPTS:
                    raise CacheUnavailableError(
                        f"cannot reach Redis at {_safe(settings.redis_url)}: {exc}"
                    ) from exc
                log.warning("Redis not reachable yet (attempt %d): %s", attempt, exc)
                await asyncio.sleep(0.2 * 2**attempt)
    return client


def _safe(url: str) -> str:
    """Never log a password."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.split('@', 1)[1]}"
