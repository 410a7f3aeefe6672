"""Shared pytest fixtures: real, ephemeral Redis servers from :mod:`devtools.redis_servers`.

* ``redis_server`` / ``redis_cluster`` (session): started lazily, the first time a test
  asks for them, and stopped at the end of the run.  If one cannot start the requesting
  tests FAIL -- they are never skipped, so a missing redis-server cannot turn CI green.
* ``redis_client`` / ``async_redis_client`` / ``cluster_client`` / ``async_cluster_client``
  (function): fresh clients on a server flushed before the test.  Flushing is fine here
  because these are throw-away test servers (library code never flushes).
* ``any_redis`` / ``any_async_redis``: parametrized over ``standalone`` and ``cluster`` so
  layer tests run against both topologies; the unused topology is never started.
* ``prefix``: a unique key prefix per test, for tests that prefer isolation by key space.

Tests using these fixtures get the ``redis`` / ``cluster`` markers automatically, so
``-m "not cluster"`` deselects everything that needs a cluster.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import cast

import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

from devtools.kafka_broker import LocalKafka
from devtools.redis_servers import RedisClusterServers, RedisServer
from devtools.stack import LocalStack
from worker.settings import WorkerSettings

_STANDALONE_FIXTURES = frozenset({"redis_server", "redis_client", "async_redis_client"})
_CLUSTER_FIXTURES = frozenset({"redis_cluster", "cluster_client", "async_cluster_client"})

_TOPOLOGIES = [
    pytest.param("standalone", marks=pytest.mark.redis, id="standalone"),
    pytest.param("cluster", marks=pytest.mark.cluster, id="cluster"),
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests by the servers their fixtures need (``-m redis`` / ``-m cluster``)."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & _STANDALONE_FIXTURES:
            item.add_marker(pytest.mark.redis)
        if names & _CLUSTER_FIXTURES:
            item.add_marker(pytest.mark.cluster)
        if names & {"kafka_broker", "stack", "cluster_stack"}:
            item.add_marker(pytest.mark.kafka)
            item.add_marker(pytest.mark.redis)
        if "cluster_stack" in names:
            item.add_marker(pytest.mark.cluster)


# --------------------------------------------------------------------------- servers


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One ephemeral redis-server for the whole session (or $CACHEBUS_TEST_REDIS_URL)."""
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServers]:
    """One ephemeral 3-primary Redis Cluster for the whole session."""
    with RedisClusterServers(nodes=3) as cluster:
        yield cluster


@pytest.fixture
def prefix() -> str:
    """A unique key prefix for this test, e.g. ``"t1a2b3c4d:"``."""
    return f"t{uuid.uuid4().hex[:8]}:"


# --------------------------------------------------------------------------- standalone


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """Sync client (bytes responses) on a freshly flushed test server."""
    client = redis_server.client(decode_responses=False)
    try:
        client.flushall()
        yield client
    finally:
        client.close()


@pytest.fixture
async def async_redis_client(redis_server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    """Async client (bytes responses) on a freshly flushed test server."""
    client = redis_server.async_client(decode_responses=False)
    try:
        await client.flushall()
        yield client
    finally:
        await client.aclose()


# --------------------------------------------------------------------------- cluster


@pytest.fixture
def cluster_client(redis_cluster: RedisClusterServers) -> Iterator[redis.cluster.RedisCluster]:
    """Sync cluster client (bytes responses); every primary flushed first."""
    client = redis_cluster.client(decode_responses=False)
    try:
        client.flushall(target_nodes=redis.cluster.RedisCluster.PRIMARIES)
        yield client
    finally:
        client.close()


@pytest.fixture
async def async_cluster_client(
    redis_cluster: RedisClusterServers,
) -> AsyncIterator[redis.asyncio.cluster.RedisCluster]:
    """Async cluster client (bytes responses); every primary flushed first."""
    client = redis_cluster.async_client(decode_responses=False)
    try:
        await client.flushall(target_nodes=redis.asyncio.cluster.RedisCluster.PRIMARIES)
        yield client
    finally:
        await client.aclose()


# --------------------------------------------------------------------------- either


@pytest.fixture(params=_TOPOLOGIES)
def any_redis(request: pytest.FixtureRequest) -> redis.Redis | redis.cluster.RedisCluster:
    """Sync client of either topology (``redis.Redis`` or ``RedisCluster``), flushed.

    getfixturevalue() keeps the other topology's servers from being started at all.
    """
    name = "redis_client" if request.param == "standalone" else "cluster_client"
    return cast("redis.Redis | redis.cluster.RedisCluster", request.getfixturevalue(name))


@pytest.fixture(params=_TOPOLOGIES)
def any_async_redis(
    request: pytest.FixtureRequest,
) -> redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster:
    """Async client of either topology (``redis.asyncio.Redis`` or its ``RedisCluster``)."""
    name = "async_redis_client" if request.param == "standalone" else "async_cluster_client"
    return cast(
        "redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster", request.getfixturevalue(name)
    )


# --------------------------------------------------------------------------- kafka + stack


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[LocalKafka]:
    """One real Apache Kafka broker (KRaft) for the session; a start failure is an error."""
    broker = LocalKafka()
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def stack(
    redis_server: RedisServer, kafka_broker: LocalKafka, tmp_path: Path
) -> Iterator[LocalStack]:
    """Redis + Kafka with topics, consumer group and key prefix unique to this test.

    The test server is flushed first (test servers only; library code never flushes).
    """
    uid = uuid.uuid4().hex[:8]
    settings = WorkerSettings(
        prefix=f"e{uid}",
        events_topic=f"events-{uid}",
        audit_topic=f"audit-{uid}",
        dlq_topic=f"dlq-{uid}",
        consumer_group=f"group-{uid}",
        batch_wait_ms=10,
    )
    client = redis_server.client()
    client.flushall()
    client.close()
    with LocalStack(
        redis=redis_server, kafka=kafka_broker, settings=settings, log_dir=tmp_path
    ) as local:
        yield local
        assert not local.agent_crashes(), local.agent_crashes()


@pytest.fixture
def cluster_stack(
    redis_cluster: RedisClusterServers, kafka_broker: LocalKafka, tmp_path: Path
) -> Iterator[LocalStack]:
    """Like ``stack``, with the 3-primary Redis Cluster as the cache."""
    uid = uuid.uuid4().hex[:8]
    settings = WorkerSettings(
        prefix=f"e{uid}",
        events_topic=f"events-{uid}",
        audit_topic=f"audit-{uid}",
        dlq_topic=f"dlq-{uid}",
        consumer_group=f"group-{uid}",
        batch_wait_ms=10,
    )
    client = redis_cluster.client()
    client.flushall(target_nodes=redis.cluster.RedisCluster.PRIMARIES)
    client.close()
    with LocalStack(
        redis=redis_cluster, kafka=kafka_broker, settings=settings, log_dir=tmp_path
    ) as local:
        yield local
        assert not local.agent_crashes(), local.agent_crashes()


@pytest.fixture(params=["standalone", "cluster"])
def any_stack(request: pytest.FixtureRequest) -> LocalStack:
    """The whole stack with a standalone Redis or the 3-primary Redis Cluster."""
    name = "stack" if request.param == "standalone" else "cluster_stack"
    stack: LocalStack = request.getfixturevalue(name)
    return stack
