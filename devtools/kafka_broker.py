"""Run a real single-node Apache Kafka broker (KRaft combined mode) for tests and local dev.

No Docker and no Apache download site are needed: the broker jars are resolved once from
Maven Central with ``mvn`` and cached under
``${CACHEBUS_CACHE_DIR:-~/.cache/cachebus}/kafka-<version>/libs``. Set ``KAFKA_HOME`` to use
an unpacked Kafka distribution instead (``$KAFKA_HOME/libs/*``), or set
``CACHEBUS_KAFKA_BOOTSTRAP`` to use an already-running broker and start nothing.

Typical use::

    with LocalKafka() as kafka:
        create_topics(kafka.bootstrap, {"events": 3})
        ...  # produce / consume against kafka.bootstrap

Command line::

    python -m devtools.kafka_broker kafka fetch
    python -m devtools.kafka_broker kafka run [--data-dir D] [--port P]

The helpers live in :mod:`devtools.kafka_jars`, :mod:`devtools.kafka_admin`,
:mod:`devtools.kafka_process` and :mod:`devtools.local_kafka`; this module re-exports them
and is the command line.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence

from devtools.kafka_admin import create_topics, wait_for_kafka
from devtools.kafka_jars import (
    DEFAULT_KAFKA_VERSION,
    _progress,
    kafka_classpath,
    resolve_kafka_libs,
)
from devtools.local_kafka import LocalKafka
from worker.kafka import acreate_topics

__all__ = [
    "DEFAULT_KAFKA_VERSION",
    "LocalKafka",
    "acreate_topics",
    "create_topics",
    "kafka_classpath",
    "main",
    "resolve_kafka_libs",
    "wait_for_kafka",
]


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _cmd_fetch(args: argparse.Namespace) -> int:
    libs = resolve_kafka_libs(args.kafka_version)
    print(libs)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    kafka = LocalKafka(
        args.data_dir,
        port=args.port,
        version=args.kafka_version,
        startup_timeout=args.timeout,
    )
    try:
        kafka.start()
        print(f"KAFKA_BOOTSTRAP={kafka.bootstrap}", flush=True)
        if kafka.log_file is not None:
            _progress(f"broker ready; log: {kafka.log_file}; Ctrl-C to stop")
        while not stop.wait(1.0):
            if not kafka.external and not kafka.running:
                _progress("broker exited unexpectedly\n" + kafka._log_report())
                return 1
        _progress("stopping broker...")
    finally:
        kafka.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m devtools.kafka_broker``."""
    parser = argparse.ArgumentParser(
        prog="python -m devtools.kafka_broker", description="Local test services for cachebus."
    )
    services = parser.add_subparsers(dest="service", required=True)
    kafka = services.add_parser("kafka", help="a real single-node Kafka broker (KRaft)")
    kafka.add_argument("--kafka-version", default=None, help=f"default: {DEFAULT_KAFKA_VERSION}")
    actions = kafka.add_subparsers(dest="action", required=True)
    fetch = actions.add_parser("fetch", help="resolve the broker jars from Maven Central")
    fetch.set_defaults(func=_cmd_fetch)
    run = actions.add_parser("run", help="run a broker in the foreground until Ctrl-C")
    run.add_argument("--data-dir", default=None, help="keep data here (default: temp dir)")
    run.add_argument("--port", type=int, default=None, help="PLAINTEXT port (default: free)")
    run.add_argument("--timeout", type=float, default=90.0, help="startup timeout, seconds")
    run.set_defaults(func=_cmd_run)
    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return result


if __name__ == "__main__":
    sys.exit(main())
