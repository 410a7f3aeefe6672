"""One real, ephemeral standalone ``redis-server`` (:class:`RedisServer`), with
``restart()``, ``kill()``, ``suspend()`` / ``resume()`` to simulate failures.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import urlsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

from devtools.redis_support import (
    _LOG_TAIL_LINES,
    ENV_TEST_REDIS_URL,
    LOOPBACK,
    _free_port,
    _quote_conf,
    _resp_ping,
    _tail,
    find_redis_server,
)

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
