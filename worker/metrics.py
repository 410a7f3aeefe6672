"""Prometheus metrics of the worker (``GET /metrics``; names by the Prometheus
conventions: base units, ``_total`` for counters; docs/operations.md lists them)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

# The *_created series only add noise to dashboards.
disable_created_metrics()  # type: ignore[no-untyped-call]

EVENTS = Counter("cachebus_events_total", "Document events processed, by outcome", ["outcome"])
APPLY_SECONDS = Histogram(
    "cachebus_apply_seconds",
    "Time to apply one batch of invalidations to Redis",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
BATCH_SIZE = Histogram(
    "cachebus_batch_size", "Events per processed batch", buckets=(1, 2, 5, 10, 50, 100, 500, 1000)
)
REDIS_RETRIES = Counter("cachebus_redis_retries_total", "Batches retried because Redis failed")
CONSUMER_LAG = Gauge(
    "cachebus_consumer_lag",
    "Records behind the partition's high-water mark",
    ["topic", "partition"],
)
EVENT_LAG_SECONDS = Histogram(
    "cachebus_event_lag_seconds",
    "Produce-to-audited latency of events (record timestamp to its audit delivered), seconds",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
DURABILITY_SHORTFALLS = Counter(
    "cachebus_durability_shortfalls_total",
    "Batches whose invalidations did not reach the required replicas / fsync in time "
    "(DurabilityError; the batch is retried, nothing acked)",
)
REDIS_FULL = Counter(
    "cachebus_redis_full_total",
    "Batch attempts Redis refused at maxmemory under noeviction (the control keys were "
    "unlinked instead; the batch is retried, nothing acked)",
)
FENCES = Counter(
    "cachebus_fences_total",
    "Fences written: a primary's witness went back (it lost writes), every cached entry "
    "was retired by a new epoch",
)
FENCE_CHECKS = Counter(
    "cachebus_fence_checks_total", "Periodic witness checks, by result", ["result"]
)
