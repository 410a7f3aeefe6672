"""``cachebus stats`` and the shared metrics store on real Redis (standalone and
cluster) and a real Kafka broker."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import uuid

import numpy as np
import pytest
import redis.cluster

from cachebus import CacheBus, ChunkVector, SearchHit, Settings
from cachebus.answers import AnswerCache
from cachebus.errors import CacheUnavailableError
from cachebus.metrics import LayerMetrics
from cachebus.metrics_store import MetricsPublisher, publish, read
from cachebus.querylog import QueryLog
from cachebus.runner import SyncRunner
from devtools.kafka_broker import LocalKafka
from devtools.redis_servers import RedisServer
from worker import cli
from worker import stats as stats_command
from worker.kafka import acreate_topics
from worker.settings import WorkerSettings

PREFIX = "st"
COUNTS = {"qe": 30, "de": 7, "sr": 12, "rr": 5, "ga": 4}


def populate(client, prefix: str = PREFIX) -> None:
    """COUNTS keys per layer under ``prefix``, plus control keys and another deployment."""
    bus = CacheBus(client, Settings(prefix=prefix))
    vec = np.ones(16, dtype=np.float32)
    bus.query_embeddings("m").set_many({f"q{i}": vec for i in range(COUNTS["qe"])})
    for d in range(COUNTS["de"]):
        bus.document_embeddings("m").set_many(
            f"doc {d}", [ChunkVector(f"c{c}", vec) for c in range(3)]
        )
    for i in range(COUNTS["sr"]):
        bus.search_results("kb").set(f"query {i}", [SearchHit(f"doc {i % 7}", 0.5)])
    for i in range(COUNTS["rr"]):
        bus.rerank_scores("rk").set(f"query {i}", [("doc 1", 1)], [0.9])
    for i in range(COUNTS["ga"]):
        bus.layer(AnswerCache, "kb", "llm", "v1").set(f"query {i}", [("doc 1", 1)], "answer")
    bus.invalidator.invalidate_documents(["doc 99"])  # a stamp and the sequence
    QueryLog(client, Settings(prefix=prefix)).record(["a", "b"])
    CacheBus(client, Settings(prefix="other")).query_embeddings("m").set("x", vec)


def all_keys(client) -> list[bytes]:
    if isinstance(client, redis.cluster.RedisCluster):
        return list(client.keys("*", target_nodes=redis.cluster.RedisCluster.PRIMARIES))
    return list(client.keys("*"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    stats_command.register(sub, cli._add_common)
    return parser.parse_args(["stats", *argv])


class TestRedisPart:
    def test_key_counts_and_memory(self, any_redis) -> None:
        """One SCAN pass counts every layer exactly; memory comes from MEMORY USAGE."""
        populate(any_redis)
        usage, other = stats_command.scan_layers(any_redis, PREFIX)
        assert {seg: u.keys for seg, u in usage.items()} == COUNTS
        everything = [k for k in all_keys(any_redis) if k.startswith(b"st:")]
        assert other == len(everything) - sum(COUNTS.values()) >= 3  # seq, stamp, query log
        for u in usage.values():
            assert u.sampled == u.keys and not u.estimated and u.memory_bytes > 0

    def test_memory_is_sampled_and_extrapolated(self, any_redis) -> None:
        """With a sample smaller than the layer, memory is an estimate over all keys."""
        populate(any_redis)
        usage, _ = stats_command.scan_layers(any_redis, PREFIX, sample_size=5)
        qe = usage["qe"]
        assert qe.keys == 30 and qe.sampled == 5 and qe.estimated
        assert qe.memory_bytes == round(qe.sample_bytes * 30 / 5)
        full, _ = stats_command.scan_layers(any_redis, PREFIX)
        assert abs(qe.memory_bytes - full["qe"].memory_bytes) <= 0.2 * full["qe"].memory_bytes

    def test_collect_and_render_without_kafka(self, any_redis) -> None:
        """The report has counts, hit rates from the metrics store and used_memory."""
        populate(any_redis)
        publish(any_redis, PREFIX, "query_embeddings", {"hits": 3, "misses": 1})
        report = stats_command.collect(WorkerSettings(prefix=PREFIX), any_redis, kafka=False)
        assert {seg: d["keys"] for seg, d in report["layers"].items()} == COUNTS
        assert report["layers"]["qe"]["hit_rate"] == 0.75
        assert report["layers"]["sr"]["hit_rate"] is None
        assert report["redis_used_memory"] > 0
        text = stats_command.render(report)
        assert "qe query embeddings" in text and "75.0%" in text
        assert report["redis_eviction"] == {
            "maxmemory_policy": ["noeviction"],
            "evicted_keys": 0,
            "stamps_safe": True,
        }
        assert "maxmemory-policy noeviction, evicted_keys 0" in text
        assert "WARNING" not in text

    def test_eviction_policy_that_can_evict_stamps_is_flagged(self, any_redis) -> None:
        """Any policy but noeviction, on any primary, is reported with a warning."""
        nodes = (
            [any_redis.get_primaries()[0]]
            if isinstance(any_redis, redis.cluster.RedisCluster)
            else [None]
        )

        def set_policy(policy: str) -> None:
            for node in nodes:
                kwargs = {} if node is None else {"target_nodes": node}
                any_redis.config_set("maxmemory-policy", policy, **kwargs)

        set_policy("allkeys-lru")
        try:
            report = stats_command.collect(WorkerSettings(prefix=PREFIX), any_redis, kafka=False)
        finally:
            set_policy("noeviction")
        evict = report["redis_eviction"]
        assert "allkeys-lru" in evict["maxmemory_policy"] and not evict["stamps_safe"]
        text = stats_command.render(report)
        assert "WARNING" in text and "noeviction" in text


class TestMetricsStore:
    def test_publish_adds_across_processes(self, any_redis) -> None:
        """Two publishers' deltas add up; read() computes the hit rate."""
        publish(any_redis, "p", "search_results", LayerMetrics(hits=4, misses=4, writes=2))
        publish(any_redis, "p", "search_results", {"hits": 2})
        publish(any_redis, "p", "rerank_scores", {"misses": 5})
        totals = read(any_redis, "p")
        assert totals["search_results"]["hits"] == 6
        assert totals["search_results"]["writes"] == 2
        assert totals["search_results"]["hit_rate"] == 0.6
        assert totals["rerank_scores"]["hit_rate"] == 0.0
        assert read(any_redis, "empty") == {}
        with pytest.raises(ValueError):
            publish(any_redis, "p", "search_results", {"hitz": 1})

    def test_publisher_sends_deltas_once(self, any_redis) -> None:
        """A periodic flush sends only what changed since the last successful one."""
        now = [0.0]
        runner = SyncRunner(any_redis)
        metrics = LayerMetrics()
        pub = MetricsPublisher("p", "query_embeddings", interval=10, clock=lambda: now[0])
        metrics.hits += 3
        assert runner.run(pub.flush(metrics)) is False  # not due yet
        now[0] = 10.0
        assert runner.run(pub.flush(metrics)) is True
        metrics.hits += 2
        metrics.misses += 1
        assert runner.run(pub.flush(metrics, force=True)) is True
        assert runner.run(pub.flush(metrics, force=True)) is False  # nothing new
        totals = read(any_redis, "p")["query_embeddings"]
        assert (totals["hits"], totals["misses"]) == (5, 1)


async def _produce_and_commit(
    bootstrap: str, topic: str, group: str, sizes: list[int], commits: dict[int, int]
) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    await acreate_topics(bootstrap, {topic: len(sizes)})
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for partition, size in enumerate(sizes):
            for i in range(size):
                await producer.send_and_wait(topic, f"e{i}".encode(), partition=partition)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in commits])
        await consumer.commit({TopicPartition(topic, p): off for p, off in commits.items()})
    finally:
        await consumer.stop()


@pytest.fixture
def lag_setup(kafka_broker: LocalKafka) -> tuple[str, str]:
    """A fresh 3-partition topic with 10/7/4 records; the group committed 6 and 7."""
    uid = uuid.uuid4().hex[:8]
    topic, group = f"stats-events-{uid}", f"stats-group-{uid}"
    asyncio.run(_produce_and_commit(kafka_broker.bootstrap, topic, group, [10, 7, 4], {0: 6, 1: 7}))
    return topic, group


class TestConsumerLag:
    def test_lag_is_end_minus_committed(
        self, kafka_broker: LocalKafka, lag_setup: tuple[str, str]
    ) -> None:
        """Per partition: end - committed; no commit: end - log start."""
        topic, group = lag_setup
        settings = WorkerSettings(
            kafka_bootstrap=kafka_broker.bootstrap, events_topic=topic, consumer_group=group
        )
        lag = asyncio.run(stats_command.consumer_lag(settings))
        assert [(p.partition, p.end, p.committed, p.lag) for p in lag.partitions] == [
            (0, 10, 6, 4),
            (1, 7, 7, 0),
            (2, 4, None, 4),
        ]
        assert lag.total == 8

    def test_missing_topic_is_reported_not_created(self, kafka_broker: LocalKafka) -> None:
        """A topic that does not exist makes the lag unavailable (and is not auto-created)."""
        settings = WorkerSettings(
            kafka_bootstrap=kafka_broker.bootstrap, events_topic=f"nope-{uuid.uuid4().hex[:8]}"
        )
        first = stats_command.kafka_report(settings, timeout=10)
        assert not first["available"] and "does not exist" in first["error"]
        assert "does not exist" in stats_command.kafka_report(settings, timeout=10)["error"]


class TestStatsCommand:
    def test_run_human_and_json(
        self,
        redis_server: RedisServer,
        redis_client,
        kafka_broker: LocalKafka,
        lag_setup: tuple[str, str],
    ) -> None:
        """The command's run(): a table by default, JSON with --json, lag included."""
        topic, group = lag_setup
        populate(redis_client)
        settings = WorkerSettings(
            prefix=PREFIX,
            redis_url=redis_server.url,
            kafka_bootstrap=kafka_broker.bootstrap,
            events_topic=topic,
            consumer_group=group,
        )
        out = io.StringIO()
        assert stats_command.run(settings, _args(), out=out) == 0
        text = out.getvalue()
        assert "qe query embeddings" in text and "worker lag: 8 events" in text
        out = io.StringIO()
        assert stats_command.run(settings, _args("--json"), out=out) == 0
        data = json.loads(out.getvalue())
        assert {seg: d["keys"] for seg, d in data["layers"].items()} == COUNTS
        assert data["kafka"]["total_lag"] == 8

    def test_kafka_unreachable_still_prints_redis(
        self, redis_server: RedisServer, redis_client
    ) -> None:
        """No Kafka: exit 0, the Redis part is printed and the lag said unavailable."""
        populate(redis_client)
        settings = WorkerSettings(
            prefix=PREFIX,
            redis_url=redis_server.url,
            kafka_bootstrap=f"127.0.0.1:{_free_port()}",
        )
        out = io.StringIO()
        assert stats_command.run(settings, _args("--kafka-timeout", "5"), out=out) == 0
        text = out.getvalue()
        assert "rr rerank scores" in text and "worker lag: unavailable" in text

    def test_redis_unreachable_raises(self) -> None:
        """No Redis: CacheUnavailableError (the CLI exits 2)."""
        settings = WorkerSettings(
            redis_url=f"redis://127.0.0.1:{_free_port()}/0", redis_timeout=0.5
        )
        with pytest.raises(CacheUnavailableError):
            stats_command.run(settings, _args("--no-kafka"), out=io.StringIO())

    def test_subprocess_json(
        self,
        redis_server: RedisServer,
        redis_client,
        kafka_broker: LocalKafka,
        lag_setup: tuple[str, str],
    ) -> None:
        """`python -m worker.cli stats --json` from the environment, end to end."""
        assert "worker.stats" in cli.COMMAND_MODULES, (
            "worker/cli.py must list 'worker.stats' in COMMAND_MODULES"
        )
        topic, group = lag_setup
        populate(redis_client)
        env = {
            **os.environ,
            "CACHEBUS_REDIS_URL": redis_server.url,
            "CACHEBUS_PREFIX": PREFIX,
            "CACHEBUS_KAFKA_BOOTSTRAP": kafka_broker.bootstrap,
            "CACHEBUS_EVENTS_TOPIC": topic,
            "CACHEBUS_CONSUMER_GROUP": group,
        }
        done = subprocess.run(
            [sys.executable, "-m", "worker.cli", "stats", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        data = json.loads(done.stdout)
        assert {seg: d["keys"] for seg, d in data["layers"].items()} == COUNTS
        assert data["kafka"]["available"] and data["kafka"]["total_lag"] == 8
        assert [p["lag"] for p in data["kafka"]["partitions"]] == [4, 0, 4]
