"""The library's per-layer counters for Prometheus (the ``metrics`` extra:
prometheus-client), next to the Redis hashes ``cachebus stats`` reads (which stay).

Nothing is added to the hot path: a get or set keeps its plain integer adds on
:class:`~cachebus.metrics.LayerMetrics`; the exporter reads every live layer of the
process (:data:`cachebus.metrics.LAYERS`) when scraped.

* One process (the default): :func:`install` registers :class:`LayerCollector` in a
  registry (the global one by default), served by ``prometheus_client``'s
  ``start_http_server``, ``make_wsgi_app`` / ``make_asgi_app`` or your framework.
* Several processes (gunicorn and the like, ``PROMETHEUS_MULTIPROC_DIR`` set before
  prometheus_client is imported): :func:`install` starts a daemon thread that copies
  the counters' growth into ``prometheus_client`` counters every ``interval`` s (and once
  at exit), which that mode keeps in the shared directory; the scrape endpoint serves a
  registry with ``prometheus_client.multiprocess.MultiProcessCollector`` as usual.
  Counters of exited processes stay in the totals, as Prometheus expects of counters.

Metrics (every one labelled ``layer``: ``query_embeddings``, ``document_embeddings``,
``search_results``, ...): see :data:`METRICS`.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Iterable, Iterator
from typing import Any, Final

from prometheus_client import REGISTRY, CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from .metrics import LAYERS, LayerMetrics, LayerRegistry

METRICS: Final[dict[str, tuple[str, str]]] = {
    "hits": ("cachebus_cache_hits_total", "Cache lookups that found a valid entry"),
    "misses": ("cachebus_cache_misses_total", "Cache lookups that found no valid entry"),
    "errors": (
        "cachebus_cache_errors_total",
        "Redis errors during reads and writes that failed open (served as misses / not stored)",
    ),
    "writes": ("cachebus_cache_writes_total", "Entries written"),
    "bytes_written": ("cachebus_cache_written_bytes_total", "Bytes of entries written"),
    "writes_refused": (
        "cachebus_cache_writes_refused_total",
        "Values not stored because an invalidation retired them while they were computed",
    ),
    "provider_calls": (
        "cachebus_cache_provider_calls_total",
        "Calls to the embedder / search pipeline made on misses",
    ),
    "provider_calls_avoided": (
        "cachebus_cache_provider_calls_avoided_total",
        "Items served from the cache (or another caller's computation) instead of the provider",
    ),
}
"""LayerMetrics counter -> (Prometheus sample name, help). Every counter is exported."""

DEFAULT_INTERVAL: Final = 5.0
"""Seconds between two copies of the counters in multiprocess mode."""


def _family_name(sample: str) -> str:
    return sample.removesuffix("_total")


class LayerCollector(Collector):
    """Reads the process's layer counters when scraped (one process)."""

    def __init__(self, layers: LayerRegistry = LAYERS) -> None:
        self.layers = layers

    def describe(self) -> Iterable[CounterMetricFamily]:
        return self._families({})

    def collect(self) -> Iterable[CounterMetricFamily]:
        return self._families(self.layers.totals())

    def _families(self, totals: dict[str, LayerMetrics]) -> Iterator[CounterMetricFamily]:
        for field, (name, doc) in METRICS.items():
            family = CounterMetricFamily(_family_name(name), doc, labels=["layer"])
            for layer, metrics in sorted(totals.items()):
                family.add_metric([layer], getattr(metrics, field))
            yield family


class MultiprocessExporter:
    """Copies the layer counters' growth into ``prometheus_client`` counters (which
    ``PROMETHEUS_MULTIPROC_DIR`` mode keeps in shared files), on :meth:`sync`, from a
    daemon thread every ``interval`` s, and at exit."""

    def __init__(
        self,
        registry: CollectorRegistry | None = REGISTRY,
        layers: LayerRegistry = LAYERS,
        interval: float = DEFAULT_INTERVAL,
    ) -> None:
        self.layers = layers
        self.interval = interval
        self.counters = {
            field: Counter(_family_name(name), doc, ["layer"], registry=registry)
            for field, (name, doc) in METRICS.items()
        }
        self._sent: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sync(self) -> None:
        """Add what each counter grew by since the last sync."""
        with self._lock:
            for layer, metrics in self.layers.totals().items():
                for field, counter in self.counters.items():
                    value = getattr(metrics, field)
                    grown = value - self._sent.get((layer, field), 0)
                    if grown > 0:
                        counter.labels(layer).inc(grown)
                        self._sent[layer, field] = value

    def start(self) -> MultiprocessExporter:
        """Sync every ``interval`` s in a daemon thread, and at exit. Start it in each
        worker process (after a fork: e.g. gunicorn's ``post_fork``)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name="cachebus-metrics-sync", daemon=True
            )
            self._thread.start()
            atexit.register(self.sync)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sync()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sync()


def multiprocess_mode() -> bool:
    """Whether prometheus_client runs in multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``)."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def install(
    registry: CollectorRegistry | None = None,
    *,
    multiprocess: bool | None = None,
    interval: float = DEFAULT_INTERVAL,
) -> Any:
    """Export the layer counters: a :class:`LayerCollector` registered in ``registry``
    (the global one by default), or in multiprocess mode (default: when
    ``PROMETHEUS_MULTIPROC_DIR`` is set) a started :class:`MultiprocessExporter`.
    Returns the collector or the exporter."""
    if multiprocess_mode() if multiprocess is None else multiprocess:
        return MultiprocessExporter(registry or REGISTRY, interval=interval).start()
    collector = LayerCollector()
    (registry or REGISTRY).register(collector)
    return collector
