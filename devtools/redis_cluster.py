"""A real N-primary Redis Cluster of ephemeral ``redis-server`` processes
(:class:`RedisClusterServers`).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

from devtools.redis_server import RedisServer
from devtools.redis_support import (
    CLUSTER_SLOTS,
    LOOPBACK,
    _free_cluster_ports,
    find_redis_cli,
)

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
