"""Redis servers for a scenario and per-primary helpers that work on both topologies
(``redis.Redis`` or ``RedisCluster``): INFO sums, CONFIG SET on every primary."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import redis
import redis.cluster

Topology = Literal["standalone", "cluster"]
CLUSTER_PRIMARIES = 3


def topology_label(topology: Topology) -> str:
    return f"cluster ({CLUSTER_PRIMARIES} primaries)" if topology == "cluster" else "standalone"


@contextlib.contextmanager
def started(topology: Topology, config: Sequence[str] = ()) -> Iterator[Any]:
    """Real redis-server(s) with ``config`` lines (every node of a cluster gets them);
    yields a sync client (bytes replies) and stops everything afterwards. Never uses
    ``$CACHEBUS_TEST_REDIS_URL``: scenarios need servers they configure themselves."""
    from devtools.redis_servers import RedisClusterServers, RedisServer

    if topology == "standalone":
        with RedisServer(use_env=False, extra_config=list(config)) as server:
            client = server.client()
            try:
                yield client
            finally:
                client.close()
    else:
        with RedisClusterServers(nodes=CLUSTER_PRIMARIES, extra_config=list(config)) as cluster:
            cluster_client = cluster.client()
            try:
                yield cluster_client
            finally:
                cluster_client.close()


def primaries(client: Any) -> list[Any]:
    """Cluster primaries (``ClusterNode``), or ``[None]`` for a standalone server."""
    if isinstance(client, redis.cluster.RedisCluster):
        nodes: list[Any] = client.get_primaries()  # type: ignore[no-untyped-call]
        return nodes
    return [None]


def _on(node: Any) -> dict[str, Any]:
    return {} if node is None else {"target_nodes": node}


def info(client: Any, section: str) -> list[dict[str, Any]]:
    """One INFO section per primary."""
    return [client.info(section, **_on(node)) for node in primaries(client)]


def info_sum(client: Any, section: str, name: str) -> int:
    return sum(int(i.get(name, 0)) for i in info(client, section))


def config_set(client: Any, name: str, value: str | int) -> None:
    """CONFIG SET on every primary."""
    for node in primaries(client):
        client.config_set(name, value, **_on(node))


def memory(client: Any) -> list[tuple[int, int]]:
    """(used_memory, maxmemory) per primary."""
    return [(int(i["used_memory"]), int(i["maxmemory"])) for i in info(client, "memory")]


def all_full(client: Any, margin: float = 0.98) -> bool:
    """Every primary uses at least ``margin`` of its ``maxmemory``."""
    return all(m > 0 and used >= margin * m for used, m in memory(client))


def redis_version(client: Any) -> str:
    return str(info(client, "server")[0].get("redis_version", "?"))


def expire_until(client: Any, patterns: Sequence[str], below: float) -> int:
    """UNLINK keys matching ``patterns`` (in SCAN order: no particular one) on each
    primary until it uses at most ``below`` of its ``maxmemory``, as if their TTLs had
    run out; returns how many."""
    removed = 0

    def used(on: dict[str, Any]) -> tuple[int, int]:
        i = client.info("memory", **on)
        return int(i["used_memory"]), int(i["maxmemory"])

    for node in primaries(client):
        on = _on(node)
        for pattern in patterns:
            batch: list[Any] = []
            for key in client.scan_iter(match=pattern, count=1000, **on):
                batch.append(key)
                if len(batch) < 20:
                    continue
                removed += sum(int(client.unlink(k)) for k in batch)
                batch = []
                now, limit = used(on)
                if now <= below * limit:
                    break
            else:
                removed += sum(int(client.unlink(k)) for k in batch)
            now, limit = used(on)
            if now <= below * limit:
                break
    return removed
