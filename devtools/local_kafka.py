"""A real single-node Apache Kafka broker (KRaft, broker and controller in one JVM) on
loopback: :class:`LocalKafka`.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from devtools.kafka_admin import _run_sync, _wait_ready_async, wait_for_kafka
from devtools.kafka_jars import _LOG_TAIL_LINES, _default_version, _tail, kafka_classpath
from devtools.kafka_process import (
    _FAST_DEFAULTS,
    _LOG4J2_TEMPLATE,
    _error_lines,
    _free_ports,
    _int_or_none,
    _new_cluster_id,
    _port_is_free,
    _read_properties,
    _set_pdeathsig,
)

_LIVE: weakref.WeakSet[LocalKafka] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    for kafka in list(_LIVE):
        with contextlib.suppress(Exception):
            kafka.stop(timeout=5.0)


class LocalKafka:
    """A real single-node Kafka broker (KRaft, broker+controller in one JVM) on loopback.

    Use as a context manager, or call :meth:`start` / :meth:`stop` yourself. Ports are picked
    at random unless given; data lives in a temporary directory removed by :meth:`stop`,
    unless ``data_dir`` is passed, in which case it is kept and reused (an already formatted
    directory keeps its cluster id and its topics).

    If the environment variable ``CACHEBUS_KAFKA_BOOTSTRAP`` is set, nothing is started:
    :attr:`bootstrap` returns that address, :meth:`start` only waits until it answers, and
    :meth:`stop` does nothing (see :attr:`external`).

    Args:
        data_dir: where to keep logs, config and the broker's log dirs; kept on stop.
        port: PLAINTEXT listener port (random free port if ``None``).
        controller_port: CONTROLLER listener port (random free port if ``None``).
        version: Kafka version to resolve from Maven Central (ignored with ``KAFKA_HOME``).
        startup_timeout: seconds :meth:`start` waits for a metadata round trip to succeed.
        heap: JVM ``-Xmx`` value.
        extra_properties: server.properties overrides, applied last.
        jvm_args: extra JVM arguments, put before the main class.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        port: int | None = None,
        controller_port: int | None = None,
        version: str | None = None,
        startup_timeout: float = 90.0,
        heap: str = "512m",
        extra_properties: Mapping[str, str] | None = None,
        jvm_args: Sequence[str] = (),
    ) -> None:
        self._external = os.environ.get("CACHEBUS_KAFKA_BOOTSTRAP") or None
        self._version = version or _default_version()
        self._keep_dir = data_dir is not None
        self._requested_dir = Path(data_dir).expanduser().resolve() if data_dir else None
        self._root: Path | None = None
        self._port = port
        self._controller_port = controller_port
        self.startup_timeout = startup_timeout
        self._heap = heap
        self._extra = dict(extra_properties or {})
        self._jvm_args = list(jvm_args)
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self.cluster_id: str | None = None
        #: Seconds the last :meth:`start` took from JVM launch until the broker was ready.
        self.last_startup_seconds: float | None = None

    # -- public properties ------------------------------------------------------------------

    @property
    def external(self) -> bool:
        """True when ``CACHEBUS_KAFKA_BOOTSTRAP`` points at a broker this object does not own."""
        return self._external is not None

    @property
    def bootstrap(self) -> str:
        """``host:port`` for clients' ``bootstrap_servers``."""
        if self._external is not None:
            return self._external
        if self._port is None:
            raise RuntimeError("LocalKafka has no port yet: call start() first")
        return f"127.0.0.1:{self._port}"

    @property
    def port(self) -> int | None:
        """The PLAINTEXT listener port (``None`` before the first start, or when external)."""
        return None if self._external is not None else self._port

    @property
    def data_dir(self) -> Path | None:
        """Directory with server.properties, logs/ and the broker's data (``None`` if external)."""
        return self._root

    @property
    def log_file(self) -> Path | None:
        """The broker's log4j log file."""
        return None if self._root is None else self._root / "logs" / "server.log"

    @property
    def running(self) -> bool:
        """True while the broker JVM this object started is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """PID of the broker JVM, if running."""
        return self._proc.pid if self.running and self._proc is not None else None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> LocalKafka:
        """Start the broker and block until a client metadata request succeeds.

        Formats the storage on first use; a restart reuses the data dir, ports and cluster id.
        If starting fails, everything is torn down as by :meth:`stop` (a temporary data dir is
        deleted), so a failed ``with LocalKafka()`` leaks no JVM and no directory.

        Raises:
            RuntimeError: the broker could not be set up, exited early or did not become ready
                within ``startup_timeout``; the message holds the tail of the broker's logs.
        """
        if self._external is not None:
            try:
                wait_for_kafka(self._external, self.startup_timeout)
            except TimeoutError as exc:
                raise RuntimeError(f"CACHEBUS_KAFKA_BOOTSTRAP broker unusable: {exc}") from None
            return self
        if self.running:
            return self
        try:
            with self._lock:
                classpath = kafka_classpath(self._version)
                self._prepare_dir()
                self._pick_ports()
                self._write_config()
                self._format_storage(classpath)
                self._launch(classpath)
            _LIVE.add(self)
            started = time.monotonic()
            try:
                _run_sync(
                    lambda: _wait_ready_async(
                        self.bootstrap, self.startup_timeout, self._exit_reason
                    )
                )
            except (RuntimeError, TimeoutError) as exc:
                self._terminate(timeout=10.0)  # flush the broker's last words to its log
                raise RuntimeError(f"{exc}\n{self._log_report()}") from None
            self.last_startup_seconds = time.monotonic() - started
        except BaseException:
            self.stop(timeout=10.0)
            raise
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Shut the broker down (SIGTERM, then SIGKILL after ``timeout`` s) and clean up.

        The data directory is deleted unless the caller supplied it. Calling it twice is fine.
        """
        if self._external is not None:
            return
        self._terminate(timeout)
        _LIVE.discard(self)
        if self._root is not None and not self._keep_dir:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

    def kill(self) -> None:
        """SIGKILL the broker, simulating a crash; data and ports are kept for :meth:`start`."""
        self._require_owned("kill")
        with self._lock:
            proc = self._proc
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()

    def restart(self, timeout: float = 30.0) -> LocalKafka:
        """Gracefully stop and start the same broker: same data, same ports, same bootstrap."""
        self._require_owned("restart")
        self._terminate(timeout)
        return self.start()

    def __enter__(self) -> LocalKafka:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self._external or (f"127.0.0.1:{self._port}" if self._port else "unstarted")
        state = "external" if self._external else ("running" if self.running else "stopped")
        return f"<LocalKafka {where} {state} kafka={self._version}>"

    # -- internals ------------------------------------------------------------------------------

    def _require_owned(self, what: str) -> None:
        if self._external is not None:
            raise RuntimeError(
                f"cannot {what} an external broker (CACHEBUS_KAFKA_BOOTSTRAP={self._external})"
            )

    def _prepare_dir(self) -> None:
        if self._root is None:
            if self._requested_dir is not None:
                self._root = self._requested_dir
                self._root.mkdir(parents=True, exist_ok=True)
            else:
                self._root = Path(tempfile.mkdtemp(prefix="cachebus-kafka-"))
        (self._root / "logs").mkdir(exist_ok=True)
        (self._root / "data").mkdir(exist_ok=True)

    def _pick_ports(self) -> None:
        assert self._root is not None
        if self._port is None or self._controller_port is None:
            # A kept data dir remembers its ports: reuse them when free so the bootstrap
            # address of a long-lived dev broker stays stable across runs.
            previous = _read_properties(self._root / "server.properties")
            old_port = _int_or_none(previous.get("cachebus.port"))
            old_ctrl = _int_or_none(previous.get("cachebus.controller.port"))
            if self._port is None and old_port and _port_is_free(old_port):
                self._port = old_port
            if (
                self._controller_port is None
                and old_ctrl
                and old_ctrl != self._port
                and _port_is_free(old_ctrl)
            ):
                self._controller_port = old_ctrl
        while self._port is None or self._controller_port is None:
            a, b = _free_ports(2)
            if self._port is None:
                self._port = a if a != self._controller_port else b
            if self._controller_port is None:
                self._controller_port = b if b != self._port else a

    def _write_config(self) -> None:
        assert self._root is not None
        p, c = self._port, self._controller_port
        props: dict[str, str] = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{c}",
            "listeners": f"PLAINTEXT://127.0.0.1:{p},CONTROLLER://127.0.0.1:{c}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{p}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self._root / "data"),
            **_FAST_DEFAULTS,
            **self._extra,
        }
        lines = ["# written by devtools.local_kafka.LocalKafka"]
        lines += [f"{k}={v}" for k, v in props.items()]
        # Kafka ignores unknown keys (it logs them); they let a kept data dir reuse its ports.
        lines += [f"cachebus.port={p}", f"cachebus.controller.port={c}"]
        (self._root / "server.properties").write_text("\n".join(lines) + "\n", encoding="utf-8")
        log_file = self._root / "logs" / "server.log"
        (self._root / "log4j2.properties").write_text(
            _LOG4J2_TEMPLATE.format(log_file=log_file), encoding="utf-8"
        )

    def _java_base(self, classpath: str) -> list[str]:
        assert self._root is not None
        java = shutil.which("java")
        if java is None:
            raise RuntimeError("cannot start Kafka: `java` (17+) is not on PATH")
        return [
            java,
            f"-Xmx{self._heap}",
            # A short-lived test broker: C1-only JIT and the serial GC start ~1 s faster and
            # use fewer threads than the server defaults; throughput is plenty for tests.
            "-XX:TieredStopAtLevel=1",
            "-XX:+UseSerialGC",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self._root / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self._root / 'logs'}",
            *self._jvm_args,
            "-cp",
            classpath,
        ]

    def _format_storage(self, classpath: str) -> None:
        assert self._root is not None
        meta = self._root / "data" / "meta.properties"
        if meta.is_file():
            # Already formatted (restart, or a kept data dir): formatting again would fail.
            self.cluster_id = _read_properties(meta).get("cluster.id")
            return
        self.cluster_id = _new_cluster_id()
        cmd = [
            *self._java_base(classpath),
            "kafka.tools.StorageTool",
            "format",
            "-t",
            self.cluster_id,
            "-c",
            str(self._root / "server.properties"),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
        if proc.returncode != 0:
            output = "\n".join((proc.stdout + proc.stderr).splitlines()[-_LOG_TAIL_LINES:])
            raise RuntimeError(
                f"kafka.tools.StorageTool format failed (exit {proc.returncode}):\n{output}\n"
                f"{self._log_report()}"
            )

    def _launch(self, classpath: str) -> None:
        assert self._root is not None
        cmd = [*self._java_base(classpath), "kafka.Kafka", str(self._root / "server.properties")]
        # Append: after a restart the earlier run's output stays readable above.
        with (self._root / "logs" / "stdout.log").open("ab") as out:
            self._proc = subprocess.Popen(
                cmd,
                cwd=self._root,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C aimed at the caller must not race our graceful stop.
                start_new_session=True,
                # PDEATHSIG fires when the *thread* that forked dies, so only arm it from the
                # main thread; elsewhere the atexit hook still cleans up.
                preexec_fn=(
                    _set_pdeathsig
                    if threading.current_thread() is threading.main_thread()
                    else None
                ),
            )

    def _exit_reason(self) -> str | None:
        proc = self._proc
        if proc is None:
            return "Kafka broker process was not started"
        code = proc.poll()
        if code is None:
            return None
        return f"Kafka broker exited early with code {code}"

    def _terminate(self, timeout: float) -> None:
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            self._proc = None

    def _log_report(self) -> str:
        if self._root is None:
            return ""
        parts = []
        # The tail is often one long stack trace; the first ERROR lines usually name the cause.
        errors = _error_lines(self._root / "logs" / "server.log")
        if errors:
            parts.append("--- first ERROR lines of the broker log ---\n" + "\n".join(errors))
        for name in ("stdout.log", "server.log"):
            path = self._root / "logs" / name
            text = _tail(path)
            if text.strip():
                parts.append(f"--- last {_LOG_TAIL_LINES} lines of {path} ---\n{text.rstrip()}")
        return "\n".join(parts) or f"(no broker output in {self._root / 'logs'})"
