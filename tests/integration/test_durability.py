"""Durability and rollback detection on real redis-servers (standalone, a 3-primary
cluster, and a primary + replica replicating through a proxy that can stall the link):
the EachPrimary step, witnesses, WAIT, fencing after a failover to a lagging replica or
a restart that lost the data, and invalidations at full memory (noeviction)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
import structlog
from prometheus_client import REGISTRY
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import OutOfMemoryError
from redis.retry import Retry

from cachebus.commands import Call, EachPrimary
from cachebus.errors import ConfigError, DurabilityError, RedisFullError
from cachebus.invalidation import AsyncInvalidator, Invalidator
from cachebus.keys import KeyScheme, Tag
from cachebus.tags import DocumentInvalidation
from consistency.servers import ReplicatedRedis, TcpProxy
from devtools.redis_servers import RedisServer
from devtools.stack import document_event
from worker.applier import Applier
from worker.audit import SourceRecord
from worker.processor import Processor
from worker.rules import load_rules
from worker.settings import WorkerSettings
from worker.web import HealthState, start_web

pytestmark = pytest.mark.redis

S = WorkerSettings(prefix="cb")  # the library APIs and the worker's Processor
KEYS = KeyScheme("cb")
RULES = load_rules(None)


def primaries(client: Any) -> dict[str, Any]:
    """node name -> a plain redis.Redis on that primary (one entry for standalone)."""
    if isinstance(client, redis.cluster.RedisCluster):
        return {n.name: client.get_redis_connection(n) for n in client.get_primaries()}
    return {"standalone": client}


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


async def until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


# --------------------------------------------------------------------------- EachPrimary


def test_each_primary_one_pipeline_per_primary(any_redis: Any) -> None:
    inv = Invalidator(any_redis, settings=S)

    def program() -> Any:
        replies = yield EachPrimary(
            lambda tag: [
                Call.of("CLIENT", "ID"),
                Call.of("SET", f"cb:probe:{{{tag}}}", tag),
                Call.of("CLIENT", "ID"),
            ]
        )
        return replies

    replies = inv.run(program())
    assert len(replies) == len(primaries(any_redis))
    for id1, ok, id2 in replies.values():
        assert id1 == id2 and ok  # one connection for the whole pipeline
    if isinstance(any_redis, redis.cluster.RedisCluster):
        assert sorted(replies) == sorted(replies, key=int)
        names = set()
        for tag in replies:
            node = any_redis.nodes_manager.get_node_from_slot(key_slot(tag.encode()))
            names.add(node.name)
            assert inv.primary_address(tag) == node.name
            # the smallest integer string this primary owns
            owner = any_redis.nodes_manager.get_node_from_slot
            assert all(owner(key_slot(str(i).encode())).name != node.name for i in range(int(tag)))
            assert any_redis.get_redis_connection(node).get(f"cb:probe:{{{tag}}}") == tag.encode()
        assert names == {n.name for n in any_redis.get_primaries()}
    else:
        assert list(replies) == ["0"] and any_redis.get("cb:probe:{0}") == b"0"


async def test_each_primary_async(any_async_redis: Any) -> None:
    inv = AsyncInvalidator(any_async_redis, settings=S)

    def program() -> Any:
        replies = yield EachPrimary(
            lambda tag: [
                Call.of("CLIENT", "ID"),
                Call.of("INCR", KEYS.witness(tag)),
                Call.of("CLIENT", "ID"),
            ]
        )
        return replies

    replies = await inv.run(program())
    expected = 3 if isinstance(any_async_redis, redis.asyncio.cluster.RedisCluster) else 1
    assert len(replies) == expected
    assert all(r[0] == r[2] and r[1] == 1 for r in replies.values())


# --------------------------------------------------------------------------- witnesses


def test_witness_raised_on_every_primary(any_redis: Any) -> None:
    inv = Invalidator(any_redis, settings=S)
    inv.invalidate(tags=[Tag.user("a")])
    inv.invalidate_documents(["d"], deleted=True)
    inv.bump(collections=["kb"])
    inv.scan_delete("cb:legacy:*")
    seen = inv.fence.seen()
    assert set(seen.values()) == {4}
    nodes = primaries(any_redis)
    assert len(seen) == len(nodes)
    holders = set()
    for tag in seen:
        if isinstance(any_redis, redis.cluster.RedisCluster):
            node = any_redis.nodes_manager.get_node_from_slot(key_slot(tag.encode()))
            holders.add(node.name)
            direct = nodes[node.name]
        else:
            direct = any_redis
        assert direct.get(KEYS.witness(tag)) == b"4"  # on its own primary
        assert direct.ttl(KEYS.witness(tag)) == -1  # no TTL
    if isinstance(any_redis, redis.cluster.RedisCluster):
        assert holders == set(nodes)
    report = inv.check_fence()  # reads only
    assert report.witnesses == seen and not report.fences
    assert inv.invalidate(tags=[Tag.user("a")], confirm=False).seq
    assert inv.fence.seen() == seen


async def test_applier_confirms_once_per_batch(any_async_redis: Any) -> None:
    from worker.events import parse_event
    from worker.planner import plan

    applier = Applier(any_async_redis, S)
    events = [
        parse_event(json.dumps(document_event("updated", "doc", v)).encode(), max_bytes=1 << 20)
        for v in (1, 2, 3)
    ]
    results = await applier.apply([(e, plan(e, RULES, KEYS)) for e in events])  # 3 rounds
    assert [r.outcome for r in results] == ["applied"] * 3
    assert set(applier.invalidator.fence.seen().values()) == {1}


# --------------------------------------------------------------------------- replication


@pytest.fixture
def replicated() -> Iterator[ReplicatedRedis]:
    with ReplicatedRedis() as pair:
        yield pair


def test_proxy_stalls_and_resumes(redis_server: RedisServer) -> None:
    with TcpProxy(redis_server.host, redis_server.port) as proxy:
        client = redis.Redis(port=proxy.port, socket_timeout=0.3, retry=Retry(NoBackoff(), 0))
        assert client.ping()
        proxy.stall()
        with pytest.raises(redis.exceptions.TimeoutError):
            client.ping()
        proxy.resume()
        client.connection_pool.disconnect()
        assert client.ping()
        client.close()


def test_wait_for_a_replica(replicated: ReplicatedRedis) -> None:
    client = replicated.client()
    durable = S.with_(durability_replicas=1, durability_timeout_ms=300)
    inv = Invalidator(client, settings=durable)
    inv.invalidate(tags=[Tag.user("a")])
    assert inv.confirm().replicas == {"0": 1}

    replicated.stall_replication()
    started = time.monotonic()
    with pytest.raises(DurabilityError, match="0 of 1 replicas") as err:
        inv.invalidate(tags=[Tag.user("a")])
    assert err.value.retriable and 0.25 < time.monotonic() - started < 2
    # Not durable, but applied on the primary: the retry after the link is back succeeds.
    replicated.resume_replication()
    inv.invalidate(tags=[Tag.user("a")])
    replicated.wait_synced()
    assert replicated.replica_client().get(KEYS.witness("0")) == client.get(KEYS.witness("0"))
    client.close()


async def test_wait_for_a_replica_async(replicated: ReplicatedRedis) -> None:
    client = redis.asyncio.Redis.from_url(replicated.url)
    inv = AsyncInvalidator(
        client, settings=S.with_(durability_replicas=1, durability_timeout_ms=200)
    )
    assert (await inv.invalidate_documents(["d"])).seq
    replicated.stall_replication()
    with pytest.raises(DurabilityError):
        await inv.bump(collections=["kb"])
    replicated.resume_replication()
    await inv.bump(collections=["kb"])
    await client.aclose()


def test_failover_to_a_lagging_replica_fences(
    replicated: ReplicatedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    client = replicated.client()
    client.set(KEYS.epoch(), "before")
    inv = Invalidator(client, settings=S)  # durability off
    inv.invalidate(tags=[Tag.user("a")])
    replicated.wait_synced()
    replicated.stall_replication()
    for _ in range(3):  # acknowledged by the primary only
        inv.invalidate_documents(["d"])
    assert inv.fence.seen() == {"0": 4}

    url = replicated.failover()
    promoted = redis.Redis.from_url(url)
    assert promoted.get(KEYS.witness("0")) == b"1"  # the replica never got the rest
    after = Invalidator(promoted, settings=S, fence=inv.fence)  # same process memory
    with caplog.at_level(logging.ERROR, "cachebus.durability"):
        report = after.check_fence()
    (event,) = report.fences
    assert event.found == 1 and event.remembered == 4 and event.epoch_written
    assert event.primary == url.removeprefix("redis://").removesuffix("/0")
    epoch = promoted.get(KEYS.epoch())
    assert epoch not in (None, b"before") and len(epoch) == 8
    assert inv.fence.fences == 1 and inv.fence.last_fence == event
    (line,) = [r.getMessage() for r in caplog.records]
    assert event.primary in line and f"cachebus replay --from-time {event.replay_from}" in line
    # The fence is done once: further checks and invalidations see the new baseline.
    assert not after.check_fence().fences
    assert after.invalidate(tags=[Tag.user("a")]).seq != 0
    assert promoted.get(KEYS.epoch()) == epoch and inv.fence.fences == 1
    promoted.close()
    client.close()


def test_failover_detected_by_the_next_invalidation(replicated: ReplicatedRedis) -> None:
    """No periodic check needed: the INCR of the next invalidation finds the witness low."""
    inv = Invalidator(replicated.client(), settings=S)
    inv.invalidate(tags=[Tag.user("a")])
    replicated.wait_synced()
    replicated.stall_replication()
    inv.invalidate(tags=[Tag.user("a")])
    inv.invalidate(tags=[Tag.user("a")])
    promoted = redis.Redis.from_url(replicated.failover())
    after = Invalidator(promoted, settings=S, fence=inv.fence)
    after.invalidate(tags=[Tag.user("b")])
    assert inv.fence.fences == 1 and inv.fence.last_fence is not None
    assert inv.fence.last_fence.found == 2 and inv.fence.last_fence.remembered == 3
    promoted.close()


def test_restart_without_persistence_fences() -> None:
    with RedisServer(use_env=False) as server:
        client = server.client()
        inv = Invalidator(client, settings=S)
        inv.invalidate(tags=[Tag.user("a")])
        server.restart()  # empty again
        report = inv.check_fence()
        assert [f.found for f in report.fences] == [None]
        assert client.get(KEYS.epoch()) is not None
        client.close()


def test_fsync_needs_waitaof(redis_client: Any) -> None:
    version = redis_client.info("server")["redis_version"]
    inv = Invalidator(
        redis_client, settings=S.with_(durability_fsync=True, durability_timeout_ms=200)
    )
    # Before 7.2 the server has no WAITAOF; from 7.2 on it has, but refuses it with
    # appendonly off (as here): a clear ConfigError either way, never a silent success.
    has_waitaof = tuple(int(x) for x in version.split(".")[:2]) >= (7, 2)
    expected = "appendonly yes" if has_waitaof else f"runs Redis {version}"
    with pytest.raises(ConfigError, match=expected):
        inv.invalidate(tags=[Tag.user("a")])


# --------------------------------------------------------------------------- full memory


def fill(client: redis.Redis) -> int:
    """Write filler keys until Redis (noeviction) refuses even a small write, then pin
    maxmemory a little below the memory used, so that the few bytes an UNLINK frees do
    not let writes through again (what a busy full server looks like)."""
    n = 0
    while True:
        pipe = client.pipeline(transaction=False)
        for _ in range(500):
            pipe.set(f"fill:{n}", b"x" * 200)
            n += 1
        if any(isinstance(r, OutOfMemoryError) for r in pipe.execute(raise_on_error=False)):
            break
    for _ in range(5000):  # the big pipeline's buffers are freed now: top up singly
        try:
            client.set(f"fill:{n}", b"x" * 64)
            n += 1
        except OutOfMemoryError:
            used = int(client.info("memory")["used_memory"])
            client.config_set("maxmemory", str(used - 64 * 1024))
            return n
    raise AssertionError("Redis never refused a write")


@pytest.fixture
def full_server() -> Iterator[RedisServer]:
    with RedisServer(
        use_env=False, extra_config=["maxmemory 2mb", "maxmemory-policy noeviction"]
    ) as server:
        yield server


def control_state(client: redis.Redis, inv: Invalidator) -> list[str]:
    """Stamps, a generation and a document's embeddings; returns their keys."""
    inv.invalidate(tags=[Tag.user("t")], documents=[DocumentInvalidation("d", drop="none")])
    inv.bump(collections=["kb"])
    client.hset(KEYS.document_embeddings("d"), "m.1:c1", b"v")
    keys = [
        KEYS.stamp(Tag.user("t")),
        KEYS.stamp(Tag.doc("d")),
        KEYS.document_embeddings("d"),
        KEYS.generation("sr.kb"),
    ]
    assert client.exists(*keys) == 4
    return keys


def test_redis_full_unlinks_control_keys(full_server: RedisServer) -> None:
    client = full_server.client()
    inv = Invalidator(client, settings=S)
    keys = control_state(client, inv)
    fill(client)
    with pytest.raises(OutOfMemoryError):
        client.incr("probe")

    with pytest.raises(RedisFullError, match="OOM") as err:
        inv.invalidate(tags=[Tag.user("t")], documents=[DocumentInvalidation("d")], bump=["sr.kb"])
    assert err.value.retriable
    assert client.exists(*keys) == 0  # invalidated the only way Redis allows
    assert client.exists(KEYS.stamp(Tag.user("other"))) == 0
    with pytest.raises(RedisFullError):
        inv.confirm()
    with pytest.raises(RedisFullError):
        inv.bump(models=[("m", "1")])

    client.config_set("maxmemory", "64mb")  # memory frees
    report = inv.invalidate(tags=[Tag.user("t")], documents=[DocumentInvalidation("d")])
    assert report.seq > 0 and client.exists(KEYS.stamp(Tag.user("t")))
    client.close()


def test_fence_under_full_memory_unlinks_the_epoch(full_server: RedisServer) -> None:
    client = full_server.client()
    inv = Invalidator(client, settings=S)
    inv.invalidate(tags=[Tag.user("t")])
    client.set(KEYS.epoch(), "before")
    client.set(KEYS.witness("0"), 0)  # the witness went back
    fill(client)
    with pytest.raises(RedisFullError):
        inv.check_fence()
    assert client.get(KEYS.epoch()) is None  # a missing epoch is a fence too
    event = inv.fence.last_fence
    assert event is not None and not event.epoch_written and inv.fence.fences == 1
    client.close()


def records(*events: dict[str, Any]) -> list[SourceRecord]:
    return [
        SourceRecord("events", 0, i, None, e["doc_id"].encode(), json.dumps(e).encode())
        for i, e in enumerate(events)
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def get_health(port: int) -> tuple[int, dict[str, Any]]:
    def fetch() -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    return await asyncio.to_thread(fetch)


async def test_worker_waits_while_redis_is_full(full_server: RedisServer) -> None:
    sync = full_server.client()
    client = redis.asyncio.Redis.from_url(full_server.url)
    health = HealthState()
    proc = Processor(Applier(client, S), S, RULES, worker_id="w", health=health)
    await proc.process(records(document_event("updated", "warm", 1)))  # scripts loaded
    fill(sync)
    full_before = sample("cachebus_redis_full_total")
    port = free_port()

    async def ping() -> bool:
        return bool(await client.ping())

    web = await start_web(port, health, ping)
    try:
        with structlog.testing.capture_logs() as logs:
            task = asyncio.create_task(proc.process(records(document_event("deleted", "gone", 2))))
            await until(lambda: sample("cachebus_redis_full_total") - full_before >= 4)
            assert not task.done()  # nothing audited, nothing acked
            status, body = await get_health(port)
            assert status == 503 and body["redis_full"] is True and body["status"] == "degraded"
            assert sync.exists(KEYS.stamp(Tag.doc("gone"))) == 0
            sync.config_set("maxmemory", "64mb")
            out = await asyncio.wait_for(task, 10)
        assert out.outcomes == {"applied": 1}
        errors = [e for e in logs if e["log_level"] == "error"]
        assert len(errors) == 1 and "redis is full" in errors[0]["event"]  # not one per retry
        status, body = await get_health(port)
        assert status == 200 and body["redis_full"] is False
        assert int(sync.get(KEYS.stamp(Tag.doc("gone")))) == 10**18  # tombstoned
    finally:
        await web.cleanup()
        await client.aclose()
        sync.close()


async def test_worker_retries_until_durable(replicated: ReplicatedRedis) -> None:
    settings = S.with_(durability_replicas=1, durability_timeout_ms=100)
    client = redis.asyncio.Redis.from_url(replicated.url)
    health = HealthState()
    proc = Processor(Applier(client, settings), settings, RULES, worker_id="w", health=health)
    before = sample("cachebus_durability_shortfalls_total")
    replicated.stall_replication()
    task = asyncio.create_task(proc.process(records(document_event("updated", "d", 1))))
    await until(lambda: sample("cachebus_durability_shortfalls_total") - before >= 2)
    assert not task.done() and health.durability_shortfall is not None and not health.ok
    replicated.resume_replication()
    out = await asyncio.wait_for(task, 10)
    assert out.outcomes == {"applied": 1} and health.ok
    await client.aclose()


async def test_worker_periodic_check_fences() -> None:
    with RedisServer(use_env=False) as server:
        client = redis.asyncio.Redis.from_url(server.url)
        health = HealthState()
        proc = Processor(Applier(client, S), S, RULES, worker_id="w", health=health)
        await proc.process(records(document_event("updated", "d", 1)))
        fences = sample("cachebus_fences_total")
        await proc.check_fence()
        assert health.last_fence is None
        server.restart()
        for _ in range(3):  # the first call may meet the connection the restart closed
            await proc.check_fence()
        assert sample("cachebus_fences_total") == fences + 1
        assert health.last_fence is not None and health.last_fence["found"] is None
        assert health.last_fence["replay_command"].startswith("cachebus replay --from-time ")
        await proc.check_fence()  # once
        assert sample("cachebus_fences_total") == fences + 1
        await client.aclose()


def test_unconfirmed_invalidations_lost_in_failover_do_not_fence(
    replicated: ReplicatedRedis,
) -> None:
    """With durability on, a witness the replica never confirmed is not remembered:
    losing it loses nothing acknowledged (the invalidation raised DurabilityError and
    is retried), so the failover costs no fence and the cache stays warm."""
    durable = S.with_(durability_replicas=1, durability_timeout_ms=200)
    client = replicated.client()
    inv = Invalidator(client, settings=durable)
    inv.invalidate(tags=[Tag.user("a")])  # confirmed by the replica
    confirmed = inv.fence.seen()
    replicated.wait_synced()
    epoch = client.get(KEYS.epoch())
    replicated.stall_replication()
    with pytest.raises(DurabilityError):
        inv.invalidate_documents(["d"])
    assert inv.fence.seen() == confirmed  # the unconfirmed witness is not remembered
    promoted = redis.Redis.from_url(replicated.failover())
    after = Invalidator(promoted, settings=S, fence=inv.fence)
    assert not after.check_fence().fences
    assert promoted.get(KEYS.epoch()) == epoch
    promoted.close()
    client.close()
