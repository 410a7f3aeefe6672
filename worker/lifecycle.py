"""The worker process lifecycle: exit codes, shutdown timings, the stable data directory,
the batches in flight and the stop sequence (:class:`Lifecycle`), the watchdog that
exits when stopping takes too long. The process entry point is :func:`worker.runtime.run`.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NoReturn

import structlog
from faust.types import EventT

from .audit import SourceRecord
from .monitor import BatchSample
from .processor import Outbound
from .settings import WorkerSettings
from .web import HealthState

log = structlog.get_logger("cachebus.worker")


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


def data_dir(settings: WorkerSettings, name: str | None = None) -> Path:
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
        self._watchdog = threading.Timer(SHUTDOWN_DEADLINE, stop_deadline_passed)
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


def stop_deadline_passed() -> None:
    """In the watchdog thread: the loop did not finish stopping in time."""
    from .logs import emit_raw

    emit_raw(
        "stopping took too long; exiting now (unacknowledged events are re-delivered)",
        deadline_s=SHUTDOWN_DEADLINE,
        exit_code=EXIT_STOP_DEADLINE,
    )
    os._exit(EXIT_STOP_DEADLINE)


def exit_unprocessed(exc: BaseException, events: list[EventT[Any]]) -> NoReturn:
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


def consumer_thread_dead(app: Any) -> bool:
    """faust's consumer thread (aiokafka runs in it) has ended."""
    service = getattr(getattr(app, "_consumer", None), "_thread", None)
    thread = getattr(service, "_thread", None)
    return isinstance(thread, threading.Thread) and thread.ident is not None and not (
        thread.is_alive()
    )
