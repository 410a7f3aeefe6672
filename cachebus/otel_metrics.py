"""The library's per-layer counters as OpenTelemetry metrics (the ``otel`` extra), for
services that export metrics through an OTel ``MeterProvider`` (OTLP, or the OTel
Prometheus exporter, which names them as :mod:`cachebus.prometheus` does).

Observable counters read every live layer's counters of the process
(:data:`cachebus.metrics.LAYERS`) when the provider's reader collects: nothing is added
to a get or set. Each has a ``layer`` attribute.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from .metrics import LAYERS, LayerRegistry

INSTRUMENTS: Final[dict[str, tuple[str, str, str]]] = {
    "hits": ("cachebus.cache.hits", "{hit}", "Cache lookups that found a valid entry"),
    "misses": ("cachebus.cache.misses", "{miss}", "Cache lookups that found no valid entry"),
    "errors": ("cachebus.cache.errors", "{error}", "Redis errors that failed open"),
    "writes": ("cachebus.cache.writes", "{write}", "Entries written"),
    "bytes_written": ("cachebus.cache.written", "By", "Bytes of entries written"),
    "writes_refused": (
        "cachebus.cache.writes_refused",
        "{write}",
        "Values not stored because an invalidation retired them while they were computed",
    ),
    "provider_calls": (
        "cachebus.cache.provider_calls", "{call}", "Embedder / search calls made on misses"
    ),
    "provider_calls_avoided": (
        "cachebus.cache.provider_calls_avoided",
        "{call}",
        "Items served from the cache instead of the provider",
    ),
}
"""LayerMetrics counter -> (instrument name, unit, description)."""


def install(meter_provider: Any = None, layers: LayerRegistry = LAYERS) -> list[Any]:
    """Register one observable counter per layer counter with ``meter_provider`` (the
    global one by default). Returns the instruments."""
    meter = (meter_provider or metrics.get_meter_provider()).get_meter("cachebus")
    return [
        meter.create_observable_counter(
            name, callbacks=[_observe(layers, field)], unit=unit, description=doc
        )
        for field, (name, unit, doc) in INSTRUMENTS.items()
    ]


def _observe(
    layers: LayerRegistry, field: str
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(_: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(getattr(m, field), {"layer": layer})
            for layer, m in sorted(layers.totals().items())
        ]

    return callback
