"""A real Redis Cluster whose shards can lose writes: crash and restart every node, or
cut one shard's replication and fail over to its replica.

:class:`LossyCluster` starts ``primaries`` cluster nodes, each with ``replicas`` (0 or
1) replica, with ``redis-cli --cluster create``. Replicas authenticate to their primary
as the ACL user ``repl`` (``masteruser``/``masterauth`` on every node, since roles swap
on a failover), so :meth:`cut_replication` can stop one shard's replication for real:
the primary disables ``repl`` and kills its replica's connection. The replica then
retries and is refused: what the primary writes from then on never reaches it, ``WAIT``
on that primary answers 0, and a failover to the replica loses those writes (as an
asynchronous failover does in production). Pausing the replica (SIGSTOP) would not
do: the writes wait in its socket buffer and arrive when it resumes.

Built from :class:`devtools.redis_servers.RedisServer` only (the scenarios also run against
today's library, whose test helpers have no replicated cluster).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import redis
import redis.cluster

from devtools.redis_servers import LOOPBACK, RedisServer

__all__ = ["LossyCluster", "Shard"]

SLOTS = 16384
BUS_OFFSET = 10000
REPL_USER = "repl"
REPL_PASSWORD = "repl-consistency-only"


@dataclass
class Shard:
    """One primary and its replica (``None`` without replicas)."""

    primary: RedisServer
    replica: RedisServer | None


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def _cluster_ports(count: int) -> list[int]:
    """``count`` free ports whose cluster bus port (port + 10000) is free too."""
    chosen: list[int] = []
    for _ in range(count * 500):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, 0))
            port = int(sock.getsockname()[1])
        bus = port + BUS_OFFSET
        taken = {p for c in chosen for p in (c, c + BUS_OFFSET)}
        if bus <= 65535 and port not in taken and bus not in taken and _port_free(bus):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise RuntimeError(f"no {count} free cluster ports (port and port + {BUS_OFFSET})")


def _info(server: RedisServer, section: str) -> dict[str, Any]:
    conn = redis.Redis(
        host=LOOPBACK, port=server.port, socket_timeout=2.0, socket_connect_timeout=1.0
    )
    try:
        if section == "cluster":
            raw = conn.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
            return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        return dict(conn.info(section))
    except redis.RedisError:
        return {}
    finally:
        conn.close()


class LossyCluster:
    """``primaries`` primaries with ``replicas`` replica each, on free loopback ports.

    Args:
        primaries: number of shards (>= 3).
        replicas: replicas per primary (0 or 1).
        config: extra ``redis.conf`` lines for every node.
        timeout: seconds to wait for convergence and replication.
    """

    def __init__(
        self,
        primaries: int = 3,
        *,
        replicas: int = 0,
        config: Sequence[str] = (),
        timeout: float = 30.0,
    ) -> None:
        if primaries < 3 or replicas not in (0, 1):
            raise ValueError("LossyCluster needs >= 3 primaries and 0 or 1 replica each")
        self.primaries = primaries
        self.replicas = replicas
        self.config = list(config)
        self.timeout = timeout
        self.servers: list[RedisServer] = []
        self.shards: list[Shard] = []

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> LossyCluster:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli not found on PATH (make setup installs it)")
        nodes = self.primaries * (1 + self.replicas)
        try:
            for port in _cluster_ports(nodes):
                self.servers.append(
                    RedisServer(
                        port=port,
                        use_env=False,
                        extra_config=[
                            "cluster-enabled yes",
                            "cluster-config-file nodes.conf",
                            "cluster-node-timeout 2000",
                            "repl-diskless-sync yes",
                            "repl-diskless-sync-delay 0",
                            f"user {REPL_USER} on >{REPL_PASSWORD} ~* &* +@all",
                            f"masteruser {REPL_USER}",
                            f"masterauth {REPL_PASSWORD}",
                            *self.config,
                        ],
                    ).start()
                )
            done = subprocess.run(
                [
                    cli,
                    "--cluster",
                    "create",
                    *(f"{LOOPBACK}:{s.port}" for s in self.servers),
                    "--cluster-replicas",
                    str(self.replicas),
                    "--cluster-yes",
                ],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=120,
                check=False,
            )
            if done.returncode != 0:
                out = (done.stdout + done.stderr).decode(errors="replace")[-2000:]
                raise RuntimeError(f"redis-cli --cluster create failed:\n{out}")
            self.wait_converged()
            self._find_shards()
            self.wait_synced()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        servers, self.servers, self.shards = self.servers, [], []
        for server in servers:
            server.stop()

    def __enter__(self) -> LossyCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ clients
    def client(self) -> redis.cluster.RedisCluster:
        """A new cluster client (bytes replies) through a live primary."""
        live = next(s.primary for s in self.shards if s.primary.running)
        return redis.cluster.RedisCluster(host=LOOPBACK, port=live.port)

    def primary_client(self, shard: int) -> redis.Redis:
        return self.shards[shard].primary.client()

    # ------------------------------------------------------------------ state
    def wait_converged(self) -> None:
        """Until every running node reports ``cluster_state:ok`` with all slots ok."""
        deadline = time.monotonic() + self.timeout
        while True:
            infos = [_info(s, "cluster") for s in self.servers if s.running]
            if infos and all(
                i.get("cluster_state") == "ok" and i.get("cluster_slots_ok") == str(SLOTS)
                for i in infos
            ):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"cluster not ok after {self.timeout:g} s: {infos}")
            time.sleep(0.05)

    def wait_synced(self) -> None:
        """Until every replica's link is up and it has everything its primary wrote."""
        deadline = time.monotonic() + self.timeout
        for shard in self.shards:
            if shard.replica is None or not shard.replica.running:
                continue
            while True:
                p = _info(shard.primary, "replication")
                r = _info(shard.replica, "replication")
                if (
                    r.get("master_link_status") == "up"
                    and not r.get("master_sync_in_progress")
                    and int(r.get("slave_repl_offset", -1)) >= int(p.get("master_repl_offset", 0))
                    and self._wait_acked(shard.primary)
                ):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"replica :{shard.replica.port} of :{shard.primary.port} not in sync"
                    )
                time.sleep(0.02)

    @staticmethod
    def _wait_acked(primary: RedisServer) -> bool:
        """``WAIT 1`` counts the replica (after a full sync Redis 7.0 may leave that to
        the replica's periodic ACK, up to a second: that wait happens here)."""
        conn = primary.client()
        try:
            acked = conn.execute_command("WAIT", 1, 50)  # type: ignore[no-untyped-call]
        finally:
            conn.close()
        return int(acked) >= 1

    # ------------------------------------------------------------------ losses
    def cut_replication(self, shard: int) -> None:
        """Stop shard ``shard``'s replication: its primary disables the ``repl`` user and
        kills the replica's connection; the replica's retries are refused."""
        conn = self.primary_client(shard)
        try:
            conn.execute_command("ACL", "SETUSER", REPL_USER, "off")  # type: ignore[no-untyped-call]
            conn.execute_command("CLIENT", "KILL", "TYPE", "replica")  # type: ignore[no-untyped-call]
        finally:
            conn.close()
        replica = self.shards[shard].replica
        assert replica is not None
        deadline = time.monotonic() + 5
        while _info(replica, "replication").get("master_link_status") == "up":
            if time.monotonic() > deadline:
                raise TimeoutError("the replica's link stayed up after the cut")
            time.sleep(0.02)

    def failover(self, shard: int) -> None:
        """SIGKILL shard ``shard``'s primary and promote its replica with ``CLUSTER
        FAILOVER TAKEOVER`` (no agreement needed), with whatever the replica has."""
        old = self.shards[shard]
        assert old.replica is not None
        old.primary.kill()
        conn = old.replica.client()
        try:
            role = conn.execute_command("ROLE")  # type: ignore[no-untyped-call]
            if role[0] in (b"slave", "slave"):
                conn.execute_command("CLUSTER", "FAILOVER", "TAKEOVER")  # type: ignore[no-untyped-call]
        finally:
            conn.close()
        self.shards[shard] = Shard(primary=old.replica, replica=old.primary)
        deadline = time.monotonic() + self.timeout
        while _info(old.replica, "replication").get("role") != "master":
            if time.monotonic() > deadline:
                raise TimeoutError("the replica was not promoted")
            time.sleep(0.05)
        self.wait_converged()

    def rejoin(self, shard: int) -> None:
        """Restart shard ``shard``'s killed node: it comes back as the replica of the
        promoted one (a Sentinel/operator replacement), and syncs."""
        replica = self.shards[shard].replica
        assert replica is not None
        replica.restart()
        deadline = time.monotonic() + self.timeout
        while _info(replica, "replication").get("role") != "slave":
            if time.monotonic() > deadline:
                raise TimeoutError("the restarted node did not become a replica")
            time.sleep(0.05)
        self.wait_converged()
        self.wait_synced()

    def save_all(self) -> None:
        """``SAVE`` on every primary (the snapshot a restart comes back to)."""
        for shard in self.shards:
            conn = shard.primary.client()
            try:
                conn.save()
            finally:
                conn.close()

    def kill_all(self) -> None:
        """SIGKILL every node (a crash of every machine); directories are kept."""
        for server in self.servers:
            server.kill()

    def restart_all(self) -> None:
        """Start every killed node again from its own directory (data files and
        ``nodes.conf``); returns once the cluster is ok again."""
        for server in self.servers:
            if not server.running:
                server.restart()
        self.wait_converged()

    # ------------------------------------------------------------------ internals
    def _find_shards(self) -> None:
        by_port = {s.port: s for s in self.servers}
        shards: dict[int, Shard] = {}
        replicas: list[tuple[int, RedisServer]] = []
        for server in self.servers:
            info = _info(server, "replication")
            if info.get("role") == "master":
                shards[server.port] = Shard(primary=server, replica=None)
            else:
                replicas.append((int(info["master_port"]), server))
        for master_port, server in replicas:
            shards[master_port].replica = server
        self.shards = [shards[p] for p in sorted(shards)]
        if len(self.shards) != self.primaries or set(by_port) != {
            s.port for sh in self.shards for s in (sh.primary, sh.replica) if s is not None
        }:
            raise RuntimeError("unexpected cluster layout after --cluster create")
