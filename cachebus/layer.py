"""Shared machinery of the cache layers: the thin sync and async shells."""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Generic, TypeVar

from .commands import Program
from .errors import CacheBusError
from .keys import KeyScheme
from .metrics import LayerMetrics
from .metrics_store import MetricsPublisher
from .runner import AsyncClient, AsyncRunner, SyncClient, SyncRunner
from .settings import Settings

T = TypeVar("T")
log = logging.getLogger("cachebus")


class LayerCore:
    """State every layer's logic needs: settings, key scheme, metrics."""

    layer_name = "layer"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = KeyScheme(settings.prefix)
        self.metrics = LayerMetrics()
        self.publisher = MetricsPublisher(
            settings.prefix, self.layer_name, interval=settings.metrics_flush_interval
        )

    def count(self, values: list[Any]) -> None:
        """Record the hits and misses of one lookup."""
        hits = sum(v is not None for v in values)
        self.metrics.hits += hits
        self.metrics.misses += len(values) - hits


C = TypeVar("C", bound=LayerCore)


class SyncShell(Generic[C]):
    """Runs a core's programs on a sync client with fail-open reads/writes."""

    core: C

    def __init__(self, client: SyncClient, core: C) -> None:
        self._runner = SyncRunner(client)
        self.core = core

    @property
    def metrics(self) -> LayerMetrics:
        return self.core.metrics

    def _run(self, program: Program[T]) -> T:
        result = self._runner.run(program)
        self._flush_metrics()
        return result

    def _soft(self, program: Program[T], fallback: T, what: str) -> T:
        """Reads and writes fail open (counted) unless the settings are strict."""
        try:
            result = self._runner.run(program)
        except CacheBusError as exc:
            return _fail_open(self.core, exc, fallback, what)
        self._flush_metrics()
        return result

    def _flush_metrics(self) -> None:
        """Every ``metrics_flush_interval`` s, add this process's counters to Redis
        (for ``cachebus stats`` across processes); one pipelined round trip."""
        if self.core.publisher.due():
            # On failure the baseline is kept: retried at the next interval.
            with contextlib.suppress(CacheBusError):
                self._runner.run(self.core.publisher.flush(self.core.metrics))


class AsyncShell(Generic[C]):
    """Runs a core's programs on an asyncio client with fail-open reads/writes."""

    core: C

    def __init__(self, client: AsyncClient, core: C) -> None:
        self._runner = AsyncRunner(client)
        self.core = core

    @property
    def metrics(self) -> LayerMetrics:
        return self.core.metrics

    async def _run(self, program: Program[T]) -> T:
        result = await self._runner.run(program)
        await self._flush_metrics()
        return result

    async def _soft(self, program: Program[T], fallback: T, what: str) -> T:
        try:
            result = await self._runner.run(program)
        except CacheBusError as exc:
            return _fail_open(self.core, exc, fallback, what)
        await self._flush_metrics()
        return result

    async def _flush_metrics(self) -> None:
        if self.core.publisher.due():
            with contextlib.suppress(CacheBusError):
                await self._runner.run(self.core.publisher.flush(self.core.metrics))


def _fail_open(core: LayerCore, exc: CacheBusError, fallback: T, what: str) -> T:
    # Only transient failures fail open; a denied command is a deployment error.
    if core.settings.strict or not exc.retriable:
        raise exc
    core.metrics.errors += 1
    log.warning("cachebus %s %s failed open: %s", core.layer_name, what, exc)
    return fallback
