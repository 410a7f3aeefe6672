"""Liveness, readiness and Prometheus metrics endpoints (faust's own web server,
with its table views, stays off).

* ``GET /livez``: 200 while the process runs and its event loop answers (the
  handler runs on that loop: a blocked loop shows as a probe timeout). Never
  depends on Kafka or Redis, so an outage does not get workers restarted.
* ``GET /readyz``: 200 when the worker is running (faust started, not stopping),
  its Kafka consumer knows its group coordinator (connected to the broker, in the
  group), Redis answers a PING within ``CACHEBUS_REDIS_TIMEOUT``, Redis is not
  full and the last batch was not short of durability; otherwise 503 with the
  reasons in ``reasons``.
* ``GET /health``: the same answer as ``/readyz`` (kept for existing probes).
* ``GET /metrics``: Prometheus text format.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

TICK_S: Final = 1.0
"""How often the loop-lag probe wakes up."""


class HealthState:
    """What the probes report; the agent updates it after every batch, the processor
    while it retries a batch, the fence check when it fences, the worker as it
    goes through its phases."""

    def __init__(self) -> None:
        self.started = time.time()
        self.last_batch_at: float | None = None
        self.redis_ok = True
        self.events = 0
        self.redis_full = False
        """Redis refuses writes (maxmemory under noeviction): a batch waits unacked."""
        self.durability_shortfall: str | None = None
        """Why the batch being retried is not durable (too few replicas / fsyncs)."""
        self.last_fence: dict[str, Any] | None = None
        """The last fence this worker wrote (a primary lost writes)."""
        self.phase: str | None = None
        """starting -> waiting_for_kafka -> joining -> running -> stopping, set by the
        worker (None: not tracked, e.g. a processor without a worker around it)."""
        self.kafka_probe: Callable[[], tuple[str | None, int]] | None = None
        """Returns (why Kafka is not usable or None, partitions assigned); None: not
        tracked."""
        self.kafka_problem: str | None = None
        self.partitions = 0
        self.loop_lag_s = 0.0
        """How late the last tick of the loop-lag probe woke up."""

    @property
    def ok(self) -> bool:
        """Redis answers and the worker is not stuck on a full or non-durable Redis."""
        return self.redis_ok and not self.redis_full and self.durability_shortfall is None

    def refresh_kafka(self) -> None:
        if self.kafka_probe is None:
            return
        try:
            self.kafka_problem, self.partitions = self.kafka_probe()
        except Exception as exc:  # a probe must never break the endpoint
            self.kafka_problem, self.partitions = f"kafka state unknown: {exc!r}", 0

    def reasons(self) -> list[str]:
        """Why the worker is not ready (empty: ready)."""
        out = []
        if self.phase in ("starting", "stopping"):
            out.append(f"worker is {self.phase}")
        elif self.kafka_problem is not None:
            out.append(f"kafka: {self.kafka_problem}")
        elif self.phase == "joining":
            out.append("kafka: joining the consumer group")
        if not self.redis_ok:
            out.append("redis: no answer to PING")
        if self.redis_full:
            out.append("redis: full (maxmemory, noeviction); batches wait unacked")
        if self.durability_shortfall is not None:
            out.append(f"redis: invalidations not durable: {self.durability_shortfall}")
        return out

    def as_dict(self) -> dict[str, Any]:
        reasons = self.reasons()
        return {
            "status": "ok" if not reasons else "degraded",
            "ready": not reasons,
            "reasons": reasons,
            "phase": self.phase,
            "kafka_ok": self.kafka_problem is None,
            "partitions": self.partitions,
            "redis_ok": self.redis_ok,
            "redis_full": self.redis_full,
            "durability_shortfall": self.durability_shortfall,
            "last_fence": self.last_fence,
            "events_processed": self.events,
            "uptime_s": round(time.time() - self.started, 1),
            "last_batch_age_s": (
                None if self.last_batch_at is None else round(time.time() - self.last_batch_at, 1)
            ),
        }

    def liveness(self) -> dict[str, Any]:
        return {
            "status": "alive",
            "phase": self.phase,
            "uptime_s": round(time.time() - self.started, 1),
            "loop_lag_ms": round(self.loop_lag_s * 1000, 1),
        }


class WebServer:
    """The probes' HTTP server and the loop-lag ticker; :meth:`close` stops both."""

    def __init__(self, runner: web.AppRunner, ticker: asyncio.Task[None]) -> None:
        self.runner = runner
        self.ticker = ticker

    async def close(self) -> None:
        self.ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.ticker
        await self.runner.cleanup()

    cleanup = close


async def _tick(state: HealthState) -> None:
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + TICK_S
        await asyncio.sleep(TICK_S)
        state.loop_lag_s = max(0.0, loop.time() - due)


def _json(body: dict[str, Any], status: int) -> web.Response:
    return web.Response(text=json.dumps(body), status=status, content_type="application/json")


async def start_web(
    port: int,
    state: HealthState,
    redis_ping: Callable[[], Awaitable[bool]],
    host: str = "0.0.0.0",  # probes come from the pod network
) -> WebServer:
    async def readiness(_: web.Request) -> web.Response:
        state.redis_ok = await redis_ping()
        state.refresh_kafka()
        body = state.as_dict()
        return _json(body, 200 if body["ready"] else 503)

    async def liveness(_: web.Request) -> web.Response:
        return _json(state.liveness(), 200)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/livez", liveness)
    app.router.add_get("/readyz", readiness)
    app.router.add_get("/health", readiness)
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return WebServer(runner, asyncio.ensure_future(_tick(state)))
