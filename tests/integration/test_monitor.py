"""The consistency monitor on real services.

In process (real Redis, standalone and cluster): the worker's own Processor and Applier
apply batches of events and the monitor runs exactly the hooks the faust agent calls
(``before`` the batch, ``after`` its audits), with a fake monotonic clock to reach the
later checks at once. A stream of updates and deletes passes every check; a stamp rolled
back to its old value (what a failover to a lagging replica does) is a violation; a real
failover to a replica that missed the invalidation is a violation with durability off and
is not with ``durability_replicas=1``; the monitor needs no grant beyond the worker's ACL.

End to end (Kafka + a ``cachebus worker`` process): ``/metrics`` exports the checks and
violations, ``cachebus verify`` and ``cachebus stats`` show them from Redis.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio

from cachebus.acl import acl_rules
from cachebus.keys import KeyScheme, Tag
from cachebus.runner import AsyncClient
from devtools.redis_servers import LOOPBACK, RedisServer
from devtools.stack import LocalStack, WorkerProcess, document_event, settings_env
from tests import debezium_shapes as dbz
from worker.applier import Applier
from worker.audit import SourceRecord
from worker.monitor import CANARY_MODEL, Monitor, MonitorConfig, aread_consistency
from worker.processor import Outbound, Processor
from worker.rules import Rules, load_rules
from worker.settings import WorkerSettings

RULES = load_rules(None)
OFFSETS = (0.0, 5.0, 60.0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Harness:
    """The agent's calls, in process: before -> process -> (audits) commit -> after."""

    def __init__(
        self, client: AsyncClient, settings: WorkerSettings, rules: Rules = RULES, **config: Any
    ) -> None:
        self.clock = FakeClock()
        self.settings = settings
        self.proc = Processor(Applier(client, settings), settings, rules, worker_id="w-test")
        self.monitor = Monitor(
            client,
            settings,
            MonitorConfig(**{"sample_rate": 1.0, "check_after": OFFSETS, **config}),
            worker_id="w-test",
            rules=rules,
            clock=self.clock,
        )
        self.offset = 0

    def records(self, events: Iterable[dict[str, Any]]) -> list[SourceRecord]:
        out = []
        for event in events:
            self.offset += 1
            value = json.dumps(event).encode()
            out.append(
                SourceRecord("events", 0, self.offset, None, event["doc_id"].encode(), value)
            )
        return out

    async def batch(self, events: Iterable[dict[str, Any]]) -> Outbound:
        return await self.batch_of(self.records(events))

    async def batch_of(self, records: list[SourceRecord]) -> Outbound:
        sample = await self.monitor.before(records)
        out = await self.proc.process(records)
        await self.proc.commit(out)  # (the audits are delivered here in the worker)
        self.monitor.after(sample, out)
        await self.monitor.step()  # the +0 s checks, the re-arms
        return out

    async def later(self, seconds: float) -> None:
        self.clock.now += seconds
        await self.monitor.step()


def _settings(client: Any, **extra: Any) -> WorkerSettings:
    cluster = isinstance(client, redis.asyncio.cluster.RedisCluster)
    return WorkerSettings(prefix=f"m{uuid.uuid4().hex[:8]}", redis_cluster=cluster, **extra)


async def _canary_keys(client: Any, prefix: str) -> list[bytes]:
    pattern = f"{prefix}:rr:{CANARY_MODEL}:*"
    if isinstance(client, redis.asyncio.cluster.RedisCluster):
        return [k async for k in client.scan_iter(match=pattern, target_nodes=client.PRIMARIES)]
    return [k async for k in client.scan_iter(match=pattern)]


def _events(kind: str, docs: Iterable[str], version: int) -> list[dict[str, Any]]:
    return [document_event(kind, d, version) for d in docs]


# --------------------------------------------------------------------------- in process


async def test_updates_and_deletes_pass_every_check(any_async_redis: Any) -> None:
    client = any_async_redis
    settings = _settings(client)
    h = Harness(client, settings)
    m = h.monitor
    docs = [f"doc-{i}" for i in range(10)]

    await h.batch(_events("created", docs, 1))
    # Canaries armed before the apply; created (revive) promises nothing about the
    # document's tag: retired unchecked and re-armed for the next event.
    assert m.counts.checks == 0 and set(m.live) == set(docs)
    assert m.counts.armed == 20 and m.counts.not_serving == 0

    await h.batch(_events("updated", docs, 2))
    assert m.counts.checks == 10
    await h.later(5)
    await h.later(55)
    assert m.counts.checks == 30

    await h.batch(_events("deleted", docs[:5], 3))
    await h.later(5)
    await h.later(55)
    await h.later(300)  # nothing left
    assert (m.counts.checks, m.counts.violations, m.counts.lost) == (45, 0, 0)
    assert m.counts.errors == 0
    # A deleted document's re-armed canary cannot serve (tombstone): discarded.
    assert m.counts.not_serving == 5 and set(m.live) == set(docs[5:])
    # Checked canaries are removed after their last check; live ones stay.
    assert len(await _canary_keys(client, settings.prefix)) == 5

    await m.flush()
    found = await aread_consistency(client, settings.prefix, 900)
    assert (found.checks, found.violations) == (45, 0)
    assert found.line() == (
        "consistency: 100% (at least 1 nine) over 15 min: 45 checks, 0 violations"
    )
    # The canaries' reads do not count in the rerank_scores layer's published metrics.
    assert await client.exists(f"{settings.prefix}:metrics:{{rerank_scores}}") == 0


async def test_a_rolled_back_stamp_is_a_violation(
    any_async_redis: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """After the update was audited (and passed its +0 s check), the document's stamp
    goes back to its value before the update, as a failover to a replica that missed
    it would leave it: the canary armed before the update serves again."""
    client = any_async_redis
    settings = _settings(client)
    h = Harness(client, settings)
    doc = 'report {7}*:\n"x"'
    stamp_key = KeyScheme(settings.prefix).stamp(Tag.doc(doc))

    await h.batch([document_event("created", doc, 1)])
    before_update = await client.get(stamp_key)
    assert before_update is not None
    update = document_event("updated", doc, 2)
    await h.batch([update])
    assert (h.monitor.counts.checks, h.monitor.counts.violations) == (1, 0)

    await client.set(stamp_key, before_update)  # the invalidation is lost
    await h.later(5)
    assert (h.monitor.counts.checks, h.monitor.counts.violations) == (2, 1)
    await h.later(55)
    assert (h.monitor.counts.checks, h.monitor.counts.violations) == (3, 2)

    logged = capsys.readouterr()
    lines = [
        line for line in (logged.out + logged.err).splitlines() if "consistency violation" in line
    ]
    assert len(lines) == 2
    assert "report%20%7B7%7D%2A%3A%0A%22x%22" in lines[0]  # the doc id, encoded
    assert update["event_id"] in lines[0] and "+5s" in lines[0] and "+60s" in lines[1]
    assert "\n" not in lines[0]

    await h.monitor.flush()
    found = await aread_consistency(client, settings.prefix, 900)
    assert (found.checks, found.violations) == (3, 2)
    assert found.line() == "consistency: 33% (0 nines) over 15 min: 3 checks, 2 violations"


async def test_canaries_follow_debezium_changes_and_cloudevents(
    any_async_redis: Any, tmp_path: Path
) -> None:
    """Documents of Debezium change events (on a ``[[debezium]]`` topic) and of
    CloudEvents get canaries too (the processor's decode step reads the sampled
    records), checked against their invalidations: the updates pass; a stamp rolled
    back after the Debezium update is a violation."""
    client = any_async_redis
    settings = _settings(client)
    rules_file = tmp_path / "rules.toml"
    rules_file.write_text(dbz.RULES)
    h = Harness(client, settings, load_rules(rules_file))
    stamp_key = KeyScheme(settings.prefix).stamp(Tag.doc("42"))

    def changes(op: str, lsn: int, version: int) -> list[SourceRecord]:
        kind = "created" if op == "c" else "updated"
        before = None if op == "c" else dbz.row(42)
        change = dbz.envelope(op, before=before, after=dbz.row(42), lsn=lsn)
        cloud = [
            ("ce_specversion", b"1.0"),
            ("ce_id", f"cms-{version}".encode()),
            ("ce_source", b"/cms"),
            ("ce_type", f"com.example.document.{kind}".encode()),
            ("ce_subject", b"kb/1"),
        ]
        data = json.dumps({"collection": "kb", "doc_version": version}).encode()
        return [
            SourceRecord(dbz.TOPIC, 0, lsn, None, dbz.key(42), dbz.encode(dbz.with_schema(change))),
            SourceRecord("events", 0, version, None, b"kb/1", data, tuple(cloud)),
        ]

    out = await h.batch_of(changes("c", 100, 1))
    assert out.outcomes == {"applied": 2}
    m = h.monitor
    assert set(m.live) == {"42", "kb/1"} and m.counts.checks == 0  # created: re-armed
    before_update = await client.get(stamp_key)
    assert before_update is not None

    out = await h.batch_of(changes("u", 200, 2))
    assert out.outcomes == {"applied": 2}
    assert (m.counts.checks, m.counts.violations) == (2, 0)  # the +0 s checks
    await client.set(stamp_key, before_update)  # the Debezium update's invalidation is lost
    await h.later(5)
    assert (m.counts.checks, m.counts.violations) == (4, 1)
    assert m.counts.errors == 0


async def test_monitor_needs_no_grant_beyond_the_worker_role(redis_server: RedisServer) -> None:
    """Canary writes and reads, EXISTS, UNLINK and the bucket script run as a Redis user
    with only the worker role's grants: the ACL LOG records no denial."""
    admin = redis_server.client()
    prefix = f"a{uuid.uuid4().hex[:8]}"
    user, password = f"mon-{prefix}", "pw-" + uuid.uuid4().hex
    admin.execute_command(
        "ACL", "SETUSER", user, *acl_rules(prefix, password=password, role="worker")
    )
    admin.execute_command("ACL", "LOG", "RESET")
    client = redis.asyncio.Redis(
        host=redis_server.host, port=redis_server.port, username=user, password=password
    )
    try:
        h = Harness(client, WorkerSettings(prefix=prefix))
        docs = ["a", "b", "c"]
        await h.batch(_events("created", docs, 1))
        await h.batch(_events("updated", docs, 2))
        await h.batch(_events("deleted", docs, 3))
        for _ in OFFSETS:
            await h.later(60)
        await h.monitor.flush()
        assert h.monitor.counts.checks == 2 * 3 * len(OFFSETS)
        assert h.monitor.counts.errors == 0
        denials = [e for e in admin.execute_command("ACL", "LOG") if _field(e, "username") == user]
        assert denials == []
        assert admin.get(f"{prefix}:metrics:{{consistency}}:{int(time.time() // 60)}") in (
            b"18:0",
            None,  # the minute turned between flush and read
        )
    finally:
        await client.aclose()
        admin.execute_command("ACL", "DELUSER", user)
        admin.close()


def _field(entry: Any, name: str) -> Any:
    if isinstance(entry, dict):
        value = entry.get(name, entry.get(name.encode()))
    else:
        pairs = dict(zip(entry[::2], entry[1::2], strict=False))
        value = pairs.get(name, pairs.get(name.encode()))
    return value.decode() if isinstance(value, bytes) else value


# --------------------------------------------------------------------------- failover


@pytest.fixture
def replicated() -> Iterator[Any]:
    from consistency.servers import ReplicatedRedis, TcpProxy

    with ReplicatedRedis() as pair:
        assert pair.primary is not None
        # The address clients use: moved to the promoted replica on failover (as a VIP,
        # DNS name or Sentinel-aware client would be).
        with TcpProxy(LOOPBACK, pair.primary.port) as front:
            yield pair, front


@pytest.mark.parametrize("durable", [False, True], ids=["durability-off", "durability-on"])
async def test_failover_to_a_lagging_replica(replicated: Any, durable: bool) -> None:
    """Canaries armed and replicated; replication stalls; the documents are updated and
    audited; the primary dies and the replica that missed the updates is promoted.
    Durability off: the canaries serve again, the monitor reports every one of them.
    Durability on (``durability_replicas=1``): the batch is not done (nor audited) until a
    replica holds it, so it is retried on the new primary once it has a replica of its
    own; every check passes."""
    pair, front = replicated
    extra = {"durability_replicas": 1, "durability_timeout_ms": 200} if durable else {}
    settings = WorkerSettings(prefix="f", **extra)
    client = redis.asyncio.Redis(host=LOOPBACK, port=front.port)
    new_replica: RedisServer | None = None
    try:
        h = Harness(client, settings)
        docs = [f"doc-{i}" for i in range(8)]
        await h.batch(_events("created", docs, 1))
        assert set(h.monitor.live) == set(docs)  # re-armed for the next event
        pair.wait_synced()
        pair.stall_replication()

        records = h.records(_events("updated", docs, 2))
        sample = await h.monitor.before(records)
        work = asyncio.ensure_future(h.proc.process(records))
        if not durable:
            out = await asyncio.wait_for(work, 10)
            await h.proc.commit(out)
            h.monitor.after(sample, out)
            await h.monitor.step()
            assert (h.monitor.counts.checks, h.monitor.counts.violations) == (8, 0)
        else:
            await asyncio.sleep(1.0)
            assert not work.done()  # not on a replica: retried, not audited

        assert pair.replica is not None
        pair.failover()
        front.target_port = pair.replica.port
        await client.connection_pool.disconnect()

        if durable:
            new_replica = RedisServer(
                use_env=False, extra_config=[f"replicaof {LOOPBACK} {pair.replica.port}"]
            ).start()
            out = await asyncio.wait_for(work, 30)
            await h.proc.commit(out)
            h.monitor.after(sample, out)
            await h.monitor.step()
        await h.later(5)
        await h.later(55)
        counts = h.monitor.counts
        if durable:
            assert (counts.checks, counts.violations) == (8 * len(OFFSETS), 0)
        else:
            assert (counts.checks, counts.violations) == (8 * len(OFFSETS), 8 * 2)
        assert counts.lost == 0
    finally:
        await client.aclose()
        if new_replica is not None:
            new_replica.stop()


# --------------------------------------------------------------------------- end to end


def _metrics(worker: WorkerProcess) -> dict[str, float]:
    url = f"http://127.0.0.1:{worker.settings.web_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("cachebus_consistency_"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def _wait_metric(
    worker: WorkerProcess, name: str, at_least: float, timeout: float = 60.0
) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        found = _metrics(worker)
        if found.get(name, 0) >= at_least:
            return found
        assert time.monotonic() < deadline, (found, worker.log_tail())
        time.sleep(0.2)


def _cli(stack: LocalStack, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings_env(stack.settings)}
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@pytest.fixture
def sampled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every event sampled; checks at +0, +1 and +2 s (the worker inherits the env)."""
    monkeypatch.setenv("CACHEBUS_MONITOR_SAMPLE_RATE", "1.0")
    monkeypatch.setenv("CACHEBUS_MONITOR_CHECK_AFTER", "0,1,2")


def test_worker_checks_updates_and_deletes(stack: LocalStack, sampled: None) -> None:
    worker = stack.start_worker(metrics_flush_interval=1)
    docs = [f"doc-{i}" for i in range(10)]
    stack.publish(_events("created", docs, 1))
    stack.read_audits(count=10)
    stack.publish(_events("updated", docs, 2))
    stack.read_audits(count=20)
    stack.publish(_events("deleted", docs[:5], 3))
    stack.read_audits(count=25)
    found = _wait_metric(worker, "cachebus_consistency_checks_total", 15 * 3)
    assert found["cachebus_consistency_violations_total"] == 0
    assert found["cachebus_consistency_errors_total"] == 0
    assert found['cachebus_consistency_canaries_total{result="armed"}'] >= 20

    deadline = time.monotonic() + 20
    while True:  # published to Redis every second
        verify = _cli(stack, "verify", "--window", "5m", "--json")
        data = json.loads(verify.stdout)
        if data["checks"] >= 45 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert verify.returncode == 0, verify.stderr
    assert (data["checks"], data["violations"]) == (45, 0)
    plain = _cli(stack, "verify", "--window", "5m")
    assert plain.returncode == 0
    assert plain.stdout.strip() == (
        "consistency: 100% (at least 1 nine) over 5 min: 45 checks, 0 violations"
    )
    stats = _cli(stack, "stats", "--no-kafka", "--window", "5m")
    assert stats.returncode == 0, stats.stderr
    assert "consistency: 100% (at least 1 nine) over 5 min: 45 checks" in stats.stdout
    assert _cli(stack, "verify", "--min-checks", "1000").returncode == 1
    bad = _cli(stack, "verify", "--window", "2 weeks")
    assert bad.returncode == 2 and bad.stderr.strip().startswith("cachebus: window")
    assert "Traceback" not in bad.stderr


def test_worker_reports_a_rolled_back_invalidation(stack: LocalStack, sampled: None) -> None:
    worker = stack.start_worker(metrics_flush_interval=1)
    doc = "doc*{1}"
    stamp_key = KeyScheme(stack.settings.prefix).stamp(Tag.doc(doc))
    stack.publish([document_event("created", doc, 1)])
    stack.read_audits(count=1)
    _wait_metric(worker, 'cachebus_consistency_canaries_total{result="armed"}', 2)  # re-armed
    client = stack.redis.client()
    before_update = client.get(stamp_key)
    update = document_event("updated", doc, 2)
    stack.publish([update])
    stack.read_audits(count=2)
    _wait_metric(worker, "cachebus_consistency_checks_total", 1)  # the +0 s check passed
    assert _metrics(worker)["cachebus_consistency_violations_total"] == 0

    client.set(stamp_key, before_update)  # rolled back, as on a lagging replica
    found = _wait_metric(worker, "cachebus_consistency_violations_total", 1)
    assert found["cachebus_consistency_checks_total"] >= 2
    warning = next(
        line for line in worker.log_tail(400).splitlines() if "consistency violation" in line
    )
    record = json.loads(warning)
    assert record["level"] == "warning" and record["doc_id"] == "doc%2A%7B1%7D"
    assert record["event_id"] == update["event_id"] and record["event_type"] == "updated"
    assert record["age_s"] >= 0

    deadline = time.monotonic() + 20
    while (verify := _cli(stack, "verify")).returncode == 0:
        assert time.monotonic() < deadline, verify.stdout
        time.sleep(0.5)
    assert verify.returncode == 1 and "violation" in verify.stdout, verify.stderr
    assert verify.stdout.startswith("consistency: ")
    client.close()
