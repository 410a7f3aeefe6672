"""The faust app: topics and one agent. Wiring only; the logic lives in the
processor, planner and applier.

Faust traps avoided here: agent concurrency 1 (an offset bug loses events above 1);
``noack_take`` plus explicit acks after the audit and dead-letter messages are
delivered (plain ``take`` acks a batch even when the agent raises); Redis
calls have timeouts; faust's web server and table views are off.

The agent processes a batch and sends its audits; a finisher task waits for their
delivery, raises the batch's high-water marks and acks it, in order, while the
agent goes on with the next batch (at most ``MAX_BATCHES_IN_FLIGHT``).

Lifecycle (:func:`run`): the configuration is checked before anything connects
(exit 2); the health server starts; Kafka is retried until it answers; then faust
runs. SIGTERM/SIGINT in any state: the batch being applied (e.g. retrying against a
dead Redis) is abandoned unacknowledged, the batches already applied get
``DRAIN_SECONDS`` to be delivered and acknowledged, faust commits what was
acknowledged and stops, exit 0. If stopping takes longer than
``SHUTDOWN_DEADLINE`` seconds, a watchdog thread exits with 75. Nothing that was
not applied and audited is ever acknowledged, so an abandoned batch is re-delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
import ssl
import tempfile
import threading
import time
import warnings
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NoReturn

import faust
import structlog
from faust.types import EventT
from redis.exceptions import RedisError

from cachebus.connection import connect_async
from cachebus.errors import ConfigError
from cachebus.runner import AsyncClient
from cachebus.settings import Settings

from . import metrics
from .applier import Applier
from .audit import SourceRecord
from .monitor import BatchSample, Monitor, MonitorConfig
from .processor import Outbound, Processor
from .rules import Rules, load_rules
from .web import HealthState, WebServer, start_web

log = structlog.get_logger("cachebus.worker")


def worker_id(settings: Settings) -> str:
    return settings.worker_id or f"{socket.gethostname()}-{os.getpid()}"


def broker_credentials(settings: Settings) -> Any:
    from .kafka import client_config

    config = client_config(settings)
    protocol = config["security_protocol"]
    if protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=config["sasl_plain_username"],
            password=config["sasl_plain_password"],
            mechanism=config["sasl_mechanism"],
            ssl_context=config.get("ssl_context"),
        )
    if protocol == "SSL":
        return faust.SSLCredentials(config["ssl_context"])
    return None


def record_of(event: EventT[Any]) -> SourceRecord:
    message = event.message
    return SourceRecord(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        timestamp_ms=int(message.timestamp * 1000) if message.timestamp else None,
        key=message.key,
        value=message.value,
    )


MAX_BATCHES_IN_FLIGHT: Final = 3
"""Batches processed whose audits are not yet delivered (their events unacked)."""
DRAIN_SECONDS: Final = 5.0
"""On stop, how long the batches already applied get to be delivered and acked."""
DRAIN_STALL_S: Final = 1.0
"""... but the wait ends once no batch has finished for this long."""
SHUTDOWN_DEADLINE: Final = 20.0
"""Seconds after SIGTERM/SIGINT after which a watchdog exits the process (75),
whatever it is doing (Kubernetes' default grace period is 30 s)."""

FAUST_STOP_TIMEOUT: Final = 8.0
"""After the drain, how long faust gets to commit and leave the group."""
KAFKA_DOWN_STOP_TIMEOUT: Final = 2.0
"""The same when the consumer has lost the broker at the stop request."""

EXIT_STOPPED: Final = 0
"""Stopped by SIGTERM/SIGINT, in any state (work not finished stays unacknowledged)."""
EXIT_CONFIG: Final = 2
"""Invalid configuration (rules file, settings, Kafka TLS files, web port): nothing
was started."""
EXIT_UNEXPECTED: Final = 70
"""An unexpected error while processing a batch: it is re-delivered after a restart."""
EXIT_STOP_DEADLINE: Final = 75
"""Stopping took longer than ``SHUTDOWN_DEADLINE``: exited without finishing it
(nothing unapplied was acknowledged; the rest is re-delivered)."""

DATA_DIR_ENV: Final = "CACHEBUS_DATA_DIR"


def data_dir(settings: Settings, name: str | None = None) -> Path:
    """faust's data directory: ``$CACHEBUS_DATA_DIR`` if set, else
    ``<tmp>/cachebus-faust-<name>`` with ``name`` = ``CACHEBUS_WORKER_ID`` or the host
    name: the same directory on every restart (never the pid). faust keeps nothing
    durable there (tables are in memory), so workers may share it."""
    explicit = os.environ.get(DATA_DIR_ENV, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    name = name or settings.worker_id or socket.gethostname()
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "worker"
    return Path(tempfile.gettempdir()) / f"cachebus-faust-{safe}"


@dataclass(slots=True)
class InFlight:
    """A processed batch on its way: audits and dead letters sent, not yet acked."""

    events: list[EventT[Any]]
    records: list[SourceRecord]
    out: Outbound
    deliveries: list[Awaitable[Any]]
    sample: BatchSample | None = None
    """The consistency monitor's note of the batch (worker.monitor)."""


class Lifecycle:
    """What a stop request changes, shared by the signal handler and the agent.

    On :meth:`begin_stop` the batch being applied is cancelled (it may be retrying
    against a dead Redis forever): its events stay unacknowledged. Batches already
    applied (their audits sent) get until :attr:`drain_deadline` to be delivered and
    acknowledged."""

    def __init__(self, health: HealthState) -> None:
        self.health = health
        self.stopping = asyncio.Event()
        self.reason = ""
        self.drain_deadline = 0.0
        self.pending = 0
        """Batches taken by the agent and neither acknowledged nor abandoned."""
        self.current: asyncio.Future[Outbound] | None = None
        """The batch being applied."""
        self.abandoned_events = 0
        self.last_progress = 0.0
        self._watchdog: threading.Timer | None = None

    def begin_stop(self, reason: str) -> None:
        """Idempotent. Starts the watchdog that ends the process (exit 75) if the stop
        takes longer than ``SHUTDOWN_DEADLINE``."""
        if self.stopping.is_set():
            return
        self.reason = reason
        self.drain_deadline = time.monotonic() + DRAIN_SECONDS
        self.stopping.set()
        self.health.phase = "stopping"
        self._watchdog = threading.Timer(SHUTDOWN_DEADLINE, _stop_deadline_passed)
        self._watchdog.daemon = True
        self._watchdog.start()
        current = self.current
        if current is not None and not current.done():
            current.cancel()

    def drain_remaining(self) -> float:
        return max(0.0, self.drain_deadline - time.monotonic())

    def abandon(self, events: list[EventT[Any]]) -> None:
        self.pending -= 1
        self.abandoned_events += len(events)

    def progressed(self) -> None:
        """A batch was acknowledged."""
        self.pending -= 1
        self.last_progress = time.monotonic()

    async def drain(self) -> None:
        """Until every batch taken is acknowledged or abandoned, at most until the
        drain deadline, and no longer than ``DRAIN_STALL_S`` without a batch
        finishing (its audits cannot be delivered or its marks written: Kafka or
        Redis is down, waiting longer only delays the stop)."""
        since = time.monotonic()
        while self.pending > 0 and self.drain_remaining() > 0:
            if time.monotonic() - max(since, self.last_progress) > DRAIN_STALL_S:
                break
            await asyncio.sleep(0.02)
        self.drain_deadline = min(self.drain_deadline, time.monotonic())  # the agent's too


def _stop_deadline_passed() -> None:
    """In the watchdog thread: the loop did not finish stopping in time."""
    from .logs import emit_raw

    emit_raw(
        "stopping took too long; exiting now (unacknowledged events are re-delivered)",
        deadline_s=SHUTDOWN_DEADLINE,
        exit_code=EXIT_STOP_DEADLINE,
    )
    os._exit(EXIT_STOP_DEADLINE)


def _exit_unprocessed(exc: BaseException, events: list[EventT[Any]]) -> NoReturn:
    """If the agent raised, faust would restart it past this batch (and the events
    buffered behind it) and they would never be processed. Stop the process
    instead: nothing unprocessed is acked, so a restarted worker processes it again."""
    log.critical(
        "unexpected error; exiting so the batch is re-delivered",
        error=repr(exc),
        first_offset=events[0].message.offset if events else None,
        partition=events[0].message.partition if events else None,
        exc_info=exc,
    )
    os._exit(EXIT_UNEXPECTED)


def faust_app(
    settings: Settings, wid: str, datadir: Path | None = None
) -> tuple[faust.App, Any]:
    """The faust app with the worker's settings and its events topic (raw bytes in:
    validation against the JSON Schema is ours, at the edge)."""
    app = faust.App(
        settings.consumer_group,
        broker=[f"kafka://{h.strip()}" for h in settings.kafka_bootstrap.split(",")],
        broker_credentials=broker_credentials(settings),
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        topic_partitions=settings.topic_partitions,
        web_enabled=False,
        autodiscover=False,
        store="memory://",
        datadir=str(datadir or data_dir(settings, wid)),
        broker_commit_interval=1.0,
        broker_session_timeout=settings.kafka_session_timeout,
        broker_heartbeat_interval=max(1.0, settings.kafka_session_timeout / 4),
    )
    events_topic = app.topic(
        settings.events_topic,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.topic_partitions,
    )
    return app, events_topic


def kafka_state(app: Any) -> tuple[str | None, int]:
    """(why the consumer cannot use Kafka, or None; partitions assigned). Reads the
    consumer thread's aiokafka state without creating anything: the group
    coordinator is unknown while the broker is unreachable or the group not joined."""
    consumer = getattr(app, "_consumer", None)
    thread = getattr(consumer, "_thread", None) if consumer is not None else None
    kafka = getattr(thread, "_consumer", None) if thread is not None else None
    if consumer is None or kafka is None:
        return "consumer not started", 0
    try:
        partitions = len(consumer.assignment())
    except Exception:  # not started yet / stopping
        partitions = 0
    coordinator = getattr(kafka, "_coordinator", None)
    if coordinator is None or coordinator.coordinator_id is None:
        return "no group coordinator (broker unreachable, or joining the group)", partitions
    return None, partitions


def check_config(settings: Settings) -> tuple[Rules, MonitorConfig]:
    """Everything that can be checked without connecting: the rules file, the
    monitor's settings, Kafka's security settings and TLS files, the Redis URL.

    Raises:
        ConfigError: one line naming the problem.
    """
    from .kafka import client_config

    rules = load_rules(settings.rules_file or None)
    monitor_config = MonitorConfig.from_env().checked(settings)
    try:
        client_config(settings)
    except (OSError, ssl.SSLError) as exc:
        path = settings.kafka_ssl_cafile
        raise ConfigError(
            f"CACHEBUS_KAFKA_SSL_CAFILE {path!r}: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    if not settings.kafka_bootstrap.strip():
        raise ConfigError("CACHEBUS_KAFKA_BOOTSTRAP is empty")
    return rules, monitor_config


def create_app(
    settings: Settings,
    rules: Rules | None = None,
    *,
    client: AsyncClient | None = None,
    health: HealthState | None = None,
    lifecycle: Lifecycle | None = None,
) -> faust.App:
    """Build the faust app for these settings (the health server is :func:`run`'s)."""
    rules = rules or load_rules(settings.rules_file or None)
    wid = worker_id(settings)
    app, events_topic = faust_app(settings, wid, data_dir(settings))
    health = health or HealthState()
    life = lifecycle or Lifecycle(health)
    state: dict[str, Any] = {}
    if client is not None:
        state["client"] = client
    monitor_config = MonitorConfig.from_env().checked(settings)  # ConfigError: refuse to start

    async def processor() -> Processor:
        if "processor" not in state:
            if "client" not in state:
                state["client"] = await connect_async(settings, ping=False)
            redis = state["client"]
            state["processor"] = Processor(
                Applier(redis, settings), settings, rules, worker_id=wid, health=health
            )
            monitor = Monitor(redis, settings, monitor_config, worker_id=wid)
            monitor.start()  # its checks run in a task of their own
            state["monitor"] = monitor
        proc: Processor = state["processor"]
        return proc

    app.cachebus_state = state  # type: ignore[attr-defined]  # for run()'s clean-up

    processed: dict[Any, int] = {}
    """Last processed offset per topic-partition (for the lag gauge)."""

    @app.timer(interval=5.0)  # type: ignore[untyped-decorator]
    async def report_lag() -> None:
        # Also while the agent is stuck retrying (Redis down), so the gauge grows.
        for tp, offset in processed.items():
            _set_lag(app, tp, offset)

    if settings.fence_check_interval > 0:

        @app.timer(interval=settings.fence_check_interval)  # type: ignore[untyped-decorator]
        async def check_fence() -> None:
            # Witnesses of every primary, also while idle: a primary that lost writes
            # is fenced even if no batch comes (docs/consistency.md).
            if not life.stopping.is_set():
                await (await processor()).check_fence()

    @app.agent(events_topic, concurrency=1)
    async def invalidate(stream: Any) -> None:
        proc = await processor()
        manual = stream.noack()
        # Batches whose audits are on their way: the agent goes on with the next batch
        # meanwhile; one task finishes them in order (delivery, marks, acks).
        in_flight: asyncio.Queue[InFlight] = asyncio.Queue(MAX_BATCHES_IN_FLIGHT)
        finisher = asyncio.ensure_future(finish(manual, in_flight))
        try:
            async for events in manual.noack_take(
                settings.batch_max, settings.batch_wait_ms / 1000
            ):
                life.pending += 1
                if life.stopping.is_set():
                    life.abandon(events)  # never started: stays unacknowledged
                    break
                try:
                    records = [record_of(e) for e in events]
                    # Canaries of sampled documents, before the batch is applied (bounded).
                    sample = await state["monitor"].before(records)
                    if life.stopping.is_set():
                        life.abandon(events)
                        break
                    # A task of its own, so that a stop request can cancel it while it
                    # retries against a dead Redis (Lifecycle.begin_stop).
                    work = asyncio.ensure_future(proc.process(records))
                    life.current = work
                    try:
                        out = await work
                    finally:
                        life.current = None
                    # The transport producer directly: topic.send's per-message machinery
                    # (channels, FutureMessage) costs more than the whole invalidation.
                    producer = app.producer
                    futures = [
                        await producer.send(settings.dlq_topic, k, v, None, None, None)
                        for k, v in out.dead_letters
                    ]
                    futures += [
                        await producer.send(settings.audit_topic, k, v, None, None, None)
                        for k, v in out.audits
                    ]
                    await in_flight.put(InFlight(events, records, out, futures, sample))
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if life.stopping.is_set() and task is not None and not task.cancelling():
                        # Our stop request cancelled the batch, not faust the agent.
                        life.abandon(events)
                        break
                    raise
                except BaseException as exc:
                    _exit_unprocessed(exc, events)
        finally:
            # Stopping: give the batches already processed (their audits are sent) a
            # moment to finish, so whoever takes the partitions does not redo them.
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                if life.stopping.is_set():  # as long as Lifecycle.drain waits
                    while life.pending > 0 and life.drain_remaining() > 0:
                        await asyncio.sleep(0.02)
                else:
                    await asyncio.wait_for(asyncio.shield(in_flight.join()), DRAIN_SECONDS)
            finisher.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await state["monitor"].aclose()  # publish its last counts

    async def finish(manual: Any, in_flight: asyncio.Queue[InFlight]) -> None:
        proc = await processor()
        while True:
            batch = await in_flight.get()
            try:
                await asyncio.gather(*batch.deliveries)  # delivered to Kafka before any ack
                await proc.commit(batch.out)  # then the high-water marks
                for event in batch.events:
                    await manual.ack(event)
                life.progressed()
            except asyncio.CancelledError:
                raise
            except BaseException as exc:
                _exit_unprocessed(exc, batch.events)
            finally:
                in_flight.task_done()
            try:
                _observe(app, batch.events, batch.records, batch.out.outcomes, health, processed)
            except Exception as exc:  # metrics must never take the agent down
                log.warning("metrics update failed", error=repr(exc))
            # Audits delivered: the consistency checks (only enqueued; never raises).
            state["monitor"].after(batch.sample, batch.out)

    log.info(
        "worker configured",
        worker_id=wid,
        group=settings.consumer_group,
        events_topic=settings.events_topic,
        audit_topic=settings.audit_topic,
        dlq_topic=settings.dlq_topic,
        prefix=settings.prefix,
        data_dir=str(app.conf.datadir),
    )
    return app


def _observe(
    app: faust.App,
    events: list[EventT[Any]],
    records: list[SourceRecord],
    outcomes: dict[str, int],
    health: HealthState,
    processed: dict[Any, int],
) -> None:
    import time

    for outcome, count in outcomes.items():
        metrics.EVENTS.labels(outcome).inc(count)
    metrics.BATCH_SIZE.observe(len(records))
    now_ms = time.time() * 1000
    for record in records:
        if record.timestamp_ms:
            metrics.EVENT_LAG_MS.observe(max(0.0, now_ms - record.timestamp_ms))
    for event in events:
        processed[event.message.tp] = event.message.offset
    for tp, offset in processed.items():
        _set_lag(app, tp, offset)
    health.events += len(records)
    health.last_batch_at = time.time()


def _set_lag(app: faust.App, tp: Any, offset: int) -> None:
    """Only for partitions this worker still owns (highwater asserts otherwise)."""
    try:
        if tp not in app.consumer.assignment():
            return
        highwater = app.consumer.highwater(tp)
    except Exception:  # metrics must never take the agent down
        return
    if highwater is not None:
        metrics.CONSUMER_LAG.labels(str(tp.partition)).set(max(0, highwater - offset - 1))


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
        return "Worker"  # faust's log prefix "[^Worker]: ..." (worker.stack waits for Ready)

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
            if _consumer_thread_dead(self.app):
                dead_since = now if dead_since is None else dead_since
                if now - dead_since > 1.0:
                    return False
            await asyncio.wait({stop}, timeout=0.1)
        return True

    async def on_shutdown(self) -> None:
        await super().on_shutdown()
        await self._on_stopped()


def _consumer_thread_dead(app: Any) -> bool:
    """faust's consumer thread (aiokafka runs in it) has ended."""
    service = getattr(getattr(app, "_consumer", None), "_thread", None)
    thread = getattr(service, "_thread", None)
    return isinstance(thread, threading.Thread) and thread.ident is not None and not (
        thread.is_alive()
    )


def run(settings: Settings) -> NoReturn:
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
