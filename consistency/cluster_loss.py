"""Data-loss rows on a 3-primary Redis Cluster: a shard fails over to a replica that
missed invalidations, and every node crashes and restarts from its RDB snapshot or its
AOF cut back to the last fsync.

The workload is the standalone one of :mod:`consistency.loss` (tagged search results,
five documents each, through lookup -> ticket -> set; one invalidation call per
document; reads through a fresh client after the loss), on a cluster client: every
invalidation touches stamps on all three primaries, and the loss hits one shard
(failover) or all of them (crash).

* **failover**: each primary has one replica. Shard 0's replication is cut (its primary
  disables the replicas' ACL user and drops the link, see
  :class:`~consistency.cluster.LossyCluster`), the invalidations run, then shard 0's
  primary is SIGKILLed and its replica promoted with ``CLUSTER FAILOVER TAKEOVER``. With
  durability off every call returns OK and shard 0 loses its part of them: the fence
  check sees shard 0's witness went back and writes a new epoch. With
  ``durability_replicas=1`` every call raises ``DurabilityError`` (``WAIT`` on shard 0
  answers 0) and is retried after the failover, once the killed node is back as the new
  primary's replica.
* **crash**: ``SAVE`` on every primary (or an AOF copy after its fsync), the
  invalidations, SIGKILL of every node, then a restart of each from its own files.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from .cluster import LossyCluster
from .loss import (
    CRASH_MODES,
    check_fence,
    fence_monitor,
    fill,
    invalidate_victims,
    loss_row,
    loss_settings,
    loss_workload,
    read_passes,
    retry_failed,
    size_of,
)
from .model import Row, RunContext, register
from .oracle import Oracle

TOPOLOGY = "cluster (3 primaries)"
REPLICATED_TOPOLOGY = "cluster (3 primaries, 1 replica each)"
LOST_SHARD = 0


def _failover_case(ctx: RunContext, *, durable: bool) -> Row:
    size = size_of(ctx)
    oracle = Oracle()
    monitor = fence_monitor(ctx.code)
    extra: dict[str, Any] = {}
    if durable:
        extra = {"durability_replicas": 1, "durability_timeout_ms": 200}
    settings = loss_settings(ctx.code, **extra)
    with LossyCluster(replicas=1) as cluster:
        client = cluster.client()
        w = loss_workload(client, settings, oracle, size, monitor)
        ctx.progress(f"cluster failover: {size.entries} entries")
        fill(w, size)
        cluster.wait_synced()
        cluster.cut_replication(LOST_SHARD)
        ctx.progress(f"shard {LOST_SHARD}'s replication cut; {size.invalidated} invalidations")
        failed = invalidate_victims(w, size)
        errors = dict(w.errors)
        ctx.progress(f"failover of shard {LOST_SHARD} (primary SIGKILLed, replica takes over)")
        client.close()
        cluster.failover(LOST_SHARD)
        if durable:
            # The killed node comes back as the new primary's replica: without a replica
            # no invalidation can be durable, and the retries keep waiting.
            cluster.rejoin(LOST_SHARD)
        client = cluster.client()
        w2 = loss_workload(client, settings, oracle, size, monitor)
        retried = retry_failed(w2, failed)
        fences = check_fence(w2)
        first, again = read_passes(w2, size)
        client.close()
    note = (
        f"{len(failed)} invalidations raised {', '.join(sorted(errors))} while shard "
        f"{LOST_SHARD}'s replication was cut, {retried} completed on retry after the failover"
        if failed
        else "every invalidation returned OK while shard 0's replication was cut"
    )
    return loss_row(
        ctx,
        scenario="failover of one shard after its replication was cut",
        config=(
            "shard 0: replication link cut, primary killed, replica takes over; "
            + ("durability_replicas=1" if durable else "durability off")
            + ("" if ctx.code == "baseline" else f"; fence check ({fences} fence)")
        ),
        topology=REPLICATED_TOPOLOGY,
        size=size,
        oracle=oracle,
        first=first,
        again=again,
        notes=note,
        case="cluster failover" + ("" if durable or ctx.code == "baseline" else " (fence)"),
    )


@register(
    "failover-cluster",
    baseline=True,
    title="cluster: one shard's replication cut, invalidations, failover to its replica",
)
def failover_cluster(ctx: RunContext) -> list[Row]:
    rows = [_failover_case(ctx, durable=False)]
    if ctx.code == "new":
        rows.append(_failover_case(ctx, durable=True))
    return rows


def _crash_case(ctx: RunContext, *, mode: str) -> Row:
    size = size_of(ctx)
    oracle = Oracle()
    monitor = fence_monitor(ctx.code)
    settings = loss_settings(ctx.code)
    config, label = CRASH_MODES[mode]
    saved = Path(tempfile.mkdtemp(prefix="cb-loss-cluster-"))
    try:
        with LossyCluster(config=config) as cluster:
            client = cluster.client()
            w = loss_workload(client, settings, oracle, size, monitor)
            ctx.progress(f"cluster {mode}: {size.entries} entries")
            fill(w, size)
            nodes = [shard.primary for shard in cluster.shards]
            if mode == "aof":
                time.sleep(1.2)  # everysec: the entries are fsynced by now
                for node in nodes:
                    assert node.directory is not None
                    shutil.copytree(
                        node.directory / "appendonlydir", saved / str(node.port) / "aof"
                    )
            else:
                cluster.save_all()
            ctx.progress(
                f"cluster {mode}: {size.invalidated} invalidations after the durable point"
            )
            invalidate_victims(w, size)
            client.close()
            cluster.kill_all()
            if mode == "aof":
                for node in nodes:
                    assert node.directory is not None
                    shutil.rmtree(node.directory / "appendonlydir")
                    shutil.copytree(
                        saved / str(node.port) / "aof", node.directory / "appendonlydir"
                    )
            ctx.progress(f"cluster {mode}: every node restarts")
            cluster.restart_all()
            client = cluster.client()
            w2 = loss_workload(client, settings, oracle, size, monitor)
            fences = check_fence(w2)
            first, again = read_passes(w2, size)
            client.close()
    finally:
        shutil.rmtree(saved, ignore_errors=True)
    return loss_row(
        ctx,
        scenario=f"crash and restart of every node: {label}",
        config=", ".join(config)
        + ("" if ctx.code == "baseline" else f"; fence check ({fences} fences)"),
        topology=TOPOLOGY,
        size=size,
        oracle=oracle,
        first=first,
        again=again,
        notes="invalidations after the durable point are lost with the crash",
        case=f"cluster crash {mode}",
    )


@register("crash-aof-cluster", baseline=True, title="cluster: AOF everysec, every node crashes")
def crash_aof_cluster(ctx: RunContext) -> list[Row]:
    return [_crash_case(ctx, mode="aof")]


@register("crash-rdb-cluster", baseline=True, title="cluster: RDB only, every node restarts")
def crash_rdb_cluster(ctx: RunContext) -> list[Row]:
    return [_crash_case(ctx, mode="rdb")]
