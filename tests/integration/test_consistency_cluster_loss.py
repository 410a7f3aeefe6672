"""Data loss on a 3-primary Redis Cluster costs misses, never stale reads: the quick
versions of ``make consistency``'s cluster failover and crash rows (docs/consistency.md).

Real redis-servers only: shard 0's replication is cut for real (its replicas' ACL user
disabled, the link dropped), its primary SIGKILLed and its replica promoted with
``CLUSTER FAILOVER TAKEOVER``; or every node is SIGKILLed and restarted from its RDB.
The oracle of :mod:`consistency.oracle` checks every read.
"""

from __future__ import annotations

from pathlib import Path

from consistency.cluster_loss import crash_rdb_cluster, failover_cluster
from consistency.model import RunContext


def context(tmp_path: Path, name: str) -> RunContext:
    return RunContext(code="new", quick=True, out_dir=tmp_path, scenario=name)


def test_failover_of_a_shard_that_missed_invalidations(tmp_path: Path) -> None:
    fenced, durable = failover_cluster(context(tmp_path, "failover-cluster"))
    # Durability off: every call returned OK, shard 0 lost its part of them; the
    # fence check caught it and every entry read after it was a miss.
    assert fenced.stale_reads == 0, fenced.notes
    assert "(1 fence)" in fenced.redis_config
    assert fenced.invalidations == 40
    assert "first read after the loss: 0/400 hits" in fenced.notes
    assert fenced.hits > 0, "caching must recover after the fence"
    # durability_replicas=1: the calls raised DurabilityError, none counted, and all
    # completed on retry after the failover; no fence was needed.
    assert durable.stale_reads == 0, durable.notes
    assert "(0 fence)" in durable.redis_config
    assert "40 invalidations raised DurabilityError" in durable.notes
    assert "40 completed on retry" in durable.notes


def test_every_node_restarts_from_an_old_snapshot(tmp_path: Path) -> None:
    (row,) = crash_rdb_cluster(context(tmp_path, "crash-rdb-cluster"))
    assert row.stale_reads == 0, row.notes
    assert "(3 fences)" in row.redis_config
    assert "first read after the loss: 0/400 hits" in row.notes
    assert row.hits > 0
