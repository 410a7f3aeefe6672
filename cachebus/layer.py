"""Shared machinery of the cache layers: the thin sync and async shells."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from . import tracing
from .commands import Program
from .errors import CacheBusError, from_user_code
from .keys import KeyScheme
from .metrics import LAYERS, LayerMetrics
from .metrics_store import MetricsPublisher
from .ratelog import fail_open
from .runner import AsyncClient, AsyncRunner, SyncClient, SyncRunner
from .settings import Settings

T = TypeVar("T")


class LayerCore:
    """State every layer's logic needs: settings, key scheme, metrics."""

    layer_name = "layer"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = KeyScheme(settings.prefix)
        self.metrics = LayerMetrics()
        LAYERS.add(self, self.layer_name, self.metrics)  # read by exporters when scraped
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

    def run(
        self,
        program: Program[T],
        *,
        fallback: Callable[[], T] | None = None,
        what: str = "call",
    ) -> T:
        """Run a program of :attr:`core` (or one built on it, e.g. by a service or a
        warming job) on this cache's client, then publish the metrics when due.

        Without ``fallback`` a Redis error raises (as a cachebus error). With it the
        call fails open by :func:`fail_open_or_raise`: a retriable error, unless the
        settings are strict, is counted and logged as a failed ``what`` and
        ``fallback()`` is returned instead (e.g. a miss, or the value computed
        without the cache). With :func:`cachebus.tracing.instrument` on, the call runs
        in a span ``cachebus.<layer>.<what>``."""
        with tracing.layer_span(self.core.layer_name, what):
            try:
                result = self._runner.run(program)
            except CacheBusError as exc:
                if fallback is None:
                    raise
                fail_open_or_raise(self.core, exc, what)
                return fallback()
        self._flush_metrics()
        return result

    def _soft(self, program: Program[T], fallback: T, what: str) -> T:
        """Reads and writes of the layers fail open to a fixed value (see :meth:`run`)."""
        return self.run(program, fallback=lambda: fallback, what=what)

    def _run(self, program: Program[T]) -> T:
        """The layers' own strict calls: :meth:`run` without a fallback."""
        return self.run(program)

    def _flush_metrics(self) -> None:
        """Every ``metrics_flush_interval`` s, add this process's counters to Redis
        (for ``cachebus stats`` across processes); one pipelined round trip."""
        if self.core.publisher.due():
            # On failure the baseline is kept: retried at the next interval.
            with contextlib.suppress(CacheBusError):
                self._runner.run(self.core.publisher.flush(self.core.metrics))

    def flush_metrics(self) -> bool:
        """Publish this layer's counters now, not waiting for the interval (what
        ``CacheBus.flush()`` / ``close()`` call). Fails open like a write (a Redis
        error is logged, rate-limited, and the counters go with the next flush; strict
        settings raise). Returns whether anything was sent."""
        try:
            return self._runner.run(self.core.publisher.flush(self.core.metrics, force=True))
        except CacheBusError as exc:
            fail_open_or_raise(self.core, exc, "metrics flush", count=False)
            return False


class AsyncShell(Generic[C]):
    """Runs a core's programs on an asyncio client with fail-open reads/writes."""

    core: C

    def __init__(self, client: AsyncClient, core: C) -> None:
        self._runner = AsyncRunner(client)
        self.core = core

    @property
    def metrics(self) -> LayerMetrics:
        return self.core.metrics

    async def run(
        self,
        program: Program[T],
        *,
        fallback: Callable[[], Awaitable[T]] | None = None,
        what: str = "call",
    ) -> T:
        """See :meth:`SyncShell.run`; ``fallback`` is awaited."""
        with tracing.layer_span(self.core.layer_name, what):
            try:
                result = await self._runner.run(program)
            except CacheBusError as exc:
                if fallback is None:
                    raise
                fail_open_or_raise(self.core, exc, what)
                return await fallback()
        await self._flush_metrics()
        return result

    async def _soft(self, program: Program[T], fallback: T, what: str) -> T:
        async def value() -> T:
            return fallback

        return await self.run(program, fallback=value, what=what)

    async def _run(self, program: Program[T]) -> T:
        return await self.run(program)

    async def _flush_metrics(self) -> None:
        if self.core.publisher.due():
            with contextlib.suppress(CacheBusError):
                await self._runner.run(self.core.publisher.flush(self.core.metrics))

    async def flush_metrics(self) -> bool:
        """See :meth:`SyncShell.flush_metrics`."""
        try:
            return await self._runner.run(self.core.publisher.flush(self.core.metrics, force=True))
        except CacheBusError as exc:
            fail_open_or_raise(self.core, exc, "metrics flush", count=False)
            return False


def fail_open_or_raise(
    core: LayerCore, exc: CacheBusError, what: str, *, count: bool = True
) -> None:
    """The fail-open policy of every cache call (the layers' reads and writes, the
    services, the metrics flush), in one place: re-raise ``exc`` when the settings are
    strict, the error is not retriable (a denied command is a deployment error, not
    an outage) or it came out of user code the call ran (an embedding provider's
    retriable error is the caller's to handle, see
    :func:`cachebus.errors.mark_user_code`); otherwise count it in ``metrics.errors``
    (unless ``count=False``: a failed metrics flush is no cache error; the publisher
    kept its baseline and the next flush sends the counters) and log it, rate-limited
    (:func:`cachebus.ratelog.fail_open`), and the caller serves its fallback."""
    if core.settings.strict or not exc.retriable or from_user_code(exc):
        raise exc
    if count:
        core.metrics.errors += 1
    fail_open(core.layer_name, what, exc)
