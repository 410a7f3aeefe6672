"""Whatever client a CacheBus is given, a frozen Redis (SIGSTOP) costs each cache call
at most about ``CACHEBUS_REDIS_TIMEOUT``, and the call fails open (real servers)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

from cachebus import AsyncCacheBus, CacheBus, HashingEmbedder, Settings
from cachebus.timeouts import bound_client
from devtools.redis_servers import RedisClusterServers, RedisServer

TIMEOUT = 1.0
SLACK = 6.0
"""Scheduling noise on a shared, loaded 2-core machine. Unbounded, redis-py's defaults
take about 60 s per call (10 retries of 5 s with backoff), older versions forever."""


def eventually(check: Callable[[], bool], attempts: int = 10) -> bool:
    """Redis answers again: a bounded call may still time out once on a loaded box."""
    for _ in range(attempts):
        if check():
            return True
        time.sleep(0.2)
    return False


async def aeventually(check: Callable[[], Any], attempts: int = 10) -> bool:
    for _ in range(attempts):
        if await check():
            return True
        await asyncio.sleep(0.2)
    return False


@pytest.fixture(scope="module")
def own_server() -> Iterator[RedisServer]:
    """A server of this module's own: it gets frozen."""
    with RedisServer(use_env=False) as server:
        yield server


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[RedisClusterServers]:
    with RedisClusterServers(nodes=3) as cluster:
        yield cluster


def settings(url: str, *, cluster: bool = False) -> Settings:
    return Settings(redis_url=url, redis_cluster=cluster, redis_timeout=TIMEOUT, prefix="to")


class Frozen:
    """SIGSTOP every given server for the block; SIGCONT after, whatever happens."""

    def __init__(self, *servers: RedisServer) -> None:
        self.servers = servers

    def __enter__(self) -> None:
        for server in self.servers:
            server.suspend()

    def __exit__(self, *exc: object) -> None:
        for server in self.servers:
            server.resume()


SYNC_CLIENTS: dict[str, Callable[[RedisServer], redis.Redis]] = {
    # redis-py 8: socket_timeout 5 s and 10 retries with backoff (about a minute)
    "Redis(host, port)": lambda s: redis.Redis(host="127.0.0.1", port=s.port),
    "from_url": lambda s: redis.Redis.from_url(s.url),
    "socket_timeout=None": lambda s: redis.Redis(
        host="127.0.0.1", port=s.port, socket_timeout=None, socket_connect_timeout=None
    ),
    "BlockingConnectionPool": lambda s: redis.Redis(
        connection_pool=redis.BlockingConnectionPool.from_url(s.url, max_connections=4)
    ),
}


@pytest.mark.parametrize("make", list(SYNC_CLIENTS.values()), ids=list(SYNC_CLIENTS))
def test_sync_client_fails_open_within_the_timeout(
    own_server: RedisServer, make: Callable[[RedisServer], redis.Redis]
) -> None:
    """README's CacheBus(redis.Redis(...), settings): a frozen Redis makes embed_batch
    fail open (the embedder is called) within the timeout, each time; the cache works
    again once Redis answers. Connections opened before the bus are bounded too."""
    client = make(own_server)
    client.ping()  # an idle connection that predates the bus
    bus = CacheBus(client, settings(own_server.url))
    service = bus.embedding_service(HashingEmbedder(dim=8))
    service.embed_batch(["warm"])
    try:
        with Frozen(own_server):
            for attempt in range(2):
                started = time.monotonic()
                vectors = service.embed_batch(["warm", f"cold-{attempt}"])
                elapsed = time.monotonic() - started
                assert len(vectors) == 2
                assert elapsed < TIMEOUT + SLACK, f"attempt {attempt}: {elapsed:.2f} s"
            assert service.cache.metrics.errors >= 2
        cache = bus.query_embeddings(service.embedder.model)
        assert eventually(lambda: cache.get("warm") is not None)
    finally:
        client.close()


def test_existing_busy_connection_and_retry_policy_are_bounded(own_server: RedisServer) -> None:
    """What bound_client changes: the pool's kwargs, its connections, the retries."""
    client = redis.Redis(host="127.0.0.1", port=own_server.port)
    client.ping()
    assert client.get_retry() is not None and client.get_retry().get_retries() == 10
    CacheBus(client, settings(own_server.url))
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (TIMEOUT, TIMEOUT)
    retry = client.get_retry()
    assert retry is not None and retry.get_retries() == 0
    conn = client.connection_pool.get_connection()
    try:
        assert conn.socket_timeout == TIMEOUT and conn.retry.get_retries() == 0
    finally:
        client.connection_pool.release(conn)
    client.close()


def test_a_client_within_the_timeout_is_left_alone(
    own_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that already fails fast is not touched, and nothing is logged."""
    no_retry = redis.retry.Retry(redis.backoff.NoBackoff(), 0)
    client = redis.Redis(
        host="127.0.0.1", port=own_server.port, socket_timeout=0.2,
        socket_connect_timeout=0.2, retry=no_retry,
    )
    with caplog.at_level(logging.INFO, logger="cachebus"):
        CacheBus(client, settings(own_server.url))
    assert client.connection_pool.connection_kwargs["socket_timeout"] == 0.2
    assert bound_client(client, TIMEOUT) == []  # nothing to change
    assert not [r for r in caplog.records if "CACHEBUS_REDIS_TIMEOUT" in r.getMessage()]
    client.close()


def test_the_change_is_logged_once(
    own_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = redis.Redis(host="127.0.0.1", port=own_server.port)
    with caplog.at_level(logging.INFO, logger="cachebus"):
        CacheBus(client, settings(own_server.url))
        CacheBus(client, settings(own_server.url))  # already bounded: silent
    lines = [r.getMessage() for r in caplog.records if "CACHEBUS_REDIS_TIMEOUT" in r.getMessage()]
    assert len(lines) == 1
    assert "CACHEBUS_REDIS_TIMEOUT=1 s" in lines[0] and "10 retries" in lines[0]
    client.close()


async def test_async_client_fails_open_within_the_timeout(own_server: RedisServer) -> None:
    client = redis.asyncio.Redis(host="127.0.0.1", port=own_server.port)
    await client.ping()
    bus = AsyncCacheBus(client, settings(own_server.url))
    service = bus.embedding_service(HashingEmbedder(dim=8))
    await service.embed_batch(["warm"])
    try:
        with Frozen(own_server):
            for attempt in range(2):
                started = time.monotonic()
                vectors = await service.embed_batch(["warm", f"cold-{attempt}"])
                elapsed = time.monotonic() - started
                assert len(vectors) == 2
                assert elapsed < TIMEOUT + SLACK, f"attempt {attempt}: {elapsed:.2f} s"
        cache = bus.query_embeddings(service.embedder.model)

        async def warm_is_cached() -> bool:
            return await cache.get("warm") is not None

        assert await aeventually(warm_is_cached)
    finally:
        await client.aclose()


def _cluster_round(service: Any, attempt: int) -> float:
    started = time.monotonic()
    assert len(service.embed_batch(["warm", f"cold-{attempt}"])) == 2
    return time.monotonic() - started


def test_cluster_client_fails_open_within_the_timeout(own_cluster: RedisClusterServers) -> None:
    """RedisCluster's defaults retry 10 times with backoff; bounded, a call on a frozen
    cluster costs one attempt (plus a slot-map refresh, which asks the frozen nodes)."""
    client = redis.cluster.RedisCluster(host="127.0.0.1", port=own_cluster.port)
    bus = CacheBus(client, settings(own_cluster.url, cluster=True))
    service = bus.embedding_service(HashingEmbedder(dim=8))
    service.embed_batch(["warm"])
    try:
        with Frozen(*own_cluster.servers):
            times = [_cluster_round(service, attempt) for attempt in range(2)]
        bound = len(own_cluster.servers) * TIMEOUT + TIMEOUT + SLACK
        assert max(times) < bound, times
        # the cluster answers again: so does the cache (after one slot-map refresh)
        cache = bus.query_embeddings(service.embedder.model)
        assert eventually(lambda: cache.get("warm") is not None)
    finally:
        client.close()


async def test_async_cluster_client_fails_open_within_the_timeout(
    own_cluster: RedisClusterServers,
) -> None:
    client = redis.asyncio.cluster.RedisCluster(host="127.0.0.1", port=own_cluster.port)
    bus = AsyncCacheBus(client, settings(own_cluster.url, cluster=True))
    service = bus.embedding_service(HashingEmbedder(dim=8))
    await service.embed_batch(["warm"])
    try:
        with Frozen(*own_cluster.servers):
            for attempt in range(2):
                started = time.monotonic()
                assert len(await service.embed_batch(["warm", f"cold-{attempt}"])) == 2
                elapsed = time.monotonic() - started
                bound = len(own_cluster.servers) * TIMEOUT + TIMEOUT + SLACK
                assert elapsed < bound, f"attempt {attempt}: {elapsed:.2f} s"
        cache = bus.query_embeddings(service.embedder.model)

        async def warm_is_cached() -> bool:
            return await cache.get("warm") is not None

        assert await aeventually(warm_is_cached)
    finally:
        await client.aclose()
