"""Integration tests for devtools.redis_servers: real redis-server processes, no mocks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.backoff import NoBackoff
from redis.retry import Retry

from devtools import redis_cluster as cluster_module
from devtools import redis_servers, redis_support
from devtools.redis_servers import (
    CLUSTER_BUS_PORT_OFFSET,
    RedisClusterServers,
    RedisServer,
    find_redis_cli,
    find_redis_server,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

# Every test here runs real redis-server processes.
pytestmark = pytest.mark.redis


def _no_retry() -> Retry:
    # redis-py >= 6 retries timeouts by default; these tests want the first failure.
    return Retry(NoBackoff(), 0)


# --------------------------------------------------------------------------- binaries


def test_find_binaries() -> None:
    assert os.access(find_redis_server(), os.X_OK)
    assert os.access(find_redis_cli(), os.X_OK)


def test_find_redis_server_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    real = find_redis_server()
    monkeypatch.setenv(redis_servers.ENV_REDIS_SERVER_BIN, real)
    assert find_redis_server() == real
    monkeypatch.setenv(redis_servers.ENV_REDIS_SERVER_BIN, "/nonexistent/redis-server")
    with pytest.raises(RuntimeError, match=r"redis-server not found.*apt-get install -y"):
        find_redis_server()


def test_find_redis_server_missing_from_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(redis_servers.ENV_REDIS_SERVER_BIN, raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(RuntimeError) as info:
        find_redis_server()
    assert str(info.value) == (
        "redis-server not found; install it with `apt-get install -y redis-server` "
        "(or `make setup`)"
    )


# --------------------------------------------------------------------------- standalone


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    """A private server per test (these tests restart/kill it), ignoring the env URL."""
    with RedisServer(use_env=False) as server:
        yield server


def test_server_start_time() -> None:
    t0 = time.monotonic()
    with RedisServer(use_env=False) as server:
        elapsed = time.monotonic() - t0
        assert server.running
    # Typically a few tens of ms; the bound only catches pathological regressions.
    assert elapsed < 5


def test_server_set_get(own_server: RedisServer) -> None:
    assert own_server.host == "127.0.0.1"
    assert own_server.url == f"redis://127.0.0.1:{own_server.port}/0"
    client = own_server.client()
    try:
        assert client.set(b"k", b"v")
        assert client.get(b"k") == b"v"
        # Persistence must be off, or restart() would not simulate "restarted empty".
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}
    finally:
        client.close()


def test_restart_loses_data_same_port(own_server: RedisServer) -> None:
    port, pid = own_server.port, own_server.pid
    client = own_server.client()
    try:
        client.set(b"k", b"v")
        own_server.restart()
        assert own_server.port == port
        assert own_server.pid != pid
        # The same client object reconnects to the same port and finds nothing.
        assert client.get(b"k") is None
        assert client.dbsize() == 0
        client.set(b"k2", b"v2")
        assert client.get(b"k2") == b"v2"
    finally:
        client.close()


def test_kill_then_start_same_port(own_server: RedisServer) -> None:
    port = own_server.port
    own_server.kill()
    assert not own_server.running
    probe = own_server.client(retry=_no_retry(), socket_connect_timeout=0.5)
    try:
        with pytest.raises(redis.ConnectionError):
            probe.ping()
        own_server.start()
        assert own_server.port == port
        assert probe.ping()
    finally:
        probe.close()


def test_suspend_makes_clients_time_out_then_resume_recovers(own_server: RedisServer) -> None:
    client = own_server.client(socket_timeout=0.5, retry=_no_retry())
    try:
        client.set(b"k", b"v")
        own_server.suspend()
        try:
            t0 = time.monotonic()
            with pytest.raises(redis.TimeoutError):
                client.get(b"k")
            assert 0.4 < time.monotonic() - t0 < 3
        finally:
            own_server.resume()
        assert client.get(b"k") == b"v"
    finally:
        client.close()


def test_stop_while_suspended_is_quick(own_server: RedisServer) -> None:
    own_server.suspend()
    t0 = time.monotonic()
    own_server.stop()
    assert time.monotonic() - t0 < 3  # SIGCONT first, so SIGTERM is acted on at once
    assert not own_server.running


def test_stop_cleans_up_and_is_idempotent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(redis_servers.ENV_TEST_REDIS_URL, raising=False)
    with RedisServer() as server:
        pid = server.pid
        directory = server.directory
        assert pid is not None and directory is not None and directory.is_dir()
    assert not directory.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    server.stop()


def test_extra_config_requirepass() -> None:
    # The PING readiness probe must treat -NOAUTH as "up".
    with RedisServer(extra_config=["requirepass s3cret"], use_env=False) as server:
        anon = server.client(retry=_no_retry())
        authed = server.client(password="s3cret")
        try:
            with pytest.raises(redis.AuthenticationError):
                anon.ping()
            assert authed.ping()
        finally:
            anon.close()
            authed.close()


def test_startup_failure_raises_with_log_tail() -> None:
    server = RedisServer(extra_config=["this-is-not-a-directive yes"], use_env=False)
    with pytest.raises(RuntimeError, match=r"(?s)exited with code.*this-is-not-a-directive"):
        server.start()
    assert server.directory is None  # cleaned up after the failure
    assert not server.running


def test_external_url_from_env(monkeypatch: pytest.MonkeyPatch, own_server: RedisServer) -> None:
    monkeypatch.setenv(redis_servers.ENV_TEST_REDIS_URL, own_server.url)
    external = RedisServer()
    assert external.external
    with external:
        assert external.url == own_server.url
        assert external.port == own_server.port
        assert external.pid is None
        client = external.client()
        try:
            assert client.ping()
        finally:
            client.close()
        with pytest.raises(RuntimeError, match="external"):
            external.restart()
    assert own_server.running  # stop() on the external wrapper touched nothing


async def test_async_client(own_server: RedisServer) -> None:
    client = own_server.async_client()
    try:
        await client.set(b"ak", b"av")
        assert await client.get(b"ak") == b"av"
    finally:
        await client.aclose()


def test_cli_redis() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop(redis_servers.ENV_TEST_REDIS_URL, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "devtools.redis_servers", "redis"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("REDIS_URL=redis://127.0.0.1:"), line
        client = redis.Redis.from_url(line.removeprefix("REDIS_URL="))
        try:
            assert client.ping()
        finally:
            client.close()
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


# --------------------------------------------------------------------------- cluster


def test_free_cluster_ports_leave_room_for_bus() -> None:
    ports = redis_support._free_cluster_ports(6)
    assert len(set(ports)) == 6
    buses = {p + CLUSTER_BUS_PORT_OFFSET for p in ports}
    assert all(b <= 65535 for b in buses)
    assert not buses & set(ports)


def test_cluster_topology(redis_cluster: RedisClusterServers) -> None:
    assert len(redis_cluster.servers) == 3
    assert redis_cluster.url == f"redis://127.0.0.1:{redis_cluster.ports[0]}/0"
    assert [(n.host, n.port) for n in redis_cluster.startup_nodes] == [
        ("127.0.0.1", p) for p in redis_cluster.ports
    ]
    for port in redis_cluster.ports:
        info = cluster_module._cluster_info("127.0.0.1", port)
        assert info["cluster_state"] == "ok"
        assert info["cluster_slots_ok"] == "16384"
        assert info["cluster_known_nodes"] == "3"
        assert info["cluster_size"] == "3"  # 3 primaries serving slots

    node = redis.Redis(port=redis_cluster.ports[0])
    try:
        ranges = node.cluster("SLOTS")
    finally:
        node.close()
    covered = sum(int(r[1]) - int(r[0]) + 1 for r in ranges)
    assert covered == 16384


def test_cluster_client_set_get_spread(cluster_client: redis.cluster.RedisCluster) -> None:
    primaries = cluster_client.get_primaries()
    assert len(primaries) == 3
    keys = [f"key:{i}".encode() for i in range(100)]
    for i, key in enumerate(keys):
        assert cluster_client.set(key, str(i).encode())
    for i, key in enumerate(keys):
        assert cluster_client.get(key) == str(i).encode()
    slots = {cluster_client.keyslot(k) for k in keys}
    assert len(slots) > 90
    owners = {cluster_client.get_node_from_key(k).name for k in keys}
    assert owners == {n.name for n in primaries}  # keys really land on every primary
    per_node = cluster_client.dbsize(target_nodes=redis.cluster.RedisCluster.PRIMARIES)
    assert per_node == 100  # dbsize over primaries is summed


def test_cluster_client_fixture_flushes(cluster_client: redis.cluster.RedisCluster) -> None:
    # Runs after the test above on the same session cluster: nothing may be left over.
    assert cluster_client.dbsize(target_nodes=redis.cluster.RedisCluster.PRIMARIES) == 0


async def test_async_cluster_client(
    async_cluster_client: redis.asyncio.cluster.RedisCluster,
) -> None:
    for i in range(20):
        await async_cluster_client.set(f"ak:{i}".encode(), b"x")
    assert await async_cluster_client.get(b"ak:7") == b"x"
    assert len(async_cluster_client.get_primaries()) == 3


def test_cluster_from_url(redis_cluster: RedisClusterServers) -> None:
    client = redis.cluster.RedisCluster.from_url(redis_cluster.url)
    try:
        assert client.set(b"u", b"1")
        assert client.get(b"u") == b"1"
    finally:
        client.close()


@pytest.mark.cluster
def test_cluster_start_stop_standalone_object() -> None:
    t0 = time.monotonic()
    with RedisClusterServers(nodes=3) as cluster:
        elapsed = time.monotonic() - t0
        assert elapsed < 20
        pids = [s.pid for s in cluster.servers]
        client = cluster.client()
        try:
            assert len(client.get_primaries()) == 3
        finally:
            client.close()
    for pid in pids:
        assert pid is not None
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


# --------------------------------------------------------------------------- fixtures


def test_redis_client_fixture_is_flushed(redis_client: redis.Redis, prefix: str) -> None:
    assert redis_client.dbsize() == 0
    redis_client.set(f"{prefix}k".encode(), b"v")
    assert prefix.startswith("t") and prefix.endswith(":")


async def test_async_redis_client_fixture(async_redis_client: redis.asyncio.Redis) -> None:
    assert await async_redis_client.dbsize() == 0
    await async_redis_client.set(b"k", b"v")
    assert await async_redis_client.get(b"k") == b"v"


def test_any_redis(any_redis: redis.Redis | redis.cluster.RedisCluster, prefix: str) -> None:
    key = f"{prefix}any".encode()
    assert any_redis.set(key, b"1")
    assert any_redis.get(key) == b"1"


async def test_any_async_redis(
    any_async_redis: redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster, prefix: str
) -> None:
    key = f"{prefix}any".encode()
    assert await any_async_redis.set(key, b"1")
    assert await any_async_redis.get(key) == b"1"
