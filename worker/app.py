"""The faust app: topics and one agent. Wiring only; the logic lives in the
processor, planner and applier.

Faust traps avoided here: agent concurrency 1 (an offset bug loses events above 1);
``noack_take`` plus explicit acks after the audit and dead-letter messages are
delivered (plain ``take`` acks a batch even when the agent raises); Redis
calls have timeouts; faust's web server and table views are off.

The agent processes a batch and sends its audits; a finisher task waits for their
delivery, raises the batch's high-water marks and acks it, in order, while the
agent goes on with the next batch (at most ``MAX_BATCHES_IN_FLIGHT``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import tempfile
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NoReturn

import faust
import structlog
from faust.types import EventT
from redis.exceptions import RedisError

from cachebus.connection import connect_async
from cachebus.settings import Settings

from . import metrics
from .applier import Applier
from .audit import SourceRecord
from .monitor import BatchSample, Monitor, MonitorConfig
from .processor import Outbound, Processor
from .rules import Rules, load_rules
from .web import HealthState, start_web

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
"""On stop, how long the agent waits for its batches in flight to finish."""


@dataclass(slots=True)
class InFlight:
    """A processed batch on its way: audits and dead letters sent, not yet acked."""

    events: list[EventT[Any]]
    records: list[SourceRecord]
    out: Outbound
    deliveries: list[Awaitable[Any]]
    sample: BatchSample | None = None
    """The consistency monitor's note of the batch (worker.monitor)."""


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
    os._exit(70)


def faust_app(settings: Settings, wid: str) -> tuple[faust.App, Any]:
    """The faust app with the worker's settings and its events topic (raw bytes in:
    validation against the JSON Schema is ours, at the edge)."""
    datadir = Path(tempfile.gettempdir()) / f"cachebus-faust-{wid}"
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
        datadir=str(datadir),
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


def create_app(settings: Settings, rules: Rules | None = None) -> faust.App:
    """Build the faust app for these settings."""
    rules = rules or load_rules(settings.rules_file or None)
    wid = worker_id(settings)
    app, events_topic = faust_app(settings, wid)
    health = HealthState()
    state: dict[str, Any] = {}
    monitor_config = MonitorConfig.from_env().checked(settings)  # ConfigError: refuse to start

    async def processor() -> Processor:
        if "processor" not in state:
            client = await connect_async(settings, ping=False)
            state["client"] = client
            state["processor"] = Processor(
                Applier(client, settings), settings, rules, worker_id=wid, health=health
            )
            monitor = Monitor(client, settings, monitor_config, worker_id=wid)
            monitor.start()  # its checks run in a task of their own
            state["monitor"] = monitor
        proc: Processor = state["processor"]
        return proc

    async def redis_ping() -> bool:
        client = state.get("client")
        if client is None:
            return False
        try:
            return bool(await asyncio.wait_for(client.ping(), settings.redis_timeout))
        except (RedisError, TimeoutError, OSError):
            return False

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
            await (await processor()).check_fence()

    @app.task  # type: ignore[untyped-decorator]
    async def serve_health() -> None:
        if settings.web_port:
            state["web"] = await start_web(settings.web_port, health, redis_ping)
            log.info("health and metrics listening", port=settings.web_port)

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
                try:
                    records = [record_of(e) for e in events]
                    # Canaries of sampled documents, before the batch is applied (bounded).
                    sample = await state["monitor"].before(records)
                    out = await proc.process(records)
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
                    raise
                except BaseException as exc:
                    _exit_unprocessed(exc, events)
        finally:
            # Stopping: give the batches already processed (their audits are sent) a
            # moment to finish, so whoever takes the partitions does not redo them.
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
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


def run(settings: Settings) -> None:
    """Create the topics if missing, then run the worker until SIGTERM/SIGINT."""
    from .kafka import ensure_topics
    from .logs import configure

    configure(settings.log_level)
    asyncio.run(ensure_topics(settings))
    app = create_app(settings)
    worker = faust.Worker(app, loglevel=settings.log_level.upper(), quiet=True)
    worker.execute_from_commandline()
