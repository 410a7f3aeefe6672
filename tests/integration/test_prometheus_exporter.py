"""The library's layer counters in ``prometheus_client`` output, on a real Redis:
one process (a collector read at scrape time) and ``PROMETHEUS_MULTIPROC_DIR`` mode
(several processes, summed by ``MultiProcessCollector``); the Redis hashes
``cachebus stats`` reads keep counting alongside."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from cachebus import CacheBus, Settings
from cachebus.metrics import LayerMetrics
from cachebus.metrics_store import read
from cachebus.prometheus import METRICS, LayerCollector, install
from devtools.redis_servers import RedisServer

ROOT = Path(__file__).resolve().parents[2]


def samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    """(sample name, layer) -> value of the exposition text."""
    out: dict[tuple[str, str], float] = {}
    text = generate_latest(registry).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name, sample.labels.get("layer", "")] = sample.value
    return out


def test_every_layer_counter_is_exported() -> None:
    assert set(METRICS) == set(LayerMetrics.__slots__)
    for name, _ in METRICS.values():
        assert name.startswith("cachebus_cache_") and name.endswith("_total")


def test_hits_and_misses_in_prometheus_output(redis_client: redis.Redis, prefix: str) -> None:
    registry = CollectorRegistry()
    collector = install(registry, multiprocess=False)
    assert isinstance(collector, LayerCollector)
    before = samples(registry)
    bus = CacheBus(redis_client, Settings(prefix=prefix.rstrip(":")))
    cache = bus.query_embeddings("m")
    cache.set("hello", np.ones(4, dtype=np.float32))
    assert cache.get("hello") is not None
    assert cache.get("hello") is not None
    assert cache.get("missing") is None
    after = samples(registry)

    def grew(name: str) -> float:
        key = (name, "query_embeddings")
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew("cachebus_cache_hits_total") == 2
    assert grew("cachebus_cache_misses_total") == 1
    assert grew("cachebus_cache_writes_total") == 1
    assert grew("cachebus_cache_written_bytes_total") > 0
    bus.close()  # the Redis hashes of `cachebus stats` still count
    totals = read(redis_client, prefix.rstrip(":"))["query_embeddings"]
    assert totals["hits"] == 2 and totals["misses"] == 1

    del cache, bus  # a layer that goes away leaves its counts: counters never go down
    import gc

    gc.collect()
    kept = samples(registry)
    assert kept["cachebus_cache_hits_total", "query_embeddings"] == after[
        "cachebus_cache_hits_total", "query_embeddings"
    ]


CHILD = """
import os, sys
import numpy as np
from cachebus import CacheBus, Settings
from cachebus.prometheus import MultiprocessExporter, install
bus = CacheBus.from_settings(Settings(redis_url=sys.argv[1], prefix=sys.argv[2]))
exporter = install()  # PROMETHEUS_MULTIPROC_DIR is set: the multiprocess exporter
assert isinstance(exporter, MultiprocessExporter), exporter
cache = bus.query_embeddings("m")
cache.set("a", np.ones(4, dtype=np.float32))
for _ in range(int(sys.argv[3])):
    assert cache.get("a") is not None
assert cache.get("nope") is None
bus.close()
# exits without calling sync(): the exit hook copies the last counts
"""


def test_multiprocess_mode(redis_server: RedisServer, prefix: str, tmp_path: Path) -> None:
    """Two processes (as gunicorn workers) count into PROMETHEUS_MULTIPROC_DIR; the
    scrape side sums them with prometheus_client's MultiProcessCollector."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for hits in (3, 4):
        done = subprocess.run(
            [sys.executable, "-c", CHILD, redis_server.url, prefix.rstrip(":"), str(hits)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )
        assert done.returncode == 0, done.stderr
    assert list(tmp_path.glob("counter_*.db")), "no multiprocess files written"
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))
    found = samples(registry)
    assert found["cachebus_cache_hits_total", "query_embeddings"] == 7
    assert found["cachebus_cache_misses_total", "query_embeddings"] == 2
    assert found["cachebus_cache_writes_total", "query_embeddings"] == 2


def test_library_spans_on_real_redis(redis_client: redis.Redis, prefix: str) -> None:
    """cachebus.tracing.instrument(): a span per layer read / write and invalidation,
    children of the caller's span; none once it is off again."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from cachebus import tracing
    from cachebus.keys import Tag

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    bus = CacheBus(redis_client, Settings(prefix=prefix.rstrip(":")))
    cache = bus.query_embeddings("m")
    assert tracing.instrument(tracer_provider=provider)
    try:
        with provider.get_tracer("app").start_as_current_span("request") as request:
            cache.set("q", np.ones(4, dtype=np.float32))
            assert cache.get("q") is not None
            bus.invalidator.invalidate(tags=[Tag("doc:1")])
    finally:
        tracing.instrument(False)
    cache.get("q")  # off again: no span
    names = [s.name for s in exporter.get_finished_spans()]
    assert names == [
        "cachebus.query_embeddings.write",
        "cachebus.query_embeddings.read",
        "cachebus.invalidator.invalidate",
        "request",
    ]
    for span in exporter.get_finished_spans()[:3]:
        assert span.parent is not None
        assert span.parent.span_id == request.get_span_context().span_id
    provider.shutdown()


def test_otel_metrics_on_real_redis(redis_client: redis.Redis, prefix: str) -> None:
    """cachebus.otel_metrics: observable counters read at collection time."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from cachebus import otel_metrics

    def points() -> dict[str, float]:
        data = reader.get_metrics_data()
        assert data is not None
        return {
            metric.name: point.value
            for rm in data.resource_metrics
            for sm in rm.scope_metrics
            for metric in sm.metrics
            for point in metric.data.data_points
            if point.attributes == {"layer": "search_results"}
        }

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    assert len(otel_metrics.install(provider)) == len(LayerMetrics.__slots__)
    before = points()
    bus = CacheBus(redis_client, Settings(prefix=prefix.rstrip(":")))
    cache = bus.search_results("idx")
    assert cache.get("q") is None
    after = points()
    assert after["cachebus.cache.misses"] - before.get("cachebus.cache.misses", 0) == 1
    assert after["cachebus.cache.hits"] == before.get("cachebus.cache.hits", 0)
    provider.shutdown()
