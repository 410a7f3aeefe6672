"""Per-layer counters, kept in process (cheap: plain integer adds)."""

from __future__ import annotations

import threading
import weakref
from dataclasses import asdict, dataclass


@dataclass(slots=True)
class LayerMetrics:
    """Counters of one cache layer in this process."""

    hits: int = 0
    misses: int = 0
    errors: int = 0
    """Redis errors during reads/writes that failed open."""
    writes: int = 0
    bytes_written: int = 0
    writes_refused: int = 0
    """Values not stored because an invalidation retired them while they were computed."""
    provider_calls: int = 0
    """Calls to the embedder/search pipeline made on misses."""
    provider_calls_avoided: int = 0
    """Items served from cache (or from another caller's computation) instead of the provider."""

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def as_dict(self) -> dict[str, float]:
        data: dict[str, float] = dict(asdict(self))
        data["hit_rate"] = round(self.hit_rate, 4)
        return data


class LayerRegistry:
    """Every live layer's :class:`LayerMetrics` in this process, by layer name, for
    exporters that read them when scraped (:mod:`cachebus.prometheus`): the hot path
    keeps its plain integer adds. A layer that is garbage-collected leaves its counts
    in a retired total, so the exported counters never go down."""

    def __init__(self) -> None:
        self._lock = threading.RLock()  # a finalizer may run (GC) while it is held
        self._live: dict[int, tuple[str, LayerMetrics]] = {}
        self._retired: dict[str, LayerMetrics] = {}

    def add(self, owner: object, layer: str, metrics: LayerMetrics) -> None:
        """Count ``metrics`` under ``layer`` while ``owner`` (its layer core) lives."""
        key = id(metrics)
        with self._lock:
            self._live[key] = (layer, metrics)
        weakref.finalize(owner, self._retire, key)

    def _retire(self, key: int) -> None:
        with self._lock:
            found = self._live.pop(key, None)
            if found is not None:  # a new total: a totals() under way keeps its snapshot
                layer, metrics = found
                total = LayerMetrics()
                _add(total, self._retired.get(layer, LayerMetrics()))
                _add(total, metrics)
                self._retired[layer] = total

    def totals(self) -> dict[str, LayerMetrics]:
        """Counters per layer name: the live layers' plus the retired ones'."""
        out: dict[str, LayerMetrics] = {}
        with self._lock:
            snapshot = [*self._live.values(), *self._retired.items()]
        for layer, metrics in snapshot:
            _add(out.setdefault(layer, LayerMetrics()), metrics)
        return out


def _add(total: LayerMetrics, metrics: LayerMetrics) -> None:
    for name in LayerMetrics.__slots__:
        setattr(total, name, getattr(total, name) + getattr(metrics, name))


LAYERS = LayerRegistry()
"""This process's layers (every :class:`~cachebus.layer.LayerCore` adds itself)."""
