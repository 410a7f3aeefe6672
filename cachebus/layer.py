"""Shared machinery of the cache layers: the thin sync and async shells."""

from __future__ import annotations

import logging
from typing import Any, Generic, TypeVar

from .commands import Program
from .errors import CacheBusError
from .keys import KeyScheme
from .metrics import LayerMetrics
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
        return self._runner.run(program)

    def _soft(self, program: Program[T], fallback: T, what: str) -> T:
        """Reads and writes fail open (counted) unless the settings are strict."""
        try:
            return self._runner.run(program)
        except CacheBusError as exc:
            return _fail_open(self.core, exc, fallback, what)


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
        return await self._runner.run(program)

    async def _soft(self, program: Program[T], fallback: T, what: str) -> T:
        try:
            return await self._runner.run(program)
        except CacheBusError as exc:
            return _fail_open(self.core, exc, fallback, what)


def _fail_open(core: LayerCore, exc: CacheBusError, fallback: T, what: str) -> T:
    # Only transient failures fail open; a denied command is a deployment error.
    if core.settings.strict or not exc.retriable:
        raise exc
    core.metrics.errors += 1
    log.warning("cachebus %s %s failed open: %s", core.layer_name, what, exc)
    return fallback
