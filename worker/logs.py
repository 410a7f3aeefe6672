"""JSON logs for the worker: every line on stderr is one JSON object.

Our own log calls (structlog) and everything that logs through the standard library
(faust, mode, aiokafka, asyncio, ``warnings``) go through one handler whose
structlog ``ProcessorFormatter`` renders one JSON object per record: a traceback
or a multi-line message (faust's tables) becomes a field of that object, never
lines of its own.

Two filters on that handler keep a Kafka or Redis outage readable:

* :class:`KnownTransient` lowers aiokafka's ``Group Coordinator Request failed``
  to WARNING when the error is retriable: aiokafka logs it at ERROR while it
  retries the lookup, which on a freshly started broker (the coordinator is being
  elected) and during a broker outage is expected and resolves by itself.
  Non-retriable errors (e.g. authorization) stay at ERROR.
* :class:`RateLimit` lets through at most one record per ``RATE_LIMIT_S`` seconds
  per (logger, message template) of WARNING and above from libraries (aiokafka
  retries a dead broker every 100 ms, each retry an ERROR line); the next record
  that gets through carries ``suppressed``, the number dropped since.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
import time
from typing import Any, Final, TextIO

import structlog

RATE_LIMIT_S: Final = 10.0
"""Library warnings/errors: one line per (logger, template) per this many seconds."""
OWN_LOGGERS: Final = ("cachebus", "worker")
"""Loggers whose records are never rate-limited here (the worker limits its own)."""


class KnownTransient(logging.Filter):
    """aiokafka's retriable ``Group Coordinator Request failed`` is a WARNING."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            record.levelno == logging.ERROR
            and record.name == "aiokafka.consumer.group_coordinator"
            and isinstance(record.msg, str)
            and record.msg.startswith("Group Coordinator Request failed")
            and isinstance(record.args, tuple)
            and record.args
            and getattr(record.args[0], "retriable", False)
        ):
            record.levelno = logging.WARNING
            record.levelname = "WARNING"
            record.transient = "retriable; aiokafka retries the coordinator lookup"
        return True


class RateLimit(logging.Filter):
    """At most one record per ``interval`` per (logger, template), WARNING and up,
    for loggers outside :data:`OWN_LOGGERS`."""

    def __init__(self, interval: float = RATE_LIMIT_S) -> None:
        super().__init__()
        self.interval = interval
        self._lock = threading.Lock()
        self._last: dict[tuple[str, str], float] = {}
        self._dropped: dict[tuple[str, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or record.name.startswith(OWN_LOGGERS):
            return True
        key = (record.name, str(record.msg))
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval:
                self._dropped[key] = self._dropped.get(key, 0) + 1
                return False
            self._last[key] = now
            dropped = self._dropped.pop(key, 0)
            if len(self._last) > 1000:  # templates are few; never grow without bound
                self._last = {key: now}
        if dropped:
            record.suppressed = dropped
        return True


def _formatter() -> structlog.stdlib.ProcessorFormatter:
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    return structlog.stdlib.ProcessorFormatter(
        # Records of the standard library's loggers (faust, aiokafka, ...).
        foreign_pre_chain=[
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ExtraAdder(allow=["suppressed", "transient", "thread_name"]),
            timestamper,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(default=repr),
        ],
    )


_handler: logging.Handler | None = None


def configure(level: str = "info", stream: TextIO | None = None) -> None:
    """JSON lines on stderr (or ``stream``), with ISO timestamps and bound context,
    for structlog and for every standard-library logger. Idempotent."""
    global _handler
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_formatter())
    handler.addFilter(KnownTransient())
    handler.addFilter(RateLimit())
    root = logging.getLogger()
    if _handler is not None and _handler in root.handlers:
        root.removeHandler(_handler)
    for old in list(root.handlers):  # anything that would print plain text
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    _handler = handler
    # Python warnings (ResourceWarning "Unclosed ...", faust's configuration
    # warnings) become records of the "py.warnings" logger: JSON as well.
    logging.captureWarnings(True)
    # An exception that ends a thread (faust runs aiokafka's consumer in one) or
    # the main thread: one JSON record with the traceback in a field.
    threading.excepthook = _thread_excepthook
    sys.excepthook = _excepthook


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread else None
    if issubclass(args.exc_type, asyncio.CancelledError):
        # faust's consumer thread, stopped while the broker is unreachable: aiokafka's
        # fetcher re-raises the cancellation of its pending requests. Not an error.
        logging.getLogger("cachebus.worker").warning(
            "thread ended by a cancellation", extra={"thread_name": name}
        )
        return
    logging.getLogger("cachebus.worker").error(
        "thread ended by an exception",
        extra={"thread_name": name},
        exc_info=(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback),
    )


def _excepthook(exc_type: Any, exc: BaseException, tb: Any) -> None:
    logging.getLogger("cachebus.worker").critical(
        "uncaught exception", exc_info=(exc_type, exc, tb)
    )


def emit_raw(event: str, **fields: Any) -> None:
    """One JSON line straight to stderr's file descriptor, bypassing logging's
    locks: for a watchdog thread that must not block on a stuck handler."""
    import json
    import os
    from datetime import UTC, datetime

    line = {
        **fields,
        "event": event,
        "level": "critical",
        "logger": "cachebus.worker",
        "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    }
    with contextlib.suppress(OSError):
        os.write(2, (json.dumps(line, default=repr) + "\n").encode("utf-8"))
