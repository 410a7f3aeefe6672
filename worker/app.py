"""The faust app: topics and one agent. Wiring only; the logic lives in the
processor, planner and applier.

Faust traps avoided here: agent concurrency 1 (an offset bug loses events above 1);
``noack_take`` plus explicit acks after the audit and dead-letter messages are
delivered (plain ``take`` acks a batch even when the agent raises); Redis
calls have timeouts; faust's web server and table views are off.

The agent processes a batch and sends its audits; a finisher task waits for their
delivery, raises the batch's high-water marks and acks it, in order, while the
agent goes on with the next batch (at most ``MAX_BATCHES_IN_FLIGHT``).

Lifecycle (:func:`worker.runtime.run`, :mod:`worker.lifecycle`): the configuration is
checked before anything connects (exit 2); the health server starts; Kafka is retried
until it answers; then faust runs. SIGTERM/SIGINT in any state: the batch being applied
(e.g. retrying against a dead Redis) is abandoned unacknowledged, the batches already
applied get ``DRAIN_SECONDS`` to be delivered and acknowledged, faust commits what was
acknowledged and stops, exit 0. If stopping takes longer than ``SHUTDOWN_DEADLINE``
seconds, a watchdog thread exits with 75. Nothing that was
not applied and audited is ever acknowledged, so an abandoned batch is re-delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import faust
import structlog
from faust.types import EventT

from cachebus.connection import connect_async
from cachebus.errors import ConfigError
from cachebus.runner import AsyncClient

from . import metrics, tracing
from .applier import Applier
from .audit import SourceRecord, headers_of
from .lifecycle import (
    DRAIN_SECONDS,
    MAX_BATCHES_IN_FLIGHT,
    InFlight,
    Lifecycle,
    data_dir,
    exit_unprocessed,
)
from .monitor import Monitor, MonitorConfig
from .processor import Processor
from .rules import Rules, load_rules
from .settings import WorkerSettings
from .sources import check_topics, sources_of
from .topic_watch import CHECK_INTERVAL, MissingTopicNoise, TopicWatch, forbid_auto_create
from .web import HealthState

log = structlog.get_logger("cachebus.worker")


def worker_id(settings: WorkerSettings) -> str:
    return settings.worker_id or f"{socket.gethostname()}-{os.getpid()}"


def broker_credentials(settings: WorkerSettings) -> Any:
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
        headers=headers_of(message.headers),
    )



def faust_app(
    settings: WorkerSettings,
    wid: str,
    datadir: Path | None = None,
    extra_topics: tuple[str, ...] = (),
) -> tuple[faust.App, Any]:
    """The faust app with the worker's settings and its input topics: the events
    topic and ``extra_topics`` (the rules file's ``[[debezium]]`` topics, created by
    Kafka Connect: faust never declares a topic that is not internal, so their
    partition counts are theirs). Raw bytes in: decoding is ours, at the edge."""
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
        *extra_topics,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.topic_partitions,
    )
    return app, events_topic


def input_topics(settings: WorkerSettings, rules: Rules) -> tuple[str, ...]:
    """The topics the worker consumes: its events topic, then every ``[[debezium]]``
    topic of the rules file.

    Raises:
        ConfigError: a mistake in the rules file's input tables, or a Debezium topic
            that is one of the worker's own.
    """
    return check_topics(
        sources_of(rules),
        events=settings.events_topic,
        outputs=(settings.audit_topic, settings.dlq_topic),
    )


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


def check_config(settings: WorkerSettings) -> tuple[Rules, MonitorConfig]:
    """Everything that can be checked without connecting: the rules file, the
    monitor's settings, Kafka's security settings and TLS files, the Redis URL.

    Raises:
        ConfigError: one line naming the problem.
    """
    from .kafka import client_config

    rules = load_rules(settings.rules_file or None)
    input_topics(settings, rules)  # the [[debezium]] and [cloudevents] tables
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
    tracing.configure()  # OTEL_TRACES_EXPORTER naming an exporter that is not installed
    return rules, monitor_config


def create_app(
    settings: WorkerSettings,
    rules: Rules | None = None,
    *,
    client: AsyncClient | None = None,
    health: HealthState | None = None,
    lifecycle: Lifecycle | None = None,
) -> faust.App:
    """Build the faust app for these settings (the health server is :func:`run`'s)."""
    rules = rules or load_rules(settings.rules_file or None)
    tracing.configure()  # OTEL_TRACES_EXPORTER: ConfigError if its exporter is missing
    wid = worker_id(settings)
    topics = input_topics(settings, rules)  # ConfigError: refuse to start
    # Kafka Connect creates the Debezium topics: never this worker, even on a broker
    # that auto-creates topics; one line while one is missing (worker.topic_watch).
    forbid_auto_create(topics[1:])
    MissingTopicNoise(topics[1:]).install()
    app, events_topic = faust_app(settings, wid, data_dir(settings), topics[1:])
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
            monitor = Monitor(redis, settings, monitor_config, worker_id=wid, rules=rules)
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

    if len(topics) > 1:
        watch = TopicWatch(topics[1:])

        @app.timer(interval=CHECK_INTERVAL)  # type: ignore[untyped-decorator]
        async def watch_input_topics() -> None:
            # Until every Debezium topic exists: its partitions are consumed once it does.
            await watch.check(app)  # never raises

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
                        await producer.send(
                            settings.audit_topic,
                            k,
                            v,
                            None,
                            None,
                            None if audit.trace is None else audit.trace.headers(),
                        )
                        for (k, v), audit in zip(out.audits, out.audit_events, strict=True)
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
                    exit_unprocessed(exc, events)
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
                exit_unprocessed(exc, batch.events)
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
        debezium_topics=list(topics[1:]),
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

    for outcome, count in outcomes.items():
        metrics.EVENTS.labels(outcome).inc(count)
    metrics.BATCH_SIZE.observe(len(records))
    now = time.time()
    for record in records:
        if record.timestamp_ms:
            metrics.EVENT_LAG_SECONDS.observe(max(0.0, now - record.timestamp_ms / 1000))
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
        metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(max(0, highwater - offset - 1))


