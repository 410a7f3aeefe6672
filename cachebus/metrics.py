"""Per-layer counters, kept in process (cheap: plain integer adds)."""

from __future__ import annotations

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
