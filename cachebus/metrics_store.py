"""Layer metrics shared across processes, for ``cachebus stats``.

:class:`~cachebus.metrics.LayerMetrics` counts in one process. Processes add
their deltas to one hash per layer, and ``stats`` reads the totals::

    <prefix>:metrics:{<layer>}      hash: counter -> total (HINCRBY)
    <prefix>:metrics:layers         set of layer names that have published

Counters only ever grow; the hash has no TTL (a handful of keys per deployment).
:class:`MetricsPublisher` turns a live ``LayerMetrics`` into periodic deltas
that are never counted twice and not lost when a publish fails.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any

from .commands import Call, Program
from .keys import KeyScheme
from .metrics import LayerMetrics
from .runner import AsyncClient, AsyncRunner, SyncClient, SyncRunner

COUNTERS: tuple[str, ...] = tuple(f.name for f in fields(LayerMetrics))


def metrics_key(keys: KeyScheme, layer_name: str) -> str:
    """``<prefix>:metrics:{<layer>}`` (:meth:`KeyScheme.metrics`)."""
    return keys.metrics(layer_name)


def registry_key(keys: KeyScheme) -> str:
    """``<prefix>:metrics:layers``: the layers :func:`read` reports."""
    return keys.metrics_layers()


def _as_counts(delta: LayerMetrics | Mapping[str, int]) -> dict[str, int]:
    if isinstance(delta, LayerMetrics):
        return {name: int(getattr(delta, name)) for name in COUNTERS}
    unknown = set(delta) - set(COUNTERS)
    if unknown:
        raise ValueError(f"unknown metrics counters: {sorted(unknown)}")
    return {name: int(value) for name, value in delta.items()}


def publish_calls(
    keys: KeyScheme, layer_name: str, delta: LayerMetrics | Mapping[str, int]
) -> list[Call]:
    """HINCRBY per non-zero counter (and SADD to the registry); empty if all are zero."""
    counts = {k: v for k, v in _as_counts(delta).items() if v}
    if not counts:
        return []
    key = metrics_key(keys, layer_name)
    calls = [Call.of("SADD", registry_key(keys), layer_name)]
    calls += [Call.of("HINCRBY", key, name, value) for name, value in counts.items()]
    return calls


def _publish(
    keys: KeyScheme, layer_name: str, delta: LayerMetrics | Mapping[str, int]
) -> Program[None]:
    calls = publish_calls(keys, layer_name, delta)
    if calls:
        yield calls


def _totals(raw: Mapping[Any, Any]) -> dict[str, float]:
    totals: dict[str, float] = {name: 0 for name in COUNTERS}
    for field, value in raw.items():
        name = field.decode() if isinstance(field, bytes) else str(field)
        if name in totals:
            totals[name] = int(value)
    looked = totals["hits"] + totals["misses"]
    totals["hit_rate"] = round(totals["hits"] / looked, 4) if looked else 0.0
    return totals


def _read(keys: KeyScheme) -> Program[dict[str, dict[str, float]]]:
    (members,) = yield [Call.of("SMEMBERS", registry_key(keys))]
    layers = sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)
    if not layers:
        return {}
    replies = yield [Call.of("HGETALL", metrics_key(keys, name)) for name in layers]
    return {name: _totals(_mapping(raw)) for name, raw in zip(layers, replies, strict=True)}


def _mapping(raw: Any) -> Mapping[Any, Any]:
    """HGETALL sent raw: a flat field, value list (RESP2) or a dict (RESP3)."""
    if isinstance(raw, Mapping):
        return raw
    items = list(raw or [])
    return dict(zip(items[::2], items[1::2], strict=True))


def publish(
    client: SyncClient,
    keys_prefix: str,
    layer_name: str,
    metrics_delta: LayerMetrics | Mapping[str, int],
) -> None:
    """Add ``metrics_delta`` (counter -> increment) to the layer's shared totals,
    in one round trip. Raises :class:`~cachebus.errors.CacheUnavailableError`."""
    SyncRunner(client).run(_publish(KeyScheme(keys_prefix), layer_name, metrics_delta))


async def apublish(
    client: AsyncClient,
    keys_prefix: str,
    layer_name: str,
    metrics_delta: LayerMetrics | Mapping[str, int],
) -> None:
    """The asyncio twin of :func:`publish`."""
    await AsyncRunner(client).run(_publish(KeyScheme(keys_prefix), layer_name, metrics_delta))


def read(client: SyncClient, prefix: str) -> dict[str, dict[str, float]]:
    """``{layer: {counter: total, ..., "hit_rate": h}}`` of every layer that published."""
    return SyncRunner(client).run(_read(KeyScheme(prefix)))


async def aread(client: AsyncClient, prefix: str) -> dict[str, dict[str, float]]:
    """The asyncio twin of :func:`read`."""
    return await AsyncRunner(client).run(_read(KeyScheme(prefix)))


class MetricsPublisher:
    """Turns one live :class:`LayerMetrics` into deltas, at most every ``interval`` s.

    :meth:`flush` is a program (run it with the layer's runner). The published
    baseline only moves after the HINCRBYs succeeded, so a failed publish is
    retried with the next flush instead of lost, and nothing is counted twice.
    """

    def __init__(
        self,
        prefix: str,
        layer_name: str,
        *,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.keys = KeyScheme(prefix)
        self.layer_name = layer_name
        self.interval = interval
        self._clock = clock
        self._published = LayerMetrics()
        self._last = clock()

    def due(self) -> bool:
        """Cheap check for the hot path: has ``interval`` passed since the last flush?"""
        return self.interval > 0 and self._clock() - self._last >= self.interval

    def flush(self, metrics: LayerMetrics, *, force: bool = False) -> Program[bool]:
        """Publish what changed since the last successful flush, if due (or ``force``).
        Returns whether anything was sent."""
        if not (force or self.due()):
            return False
        self._last = self._clock()
        current = LayerMetrics(**{n: getattr(metrics, n) for n in COUNTERS})
        delta = {n: getattr(current, n) - getattr(self._published, n) for n in COUNTERS}
        calls = publish_calls(self.keys, self.layer_name, delta)
        if not calls:
            return False
        yield calls  # a Redis error closes the program here: the baseline stays
        self._published = current
        return True
