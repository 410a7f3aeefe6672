"""Real servers with a controllable replication link, for durability and failover tests.

* :class:`TcpProxy` -- a threaded TCP proxy on a free loopback port that can
  :meth:`~TcpProxy.stall` (stop forwarding bytes both ways, keeping every connection
  open: a partitioned or hung link, not a closed one) and :meth:`~TcpProxy.resume`.
* :class:`ReplicatedRedis` -- a primary :class:`~devtools.redis_servers.RedisServer` and a
  replica that replicates *through* a :class:`TcpProxy` (``replicaof 127.0.0.1
  <proxy port>``), so a test can stall replication (``WAIT`` then times out, and the
  replica falls behind) and fail over to the lagging replica (writes are lost, as in
  production after an asynchronous failover).

Nothing is mocked: both are genuine ``redis-server`` processes.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import redis

from devtools.redis_servers import LOOPBACK, RedisServer

__all__ = ["ReplicatedRedis", "TcpProxy"]

_CHUNK = 65536
_POLL = 0.05


class _Pump(threading.Thread):
    """Copies bytes one way, src -> dst, while the proxy flows. Bytes read while the
    proxy is stalled are held back (not sent) until it resumes."""

    def __init__(self, proxy: TcpProxy, src: socket.socket, dst: socket.socket, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.proxy = proxy
        self.src = src
        self.dst = dst

    def run(self) -> None:
        held = b""
        try:
            while not self.proxy.closed:
                if not self.proxy.flowing.wait(_POLL):
                    continue  # stalled: read nothing, so the sender's buffers fill up
                if self.proxy.closed:
                    return  # closing drops what was held back
                if held:
                    self.dst.sendall(held)
                    held = b""
                readable, _, _ = select.select([self.src], [], [], _POLL)
                if not readable:
                    continue
                data = self.src.recv(_CHUNK)
                if not data:
                    with contextlib.suppress(OSError):
                        self.dst.shutdown(socket.SHUT_WR)
                    return
                if not self.proxy.flowing.is_set():
                    held = data  # read just as the proxy stalled: keep it back
                    continue
                self.dst.sendall(data)
        except (OSError, ValueError):
            pass  # a side closed (or the proxy did): the link ends
        finally:
            self.proxy._link_ended(self.src, self.dst)


class TcpProxy:
    """Forwards every connection accepted on ``host:port`` (a free loopback port) to
    ``target_host:target_port``.

    :meth:`stall` stops forwarding in both directions at once; connections stay open
    and bytes wait in socket buffers (and in the proxy) until :meth:`resume`.
    :meth:`close` closes the listener and every connection, dropping what was held.

    Use as a context manager, or call :meth:`start` / :meth:`close`."""

    def __init__(self, target_host: str, target_port: int, *, host: str = LOOPBACK) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = host
        self.flowing = threading.Event()
        self.flowing.set()
        self.closed = False
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._pumps: list[_Pump] = []
        self.connections = 0
        """Connections accepted so far."""

    @property
    def port(self) -> int:
        if self._listener is None:
            raise RuntimeError("TcpProxy has no port yet: call start() first")
        port: int = self._listener.getsockname()[1]
        return port

    @property
    def stalled(self) -> bool:
        return not self.flowing.is_set()

    def start(self) -> TcpProxy:
        if self._listener is not None:
            return self
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, 0))
        listener.listen(16)
        listener.settimeout(_POLL)
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept, name="tcp-proxy-accept", daemon=True)
        self._acceptor.start()
        return self

    def stall(self) -> None:
        """Stop forwarding bytes both ways (connections stay open)."""
        self.flowing.clear()

    def resume(self) -> None:
        """Forward again, held bytes first."""
        self.flowing.set()

    def close(self) -> None:
        """Close the listener and every connection; held bytes are dropped. Idempotent."""
        self.closed = True
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
        with self._lock:
            sockets, self._sockets = set(self._sockets), set()
            pumps = list(self._pumps)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        self.flowing.set()  # wake stalled pumps (after the sockets closed) so they end
        if self._acceptor is not None:
            self._acceptor.join(timeout=5)
        for pump in pumps:
            pump.join(timeout=5)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _accept(self) -> None:
        listener = self._listener
        assert listener is not None
        while not self.closed:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection((self.target_host, self.target_port), 2.0)
            except OSError:
                client.close()  # the target is down: refuse like it would
                continue
            for sock in (client, upstream):
                sock.settimeout(None)
                # Small writes (a replica's REPLCONF ACK) go out at once, as Redis's own do.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if self.closed:
                    client.close()
                    upstream.close()
                    return
                self.connections += 1
                self._sockets.update((client, upstream))
                n = self.connections
                pumps = [
                    _Pump(self, client, upstream, f"tcp-proxy-{n}-up"),
                    _Pump(self, upstream, client, f"tcp-proxy-{n}-down"),
                ]
                self._pumps = [p for p in self._pumps if p.is_alive()] + pumps
            for pump in pumps:
                pump.start()

    def _link_ended(self, src: socket.socket, dst: socket.socket) -> None:
        """One direction ended: close both sockets (the other pump then ends too)."""
        with self._lock:
            self._sockets.discard(src)
            self._sockets.discard(dst)
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.close()


class ReplicatedRedis:
    """A primary redis-server and one replica that replicates through a
    :class:`TcpProxy`.

    Args:
        config: extra ``redis.conf`` lines for both servers (e.g. ``maxmemory 2mb``,
            ``appendonly yes``, ``appendfsync always``, ``save 60 1``).
        primary_config / replica_config: extra lines for one of them only.
        sync_timeout: seconds :meth:`start` and :meth:`wait_synced` wait.
    """

    def __init__(
        self,
        *,
        config: Sequence[str] = (),
        primary_config: Sequence[str] = (),
        replica_config: Sequence[str] = (),
        sync_timeout: float = 10.0,
        replica_server_bin: str | None = None,
    ) -> None:
        self.config = list(config)
        self.primary_config = list(primary_config)
        self.replica_config = list(replica_config)
        self.sync_timeout = sync_timeout
        self.replica_server_bin = replica_server_bin
        """A redis-server binary (or wrapper) for the replica, e.g. one whose clock is off."""
        self.primary: RedisServer | None = None
        self.replica: RedisServer | None = None
        self.proxy: TcpProxy | None = None
        self.failed_over = False

    # ------------------------------------------------------------------ addresses
    @property
    def url(self) -> str:
        """URL of the current primary (the replica's after :meth:`failover`)."""
        server = self._replica() if self.failed_over else self._primary()
        return server.url

    @property
    def primary_url(self) -> str:
        return self._primary().url

    @property
    def replica_url(self) -> str:
        return self._replica().url

    def client(self, **kwargs: Any) -> redis.Redis:
        """A client of the current primary (bytes replies unless told otherwise)."""
        return redis.Redis.from_url(self.url, **kwargs)

    def replica_client(self, **kwargs: Any) -> redis.Redis:
        return redis.Redis.from_url(self.replica_url, **kwargs)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> ReplicatedRedis:
        if self.primary is not None:
            return self
        try:
            self.primary = RedisServer(
                use_env=False,
                extra_config=[
                    # Full syncs straight over the socket, at once (7.0 waits 5 s by default).
                    "repl-diskless-sync yes",
                    "repl-diskless-sync-delay 0",
                    *self.config,
                    *self.primary_config,
                ],
            ).start()
            self.proxy = TcpProxy(LOOPBACK, self.primary.port).start()
            self.replica = RedisServer(
                use_env=False,
                redis_server_bin=self.replica_server_bin,
                extra_config=[
                    *self.config,
                    *self.replica_config,
                    f"replicaof {LOOPBACK} {self.proxy.port}",
                ],
            ).start()
            self.wait_synced()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop both servers and the proxy. Idempotent."""
        if self.proxy is not None:
            self.proxy.close()
            self.proxy = None
        for server in (self.replica, self.primary):
            if server is not None:
                server.stop()
        self.replica = self.primary = None

    def __enter__(self) -> ReplicatedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ replication
    def wait_synced(self, timeout: float | None = None) -> None:
        """Wait until the replica's link is up, it has processed everything the
        primary has written so far, and the primary counts it in ``WAIT`` (after a
        full sync, from the replica's first ACK on: up to a second)."""
        deadline = time.monotonic() + (self.sync_timeout if timeout is None else timeout)
        primary = self._primary().client()
        replica = self._replica().client()
        # Database 15: the probe write never shows in the tests' keyspace (db 0).
        probe = redis.Redis(host=self._primary().host, port=self._primary().port, db=15)
        try:
            while True:
                p = primary.info("replication")
                r = replica.info("replication")
                offset = int(p["master_repl_offset"])
                slave0 = p.get("slave0")
                seen: dict[str, Any] = slave0 if isinstance(slave0, dict) else {}
                if (
                    r.get("master_link_status") == "up"
                    and not r.get("master_sync_in_progress")
                    and int(r.get("slave_repl_offset", -1)) >= offset
                    and seen.get("state") == "online"
                    and self._wait_answers(probe)
                ):
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"replica not in sync after {timeout or self.sync_timeout:g}s: "
                        f"primary offset {p.get('master_repl_offset')}, replica "
                        f"{r.get('master_link_status')} at {r.get('slave_repl_offset')}"
                    )
                time.sleep(0.01)
        finally:
            primary.close()
            replica.close()
            probe.close()

    @staticmethod
    def _wait_answers(probe: redis.Redis) -> bool:
        """A write, then ``WAIT 1``: True if the replica acknowledged it at once. Right
        after a full sync, Redis 7.0 may leave the first WAIT to the replica's periodic
        ACK (up to a second): that wait happens here, not in the caller's first WAIT."""
        probe.incr("__replicated_redis_probe__")
        try:
            acked: int = probe.execute_command("WAIT", 1, 50)  # type: ignore[no-untyped-call]
        finally:
            probe.delete("__replicated_redis_probe__")
        return acked >= 1

    def stall_replication(self) -> None:
        """Stop the replication link both ways (it stays open): the replica stops
        receiving writes and the primary stops getting its acknowledgements."""
        self._proxy().stall()

    def resume_replication(self) -> None:
        self._proxy().resume()

    def failover(self) -> str:
        """SIGKILL the primary and promote the replica (``REPLICAOF NO ONE``) with
        whatever it has received: writes it had not got are lost. Returns the new
        primary's URL."""
        self._proxy().close()  # drops anything held back: it never reaches the replica
        self._primary().kill()
        client = self._replica().client()
        try:
            client.execute_command("REPLICAOF", "NO", "ONE")  # type: ignore[no-untyped-call]
        finally:
            client.close()
        self.failed_over = True
        return self._replica().url

    # ------------------------------------------------------------------ internals
    def _primary(self) -> RedisServer:
        if self.primary is None:
            raise RuntimeError("ReplicatedRedis is not started")
        return self.primary

    def _replica(self) -> RedisServer:
        if self.replica is None:
            raise RuntimeError("ReplicatedRedis is not started")
        return self.replica

    def _proxy(self) -> TcpProxy:
        if self.proxy is None:
            raise RuntimeError("ReplicatedRedis is not started")
        return self.proxy
