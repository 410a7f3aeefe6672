"""Health and Prometheus metrics endpoints (faust's own web server, with its
table views, stays off)."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


class HealthState:
    """What /health reports; the agent updates it after every batch, the processor
    while it retries a batch, the fence check when it fences."""

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

    @property
    def ok(self) -> bool:
        """Redis answers and the worker is not stuck on a full or non-durable Redis."""
        return self.redis_ok and not self.redis_full and self.durability_shortfall is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.ok else "degraded",
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


async def start_web(
    port: int, state: HealthState, redis_ping: Callable[[], Awaitable[bool]]
) -> web.AppRunner:
    async def health(_: web.Request) -> web.Response:
        state.redis_ok = await redis_ping()
        body = state.as_dict()
        return web.Response(
            text=json.dumps(body),
            status=200 if state.ok else 503,
            content_type="application/json",
        )

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    return runner
