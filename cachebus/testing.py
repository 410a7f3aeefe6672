"""Real, ephemeral Redis servers for tests (in the spirit of ``structlog.testing``).

Nothing here is mocked: every helper starts genuine ``redis-server`` processes on free
loopback ports, with persistence switched off, in throw-away directories.  That lets tests
exercise the things fakes get wrong -- restarts that lose data, hung servers, cluster
slot routing -- without any shared state between test runs.

Public API:

* :func:`find_redis_server` / :func:`find_redis_cli` -- locate the binaries.
* :class:`RedisServer` -- one standalone server (context manager), with ``restart()``,
  ``kill()``, ``suspend()`` / ``resume()`` to simulate failures.
* :class:`RedisClusterServers` -- an N-primary Redis Cluster (context manager).

Environment variables:

* ``CACHEBUS_REDIS_SERVER_BIN`` -- path to ``redis-server`` (``redis-cli`` is looked for
  next to it first).
* ``CACHEBUS_TEST_REDIS_URL`` -- use this existing server instead of starting one
  (:class:`RedisServer` then never starts or stops anything).

Command line (for manual testing / benchmarks)::

    python -m cachebus.testing redis      # prints REDIS_URL=redis://127.0.0.1:P/0
    python -m cachebus.testing cluster    # prints REDIS_CLUSTER_URL=redis://127.0.0.1:P/0

Both stay in the foreground until SIGINT/SIGTERM, then stop the servers.

This module deliberately depends only on the standard library and redis-py, so it can be
imported before (and independently of) the rest of cachebus.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any
from urllib.parse import urlsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

__all__ = [
    "ENV_REDIS_SERVER_BIN",
    "ENV_TEST_REDIS_URL",
    "RedisClusterServers",
    "RedisServer",
    "find_redis_cli",
    "find_redis_server",
    "main",
]

ENV_REDIS_SERVER_BIN = "CACHEBUS_REDIS_SERVER_BIN"
ENV_TEST_REDIS_URL = "CACHEBUS_TEST_REDIS_URL"

LOOPBACK = "127.0.0.1"
CLUSTER_SLOTS = 16384
# Redis Cluster's bus listens on data port + 10000 (unless cluster-port is set, which
# Redis < 7 does not support), so cluster node ports must leave room for it.
CLUSTER_BUS_PORT_OFFSET = 10000

_INSTALL_HINT = "install it with `apt-get install -y redis-server` (or `make setup`)"
_LOG_TAIL_LINES = 40


# --------------------------------------------------------------------------- binaries


def find_redis_server() -> str:
    """Return the absolute path of the ``redis-server`` binary.

    ``$CACHEBUS_REDIS_SERVER_BIN`` wins if set (it must point at an executable file);
    otherwise ``redis-server`` is looked up on ``PATH``.

    Raises:
        RuntimeError: if no usable binary is found.
    """
    override = os.environ.get(ENV_REDIS_SERVER_BIN)
    if override:
        if os.path.isfile(override) and os.access(override, os.X_OK):
            return os.path.abspath(override)
        resolved = shutil.which(override)
        if resolved:
            return resolved
        raise RuntimeError(
            f"redis-server not found: ${ENV_REDIS_SERVER_BIN}={override!r} is not an "
            f"executable; {_INSTALL_HINT}"
        )
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError(f"redis-server not found; {_INSTALL_HINT}")
    return found


def find_redis_cli() -> str:
    """Return the absolute path of the ``redis-cli`` binary.

    Looks next to the ``redis-server`` override first (so a custom build's tools match
    each other), then on ``PATH``.

    Raises:
        RuntimeError: if no usable binary is found.
    """
    override = os.environ.get(ENV_REDIS_SERVER_BIN)
    if override:
        sibling = Path(find_redis_server()).with_name("redis-cli")
        if sibling.is_file() and os.access(sibling, os.X_OK):
            return str(sibling)
    found = shutil.which("redis-cli")
    if found is None:
        raise RuntimeError(f"redis-cli not found; {_INSTALL_HINT}")
    return found


# --------------------------------------------------------------------------- ports


def _port_is_free(port: int) -> bool:
    """True if we can bind a listening socket to 127.0.0.1:port right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR mirrors what redis-server does, so TIME_WAIT leftovers of a
        # previous server on the same port do not make us reject a perfectly usable port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    """Ask the kernel for a currently free loopback port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _free_cluster_ports(count: int) -> list[int]:
    """Pick ``count`` distinct ports whose cluster bus port (port + 10000) is free too."""
    chosen: list[int] = []
    for _ in range(count * 200):
        port = _free_port()
        if port + CLUSTER_BUS_PORT_OFFSET > 65535 or port in chosen:
            # Kernel ephemeral ports are usually 32768-60999: retry until the bus fits.
            continue
        bus = port + CLUSTER_BUS_PORT_OFFSET
        if bus in chosen or any(bus == p + CLUSTER_BUS_PORT_OFFSET for p in chosen):
            continue
        if _port_is_free(bus):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise RuntimeError(f"could not find {count} free port pairs (port, port+10000) on loopback")


# --------------------------------------------------------------------------- helpers


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"<no {path.name}>"
    return "\n".join(text.splitlines()[-lines:])


def _quote_conf(value: str) -> str:
    """Quote a value for redis.conf (paths may contain spaces)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _resp_ping(host: str, port: int, timeout: float) -> str | None:
    """Send a raw PING; return the first reply line, or None if nothing answered.

    Raw RESP instead of redis-py so that servers configured with ``requirepass`` or ACLs
    (which answer ``-NOAUTH``) still count as "up" without us knowing credentials.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            data = b""
            while b"\r\n" not in data:
                chunk = sock.recv(256)
                if not chunk:
                    return None
                data += chunk
    except OSError:
        return None
    return data.split(b"\r\n", 1)[0].decode(errors="replace")


# Servers still running when the interpreter exits are stopped so that a crashed or
# interrupted test run does not leak redis-server processes.  Strong references on
# purpose: a server object dropped without stop() must still be cleaned up.
_LIVE_SERVERS: set[RedisServer] = set()


@atexit.register
def _stop_leftover_servers() -> None:
    for server in list(_LIVE_SERVERS):
        with contextlib.suppress(Exception):
            server.stop()


# --------------------------------------------------------------------------- standalone


class RedisServer:
    """One real, ephemeral ``redis-server`` on a free loopback port.

    Persistence is off (``save ""``, ``appendonly no``), so :meth:`restart` brings the
    server back *empty* on the same port -- exactly what a "Redis restarted" test needs.

    Use as a context manager::

        with RedisServer() as server:
            r = server.client()
            r.set(b"k", b"v")

    If ``$CACHEBUS_TEST_REDIS_URL`` is set (and ``use_env`` is true), nothing is started:
    :attr:`url` is that URL and :meth:`stop` is a no-op.  Process-control methods
    (:meth:`restart`, :meth:`kill`, :meth:`suspend`, :meth:`resume`) then raise.

    Args:
        extra_config: extra ``redis.conf`` lines appended verbatim, e.g.
            ``["requirepass s3cret"]`` or ``["user alice on >pw ~* +@all"]``.
        port: port to listen on; default is a free port chosen at start.
        startup_timeout: seconds to wait for PING to answer.
        redis_server_bin: binary to run; default :func:`find_redis_server`.
        use_env: honour ``$CACHEBUS_TEST_REDIS_URL``.
    """

    def __init__(
        self,
        *,
        extra_config: Sequence[str] = (),
        port: int | None = None,
        startup_timeout: float = 10.0,
        redis_server_bin: str | None = None,
        use_env: bool = True,
    ) -> None:
        self._extra_config = list(extra_config)
        self._requested_port = port
        self._port: int | None = port
        self.startup_timeout = startup_timeout
        self._bin = redis_server_bin
        self._external_url = (os.environ.get(ENV_TEST_REDIS_URL) or None) if use_env else None
        self._dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None
        self._suspended = False
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ properties

    @property
    def external(self) -> bool:
        """True if this wraps an existing server from ``$CACHEBUS_TEST_REDIS_URL``."""
        return self._external_url is not None

    @property
    def host(self) -> str:
        """Host the server listens on (always 127.0.0.1 unless external)."""
        if self._external_url is not None:
            return urlsplit(self._external_url).hostname or "localhost"
        return LOOPBACK

    @property
    def port(self) -> int:
        """TCP port of the server (chosen at :meth:`start` unless given)."""
        if self._external_url is not None:
            return urlsplit(self._external_url).port or 6379
        if self._port is None:
            raise RuntimeError("RedisServer has no port yet: call start() first")
        return self._port

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0`` (or ``$CACHEBUS_TEST_REDIS_URL`` verbatim)."""
        if self._external_url is not None:
            return self._external_url
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """PID of the running redis-server, or None (not started / external)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def directory(self) -> Path | None:
        """Temp directory holding redis.conf and logs while running."""
        return self._dir

    @property
    def log_path(self) -> Path | None:
        """Path of the server's log file while running."""
        return self._dir / "redis.log" if self._dir is not None else None

    @property
    def running(self) -> bool:
        """True if our redis-server process is alive (always True when external)."""
        if self.external:
            return True
        return self._proc is not None and self._proc.poll() is None

    def __repr__(self) -> str:
        state = "external" if self.external else ("running" if self.running else "stopped")
        port = self._port if not self.external else self.port
        return f"<RedisServer {state} port={port} pid={self.pid}>"

    # ------------------------------------------------------------------ clients

    def client(self, **kwargs: Any) -> redis.Redis:
        """A new synchronous :class:`redis.Redis` for this server (kwargs passed through)."""
        return redis.Redis.from_url(self.url, **kwargs)

    def async_client(self, **kwargs: Any) -> redis.asyncio.Redis:
        """A new :class:`redis.asyncio.Redis` for this server; close it with ``aclose()``."""
        return redis.asyncio.Redis.from_url(self.url, **kwargs)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING.  Returns ``self``.

        Raises:
            RuntimeError: the binary is missing, or the server did not come up within
                ``startup_timeout`` (the message carries the log tail).
        """
        with self._lock:
            if self.external or self.running:
                return self
            if self._dir is not None:
                # Killed (or crashed) earlier: come back on the same port.
                self.restart()
                return self
            binary = self._bin or find_redis_server()
            self._dir = Path(tempfile.mkdtemp(prefix="cachebus-redis-"))
            # A free port can be grabbed by someone else between our probe and
            # redis-server's bind(); retry with a new port in that (rare) case.
            attempts = 1 if self._requested_port is not None else 3
            for attempt in range(attempts):
                if self._requested_port is None:
                    self._port = _free_port()
                try:
                    self._spawn(binary)
                    self._wait_ready()
                except RuntimeError:
                    bind_race = "Address already in use" in self.log_tail()
                    self._terminate()
                    if bind_race and attempt + 1 < attempts:
                        continue
                    self._cleanup_dir()
                    raise
                break
            _LIVE_SERVERS.add(self)
            return self

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s) and delete its directory.

        Idempotent; a no-op for an external server.
        """
        with self._lock:
            if self.external:
                return
            self._terminate()
            self._cleanup_dir()
            _LIVE_SERVERS.discard(self)

    def kill(self) -> None:
        """SIGKILL the server immediately (simulates a crash).

        The port and directory are kept: :meth:`restart` (or :meth:`start`) brings it back,
        empty, on the same port; :meth:`stop` cleans up."""
        with self._lock:
            self._require_owned("kill")
            self._terminate(graceful=False)

    def restart(self) -> None:
        """Stop and start again on the SAME port.  All data is lost (no persistence)."""
        with self._lock:
            self._require_owned("restart")
            if self._dir is None:
                raise RuntimeError("RedisServer.restart() called before start()")
            self._terminate()
            self._spawn(self._bin or find_redis_server())
            try:
                self._wait_ready()
            except RuntimeError:
                self._terminate()
                raise

    def suspend(self) -> None:
        """SIGSTOP the server: connections stay open but nothing is answered (a hung
        Redis).  Call :meth:`resume` to continue."""
        with self._lock:
            self._require_owned("suspend")
            proc = self._require_proc()
            proc.send_signal(signal.SIGSTOP)
            self._suspended = True

    def resume(self) -> None:
        """SIGCONT a server paused by :meth:`suspend`."""
        with self._lock:
            self._require_owned("resume")
            proc = self._require_proc()
            proc.send_signal(signal.SIGCONT)
            self._suspended = False

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """Last lines of the server log and of its stdout/stderr (for error messages)."""
        if self._dir is None:
            return "<no log: server not started>"
        return (
            f"--- {self._dir / 'redis.log'} ---\n{_tail(self._dir / 'redis.log', lines)}\n"
            f"--- {self._dir / 'stdout.log'} ---\n{_tail(self._dir / 'stdout.log', lines)}"
        )

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ internals

    def _require_owned(self, what: str) -> None:
        if self.external:
            raise RuntimeError(
                f"RedisServer.{what}() is impossible on an external server "
                f"(${ENV_TEST_REDIS_URL} is set); construct it with use_env=False"
            )

    def _require_proc(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            raise RuntimeError("redis-server is not running")
        return self._proc

    def _write_config(self) -> Path:
        assert self._dir is not None and self._port is not None
        lines = [
            f"bind {LOOPBACK}",
            f"port {self._port}",
            f"dir {_quote_conf(str(self._dir))}",
            f"logfile {_quote_conf(str(self._dir / 'redis.log'))}",
            f"pidfile {_quote_conf(str(self._dir / 'redis.pid'))}",
            'save ""',
            "appendonly no",
            "protected-mode no",
            "daemonize no",
            # Lets tests lower timeouts freely; the default 'notice' is enough for errors.
            "loglevel notice",
            *self._extra_config,
        ]
        conf = self._dir / "redis.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def _spawn(self, binary: str) -> None:
        assert self._dir is not None
        conf = self._write_config()
        # Truncate the redis log so a restart's error tail is not the previous run's.
        (self._dir / "redis.log").write_bytes(b"")
        self._close_out()
        # Early startup errors (bad config lines) go to stderr, before the logfile opens.
        self._out = open(self._dir / "stdout.log", "wb")  # noqa: SIM115 - closed in _terminate
        self._proc = subprocess.Popen(
            [binary, str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            cwd=self._dir,
        )
        self._suspended = False

    def _wait_ready(self) -> None:
        assert self._proc is not None and self._port is not None
        deadline = time.monotonic() + self.startup_timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                raise RuntimeError(
                    f"redis-server on port {self._port} exited with code {code} during "
                    f"startup\n{self.log_tail()}"
                )
            reply = _resp_ping(LOOPBACK, self._port, timeout=0.5)
            # -LOADING / -BUSY mean the server is alive but not usable yet.
            if reply is not None and not reply.startswith(("-LOADING", "-BUSY")):
                # Guard against answering on behalf of a foreign process that owns the
                # port while ours failed to bind: ours must still be alive.
                time.sleep(0.01)
                if self._proc.poll() is None:
                    return
                continue
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"redis-server on port {self._port} did not answer PING within "
                    f"{self.startup_timeout:g}s\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def _terminate(self, *, graceful: bool = True) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            if self._suspended:
                # A stopped process would not act on SIGTERM until continued.
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGCONT)
            if graceful:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
            else:
                proc.kill()
        if proc is not None:
            # Always reap, so no zombie and no ResourceWarning from Popen.__del__.
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self._suspended = False
        self._close_out()

    def _close_out(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

    def _cleanup_dir(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        if self._requested_port is None:
            self._port = None


# --------------------------------------------------------------------------- cluster


def _cluster_info(host: str, port: int) -> dict[str, str]:
    """``CLUSTER INFO`` of one node as a str->str dict (empty if unreachable)."""
    conn = redis.Redis(
        host=host, port=port, socket_timeout=1.0, socket_connect_timeout=1.0, decode_responses=True
    )
    try:
        raw: object = conn.cluster("INFO")
    except redis.RedisError:
        return {}
    finally:
        conn.close()
    # redis-py may or may not parse this reply depending on version; accept both.
    if isinstance(raw, dict):
        return {str(k): str(v) for k, v in raw.items()}
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition(":")
        if sep:
            info[key] = value
    return info


class RedisClusterServers:
    """A real Redis Cluster of ``nodes`` primaries (no replicas) on free loopback ports.

    Each node is a :class:`RedisServer` with ``cluster-enabled yes`` in its own temp
    directory; slots are assigned with ``redis-cli --cluster create``.  :meth:`start`
    returns only once every node reports ``cluster_state:ok`` with all 16384 slots
    covered and every other node known, so clients can be used straight away.

    ``$CACHEBUS_TEST_REDIS_URL`` is ignored here (it names a standalone server).

    Args:
        nodes: number of primaries (>= 3, the minimum ``redis-cli`` accepts).
        startup_timeout: seconds to wait for the cluster to converge after creation.
        node_startup_timeout: seconds each node gets to answer PING.
        extra_config: extra ``redis.conf`` lines for every node (no auth: ``redis-cli
            --cluster create`` is run without credentials).
    """

    def __init__(
        self,
        nodes: int = 3,
        *,
        startup_timeout: float = 20.0,
        node_startup_timeout: float = 10.0,
        extra_config: Sequence[str] = (),
    ) -> None:
        if nodes < 3:
            raise ValueError("a Redis Cluster needs at least 3 primaries")
        self.num_nodes = nodes
        self.startup_timeout = startup_timeout
        self.node_startup_timeout = node_startup_timeout
        self._extra_config = list(extra_config)
        self.servers: list[RedisServer] = []
        self._create_output = ""

    @property
    def ports(self) -> list[int]:
        """Data ports of the nodes, in creation order."""
        return [s.port for s in self.servers]

    @property
    def host(self) -> str:
        """Host all nodes listen on (127.0.0.1)."""
        return LOOPBACK

    @property
    def port(self) -> int:
        """Port of the first node."""
        return self._first().port

    @property
    def startup_nodes(self) -> list[redis.cluster.ClusterNode]:
        """One :class:`redis.cluster.ClusterNode` per node, for ``RedisCluster(...)``."""
        # ClusterNode.__init__ is unannotated in redis-py; a typed alias keeps mypy
        # --strict happy without a version-dependent "type: ignore".
        make_node: Callable[[str, int], redis.cluster.ClusterNode] = redis.cluster.ClusterNode
        return [make_node(LOOPBACK, s.port) for s in self.servers]

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0`` of the first node (works with ``from_url``)."""
        return self._first().url

    @property
    def urls(self) -> list[str]:
        """URL of every node."""
        return [s.url for s in self.servers]

    def __repr__(self) -> str:
        return f"<RedisClusterServers nodes={self.num_nodes} ports={self.ports}>"

    def client(self, **kwargs: Any) -> redis.cluster.RedisCluster:
        """A new synchronous :class:`redis.cluster.RedisCluster` (kwargs passed through)."""
        return redis.cluster.RedisCluster(host=LOOPBACK, port=self.port, **kwargs)

    def async_client(self, **kwargs: Any) -> redis.asyncio.cluster.RedisCluster:
        """A new :class:`redis.asyncio.cluster.RedisCluster`; close it with ``aclose()``."""
        return redis.asyncio.cluster.RedisCluster(host=LOOPBACK, port=self.port, **kwargs)

    def start(self) -> RedisClusterServers:
        """Start all nodes, create the cluster, and wait until it is fully up.

        Raises:
            RuntimeError: a node failed, ``redis-cli --cluster create`` failed, or the
                cluster did not converge in time (the message carries the logs' tails).
        """
        if self.servers:
            return self
        cli = find_redis_cli()
        try:
            for port in _free_cluster_ports(self.num_nodes):
                server = RedisServer(
                    port=port,
                    startup_timeout=self.node_startup_timeout,
                    use_env=False,
                    extra_config=[
                        "cluster-enabled yes",
                        "cluster-config-file nodes.conf",
                        "cluster-node-timeout 2000",
                        *self._extra_config,
                    ],
                )
                self.servers.append(server)
                server.start()
            self._create(cli)
            self._wait_converged()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every node and delete their directories.  Idempotent."""
        servers, self.servers = self.servers, []
        for server in servers:
            server.stop()

    def __enter__(self) -> RedisClusterServers:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def logs_tail(self, lines: int = 20) -> str:
        """Tails of every node's log plus the ``--cluster create`` output."""
        parts = [f"=== node :{s.port} ===\n{s.log_tail(lines)}" for s in self.servers]
        parts.append(f"=== redis-cli --cluster create ===\n{self._create_output[-4000:]}")
        return "\n".join(parts)

    # ------------------------------------------------------------------ internals

    def _first(self) -> RedisServer:
        if not self.servers:
            raise RuntimeError("RedisClusterServers not started: call start() first")
        return self.servers[0]

    def _create(self, cli: str) -> None:
        cmd = [
            cli,
            "--cluster",
            "create",
            *(f"{LOOPBACK}:{s.port}" for s in self.servers),
            "--cluster-replicas",
            "0",
            "--cluster-yes",
        ]
        try:
            done = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=max(60.0, self.startup_timeout),
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout or b""
            self._create_output = out.decode(errors="replace")
            raise RuntimeError(f"redis-cli --cluster create timed out\n{self.logs_tail()}") from exc
        self._create_output = (done.stdout + done.stderr).decode(errors="replace")
        if done.returncode != 0:
            raise RuntimeError(
                f"redis-cli --cluster create exited with {done.returncode}\n{self.logs_tail()}"
            )

    def _wait_converged(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        want_slots = str(CLUSTER_SLOTS)
        want_nodes = str(self.num_nodes)
        while True:
            infos = [_cluster_info(LOOPBACK, s.port) for s in self.servers]
            if all(
                i.get("cluster_state") == "ok"
                and i.get("cluster_slots_assigned") == want_slots
                and i.get("cluster_slots_ok") == want_slots
                and i.get("cluster_known_nodes") == want_nodes
                for i in infos
            ):
                return
            dead = [s.port for s in self.servers if not s.running]
            if dead or time.monotonic() >= deadline:
                why = f"nodes {dead} died" if dead else f"not ok after {self.startup_timeout:g}s"
                summary = "\n".join(
                    f":{s.port} state={i.get('cluster_state')} "
                    f"slots_ok={i.get('cluster_slots_ok')} known={i.get('cluster_known_nodes')}"
                    for s, i in zip(self.servers, infos, strict=True)
                )
                raise RuntimeError(f"Redis Cluster {why}\n{summary}\n{self.logs_tail()}")
            time.sleep(0.05)


# --------------------------------------------------------------------------- CLI


@contextlib.contextmanager
def _until_signalled() -> Iterator[threading.Event]:
    """Install SIGINT/SIGTERM handlers that set the yielded event; restore them after."""
    event = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        event.set()

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield event
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def _serve(servers: Sequence[RedisServer], stop: threading.Event) -> int:
    """Block until signalled (exit 0) or until a server dies on its own (exit 1)."""
    while not stop.wait(0.5):
        dead = [s for s in servers if not s.running]
        if dead:
            print(f"redis-server died:\n{dead[0].log_tail()}", file=sys.stderr, flush=True)
            return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m cachebus.testing``."""
    parser = argparse.ArgumentParser(
        prog="python -m cachebus.testing",
        description="Run ephemeral Redis servers in the foreground until SIGINT/SIGTERM.",
    )
    sub = parser.add_subparsers(dest="mode", required=True)
    p_redis = sub.add_parser("redis", help="one standalone server; prints REDIS_URL=...")
    p_redis.add_argument("--port", type=int, default=None, help="default: a free port")
    p_redis.add_argument(
        "--config", action="append", default=[], metavar="LINE", help="extra redis.conf line"
    )
    p_cluster = sub.add_parser("cluster", help="a Redis Cluster; prints REDIS_CLUSTER_URL=...")
    p_cluster.add_argument("--nodes", type=int, default=3, help="number of primaries (>= 3)")
    args = parser.parse_args(argv)

    with _until_signalled() as stop:
        try:
            if args.mode == "redis":
                # The CLI exists to start a server, so the external-URL override is ignored.
                server = RedisServer(port=args.port, extra_config=args.config, use_env=False)
                with server:
                    print(f"REDIS_URL={server.url}", flush=True)
                    return _serve([server], stop)
            with RedisClusterServers(nodes=args.nodes) as cluster:
                print(f"REDIS_CLUSTER_URL={cluster.url}", flush=True)
                print(
                    "REDIS_CLUSTER_NODES=" + ",".join(f"{LOOPBACK}:{p}" for p in cluster.ports),
                    flush=True,
                )
                return _serve(cluster.servers, stop)
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
