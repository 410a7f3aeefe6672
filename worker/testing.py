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

    python -m worker.testing kafka fetch
    python -m worker.testing kafka run [--data-dir D] [--port P]

This module deliberately depends on nothing but the standard library and aiokafka, so it can
be used by any test suite or script without importing the rest of the project.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import concurrent.futures
import contextlib
import ctypes
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from .kafka import acreate_topics

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

#: Kafka release used when neither the caller nor ``CACHEBUS_KAFKA_VERSION`` picks one.
DEFAULT_KAFKA_VERSION = "4.1.1"
#: log4j2 release matching what Kafka 4.1 ships in its own distribution.
LOG4J_VERSION = "2.24.3"
#: Bumped whenever the embedded pom changes, so stale caches are re-resolved.
_LIBS_LAYOUT = "2"

_T = TypeVar("_T")

_LOG_TAIL_LINES = 60
_MARKER = ".complete"

# Broker settings that make a throwaway single node fast to start and usable by small tests.
_FAST_DEFAULTS: dict[str, str] = {
    "num.partitions": "1",
    "default.replication.factor": "1",
    "min.insync.replicas": "1",
    "auto.create.topics.enable": "true",
    "offsets.topic.replication.factor": "1",
    # Fewer internal partitions: __consumer_offsets is created on the first group join.
    "offsets.topic.num.partitions": "6",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "transaction.state.log.num.partitions": "4",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    # Without this, the first consumer group waits 3 s before its first rebalance.
    "group.initial.rebalance.delay.ms": "0",
    # The machine is small; the defaults (3 network + 8 io threads) only cost memory here.
    "num.network.threads": "2",
    "num.io.threads": "4",
    "background.threads": "4",
    "log.cleaner.threads": "1",
    "num.recovery.threads.per.data.dir": "1",
    # After kill() the restarted controller still holds the dead incarnation's registration
    # and refuses the new one until that session expires (9 s by default): keep it short.
    # 6 missed heartbeats on loopback is still far from a spurious fence.
    "broker.heartbeat.interval.ms": "500",
    "broker.session.timeout.ms": "3000",
}


# --------------------------------------------------------------------------------------------
# Jar resolution
# --------------------------------------------------------------------------------------------

_POM_TEMPLATE = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0"
         xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
         xsi:schemaLocation="http://maven.apache.org/POM/4.0.0
                             http://maven.apache.org/xsd/maven-4.0.0.xsd">
  <modelVersion>4.0.0</modelVersion>
  <groupId>cachebus.local</groupId>
  <artifactId>kafka-broker-libs</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{kafka_version}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>{log4j_version}</version>
    </dependency>
    <!-- kafka_2.13 pins slf4j-api 1.7.36, so the slf4j 1.x binding is the one that loads;
         log4j-slf4j2-impl would be ignored and the broker would log nothing. -->
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j_version}</version>
    </dependency>
  </dependencies>
</project>
"""


def _progress(message: str) -> None:
    print(f"[cachebus.testing] {message}", file=sys.stderr, flush=True)


def _cache_root() -> Path:
    root = os.environ.get("CACHEBUS_CACHE_DIR") or "~/.cache/cachebus"
    return Path(root).expanduser()


def _default_version() -> str:
    return os.environ.get("CACHEBUS_KAFKA_VERSION") or DEFAULT_KAFKA_VERSION


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        with path.open("r", encoding="utf-8", errors="replace") as fh:
            return "".join(deque(fh, maxlen=lines))
    except OSError:
        return ""


def resolve_kafka_libs(version: str | None = None) -> Path:
    """Return a directory holding every jar the Kafka broker needs.

    With ``KAFKA_HOME`` set this is ``$KAFKA_HOME/libs`` and nothing is downloaded. Otherwise
    the jars of ``org.apache.kafka:kafka_2.13:<version>`` plus a log4j2 backend are copied from
    Maven Central by ``mvn dependency:copy-dependencies`` into the cache, once; a marker file
    records a complete download so later calls return at once. Concurrent callers (parallel
    test processes) serialise on a lock file.

    Raises:
        RuntimeError: ``mvn`` is missing or the resolution failed.
    """
    kafka_home = os.environ.get("KAFKA_HOME")
    if kafka_home:
        libs = Path(kafka_home).expanduser() / "libs"
        if not any(libs.glob("kafka_2.13-*.jar")) and not any(libs.glob("kafka_*.jar")):
            raise RuntimeError(f"KAFKA_HOME={kafka_home} has no Kafka jars in {libs}")
        return libs

    version = version or _default_version()
    base = _cache_root() / f"kafka-{version}"
    libs = base / "libs"
    marker = base / _MARKER
    # The marker names what was resolved, so a changed pom invalidates an old cache.
    stamp = f"kafka_2.13 {version}, log4j {LOG4J_VERSION}, layout {_LIBS_LAYOUT}\n"
    if _read_text(marker) == stamp:
        return libs

    base.mkdir(parents=True, exist_ok=True)
    with (base / ".lock").open("w") as lock_fh:
        fcntl.flock(lock_fh, fcntl.LOCK_EX)
        if _read_text(marker) == stamp:  # another process finished while we waited
            return libs
        marker.unlink(missing_ok=True)
        _maven_copy_dependencies(version, base, libs)
        marker.write_text(stamp, encoding="utf-8")
    return libs


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return None


def _maven_copy_dependencies(version: str, base: Path, libs: Path) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise RuntimeError(
            "cannot resolve Kafka jars: `mvn` is not on PATH "
            "(install Maven, or set KAFKA_HOME to an unpacked Kafka distribution)"
        )
    _progress(f"resolving Kafka {version} from Maven Central (first run only)...")
    started = time.monotonic()
    pom = base / "pom.xml"
    pom.write_text(
        _POM_TEMPLATE.format(kafka_version=version, log4j_version=LOG4J_VERSION),
        encoding="utf-8",
    )
    # Download into a scratch dir and rename, so an interrupted run never looks complete.
    partial = base / "libs.partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(libs, ignore_errors=True)
    cmd = [
        mvn,
        "-q",
        "-B",
        "-Dstyle.color=never",  # plain text for the error report below
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={partial}",
        "-DincludeScope=runtime",
    ]
    try:
        # Generous: a cold ~/.m2 fetches ~45 MB of jars plus Maven's own plugins.
        proc = subprocess.run(
            cmd, cwd=base, capture_output=True, text=True, check=False, timeout=900
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"resolving Kafka {version} with Maven timed out after 900s") from None
    if proc.returncode != 0:
        output = "\n".join((proc.stdout + proc.stderr).splitlines()[-_LOG_TAIL_LINES:])
        raise RuntimeError(
            f"resolving Kafka {version} with Maven failed (exit {proc.returncode}): "
            f"{' '.join(cmd)}\n{output}"
        )
    jars = list(partial.glob("*.jar"))
    if not any(j.name.startswith("kafka_2.13-") for j in jars):
        raise RuntimeError(f"Maven finished but no kafka_2.13 jar landed in {partial}")
    partial.rename(libs)
    _progress(
        f"resolved Kafka {version}: {len(jars)} jars in {time.monotonic() - started:.1f}s -> {libs}"
    )


def kafka_classpath(version: str | None = None) -> str:
    """Return a ``java -cp`` value (a ``libs/*`` wildcard) for the broker, resolving if needed."""
    return str(resolve_kafka_libs(version) / "*")


# --------------------------------------------------------------------------------------------
# Client-side helpers (aiokafka)
# --------------------------------------------------------------------------------------------


def _run_sync(factory: Callable[[], Awaitable[_T]]) -> _T:
    """Run a coroutine to completion from sync code, even when an event loop is running.

    A sync helper called from an async test would break ``asyncio.run``; a private thread with
    its own loop works in both cases.
    """

    async def runner() -> _T:
        return await factory()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(runner())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, runner()).result()


async def _probe_metadata(bootstrap: str, timeout_s: float) -> list[Any]:
    """One metadata round trip; returns the broker list the cluster reports."""
    from aiokafka.admin import AIOKafkaAdminClient

    ms = max(int(timeout_s * 1000), 500)
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=ms, retry_backoff_ms=100
    )
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        cluster = await asyncio.wait_for(admin.describe_cluster(), timeout_s)
    finally:
        await admin.close()
    brokers = cluster.get("brokers") or []
    return list(brokers)


async def _wait_ready_async(
    bootstrap: str,
    timeout: float,
    alive: Callable[[], str | None] | None,
) -> None:
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        if alive is not None:
            reason = alive()
            if reason is not None:
                raise RuntimeError(reason)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        # Cheap TCP check first: aiokafka logs every refused connection at ERROR level.
        if not _tcp_open(bootstrap):
            last_error = ConnectionError(f"nothing accepts TCP connections at {bootstrap}")
            await asyncio.sleep(0.2)
            continue
        try:
            if await _probe_metadata(bootstrap, min(5.0, max(remaining, 0.5))):
                return
            last_error = RuntimeError("metadata lists no brokers yet")
        except Exception as exc:  # any failure just means "not ready yet"
            last_error = exc
        await asyncio.sleep(0.2)
    raise TimeoutError(
        f"Kafka at {bootstrap} not ready after {timeout:.0f}s (last error: {last_error!r})"
    )


def _tcp_open(bootstrap: str) -> bool:
    # Only the first address matters here: it is the one clients bootstrap from.
    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=1.0):
            return True
    except (OSError, ValueError):
        return False


def wait_for_kafka(bootstrap: str, timeout: float = 90.0) -> None:
    """Block until a metadata request to ``bootstrap`` succeeds and lists at least one broker.

    Raises:
        TimeoutError: the broker did not answer in time.
    """
    _run_sync(lambda: _wait_ready_async(bootstrap, timeout, None))


def create_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    replication: int = 1,
    timeout: float = 30.0,
) -> None:
    """Sync wrapper of :func:`acreate_topics`; safe to call from inside a running event loop."""
    _run_sync(lambda: acreate_topics(bootstrap, topics, replication, timeout))


# --------------------------------------------------------------------------------------------
# The broker
# --------------------------------------------------------------------------------------------


def _free_ports(count: int) -> list[int]:
    # Hold every socket open until all are picked so the ports are distinct.
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _new_cluster_id() -> str:
    """A Kafka-valid cluster id: base64url of a random UUID, 22 chars, no padding."""
    while True:
        raw = uuid.uuid4().bytes
        text = base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")
        # Kafka's own generator rejects ids starting with '-' (they parse as CLI flags).
        if not text.startswith("-"):
            return text


def _read_properties(path: Path) -> dict[str, str]:
    props: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return props
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "!")) or "=" not in line:
            continue
        key, _, value = line.partition("=")
        props[key.strip()] = value.strip()
    return props


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the forked child
    # If the Python process dies hard (SIGKILL, crash), take the broker down with it instead
    # of leaking a JVM that holds the ports. 1 == PR_SET_PDEATHSIG.
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)


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
        lines = ["# written by worker.testing.LocalKafka", *(f"{k}={v}" for k, v in props.items())]
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


def _error_lines(path: Path, limit: int = 5) -> list[str]:
    found: list[str] = []
    try:
        with path.open("r", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if "] ERROR " in line or "] FATAL " in line:
                    found.append(line.rstrip()[:500])
                    if len(found) >= limit:
                        break
    except OSError:
        pass
    return found


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None


_LOG4J2_TEMPLATE = """\
# written by worker.testing.LocalKafka: everything goes to one file in the data dir.
status = warn
name = cachebus-local-kafka
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log_file}
appender.file.append = true
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
# The request logger and state-change logger are very chatty at INFO.
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
"""


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
    """Entry point of ``python -m worker.testing``."""
    parser = argparse.ArgumentParser(
        prog="python -m worker.testing", description="Local test services for cachebus."
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
