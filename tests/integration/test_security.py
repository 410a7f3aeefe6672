"""Security on real services (docs/security.md).

* A least-privilege Redis ACL user per role (:mod:`cachebus.acl`), on a standalone
  redis-server whose default user is switched off and on the 3-primary Redis Cluster:
  the library (all four layers, herd leases, tickets, query log, warming, metrics
  flush), the invalidation primitives, ``cachebus stats``, the faust worker and replay
  run as those users, and the server's ACL LOG stays empty. Broad commands (FLUSHALL,
  CONFIG, KEYS...) and keys outside the prefix are refused as PermissionDeniedError.
* Redis AUTH (requirepass) and TLS (``rediss://`` with the CA, and client certificates)
  through ``cachebus.connect``.
* Kafka SASL_PLAINTEXT and SASL_SSL (PLAIN) on a local broker: ``client_config`` for
  aiokafka, and the faust worker end to end.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

from cachebus import (
    AsyncCacheBus,
    AsyncCachedEmbeddingService,
    AsyncQueryLog,
    CacheBus,
    CachedEmbeddingService,
    CachedSearchService,
    CacheUnavailableError,
    ChunkVector,
    DocumentInvalidation,
    HashingEmbedder,
    PermissionDeniedError,
    QueryLog,
    SearchHit,
    Settings,
    Tag,
    connect,
    connect_async,
    warm_documents,
    warm_queries,
)
from cachebus import connection as connection_module
from cachebus.acl import ROLES, acl_file_line, acl_rules
from cachebus.commands import Call
from cachebus.control import read_control_state
from cachebus.keys import KeyScheme
from cachebus.runner import AsyncRunner, SyncRunner
from devtools.kafka_broker import LocalKafka
from devtools.redis_servers import RedisClusterServers, RedisServer
from devtools.stack import LocalStack, by_event_id, document_event
from worker import stats
from worker.cli import _add_common
from worker.commands import acl as acl_cli
from worker.kafka import client_config, ensure_topics
from worker.replay import ReplayOptions, replay
from worker.settings import WorkerSettings

PREFIX = "t"
ADMIN = ("admin", "admin-secret")
USERS = {"worker": "cachebus", "library": "cachebus-lib", "operator": "cachebus-ops"}
PASSWORDS = {"worker": "secret", "library": "lib-secret", "operator": "ops-secret"}
KAFKA_USER, KAFKA_PASSWORD = "cachebus", "kafka-secret"


def _acl_config() -> list[str]:
    """redis.conf lines: an admin for the tests' own setup/asserts, one user per role."""
    lines = [f"user {ADMIN[0]} on >{ADMIN[1]} ~* &* +@all"]
    for role in ROLES:
        rules = acl_rules(PREFIX, password=PASSWORDS[role], role=role)
        lines.append(acl_file_line(USERS[role], rules))
    return lines


def _free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (all held open until every one is picked)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _free_port() -> int:
    (port,) = _free_ports(1)
    return port


# --------------------------------------------------------------------------- Redis targets


@dataclass
class Target:
    """A Redis deployment (standalone or cluster) with the ACL users configured."""

    name: str
    ports: list[int]
    cluster: bool

    def url(self, role: str, scheme: str = "redis") -> str:
        return f"{scheme}://{USERS[role]}:{PASSWORDS[role]}@127.0.0.1:{self.ports[0]}/0"

    def settings(self, role: str, **changes: Any) -> Settings:
        base = Settings(
            redis_url=self.url(role),
            redis_cluster=self.cluster,
            prefix=PREFIX,
            strict=True,  # a refused command must raise, not fail open
            metrics_flush_interval=0.01,  # flush counters on (almost) every call
            lease_wait_ms=3000,
        )
        return base.with_(**changes)

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, username=ADMIN[0], password=ADMIN[1])

    def admin(self) -> redis.Redis | redis.cluster.RedisCluster:
        if self.cluster:
            return redis.cluster.RedisCluster(
                host="127.0.0.1", port=self.ports[0], username=ADMIN[0], password=ADMIN[1]
            )
        return self.node(self.ports[0])

    def reset(self) -> None:
        """Empty every node and its ACL LOG (test servers only)."""
        for port in self.ports:
            node = self.node(port)
            node.flushall()
            node.execute_command("ACL", "LOG", "RESET")
            node.close()

    def denials(self, role: str | None = None) -> list[str]:
        """``user: object (reason)`` of every ACL LOG entry, over all nodes."""
        found = []
        for port in self.ports:
            node = self.node(port)
            for entry in node.acl_log():
                user, obj = _text(entry["username"]), _text(entry["object"])
                if role is None or user == USERS[role]:
                    found.append(f"{user}: {obj} ({_text(entry['reason'])})")
            node.close()
        return found


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@pytest.fixture(scope="module")
def acl_redis() -> Iterator[RedisServer]:
    """A standalone redis-server whose default user is off: only the admin and the
    cachebus users can log in."""
    with RedisServer(use_env=False, extra_config=["user default off", *_acl_config()]) as server:
        yield server


@pytest.fixture(scope="module")
def acl_cluster() -> Iterator[RedisClusterServers]:
    """The 3-primary Redis Cluster with the same users; the default user is switched
    off once ``redis-cli --cluster create`` (which runs without credentials) is done."""
    with RedisClusterServers(nodes=3, extra_config=_acl_config()) as cluster:
        for port in cluster.ports:
            node = redis.Redis(port=port)
            node.execute_command("ACL", "SETUSER", "default", "off")
            node.close()
        yield cluster


def _standalone(server: RedisServer) -> Target:
    return Target("standalone", [server.port], False)


def _cluster(cluster: RedisClusterServers) -> Target:
    return Target("cluster", cluster.ports, True)


@pytest.fixture(params=["standalone", "cluster"])
def target(request: pytest.FixtureRequest) -> Target:
    """Either topology, emptied; the other one is never started."""
    if request.param == "standalone":
        result = _standalone(request.getfixturevalue("acl_redis"))
    else:
        result = _cluster(request.getfixturevalue("acl_cluster"))
    result.reset()
    return result


@pytest.fixture
def standalone(acl_redis: RedisServer) -> Target:
    result = _standalone(acl_redis)
    result.reset()
    return result


def _assert_no_denials(target: Target, role: str | None = None) -> None:
    assert target.denials(role) == [], f"ACL LOG on {target.name}: {target.denials(role)}"


# --------------------------------------------------------------------------- the library


class SlowEmbedder(HashingEmbedder):
    """Counts provider calls; slow enough that concurrent callers meet on a lease."""

    def __init__(self, delay: float = 0.3, fail: bool = False) -> None:
        super().__init__(dim=16)
        self.delay, self.fail, self.calls_seen = delay, fail, 0
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> Any:
        with self._lock:
            self.calls_seen += 1
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("provider down")
        return super().embed(texts)


class OneDocIndex:
    def search(self, collection: str, vector: Any, filters: Any, top_k: int) -> list[SearchHit]:
        return [SearchHit("doc-1", 0.9)]


def _exercise_library(client: Any, settings: Settings) -> None:
    """Every library feature once, on a sync client."""
    bus = CacheBus(client, settings)
    emb = HashingEmbedder(dim=16)
    vec = emb.embed(["v"])[0]

    qe = bus.query_embeddings(emb.model, emb.model_version)
    assert qe.set_many({"a": vec, "b": vec}) == 2
    got = qe.get_many(["a", "b", "missing"])
    assert got[0] is not None and got[2] is None

    de = bus.document_embeddings(emb.model)
    de.set_many("doc-1", [ChunkVector("c0", vec, "h0"), ChunkVector("c1", vec, "h1")])
    assert de.get_many("doc-1", ["c0", "c1"], content_hashes=["h0", "changed"])[1] is None

    sr = bus.search_results("kb")
    lookup = sr.lookup("q", {"lang": "en"}, 5)
    assert lookup.values == [None]
    sr.set("q", [SearchHit("doc-1", 0.9)], {"lang": "en"}, 5, ticket=lookup.ticket)
    assert sr.get("q", {"lang": "en"}, 5) == [SearchHit("doc-1", 0.9)]

    rr = bus.rerank_scores("rr")
    rr.set("q", [("doc-1", 1)], [0.5])
    assert rr.get("q", [("doc-1", 1)]) is not None

    # Herd control: two callers miss the same text at once; one computes (SET NX PX
    # lease), the other waits on the lease and reads its value; the lease is released
    # by script. Then a provider error releases the lease too.
    slow = SlowEmbedder()
    service = CachedEmbeddingService(bus.query_embeddings(slow.model, slow.model_version), slow)
    barrier = threading.Barrier(2)
    results: list[Any] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            barrier.wait()
            results.append(service.embed("herd"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 2 and slow.calls_seen == 1
    failing = CachedEmbeddingService(
        bus.query_embeddings(slow.model, slow.model_version), SlowEmbedder(0.0, fail=True)
    )
    with pytest.raises(RuntimeError, match="provider down"):
        failing.embed("boom")

    # The search service with the query log, then cache warming from it.
    log = QueryLog(client, settings)
    search = CachedSearchService(bus.search_results, service, OneDocIndex(), query_log=log)
    for _ in range(3):
        assert search.search("kb", "popular query")[0].doc_id == "doc-1"
    log.record(["another query", "popular query"])
    assert log.top(5)[0] == ("popular query", 4)
    warmed = warm_queries(qe, emb, log, 10)
    assert warmed.warmed + warmed.already_cached == 2
    docs = [{"doc_id": "doc-2", "chunks": [{"chunk_id": "c0", "text": "hello"}]}]
    assert warm_documents(de, emb, docs).warmed == 1

    # The invalidation primitives (tag / document / version bump).
    inv = bus.invalidator
    inv.invalidate_tags([Tag.user("campaign"), Tag.collection("kb")])
    # An update that keeps unchanged chunks (HKEYS, HGET, HDEL inside the script).
    inv.invalidate(documents=[DocumentInvalidation("doc-1", "bump", "changed", ("c0", "h0"))])
    assert de.get("doc-1", "c0", "h0") is not None and de.get("doc-1", "c1") is None
    inv.invalidate(documents=[DocumentInvalidation("doc-2", "bump", "fields", ("c0",))])
    assert de.get("doc-2", "c0") is None
    inv.invalidate_documents(["doc-2"])
    inv.invalidate_documents(["doc-1"], deleted=True)
    assert sr.get("q", {"lang": "en"}, 5) is None
    assert de.get("doc-1", "c0") is None
    generations = inv.bump(collections=["kb"], models=[(emb.model, emb.model_version)])
    assert len(generations) == 2
    assert qe.get("a") is None  # new model generation

    # Metrics: flushed automatically (interval 0.01 s); force one more.
    assert SyncRunner(client).run(qe.core.publisher.flush(qe.metrics, force=True)) in (True, False)


async def _exercise_library_async(client: Any, settings: Settings) -> None:
    """The asyncio twins, including herd control between two coroutines."""
    bus = AsyncCacheBus(client, settings)
    emb = HashingEmbedder(dim=16)
    vec = emb.embed(["v"])[0]
    qe = bus.query_embeddings(emb.model, emb.model_version)
    await qe.set_many({"a": vec})
    assert (await qe.get_many(["a", "zzz"]))[1] is None
    de = bus.document_embeddings(emb.model)
    await de.set_many("doc-a", [ChunkVector("c0", vec, "h0")])
    assert await de.get("doc-a", "c0", "h0") is not None
    sr = bus.search_results("kb")
    lookup = await sr.lookup("q")
    await sr.set("q", [SearchHit("doc-a", 0.5)], ticket=lookup.ticket)
    assert await sr.get("q") == [SearchHit("doc-a", 0.5)]
    rr = bus.rerank_scores("rr")
    await rr.set("q", [("doc-a", 1)], [0.1])
    assert await rr.get("q", [("doc-a", 1)]) is not None

    class AsyncSlow:
        model, model_version, calls = "slow", "1", 0

        async def embed(self, texts: Sequence[str]) -> Any:
            AsyncSlow.calls += 1
            await asyncio.sleep(0.3)
            return emb.embed(texts)

    slow = AsyncSlow()
    service = AsyncCachedEmbeddingService(bus.query_embeddings("slow", "1"), slow)
    first, second = await asyncio.gather(service.embed("herd"), service.embed("herd"))
    assert np.array_equal(first, second) and AsyncSlow.calls == 1

    log = AsyncQueryLog(client, settings)
    for _ in range(9):
        await log.record(["async query"])
    assert (await log.top(1)) == [("async query", 9)]
    inv = bus.invalidator
    await inv.invalidate_documents(["doc-a"], deleted=True)
    assert await sr.get("q") is None
    await inv.invalidate_tags([Tag.user("u")])
    await inv.bump(collections=["kb"])
    await AsyncRunner(client).run(qe.core.publisher.flush(qe.metrics, force=True))


def test_library_as_restricted_user(target: Target) -> None:
    """All four layers, herd leases, tickets, query log, warming, invalidation and
    the metrics flush work as the 'library' user; nothing was refused."""
    client = connect(target.settings("library"))
    try:
        _exercise_library(client, target.settings("library"))
    finally:
        client.close()
    admin = target.admin()
    assert admin.exists(f"{PREFIX}:metrics:layers")
    admin.close()
    _assert_no_denials(target)


async def test_library_async_as_restricted_user(target: Target) -> None:
    client = await connect_async(target.settings("library"))
    try:
        await _exercise_library_async(client, target.settings("library"))
    finally:
        await client.aclose()
    _assert_no_denials(target)


def test_operator_runs_everything_and_stats(target: Target, capsys: Any) -> None:
    """The 'operator' user runs the whole library too, plus what `cachebus stats`
    reads (SCAN, MEMORY USAGE, INFO, published metrics) and the control state."""
    settings = target.settings("operator")
    client = connect(settings)
    try:
        _exercise_library(client, settings)
        report = stats.collect(settings, client, kafka=False)
        assert report["layers"]["qe"]["keys"] > 0 and report["redis_used_memory"] > 0
        assert report["layers"]["qe"]["hit_rate"] is not None
        assert CacheBus(client, settings).stats()["redis_used_memory"] > 0
        state = read_control_state(client, KeyScheme(PREFIX))
        assert "sr.kb" in state.bumped and "doc-1" in state.tombstones
    finally:
        client.close()
    args = argparse.Namespace(sample=10, no_kafka=True, kafka_timeout=1.0, json=True)
    assert stats.run(settings, args) == 0  # the command itself, through cachebus.connect
    printed = json.loads(capsys.readouterr().out)
    assert printed["prefix"] == PREFIX and printed["layers"]["qe"]["keys"] > 0
    _assert_no_denials(target)


def test_library_user_has_no_info(target: Target) -> None:
    """INFO is the operator's: CacheBus.stats() of a library user reports no Redis
    memory (and its layer counters as usual)."""
    settings = target.settings("library")
    client = connect(settings)
    try:
        bus = CacheBus(client, settings)
        bus.query_embeddings("m").get("x")
        report = bus.stats()
        assert report["redis_used_memory"] is None
        assert report["layers"]["query_embeddings"]["misses"] == 1
    finally:
        client.close()
    assert {d.split(":", 1)[1].strip() for d in target.denials("library")} == {"info (command)"}


def test_invalidation_as_worker_user(target: Target) -> None:
    """The 'worker' user: tag, document, bump and pattern-scan invalidation, sync and
    async (the worker's client), on every primary."""
    admin = target.admin()
    for i in range(30):
        admin.set(f"{PREFIX}:legacy:docembed:a*b:{{{i}}}", b"x")  # a literal '*' in the id
        admin.set(f"{PREFIX}:legacy:docembed:axb:{{{i}}}", b"keep")
    settings = target.settings("worker")
    client = connect(settings)
    try:
        bus = CacheBus(client, settings)
        inv = bus.invalidator
        inv.invalidate_tags([Tag.doc("a"), Tag.user("x")])
        inv.invalidate_documents(["a", "b"], deleted=True)
        inv.invalidate_documents(["c"])
        assert len(inv.bump(collections=["kb"], models=[("m", "1")])) == 2
        pattern = inv.core.keys.pattern("legacy:docembed:{doc_id}:*", doc_id="a*b")
        assert inv.scan_delete(pattern) == 30
    finally:
        client.close()

    async def run_async() -> int:
        aclient = await connect_async(settings)
        try:
            ainv = AsyncCacheBus(aclient, settings).invalidator
            await ainv.invalidate_documents(["d"], deleted=True)
            await ainv.bump(collections=["kb"])
            pattern = ainv.core.keys.pattern("legacy:docembed:{doc_id}:*", doc_id="axb")
            return await ainv.scan_delete(pattern)
        finally:
            await aclient.aclose()

    assert asyncio.run(run_async()) == 30
    admin.close()
    _assert_no_denials(target)


# --------------------------------------------------------------------------- refusals

REFUSED = [
    pytest.param(Call.of("FLUSHALL"), "flushall", id="FLUSHALL"),
    pytest.param(Call.of("FLUSHDB"), "flushdb", id="FLUSHDB"),
    pytest.param(Call.of("CONFIG", "GET", "maxmemory"), "config", id="CONFIG-GET"),
    pytest.param(Call.of("KEYS", f"{PREFIX}:*"), "keys", id="KEYS"),
    pytest.param(Call.of("SCRIPT", "FLUSH"), "script", id="SCRIPT-FLUSH"),
    pytest.param(Call.of("EVAL", "return 1", 0), "eval", id="EVAL"),
    pytest.param(Call.of("SET", "other:key", b"x"), "key", id="SET-outside-prefix"),
    pytest.param(Call.of("GET", "other:key"), "key", id="GET-outside-prefix"),
]


@pytest.mark.parametrize(("call", "word"), REFUSED)
def test_refused_commands_raise_permission_denied(target: Target, call: Call, word: str) -> None:
    """Through the library's runner, a refused command is a PermissionDeniedError
    that names the ACL and the command (or key), for every role."""
    for role in ROLES:
        client = connect(target.settings(role))
        try:
            with pytest.raises(PermissionDeniedError, match="ACL") as info:
                SyncRunner(client).execute([call])
            assert word in str(info.value).lower()
            assert not info.value.retriable
        finally:
            client.close()
    assert all(USERS[r] in " ".join(target.denials()) for r in ROLES)


async def test_refused_async_and_through_layers(target: Target) -> None:
    """The async runner too; and a layer configured with a foreign prefix raises
    (does not fail open) even when not strict."""
    settings = target.settings("library")
    aclient = await connect_async(settings)
    try:
        with pytest.raises(PermissionDeniedError, match="flushall"):
            await AsyncRunner(aclient).execute([Call.of("FLUSHALL")])
    finally:
        await aclient.aclose()
    client = connect(settings)
    try:
        foreign = CacheBus(client, settings.with_(prefix="other", strict=False))
        with pytest.raises(PermissionDeniedError, match="ACL"):
            foreign.search_results("kb").set("q", [SearchHit("d", 1.0)])
        with pytest.raises(PermissionDeniedError, match="ACL"):
            foreign.query_embeddings("m").get("q")
    finally:
        client.close()


def test_refusal_inside_a_script_is_permission_denied(standalone: Target) -> None:
    """A user that may call EVALSHA but not a command the script runs (here HLEN)."""
    admin = standalone.node(standalone.ports[0])
    rules = [r for r in acl_rules(PREFIX, password="pw", role="library") if r != "+hlen"]
    admin.execute_command("ACL", "SETUSER", "no-hlen", *rules)
    admin.close()
    settings = standalone.settings("library").with_(
        redis_url=f"redis://no-hlen:pw@127.0.0.1:{standalone.ports[0]}/0"
    )
    client = connect(settings)
    try:
        with pytest.raises(PermissionDeniedError, match="ACL"):
            CacheBus(client, settings).invalidator.invalidate_documents(["d"], deleted=True)
    finally:
        client.close()


DRYRUN_REFUSED: list[list[str]] = [
    ["KEYS", "*"],
    ["FLUSHALL"],
    ["FLUSHDB"],
    ["CONFIG", "GET", "*"],
    ["CONFIG", "SET", "maxmemory", "1"],
    ["DEBUG", "SLEEP", "0"],
    ["SHUTDOWN"],
    ["SCRIPT", "FLUSH"],
    ["SCRIPT", "KILL"],
    ["EVAL", "return 1", "0"],
    ["FUNCTION", "FLUSH"],
    ["ACL", "SETUSER", "x"],
    ["MONITOR"],
    ["SAVE"],
    ["BGSAVE"],
    ["REPLICAOF", "NO", "ONE"],
    ["MIGRATE", "127.0.0.1", "1", f"{PREFIX}:k", "0", "1"],
    ["RESTORE", f"{PREFIX}:k", "0", "x"],
    ["MOVE", f"{PREFIX}:k", "1"],
    ["SWAPDB", "0", "1"],
    ["SELECT", "1"],
    ["CLIENT", "KILL", "ID", "1"],
    ["CLIENT", "LIST"],
    ["PUBLISH", f"{PREFIX}:c", "x"],
    ["OBJECT", "ENCODING", f"{PREFIX}:k"],
    ["GET", "cbx:k"],
    ["SET", "other", "x"],
]


def test_dryrun_refuses_broad_commands_for_every_role(standalone: Target) -> None:
    """ACL DRYRUN: nothing broad is allowed to any role; the prefix is the fence
    (``t:*`` does not cover ``tx:...``)."""
    admin = standalone.node(standalone.ports[0])
    try:
        for role in ROLES:
            user = USERS[role]
            ok = _text(admin.execute_command("ACL", "DRYRUN", user, "GET", f"{PREFIX}:k"))
            assert ok == "OK"
            for argv in [*DRYRUN_REFUSED, ["GET", f"{PREFIX}x:k"]]:
                reply = _text(admin.execute_command("ACL", "DRYRUN", user, *argv))
                assert reply != "OK", f"{role} may run {argv}"

        def dryrun(role: str, *argv: str) -> bool:
            return _text(admin.execute_command("ACL", "DRYRUN", USERS[role], *argv)) == "OK"

        # Roles differ: SCAN (pattern-scan invalidation) is not the library's, the
        # query log is not the worker's, INFO and MEMORY USAGE are the operator's.
        assert dryrun("worker", "SCAN", "0") and not dryrun("library", "SCAN", "0")
        assert dryrun("library", "ZINCRBY", "t:q", "1", "x")
        assert not dryrun("worker", "ZINCRBY", "t:q", "1", "x")
        for role in ("worker", "library"):
            assert not dryrun(role, "INFO", "memory")
            assert not dryrun(role, "MEMORY", "USAGE", "t:k")
        assert dryrun("operator", "INFO", "memory") and dryrun("operator", "MEMORY", "USAGE", "t:k")
    finally:
        admin.close()


def test_ask_redirect_during_resharding(acl_cluster: RedisClusterServers) -> None:
    """While a slot migrates, the library follows ASK redirects (+asking) as the
    restricted user; the slot is then finalised on the target."""
    target = _cluster(acl_cluster)
    target.reset()
    settings = target.settings("library")
    client = connect(settings)
    assert isinstance(client, redis.cluster.RedisCluster)
    try:
        qe = CacheBus(client, settings).query_embeddings("m")
        key = qe.core.keys.query_embedding("m", "1", 2**52, "moving", "epoch-01")
        slot = client.keyslot(key)
        source = client.get_node_from_key(key)
        dest = next(n for n in client.get_primaries() if n.name != source.name)
        ids = {}
        for port in target.ports:
            node = target.node(port)
            ids[port] = _text(node.execute_command("CLUSTER", "MYID"))
            node.close()
        src, dst = target.node(source.port), target.node(dest.port)
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source.port])
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[dest.port])
        try:
            # The key is not on the source: GET and SET are redirected with ASK.
            assert SyncRunner(client).execute([Call.of("GET", key)]) == [None]
            assert SyncRunner(client).execute([Call.of("SET", key, b"v", "EX", 60)]) == [True]
        finally:
            for port in target.ports:
                node = target.node(port)
                node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[dest.port])
                node.close()
            src.close()
        assert dst.get(key) == b"v"  # the write went to the importing node
        assert dst.info("commandstats")["cmdstat_asking"]["calls"] >= 2  # really redirected
        dst.close()
    finally:
        client.close()
    _assert_no_denials(target)


# --------------------------------------------------------------------------- AUTH


@pytest.fixture(scope="module")
def auth_redis() -> Iterator[RedisServer]:
    """A server with a password for the default user (``requirepass``)."""
    with RedisServer(use_env=False, extra_config=["requirepass s3cret-pass"]) as server:
        yield server


@pytest.mark.parametrize("userinfo", [":s3cret-pass", "default:s3cret-pass"])
def test_auth_password_in_url(auth_redis: RedisServer, userinfo: str) -> None:
    settings = Settings(redis_url=f"redis://{userinfo}@127.0.0.1:{auth_redis.port}/0", prefix="a")
    client = connect(settings)
    try:
        bus = CacheBus(client, settings)
        bus.query_embeddings("m").set("x", np.ones(4, dtype=np.float32))
        assert bus.query_embeddings("m").get("x") is not None
    finally:
        client.close()


@pytest.mark.parametrize(
    "userinfo", [":wrong-pass@", "default:wrong-pass@", "nobody:s3cret-pass@", ""]
)
def test_auth_wrong_or_missing_password_fails_fast_and_clearly(
    auth_redis: RedisServer, userinfo: str
) -> None:
    """Refused credentials are not retried (no 6 s of backoff) and the message says
    what is wrong without echoing the password."""
    url = f"redis://{userinfo}127.0.0.1:{auth_redis.port}/0"
    started = time.monotonic()
    with pytest.raises(PermissionDeniedError, match="refused the credentials") as info:
        connect(Settings(redis_url=url))
    assert time.monotonic() - started < 1.5
    assert "wrong-pass" not in str(info.value) and "s3cret" not in str(info.value)
    assert f"127.0.0.1:{auth_redis.port}" in str(info.value)

    async def run_async() -> None:
        with pytest.raises(PermissionDeniedError, match="refused the credentials"):
            await connect_async(Settings(redis_url=url))

    asyncio.run(run_async())


def test_wrong_password_on_acl_user_and_cluster(acl_cluster: RedisClusterServers) -> None:
    target = _cluster(acl_cluster)
    bad = target.settings("worker").with_(
        redis_url=f"redis://{USERS['worker']}:nope@127.0.0.1:{target.ports[0]}/0"
    )
    with pytest.raises(PermissionDeniedError, match="refused the credentials"):
        connect(bad)

    async def run_async() -> None:
        with pytest.raises(PermissionDeniedError, match="refused the credentials"):
            await connect_async(bad)

    asyncio.run(run_async())


def test_acl_user_without_cluster_grants_gets_a_hint(acl_cluster: RedisClusterServers) -> None:
    """A hand-made user that lacks +cluster|slots cannot route; the error says why."""
    port = acl_cluster.ports[0]
    for p in acl_cluster.ports:
        node = redis.Redis(port=p, username=ADMIN[0], password=ADMIN[1])
        node.execute_command(
            "ACL", "SETUSER", "bare", "reset", "on", ">pw", "~t:*", "+get", "+ping"
        )
        node.close()
    bare = Settings(redis_url=f"redis://bare:pw@127.0.0.1:{port}/0", redis_cluster=True)
    with pytest.raises(CacheUnavailableError, match=r"\+cluster\|slots"):
        connect(bare)


# --------------------------------------------------------------------------- TLS


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA, a server certificate for 127.0.0.1/localhost and a client one."""
    d = tmp_path_factory.mktemp("certs")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=cachebus test CA",
        cwd=d,
    )
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, ext in (("server", ["-extfile", "server.ext"]), ("client", [])):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN=cachebus {name}",
            cwd=d,
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.crt",
            "-days",
            "2",
            *ext,
            cwd=d,
        )
    # Kafka reads its key and certificate from one PEM file (PKCS#8, unencrypted).
    (d / "server-keystore.pem").write_text(
        (d / "server.key").read_text() + (d / "server.crt").read_text()
    )
    return d


def _tls_server(certs: Path, auth_clients: str) -> RedisServer:
    return RedisServer(
        use_env=False,
        extra_config=[
            f"tls-port {_free_port()}",
            f"tls-cert-file {certs / 'server.crt'}",
            f"tls-key-file {certs / 'server.key'}",
            f"tls-ca-cert-file {certs / 'ca.crt'}",
            f"tls-auth-clients {auth_clients}",
            *_acl_config(),
        ],
    )


def _tls_port(server: RedisServer) -> int:
    assert server.directory is not None
    conf = (server.directory / "redis.conf").read_text()
    return int(next(line.split()[1] for line in conf.splitlines() if line.startswith("tls-port")))


@pytest.fixture(scope="module")
def tls_redis(certs: Path) -> Iterator[RedisServer]:
    """TLS on a second port (the plain port stays for the helper's readiness probe)."""
    with _tls_server(certs, "no") as server:
        yield server


@pytest.fixture(scope="module")
def mtls_redis(certs: Path) -> Iterator[RedisServer]:
    """TLS that requires a client certificate signed by the CA."""
    with _tls_server(certs, "yes") as server:
        yield server


def test_tls_with_ca_and_acl_user(tls_redis: RedisServer, certs: Path) -> None:
    """``rediss://user:pass@host:port/0?ssl_ca_certs=<ca>``: verified TLS plus the ACL
    user, sync and async, with no extra settings field."""
    port = _tls_port(tls_redis)
    url = (
        f"rediss://{USERS['library']}:{PASSWORDS['library']}@127.0.0.1:{port}/0"
        f"?ssl_ca_certs={certs / 'ca.crt'}"
    )
    settings = Settings(redis_url=url, prefix=PREFIX, strict=True)
    client = connect(settings)
    try:
        assert client.connection_pool.connection_class is redis.connection.SSLConnection
        bus = CacheBus(client, settings)
        bus.search_results("kb").set("q", [SearchHit("d", 1.0)])
        assert bus.search_results("kb").get("q") == [SearchHit("d", 1.0)]
    finally:
        client.close()

    async def run_async() -> None:
        aclient = await connect_async(settings)
        try:
            assert await AsyncCacheBus(aclient, settings).search_results("kb").get("q") is not None
        finally:
            await aclient.aclose()

    asyncio.run(run_async())


def test_tls_without_the_ca_is_refused(
    tls_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connection_module, "PING_ATTEMPTS", 1)
    url = f"rediss://127.0.0.1:{_tls_port(tls_redis)}/0"
    with pytest.raises(CacheUnavailableError, match="CERTIFICATE_VERIFY_FAILED"):
        connect(Settings(redis_url=url))
    plain = f"redis://{USERS['library']}:{PASSWORDS['library']}@127.0.0.1:{_tls_port(tls_redis)}/0"
    with pytest.raises(CacheUnavailableError):  # plaintext to the TLS port
        connect(Settings(redis_url=plain, redis_timeout=0.5))


def test_mutual_tls_with_client_certificate(
    mtls_redis: RedisServer, certs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connection_module, "PING_ATTEMPTS", 1)
    base = f"rediss://{USERS['worker']}:{PASSWORDS['worker']}@127.0.0.1:{_tls_port(mtls_redis)}/0"
    ca = f"ssl_ca_certs={certs / 'ca.crt'}"
    with pytest.raises(CacheUnavailableError):
        connect(Settings(redis_url=f"{base}?{ca}"))
    url = f"{base}?{ca}&ssl_certfile={certs / 'client.crt'}&ssl_keyfile={certs / 'client.key'}"
    client = connect(Settings(redis_url=url, prefix=PREFIX))
    try:
        assert CacheBus(client, Settings(prefix=PREFIX)).invalidator.bump(collections=["kb"])
    finally:
        client.close()


# --------------------------------------------------------------------------- the worker


def _stack_settings(**changes: Any) -> WorkerSettings:
    uid = uuid.uuid4().hex[:8]
    return WorkerSettings(
        prefix=PREFIX,
        events_topic=f"events-{uid}",
        audit_topic=f"audit-{uid}",
        dlq_topic=f"dlq-{uid}",
        consumer_group=f"group-{uid}",
        batch_wait_ms=10,
        topic_partitions=2,
    ).with_(**changes)


def _scan_rules(tmp_path: Path) -> Path:
    rules = tmp_path / "rules.toml"
    rules.write_text(
        '[[scan]]\nevents = ["deleted"]\npattern = "legacy:docembed:{doc_id}:*"\n', "utf-8"
    )
    return rules


def _run_documents_through(stack: LocalStack, target: Target, tmp_path: Path) -> None:
    """Populate as the library user, run created/updated/deleted through the worker
    (as the worker user), check the caches, replay, compare the control state."""
    lib_settings = target.settings("library")
    lib = connect(lib_settings)
    admin = target.admin()
    try:
        bus = CacheBus(lib, lib_settings)
        vec = np.ones(8, dtype=np.float32)
        kb, other = bus.search_results("kb"), bus.search_results("other")
        de = bus.document_embeddings("m")
        kb.set("q-ab", [SearchHit("A", 0.9), SearchHit("B", 0.8)])
        other.set("q-b", [SearchHit("B", 0.9)])
        other.set("q-z", [SearchHit("Z", 0.9)])  # a canary: no event touches Z
        de.set_many("A", [ChunkVector("c1", vec, "h1"), ChunkVector("c2", vec, "h2")])
        de.set_many("B", [ChunkVector("c1", vec, "hb")])
        for i in range(5):
            admin.set(f"{PREFIX}:legacy:docembed:B:{{{i}}}", b"old")

        events = [
            document_event("created", "C", 1, collection="kb"),
            document_event(
                "updated",
                "A",
                2,
                collection="kb",
                chunks=[
                    {"chunk_id": "c1", "content_hash": "h1"},
                    {"chunk_id": "c2", "content_hash": "NEW"},
                ],
            ),
            document_event("deleted", "B", 2, collection="other"),
        ]
        stack.publish(events)
        try:
            audits = by_event_id(stack.read_audits(count=3, timeout=90))
        except TimeoutError as exc:
            logs = "\n".join(f"--- {w.name}\n{w.log_tail(80)}" for w in stack.workers)
            raise AssertionError(f"{exc}\n{logs}") from exc
        assert [audits[e["event_id"]][0]["outcome"] for e in events] == ["applied"] * 3
        assert kb.get("q-ab") is None  # kb bumped (created C), and A, B invalidated
        assert other.get("q-b") is None and other.get("q-z") is not None
        assert de.get("A", "c1", "h1") is not None and de.get("A", "c2") is None
        assert de.get("B", "c1") is None
        assert not _scan_all(admin, f"{PREFIX}:legacy:*")  # the scan rule ran (SCAN, UNLINK)
        _assert_no_denials(target)

        ops = connect(target.settings("operator"))
        try:
            live = read_control_state(ops, KeyScheme(PREFIX))
            assert set(live.high_water_marks) == {"A", "B", "C"} and live.tombstones == {"B"}
            for worker in stack.workers:
                worker.stop()
            target.reset()  # Redis lost everything: replay rebuilds the control state
            replay_settings = stack.settings.with_(
                redis_url=target.url("worker"), rules_file=str(_scan_rules(tmp_path))
            )
            report = asyncio.run(replay(replay_settings, ReplayOptions(progress=False)))
            assert report.events == 3 and report.outcomes["applied"] == 3
            rebuilt = read_control_state(ops, KeyScheme(PREFIX))
            assert rebuilt.high_water_marks == live.high_water_marks
            assert rebuilt.tombstones == live.tombstones
            # The events bumped kb; "other" has a generation live only because the
            # library's first write created it (a missing one is created on use).
            assert rebuilt.bumped == {"sr.kb"} and live.bumped == {"sr.kb", "sr.other"}
        finally:
            ops.close()
    finally:
        lib.close()
        admin.close()
    _assert_no_denials(target)


def _scan_all(admin: Any, pattern: str) -> list[bytes]:
    if isinstance(admin, redis.cluster.RedisCluster):
        return [
            k
            for node in admin.get_primaries()
            for k in admin.scan_iter(match=pattern, target_nodes=node)
        ]
    return list(admin.scan_iter(match=pattern))


def test_worker_and_replay_as_restricted_user(
    target: Target, kafka_broker: LocalKafka, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The faust worker (and then replay) with ``redis://cachebus:secret@...``: events
    are processed end to end, pattern-scan rules included, and nothing is refused."""
    redis_service = request.getfixturevalue("acl_redis" if not target.cluster else "acl_cluster")
    rules = _scan_rules(tmp_path)
    with LocalStack(
        redis=redis_service, kafka=kafka_broker, settings=_stack_settings(), log_dir=tmp_path
    ) as stack:
        assert stack.settings.redis_cluster == target.cluster
        stack.start_worker(redis_url=target.url("worker"), rules_file=str(rules))
        _run_documents_through(stack, target, tmp_path)


def test_worker_waits_for_a_fixed_acl_and_loses_nothing(
    standalone: Target, acl_redis: RedisServer, kafka_broker: LocalKafka, tmp_path: Path
) -> None:
    """A worker user missing a grant (here MGET) logs the refusal and retries the batch
    without acknowledging it; once the ACL is fixed the events are applied."""
    admin = standalone.node(standalone.ports[0])
    full = acl_rules(PREFIX, password="pw", role="worker")
    admin.execute_command("ACL", "SETUSER", "half", *[r for r in full if r != "+mget"])
    with LocalStack(
        redis=acl_redis, kafka=kafka_broker, settings=_stack_settings(), log_dir=tmp_path
    ) as stack:
        worker = stack.start_worker(redis_url=f"redis://half:pw@127.0.0.1:{acl_redis.port}/0")
        event = document_event("deleted", "doc-x", 1)
        stack.publish([event])
        deadline = time.monotonic() + 30
        while "no permissions to run the 'mget' command" not in worker.log_tail(200):
            assert time.monotonic() < deadline, worker.log_tail()
            time.sleep(0.2)
        assert "redis unavailable; retrying batch" in worker.log_tail(200)
        assert stack.count_records(stack.settings.audit_topic) == 0  # nothing acknowledged
        admin.execute_command("ACL", "SETUSER", "half", *full)  # the operator fixes the ACL
        (audit,) = stack.read_audits(count=1, timeout=60)
        assert audit["event_id"] == event["event_id"] and audit["outcome"] == "applied"
        assert worker.alive
    admin.close()


# --------------------------------------------------------------------------- Kafka SASL


@dataclass
class SaslKafka:
    broker: LocalKafka
    sasl_plaintext: str
    sasl_ssl: str
    ca_file: str

    def settings(self, protocol: str, **changes: Any) -> WorkerSettings:
        bootstrap = self.sasl_ssl if protocol == "SASL_SSL" else self.sasl_plaintext
        return WorkerSettings(
            kafka_bootstrap=bootstrap,
            kafka_security_protocol=protocol,
            kafka_sasl_mechanism="PLAIN",
            kafka_sasl_username=KAFKA_USER,
            kafka_sasl_password=KAFKA_PASSWORD,
            kafka_ssl_cafile=self.ca_file if protocol == "SASL_SSL" else "",
        ).with_(**changes)


@pytest.fixture(scope="module")
def sasl_kafka(certs: Path) -> Iterator[SaslKafka]:
    """A KRaft broker with SASL_PLAINTEXT and SASL_SSL (PLAIN) listeners for clients.

    The PLAINTEXT listener stays for inter-broker traffic and the helper's readiness
    probe; the controller listener stays PLAINTEXT too (loopback only)."""
    port, controller, sasl, sasl_ssl = _free_ports(4)
    jaas = (
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        'username="admin" password="admin-secret" user_admin="admin-secret" '
        f'user_{KAFKA_USER}="{KAFKA_PASSWORD}";'
    )
    listeners = {
        "PLAINTEXT": port,
        "CONTROLLER": controller,
        "SASL_PLAINTEXT": sasl,
        "SASL_SSL": sasl_ssl,
    }
    props = {
        "listeners": ",".join(f"{n}://127.0.0.1:{p}" for n, p in listeners.items()),
        "advertised.listeners": ",".join(
            f"{n}://127.0.0.1:{p}" for n, p in listeners.items() if n != "CONTROLLER"
        ),
        "listener.security.protocol.map": ",".join(
            f"{n}:{'PLAINTEXT' if n == 'CONTROLLER' else n}" for n in listeners
        ),
        "inter.broker.listener.name": "PLAINTEXT",
        "sasl.enabled.mechanisms": "PLAIN",
        "listener.name.sasl_plaintext.plain.sasl.jaas.config": jaas,
        "listener.name.sasl_ssl.plain.sasl.jaas.config": jaas,
        "listener.name.sasl_ssl.ssl.keystore.type": "PEM",
        "listener.name.sasl_ssl.ssl.keystore.location": str(certs / "server-keystore.pem"),
    }
    with pytest.MonkeyPatch.context() as env:
        # Always a broker of our own: an external one (CACHEBUS_KAFKA_BOOTSTRAP) has no
        # SASL listeners.
        env.delenv("CACHEBUS_KAFKA_BOOTSTRAP", raising=False)
        broker = LocalKafka(port=port, controller_port=controller, extra_properties=props)
    broker.start()
    try:
        yield SaslKafka(broker, f"127.0.0.1:{sasl}", f"127.0.0.1:{sasl_ssl}", str(certs / "ca.crt"))
    finally:
        broker.stop()


async def _roundtrip(settings: WorkerSettings, topic: str) -> list[bytes]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    await ensure_topics(
        settings.with_(
            events_topic=topic, audit_topic=f"{topic}-a", dlq_topic=f"{topic}-d", topic_partitions=1
        )
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, **client_config(settings)
    )
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"over sasl")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        **client_config(settings),
    )
    await consumer.start()
    try:
        batch = await consumer.getmany(timeout_ms=10_000)
        return [r.value for records in batch.values() for r in records]
    finally:
        await consumer.stop()


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
def test_kafka_sasl_client_config_produce_consume(sasl_kafka: SaslKafka, protocol: str) -> None:
    settings = sasl_kafka.settings(protocol)
    config = client_config(settings)
    assert config["security_protocol"] == protocol and config["sasl_mechanism"] == "PLAIN"
    assert ("ssl_context" in config) == (protocol == "SASL_SSL")
    topic = f"sasl-{uuid.uuid4().hex[:8]}"
    assert asyncio.run(_roundtrip(settings, topic)) == [b"over sasl"]


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"kafka_sasl_password": "wrong"}, id="wrong-password"),
        pytest.param({"kafka_security_protocol": "PLAINTEXT"}, id="no-sasl"),
    ],
)
def test_kafka_sasl_refuses_bad_clients(sasl_kafka: SaslKafka, change: dict[str, str]) -> None:
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    settings = sasl_kafka.settings("SASL_PLAINTEXT", **change)

    async def attempt() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap,
            request_timeout_ms=3000,
            **client_config(settings),
        )
        try:
            await asyncio.wait_for(producer.start(), 15)
        finally:
            await producer.stop()

    with pytest.raises((KafkaError, TimeoutError)):
        asyncio.run(attempt())


def test_kafka_ssl_without_ca_is_refused(sasl_kafka: SaslKafka) -> None:
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    settings = sasl_kafka.settings("SASL_SSL", kafka_ssl_cafile="")
    assert isinstance(client_config(settings)["ssl_context"], ssl.SSLContext)

    async def attempt() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap,
            request_timeout_ms=3000,
            **client_config(settings),
        )
        try:
            await asyncio.wait_for(producer.start(), 15)
        finally:
            await producer.stop()

    with pytest.raises((KafkaError, TimeoutError)):
        asyncio.run(attempt())


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
def test_worker_over_kafka_sasl_with_redis_acl(
    sasl_kafka: SaslKafka,
    standalone: Target,
    acl_redis: RedisServer,
    tmp_path: Path,
    protocol: str,
) -> None:
    """The whole secured deployment: the faust worker reads and writes Kafka over
    SASL (PLAIN; with TLS for SASL_SSL) and Redis as the ACL 'worker' user."""
    with LocalStack(
        redis=acl_redis, kafka=sasl_kafka.broker, settings=_stack_settings(), log_dir=tmp_path
    ) as stack:
        # Topics were created over the broker's PLAINTEXT listener; from here on every
        # client (worker, publisher, audit reader) uses SASL only.
        sasl = sasl_kafka.settings(protocol)
        stack.settings = stack.settings.with_(
            kafka_bootstrap=sasl.kafka_bootstrap,
            kafka_security_protocol=protocol,
            kafka_sasl_mechanism="PLAIN",
            kafka_sasl_username=KAFKA_USER,
            kafka_sasl_password=KAFKA_PASSWORD,
            kafka_ssl_cafile=sasl.kafka_ssl_cafile,
        )
        asyncio.run(ensure_topics(stack.settings))  # the admin client over SASL too
        stack.start_worker(
            redis_url=standalone.url("worker"), rules_file=str(_scan_rules(tmp_path))
        )
        _run_documents_through(stack, standalone, tmp_path)


# --------------------------------------------------------------------------- cachebus acl


def _acl_args(*argv: str) -> tuple[Settings, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="cachebus")
    acl_cli.register(parser.add_subparsers(dest="command"), _add_common)
    args = parser.parse_args(["acl", *argv])
    settings = Settings.from_env(
        {}, **{k: v for k, v in (("redis_url", args.redis_url), ("prefix", args.prefix)) if v}
    )
    return settings, args


@pytest.mark.parametrize("topology", ["standalone", "cluster"])
def test_cachebus_acl_apply_creates_a_working_user(
    request: pytest.FixtureRequest, topology: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``cachebus acl --apply`` (as the admin) creates the user on every node; the user
    then runs the invalidation primitives; the password is never printed."""
    target = (
        _standalone(request.getfixturevalue("acl_redis"))
        if topology == "standalone"
        else _cluster(request.getfixturevalue("acl_cluster"))
    )
    target.reset()
    monkeypatch.setenv("NEW_WORKER_PASSWORD", "fresh-pass-123")
    admin_url = f"redis://{ADMIN[0]}:{ADMIN[1]}@127.0.0.1:{target.ports[0]}/0"
    settings, args = _acl_args(
        "--user",
        "fresh",
        "--prefix",
        PREFIX,
        "--password-env",
        "NEW_WORKER_PASSWORD",
        "--apply",
        "--redis-url",
        admin_url,
    )
    settings = settings.with_(redis_cluster=target.cluster)
    out = io.StringIO()
    assert acl_cli.run(settings, args, out) == 0
    assert "fresh-pass-123" not in out.getvalue()
    user_settings = target.settings("worker").with_(
        redis_url=f"redis://fresh:fresh-pass-123@127.0.0.1:{target.ports[0]}/0"
    )
    client = connect(user_settings)
    try:
        assert CacheBus(client, user_settings).invalidator.bump(collections=["kb"])
    finally:
        client.close()
    for port in target.ports:
        node = target.node(port)
        assert node.acl_getuser("fresh") is not None
        node.close()
    assert target.denials() == []


def test_cachebus_acl_file_lines_load_as_an_aclfile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``cachebus acl --format file`` output, one line per role, is a valid ``aclfile``
    (users.acl); the hashed password logs in and ``ACL SAVE`` round-trips it."""
    monkeypatch.setenv("ROLE_PASSWORD", "file-pass")
    lines = [f"user {ADMIN[0]} on >{ADMIN[1]} ~* &* +@all", "user default off"]
    for role in ROLES:
        settings, args = _acl_args(
            "--user",
            f"f-{role}",
            "--role",
            role,
            "--password-env",
            "ROLE_PASSWORD",
            "--format",
            "file",
            "--prefix",
            PREFIX,
        )
        out = io.StringIO()
        assert acl_cli.run(settings, args, out) == 0
        lines.append(out.getvalue().strip())
    acl_file = tmp_path / "users.acl"
    acl_file.write_text("\n".join(lines) + "\n")
    with RedisServer(use_env=False, extra_config=[f"aclfile {acl_file}"]) as server:
        for role in ROLES:
            user = redis.Redis(port=server.port, username=f"f-{role}", password="file-pass")
            assert user.ping()
            with pytest.raises(redis.exceptions.NoPermissionError):
                user.execute_command("KEYS", "*")
            user.close()
        admin = redis.Redis(port=server.port, username=ADMIN[0], password=ADMIN[1])
        assert admin.execute_command("ACL", "SAVE")
        admin.close()
    assert "file-pass" not in acl_file.read_text()
