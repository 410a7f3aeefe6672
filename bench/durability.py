"""Section 6: what durable invalidations cost.

A primary and one replica (``consistency.servers.ReplicatedRedis``; the replica
replicates through a loopback TCP proxy, as in the failure-mode suite). The same
invalidations run three ways, each on a fresh pair of documents:

* **plain**: ``durability_replicas=0`` (the default): the witness step only;
* **WAIT 1**: ``durability_replicas=1``: each invalidation returns once the replica
  acknowledged it;
* **WAITAOF**: ``durability_fsync=true`` also needs the fsync on Redis >= 7.2; this
  server's version decides whether the row is measured or reported as unsupported.

Two shapes: one document per call (the library's ``invalidate_documents``), and the
worker's batch (``invalidate(documents=[...])`` of ``batch`` documents in one call).
Latency is wall time per call (median, p90, p99) in the same run, so the ratio
"WAIT 1 vs plain" is the cost of the setting on this machine.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Progress = Callable[[str], None]


@dataclass(frozen=True)
class DurabilityConfig:
    calls: int = 2000
    batch: int = 100
    batches: int = 200


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _time(fn: Callable[[int], Any], n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _stats(samples: list[float]) -> dict[str, float]:
    return {
        "median_ms": statistics.median(samples),
        "p90_ms": _percentile(samples, 0.90),
        "p99_ms": _percentile(samples, 0.99),
    }


def run(cfg: DurabilityConfig, progress: Progress) -> dict[str, Any]:
    from cachebus import Settings
    from cachebus.errors import ConfigError
    from cachebus.invalidation import Invalidator
    from cachebus.tags import DocumentInvalidation
    from consistency.servers import ReplicatedRedis

    modes: list[tuple[str, dict[str, Any]]] = [
        ("plain (durability off)", {}),
        ("WAIT 1 (durability_replicas=1)", {"durability_replicas": 1}),
        (
            "WAITAOF (durability_replicas=1, durability_fsync=true)",
            {"durability_replicas": 1, "durability_fsync": True},
        ),
    ]
    results: list[dict[str, Any]] = []
    with ReplicatedRedis(config=["appendonly yes", "appendfsync everysec"]) as pair:
        client = pair.client()
        version = client.info("server")["redis_version"]
        for label, extra in modes:
            settings = Settings(prefix="bd", **extra)
            inv = Invalidator(client, settings=settings)
            tag = label.split(" ")[0].lower()
            try:
                inv.invalidate_documents([f"warm-{tag}"])
            except ConfigError as exc:
                progress(f"durability: {label}: not supported here ({exc})")
                results.append({"mode": label, "unsupported": str(exc)})
                continue
            single = _time(
                lambda i, t=tag, v=inv: v.invalidate_documents([f"{t}-{i}"]), cfg.calls
            )
            batches = _time(
                lambda i, t=tag, v=inv: v.invalidate(
                    documents=[
                        DocumentInvalidation(f"{t}-b{i}-{j}", "bump", "all")
                        for j in range(cfg.batch)
                    ]
                ),
                cfg.batches,
            )
            row = {
                "mode": label,
                "single": _stats(single),
                "batch": _stats(batches),
                "batch_size": cfg.batch,
            }
            results.append(row)
            progress(
                f"durability: {label}: one document {row['single']['median_ms']:.3f} ms "
                f"median (p99 {row['single']['p99_ms']:.3f}); batch of {cfg.batch} "
                f"{row['batch']['median_ms']:.2f} ms median"
            )
        client.close()
    plain = results[0]
    for row in results[1:]:
        if "single" in row:
            row["x_plain_single"] = row["single"]["median_ms"] / plain["single"]["median_ms"]
            row["x_plain_batch"] = row["batch"]["median_ms"] / plain["batch"]["median_ms"]
    return {
        "config": {"calls": cfg.calls, "batch": cfg.batch, "batches": cfg.batches},
        "redis_version": version,
        "results": results,
    }


def durability_md(sec: dict[str, Any]) -> str:
    lines = [
        f"Primary + 1 replica (through a loopback proxy), redis-server {sec['redis_version']}, "
        "AOF everysec on both; sync `Invalidator` on the primary.",
        "",
        "| mode | one document: median ms | p90 | p99 | × plain | batch of "
        f"{sec['config']['batch']}: median ms | p99 | × plain |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for r in sec["results"]:
        if "unsupported" in r:
            lines.append(f"| {r['mode']} | not supported | | | | | | |")
            notes.append(f"- {r['mode']}: {r['unsupported']}")
            continue
        s, b = r["single"], r["batch"]
        lines.append(
            f"| {r['mode']} | {s['median_ms']:.3f} | {s['p90_ms']:.3f} | {s['p99_ms']:.3f} "
            f"| {r.get('x_plain_single', 1.0):.2f} | {b['median_ms']:.2f} | {b['p99_ms']:.2f} "
            f"| {r.get('x_plain_batch', 1.0):.2f} |"
        )
    return "\n".join([*lines, *(["", *notes] if notes else [])])
