"""Cache-aside effect: a Zipf query stream through ``cachebus.CachedEmbeddingService``.

The provider is simulated: every ``embed()`` call sleeps a fixed 50 ms (an embedding API's
round trip; one sleep per batch call, whatever the batch size) and returns deterministic
vectors.  ``callers`` threads take queries off one shared stream in order (a service
handling concurrent requests), so the 50 ms misses overlap as they would in production and
the section stays short; herd control (leases) applies when two callers miss the same text.

Without the cache every query is a provider call: the counts are exact by construction and
the latency is measured on a sample of the same stream, called straight on the provider.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import redis

import cachebus

from .client_layers import BenchError

Progress = Callable[[str], None]


@dataclass(frozen=True)
class CacheAsideConfig:
    queries: int
    vocabulary: int
    zipf_s: float
    provider_ms: float
    callers: int
    no_cache_sample: int
    dim: int = 384
    seed: int = 20


class SleepingEmbedder:
    """A provider that takes ``delay_s`` per call: :class:`cachebus.HashingEmbedder` + sleep."""

    def __init__(self, delay_s: float, dim: int) -> None:
        self.delay_s = delay_s
        self.inner = cachebus.HashingEmbedder(dim=dim, model="bench-sim-api", model_version="1")
        self.model = self.inner.model
        self.model_version = self.inner.model_version
        self._lock = threading.Lock()
        self.calls = 0
        self.texts = 0

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        with self._lock:
            self.calls += 1
            self.texts += len(texts)
        time.sleep(self.delay_s)
        return self.inner.embed(texts)


def zipf_stream(cfg: CacheAsideConfig) -> list[str]:
    """``queries`` texts drawn from ``vocabulary`` ranks with P(rank k) ~ 1 / k**s."""
    rng = np.random.default_rng(cfg.seed)
    ranks = np.arange(1, cfg.vocabulary + 1, dtype=np.float64)
    p = ranks**-cfg.zipf_s
    p /= p.sum()
    drawn = rng.choice(cfg.vocabulary, size=cfg.queries, p=p)
    return [f"user question number {int(k)}: how do I configure the search service?" for k in drawn]


def _drive(
    stream: Sequence[str], callers: int, call: Callable[[str], object]
) -> tuple[list[float], float]:
    """Run ``call`` over the stream with ``callers`` threads; per-query latency and wall time."""
    latencies = [0.0] * len(stream)
    nxt = iter(range(len(stream)))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker() -> None:
        while True:
            with lock:
                i = next(nxt, None)
            if i is None:
                return
            t0 = time.perf_counter()
            try:
                call(stream[i])
            except BaseException as exc:  # surfaced after join
                errors.append(exc)
                return
            latencies[i] = time.perf_counter() - t0

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(callers)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise BenchError(f"cache-aside caller failed: {errors[0]!r}")
    return latencies, wall


def _summary(latencies: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(latencies, dtype=np.float64) * 1000
    return {
        "p50_ms": round(float(np.percentile(arr, 50)), 3),
        "p90_ms": round(float(np.percentile(arr, 90)), 3),
        "p99_ms": round(float(np.percentile(arr, 99)), 3),
        "mean_ms": round(float(arr.mean()), 3),
        "sum_s": round(float(arr.sum()) / 1000, 2),
    }


def run(client: redis.Redis, cfg: CacheAsideConfig, progress: Progress) -> dict[str, Any]:
    client.flushdb()
    stream = zipf_stream(cfg)
    distinct = len(set(stream))
    delay = cfg.provider_ms / 1000
    provider = SleepingEmbedder(delay, cfg.dim)
    settings = cachebus.Settings(prefix="bench")
    cache = cachebus.QueryEmbeddingCache(client, provider.model, settings=settings)
    service = cachebus.CachedEmbeddingService(cache, provider)
    progress(
        f"cache-aside: {cfg.queries:,} Zipf(s={cfg.zipf_s}) queries over {cfg.vocabulary:,} "
        f"texts ({distinct:,} distinct), {cfg.callers} callers, provider {cfg.provider_ms:g} ms"
    )
    latencies, wall = _drive(stream, cfg.callers, service.embed)
    half = len(stream) // 2
    seen: set[str] = set()
    first_time = []
    for text in stream:
        first_time.append(text not in seen)
        seen.add(text)
    misses_second_half = sum(first_time[half:])
    metrics = cache.metrics.as_dict()
    if provider.texts < distinct:
        raise BenchError(f"cache-aside: {provider.texts} texts embedded < {distinct} distinct")
    hit_rate = 1 - provider.texts / len(stream)
    summary = _summary(latencies)
    with_cache: dict[str, Any] = {
        "provider_calls": provider.calls,
        "provider_texts": provider.texts,
        "hit_rate": round(hit_rate, 4),
        "hit_rate_second_half_ideal": round(1 - misses_second_half / (len(stream) - half), 4),
        "wall_s": round(wall, 2),
        "queries_per_s": round(len(stream) / wall, 1),
        **summary,
        "library_metrics": metrics,
    }
    progress(
        f"cache-aside with cache: {provider.calls:,} provider calls, hit rate {hit_rate:.1%}, "
        f"p50 {with_cache['p50_ms']:.2f} ms, p99 {with_cache['p99_ms']:.1f} ms, wall {wall:.1f} s"
    )

    # Without the cache: every query is one provider call.  Measured on a sample.
    direct = SleepingEmbedder(delay, cfg.dim)
    sample = stream[: cfg.no_cache_sample]
    lat_direct, wall_direct = _drive(sample, cfg.callers, lambda t: direct.embed([t]))
    direct_summary = _summary(lat_direct)
    mean_s = statistics.mean(lat_direct)
    without: dict[str, Any] = {
        "provider_calls": len(stream),
        "provider_texts": len(stream),
        "hit_rate": 0.0,
        "measured_sample": len(sample),
        "sample_wall_s": round(wall_direct, 2),
        "wall_s_estimated": round(len(stream) * mean_s / cfg.callers, 2),
        **direct_summary,
        "sum_s": round(len(stream) * mean_s, 2),
        "sum_s_note": "sample mean latency x queries",
    }
    progress(
        f"cache-aside without cache: {len(stream):,} provider calls, sample p50 "
        f"{direct_summary['p50_ms']:.2f} ms"
    )
    client.flushdb()
    return {
        "config": {
            "queries": cfg.queries,
            "vocabulary": cfg.vocabulary,
            "zipf_s": cfg.zipf_s,
            "provider_ms": cfg.provider_ms,
            "callers": cfg.callers,
            "dim": cfg.dim,
            "distinct_queries": distinct,
        },
        "with_cache": with_cache,
        "without_cache": without,
        "ratios": {
            "provider_calls": round(provider.calls / len(stream), 4),
            "p50": round(summary["p50_ms"] / direct_summary["p50_ms"], 4),
            "p99": round(summary["p99_ms"] / direct_summary["p99_ms"], 4),
            "latency_sum": round(summary["sum_s"] / (len(stream) * mean_s), 4),
        },
    }
