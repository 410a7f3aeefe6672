"""A real Kafka Connect worker (standalone mode) on loopback, with Debezium's PostgreSQL
connector installed: :class:`KafkaConnect`.

The jars (``connect-runtime`` and ``connect-json`` of the broker's Kafka version, Debezium's
Postgres connector) come from Maven Central once and are cached
(:mod:`devtools.connect_jars`). The worker talks to a broker (normally a
:class:`devtools.local_kafka.LocalKafka`) and keeps its source offsets in a file of its
temporary directory; connectors are added through its REST API::

    with PostgresServer() as pg, LocalKafka() as kafka, KafkaConnect(kafka.bootstrap) as connect:
        pg.sql("CREATE TABLE documents (...); ALTER TABLE documents REPLICA IDENTITY FULL")
        connect.add_postgres_connector(
            "docs", debezium_postgres_config(pg, topic_prefix="pg", tables=["public.documents"])
        )  # returns once the connector's initial snapshot is done
        # changes to public.documents now land on the topic "pg.public.documents"

Command line::

    python -m devtools.kafka_connect fetch     # resolve the jars (``make setup`` does)
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from devtools.connect_jars import (
    DEFAULT_DEBEZIUM_VERSION,
    ConnectJars,
    resolve_connect_jars,
)
from devtools.kafka_jars import _LOG_TAIL_LINES, _tail
from devtools.kafka_process import _free_ports, _set_pdeathsig

if TYPE_CHECKING:
    from devtools.postgres_server import PostgresServer

__all__ = [
    "DEFAULT_DEBEZIUM_VERSION",
    "ConnectJars",
    "KafkaConnect",
    "debezium_postgres_config",
    "resolve_connect_jars",
]

POSTGRES_CONNECTOR_CLASS = "io.debezium.connector.postgresql.PostgresConnector"
JSON_CONVERTER = "org.apache.kafka.connect.json.JsonConverter"

_LIVE: weakref.WeakSet[KafkaConnect] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    for connect in list(_LIVE):
        with contextlib.suppress(Exception):
            connect.stop(timeout=5.0)


def _progress(message: str) -> None:
    print(f"[devtools.connect] {message}", file=sys.stderr, flush=True)


_LOG4J2 = """\
# written by devtools.kafka_connect.KafkaConnect
status = warn
name = cachebus-kafka-connect
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log_file}
appender.file.append = true
appender.file.layout.type = PatternLayout
# connector.context is "[<connector>|task-0] " on Connect's threads; Debezium's own threads
# carry dbz.* instead: "(dbz <topic.prefix> snapshot|streaming) ". KafkaConnect.wait_streaming
# finds a connector's progress by the latter.
appender.file.layout.pattern = {pattern}
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.clients.name = org.apache.kafka.clients
logger.clients.level = WARN
logger.jetty.name = org.eclipse.jetty
logger.jetty.level = WARN
logger.reflections.name = org.reflections
logger.reflections.level = ERROR
# One line per REST request (status polls) otherwise.
logger.rest.name = org.apache.kafka.connect.runtime.rest.RestServer
logger.rest.level = WARN
"""

_LOG_PATTERN = (
    "[%d] %p %X{connector.context}"
    "%notEmpty{(dbz %X{dbz.connectorLogicalName} %X{dbz.connectorContext}) }%m (%c)%n"
)

# Debezium's line when a connector's task streams from its replication slot, which it only
# does once the initial snapshot (if any) has ended.
_STREAMING = "Processing messages"


def debezium_postgres_config(
    pg: PostgresServer,
    *,
    topic_prefix: str,
    tables: Sequence[str],
    schemas_enable: bool = False,
    database: str | None = None,
    slot_name: str | None = None,
    partitions: int | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The config of a Debezium Postgres connector for ``pg``'s database.

    ``pgoutput`` (built into Postgres 10+, no server plugin to install); one replication slot
    and one publication of just ``tables`` (``schema.table``) per connector, both named after
    ``slot_name`` (default: from ``topic_prefix``); ``database``: another database of ``pg``
    than its default one. Changes of ``schema.table`` go to topic
    ``<topic_prefix>.<schema>.<table>``, keyed by the row's primary key. JSON converters for
    key and value, with or without the schema part (``schemas_enable``). ``partitions``: let
    Connect create the topics with that many partitions (else the broker's default).
    """
    slot = slot_name or re.sub(r"[^a-z0-9_]", "_", f"dbz_{topic_prefix}".lower())
    schemas = "true" if schemas_enable else "false"
    config = {
        "connector.class": POSTGRES_CONNECTOR_CLASS,
        "tasks.max": "1",
        "plugin.name": "pgoutput",
        "database.hostname": pg.host,
        "database.port": str(pg.port),
        "database.user": pg.user,
        "database.password": pg.password,
        "database.dbname": database or pg.database,
        "topic.prefix": topic_prefix,
        "table.include.list": ",".join(tables),
        "slot.name": slot,
        "publication.name": f"{slot}_pub",
        "publication.autocreate.mode": "filtered",
        "snapshot.mode": "initial",
        # A delete is followed by a null-value record (for log compaction) by default; the
        # rules file's `tombstones` says what the worker does with it.
        "tombstones.on.delete": "true",
        "key.converter": JSON_CONVERTER,
        "key.converter.schemas.enable": schemas,
        "value.converter": JSON_CONVERTER,
        "value.converter.schemas.enable": schemas,
        # Small batches, short polls: changes reach Kafka in milliseconds on a test box.
        "poll.interval.ms": "50",
        "status.update.interval.ms": "1000",
    }
    if partitions is not None:
        config["topic.creation.default.partitions"] = str(partitions)
        config["topic.creation.default.replication.factor"] = "1"
    config.update(extra or {})
    return config


class KafkaConnect:
    """A real Kafka Connect worker JVM (standalone mode) on ``127.0.0.1:<free port>``.

    Use as a context manager, or :meth:`start` / :meth:`stop`. Its plugin path holds Debezium's
    Postgres connector; converters default to JSON without schemas (each connector can say
    otherwise). Offsets live in a file of a temporary directory removed by :meth:`stop`.

    Args:
        bootstrap: the Kafka broker (``host:port``).
        rest_port: REST listener port (a free one by default).
        heap: JVM ``-Xmx``.
        startup_timeout: seconds :meth:`start` waits for the REST API to answer.
        kafka_version / debezium_version: jar versions (defaults: the broker's, and
            :data:`DEFAULT_DEBEZIUM_VERSION`).
        worker_properties: extra worker settings, applied last.
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        rest_port: int | None = None,
        heap: str = "384m",
        startup_timeout: float = 120.0,
        kafka_version: str | None = None,
        debezium_version: str | None = None,
        worker_properties: Mapping[str, str] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self._rest_port = rest_port
        self._heap = heap
        self.startup_timeout = startup_timeout
        self._kafka_version = kafka_version
        self._debezium_version = debezium_version
        self._extra = dict(worker_properties or {})
        self._root: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self.jars: ConnectJars | None = None
        #: Seconds the last :meth:`start` took from JVM launch until the REST API answered.
        self.last_startup_seconds: float | None = None

    # -- properties ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The REST API's base URL."""
        if self._rest_port is None:
            raise RuntimeError("KafkaConnect has no port yet: call start() first")
        return f"http://127.0.0.1:{self._rest_port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_file(self) -> Path | None:
        return None if self._root is None else self._root / "connect.log"

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> KafkaConnect:
        """Resolve the jars (first run only), launch the worker, wait for its REST API.

        Raises:
            RuntimeError: jars unavailable, the JVM exited, or the REST API did not answer
                within ``startup_timeout`` (the message holds the end of the worker's log).
        """
        if self.running:
            return self
        try:
            with self._lock:
                self.jars = resolve_connect_jars(self._kafka_version, self._debezium_version)
                self._root = Path(tempfile.mkdtemp(prefix="cachebus-connect-"))
                if self._rest_port is None:
                    (self._rest_port,) = _free_ports(1)
                self._write_config()
                _progress(f"starting Kafka Connect worker on {self.url} ...")
                started = time.monotonic()
                self._launch()
            _LIVE.add(self)
            self._wait_rest(started)
            self.last_startup_seconds = time.monotonic() - started
            _progress(f"Kafka Connect ready in {self.last_startup_seconds:.1f}s")
        except BaseException:
            self.stop(timeout=10.0)
            raise
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (connectors stop, offsets are flushed), SIGKILL after ``timeout`` s; then
        delete the temporary directory. Calling it twice is fine."""
        with self._lock:
            proc = self._proc
            if proc is not None:
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(timeout)
                    except subprocess.TimeoutExpired:
                        with contextlib.suppress(ProcessLookupError):
                            os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait()
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                self._proc = None
            _LIVE.discard(self)
            if self._root is not None:
                shutil.rmtree(self._root, ignore_errors=True)
                self._root = None

    def __enter__(self) -> KafkaConnect:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.url if self._rest_port else "unstarted"
        return f"<KafkaConnect {where} {'running' if self.running else 'stopped'}>"

    # -- REST ---------------------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
        """One REST call; the decoded JSON answer (None for an empty one).

        Raises:
            RuntimeError: an HTTP error status (with the worker's error message).
        """
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:2000]
            raise RuntimeError(
                f"Kafka Connect {method} {path}: HTTP {exc.code}: {detail}"
            ) from None
        return json.loads(raw) if raw.strip() else None

    def connector_status(self, name: str) -> dict[str, Any]:
        status: dict[str, Any] = self.request("GET", f"/connectors/{name}/status")
        return status

    def add_connector(self, name: str, config: Mapping[str, str]) -> None:
        """Create (or reconfigure) connector ``name`` and wait until it and its task run."""
        self.request("PUT", f"/connectors/{name}/config", dict(config))
        self.wait_running(name)

    def add_postgres_connector(
        self, name: str, config: Mapping[str, str], *, timeout: float = 120.0
    ) -> None:
        """Add a Debezium Postgres connector, then wait until its initial snapshot is done
        and it streams changes from the replication slot (see :meth:`wait_streaming`)."""
        started = time.monotonic()
        prefix = config.get("topic.prefix")
        _progress(f"registering Debezium connector {name!r} (topic.prefix={prefix})")
        self.add_connector(name, config)
        self.wait_streaming(name, timeout=timeout)
        took = time.monotonic() - started
        _progress(f"connector {name!r}: snapshot done, streaming ({took:.1f}s)")

    def delete_connector(self, name: str) -> None:
        self.request("DELETE", f"/connectors/{name}")

    def wait_running(self, name: str, timeout: float = 60.0) -> None:
        """Until the connector and all its tasks are RUNNING.

        Raises:
            RuntimeError: one FAILED (with its trace) or the JVM exited.
            TimeoutError: not running within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                status = self.connector_status(name)
            except RuntimeError:  # 404 until the worker has created it
                time.sleep(0.2)
                continue
            states = [status.get("connector", {}).get("state")]
            tasks = status.get("tasks", [])
            states += [t.get("state") for t in tasks]
            if "FAILED" in states:
                traces = [status.get("connector", {}).get("trace")]
                traces += [t.get("trace") for t in tasks]
                trace = "\n".join(t for t in traces if t)
                raise RuntimeError(f"connector {name!r} FAILED:\n{trace[:4000]}")
            if tasks and all(s == "RUNNING" for s in states):
                return
            time.sleep(0.2)
        raise TimeoutError(f"connector {name!r} not RUNNING after {timeout}s: {status}")

    def wait_streaming(self, name: str, timeout: float = 120.0) -> None:
        """Until Debezium connector ``name`` has ended its initial snapshot (if it takes one)
        and streams changes from its replication slot (its task logged so).

        Raises:
            RuntimeError: the task failed or the JVM exited.
            TimeoutError: not streaming within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        config: dict[str, str] = self.request("GET", f"/connectors/{name}/config")
        tag = f"(dbz {config.get('topic.prefix')} streaming) "
        while time.monotonic() < deadline:
            self._check_alive()
            if any(tag in line and _STREAMING in line for line in self._log_lines()):
                return
            status = self.connector_status(name)
            failed = [t for t in status.get("tasks", []) if t.get("state") == "FAILED"]
            if failed:
                raise RuntimeError(
                    f"connector {name!r} task FAILED:\n{str(failed[0].get('trace'))[:4000]}"
                )
            time.sleep(0.2)
        raise TimeoutError(
            f"connector {name!r}: not streaming after {timeout}s\n{self.log_report()}"
        )

    # -- internals ----------------------------------------------------------------------------

    def _write_config(self) -> None:
        assert self._root is not None and self.jars is not None
        props: dict[str, str] = {
            "bootstrap.servers": self.bootstrap,
            "key.converter": JSON_CONVERTER,
            "value.converter": JSON_CONVERTER,
            "key.converter.schemas.enable": "false",
            "value.converter.schemas.enable": "false",
            "offset.storage.file.filename": str(self._root / "connect.offsets"),
            "offset.flush.interval.ms": "1000",
            "plugin.path": str(self.jars.plugin_path),
            # Kafka's own plugins and Debezium's ship ServiceLoader manifests: no slow
            # reflective scan of every jar at startup.
            "plugin.discovery": "service_load",
            "listeners": f"http://127.0.0.1:{self._rest_port}",
            "rest.advertised.host.name": "127.0.0.1",
            "rest.advertised.port": str(self._rest_port),
            "task.shutdown.graceful.timeout.ms": "5000",
            # The source tasks' producer: ordered per partition (idempotent, acks=all).
            "producer.linger.ms": "5",
            "producer.acks": "all",
            **self._extra,
        }
        lines = ["# written by devtools.kafka_connect.KafkaConnect"]
        lines += [f"{k}={v}" for k, v in props.items()]
        (self._root / "worker.properties").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (self._root / "log4j2.properties").write_text(
            _LOG4J2.format(log_file=self._root / "connect.log", pattern=_LOG_PATTERN),
            encoding="utf-8",
        )

    def _launch(self) -> None:
        assert self._root is not None and self.jars is not None
        java = shutil.which("java")
        if java is None:
            raise RuntimeError("cannot start Kafka Connect: `java` (17+) is not on PATH")
        cmd = [
            java,
            f"-Xmx{self._heap}",
            "-XX:TieredStopAtLevel=1",
            "-XX:+UseSerialGC",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self._root / 'log4j2.properties'}",
            "-cp",
            self.jars.classpath,
            "org.apache.kafka.connect.cli.ConnectStandalone",
            str(self._root / "worker.properties"),
        ]
        with (self._root / "stdout.log").open("ab") as out:
            self._proc = subprocess.Popen(
                cmd,
                cwd=self._root,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=(
                    _set_pdeathsig
                    if threading.current_thread() is threading.main_thread()
                    else None
                ),
            )

    def _check_alive(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            code = None if self._proc is None else self._proc.returncode
            raise RuntimeError(f"Kafka Connect worker exited (code {code})\n{self.log_report()}")

    def _wait_rest(self, started: float) -> None:
        deadline = started + self.startup_timeout
        plugins: Any = None
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                info = self.request("GET", "/", timeout=2.0)
                if isinstance(info, dict) and "version" in info:
                    plugins = self.request("GET", "/connector-plugins", timeout=10.0)
                    break
            except (OSError, RuntimeError):  # not listening yet / still starting (503)
                pass
            time.sleep(0.25)
        else:
            raise RuntimeError(
                f"Kafka Connect REST API did not answer on {self.url} within "
                f"{self.startup_timeout}s\n{self.log_report()}"
            )
        if not any(p.get("class") == POSTGRES_CONNECTOR_CLASS for p in plugins or ()):
            raise RuntimeError(
                f"Kafka Connect is up but has no {POSTGRES_CONNECTOR_CLASS} plugin "
                f"(plugin.path={self.jars.plugin_path if self.jars else None}): "
                f"{plugins}\n{self.log_report()}"
            )

    def _log_lines(self) -> list[str]:
        path = self.log_file
        if path is None:
            return []
        try:
            return path.read_text("utf-8", "replace").splitlines()
        except OSError:
            return []

    def log_report(self) -> str:
        """The first ERROR lines and the last lines of the worker's logs."""
        if self._root is None:
            return ""
        parts = []
        errors = [
            line[:500]
            for line in self._log_lines()
            # The plugin scan cannot load Debezium's CloudEventsConverter (its static
            # initialiser looks up a JsonConverter method by reflection and misses it) and
            # logs that at every start; nothing here uses that converter: not worth showing.
            if "] ERROR " in line and "Failed to discover Converter" not in line
        ][:5]
        if errors:
            parts.append("--- first ERROR lines of the Connect log ---\n" + "\n".join(errors))
        for name in ("stdout.log", "connect.log"):
            text = _tail(self._root / name, _LOG_TAIL_LINES)
            if text.strip():
                parts.append(f"--- last lines of {self._root / name} ---\n{text.rstrip()}")
        return "\n".join(parts) or f"(no Connect output in {self._root})"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m devtools.kafka_connect fetch``: resolve the jars into the cache."""
    parser = argparse.ArgumentParser(
        prog="python -m devtools.kafka_connect",
        description="Kafka Connect + Debezium (Postgres) for cachebus's tests and demo.",
    )
    parser.add_argument("action", choices=["fetch"], help="resolve the jars from Maven Central")
    parser.add_argument("--kafka-version", default=None)
    parser.add_argument("--debezium-version", default=None)
    args = parser.parse_args(argv)
    try:
        jars = resolve_connect_jars(args.kafka_version, args.debezium_version)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(jars.libs.parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
