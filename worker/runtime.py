"""Running the worker process: :class:`CachebusWorker` (faust.Worker with the shutdown
sequence of :mod:`worker.lifecycle`) and :func:`run`, the entry point of ``cachebus worker``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import warnings
from typing import Any, NoReturn

import faust
import structlog
from redis.exceptions import RedisError

from cachebus.connection import connect_async
from cachebus.errors import ConfigError

from .app import check_config, create_app, kafka_state
from .lifecycle import (
    EXIT_STOPPED,
    FAUST_STOP_TIMEOUT,
    KAFKA_DOWN_STOP_TIMEOUT,
    Lifecycle,
    consumer_thread_dead,
)
from .settings import WorkerSettings
from .web import HealthState, WebServer, start_web

log = structlog.get_logger("cachebus.worker")


class CachebusWorker(faust.Worker):
    """faust's worker, quiet (no banner, spinner or tables), logging through our JSON
    handler (``override_logging=False``), with a stop that works in any state."""

    def __init__(
        self,
        app: faust.App,
        *,
        lifecycle: Lifecycle,
        on_stopped: Any,
        early_stop: asyncio.Event,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, quiet=True, override_logging=False, **kwargs)
        self.spinner = None  # faust then logs "[^Worker]: Ready" instead of drawing
        self.lifecycle = lifecycle
        self._on_stopped = on_stopped
        self._early_stop = early_stop

    @property
    def shortlabel(self) -> str:
        return "Worker"  # faust's log prefix "[^Worker]: ..." (devtools.stack waits for Ready)

    async def on_first_start(self) -> None:
        await super().on_first_start()  # installs faust's signal handlers last
        if self._early_stop.is_set():  # a signal came between startup and here
            self._schedule_shutdown(signal.SIGTERM)

    async def on_startup_finished(self) -> None:
        await super().on_startup_finished()
        if not self.lifecycle.stopping.is_set():
            self.lifecycle.health.phase = "running"
            log.info("worker ready", partitions=kafka_state(self.app)[1])

    def _schedule_shutdown(self, signal: signal.Signals) -> None:
        self.lifecycle.begin_stop(signal.name)
        super()._schedule_shutdown(signal)

    async def _stop_on_signal(self, signal: signal.Signals) -> None:
        life = self.lifecycle
        log.info("stop requested", signal=signal.name, batches_in_progress=life.pending)
        await life.drain()  # the batches already applied: delivered and acked, or not
        # That drain replaces faust's wait for its streams, which would wait forever
        # for a batch abandoned unacknowledged (Redis down). faust then commits what
        # was acknowledged, and nothing else.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.app.conf.stream_wait_empty = False
        if life.pending or life.abandoned_events:
            log.warning(
                "stopping with unfinished work: left unacknowledged, re-delivered later",
                batches=life.pending,
                events_abandoned=life.abandoned_events,
            )
        # With Kafka unreachable faust's final commit retries until the broker is back:
        # give it a short chance only.
        kafka_down = kafka_state(self.app)[0] is not None
        timeout = KAFKA_DOWN_STOP_TIMEOUT if kafka_down else FAUST_STOP_TIMEOUT
        stop = asyncio.ensure_future(super()._stop_on_signal(signal))
        if await self._stopped_in_time(stop, timeout):
            await stop
            return
        # faust's stop hangs when Kafka is unreachable (aiokafka's consumer thread
        # dies of a CancelledError while closing its fetcher, and faust waits for it
        # forever). Everything acknowledged was applied; what was not committed is
        # re-delivered. Close our own resources and leave.
        log.warning(
            "faust did not stop in time; exiting without its clean-up (offsets acknowledged "
            "since the last commit are re-delivered)",
            waited_s=timeout,
            kafka_reachable=not kafka_down,
        )
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._on_stopped(), 3.0)
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        os._exit(EXIT_STOPPED)

    async def _stopped_in_time(self, stop: asyncio.Future[None], timeout: float) -> bool:
        """Until faust's stop finishes (True), at most ``timeout`` s, or until its
        consumer thread has been dead for a second while it has not (False)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        dead_since: float | None = None
        while not stop.done():
            now = loop.time()
            if now >= deadline:
                return False
            if consumer_thread_dead(self.app):
                dead_since = now if dead_since is None else dead_since
                if now - dead_since > 1.0:
                    return False
            await asyncio.wait({stop}, timeout=0.1)
        return True

    async def on_shutdown(self) -> None:
        await super().on_shutdown()
        await self._on_stopped()


def run(settings: WorkerSettings) -> NoReturn:
    """Check the configuration, start the health server, wait for Kafka (creating
    the topics if missing), then run the worker until SIGTERM/SIGINT. Exits with
    ``EXIT_STOPPED`` (0), ``EXIT_CONFIG`` (2), ``EXIT_UNEXPECTED`` (70) or
    ``EXIT_STOP_DEADLINE`` (75); 1 if faust itself crashed."""
    from .kafka import wait_for_topics
    from .logs import configure

    # ConfigError: the CLI prints it as one line and exits 2 (EXIT_CONFIG), before
    # anything was started or connected.
    rules, _ = check_config(settings)
    configure(settings.log_level)

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    health = HealthState()
    health.phase = "starting"
    health.kafka_problem = "not connected yet"
    life = Lifecycle(health)
    early_stop = asyncio.Event()
    resources: dict[str, Any] = {}

    def on_early_signal(sig: signal.Signals) -> None:
        # Before faust runs (it installs its own handlers): stop waiting for Kafka.
        log.info("stop requested", signal=sig.name, phase=health.phase)
        early_stop.set()
        life.begin_stop(sig.name)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_early_signal, sig)

    async def close_resources(quiet: bool = False) -> None:
        state = resources.get("state", {})
        monitor = state.get("monitor")
        if monitor is not None:
            with contextlib.suppress(Exception):
                await monitor.aclose()
        web: WebServer | None = resources.pop("web", None)
        if web is not None:
            with contextlib.suppress(Exception):
                await web.close()
        client = resources.pop("client", None)
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.aclose(), settings.redis_timeout + 1)
        # The stop watchdog keeps running: it also covers faust's teardown after this.
        if quiet or resources.get("stopped_logged"):
            return
        resources["stopped_logged"] = True
        log.info(
            "worker stopped",
            reason=life.reason or "faust stopped",
            events_abandoned=life.abandoned_events,
        )

    async def redis_ping() -> bool:
        client = resources.get("client")
        if client is None:
            return False
        try:
            return bool(await asyncio.wait_for(client.ping(), settings.redis_timeout))
        except (RedisError, TimeoutError, OSError):
            return False

    async def start() -> bool:
        try:
            resources["client"] = await connect_async(settings, ping=False)
        except ValueError as exc:  # redis-py refuses the URL
            raise ConfigError(f"CACHEBUS_REDIS_URL: {exc}") from None
        if settings.web_port:
            try:
                resources["web"] = await start_web(settings.web_port, health, redis_ping)
            except OSError as exc:
                raise ConfigError(
                    f"CACHEBUS_WEB_PORT {settings.web_port}: cannot listen: {exc.strerror or exc}"
                ) from None
            log.info("health and metrics listening", port=settings.web_port)
        health.phase = "waiting_for_kafka"
        health.kafka_problem = "waiting for the broker (startup)"
        return await wait_for_topics(settings, life.stopping, log)

    try:
        ready = loop.run_until_complete(start())
    except BaseException:
        loop.run_until_complete(close_resources(quiet=True))
        loop.close()
        raise
    if not ready:  # stopped while waiting for Kafka
        loop.run_until_complete(close_resources())
        loop.close()
        raise SystemExit(EXIT_STOPPED)

    health.phase = "joining"
    app = create_app(settings, rules, client=resources["client"], health=health, lifecycle=life)
    resources["state"] = app.cachebus_state  # type: ignore[attr-defined]
    health.kafka_probe = lambda: kafka_state(app)
    worker = CachebusWorker(
        app,
        lifecycle=life,
        on_stopped=close_resources,
        early_stop=early_stop,
        loop=loop,
        loglevel=settings.log_level.upper(),
    )
    worker.execute_from_commandline()
