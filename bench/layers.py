"""Section 1: the client layers (lesson JSON, cachebus codecs, RedisVL) and the ceiling."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

import cachebus
from devtools.redis_servers import RedisServer

from .ceiling import PIPELINE, CeilingResult, from_runs, run_once
from .client_layers import (
    BASELINE,
    BATCH,
    CODECS,
    PEER_TTL,
    RAW,
    REDISVL,
    REDISVL_NO_TTL,
    BenchError,
    Dataset,
    LayerResult,
    add_ratios,
    make_subjects,
    measure_layers,
    redisvl_available,
)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class LayersConfig:
    dims: tuple[int, ...]
    working_set: int
    runs: int
    min_run_seconds: float
    ceiling_clients: tuple[int, ...]
    ceiling_requests: int
    """Requests per redis-benchmark invocation; one invocation per client count per round."""
    batch: int = BATCH


def ceiling_rows(
    ceilings: list[CeilingResult], results: list[LayerResult], raw: dict[int, LayerResult]
) -> list[dict[str, Any]]:
    """Our float32 get/set_many (and raw redis-py MGET/MSET) as shares of the ceiling."""
    ours = {r.dim: r for r in results if r.name == "float32"}
    rows = []
    for c in ceilings:
        row: dict[str, Any] = {
            "dim": c.dim,
            "clients": c.clients,
            "value_bytes": c.value_bytes,
            "get_ceiling_rps": c.get_rps,
            "set_ceiling_rps": c.set_rps,
        }
        f32 = ours.get(c.dim)
        if f32 is not None:
            row["float32_get_many_vps"] = round(f32.get.median, 1)
            row["float32_get_pct_of_ceiling"] = round(100 * f32.get.median / c.get_rps, 2)
            row["float32_set_many_vps"] = round(f32.set.median, 1)
            row["float32_set_pct_of_ceiling"] = round(100 * f32.set.median / c.set_rps, 2)
        r = raw.get(c.dim)
        if r is not None:
            row["redis_py_mget_vps"] = round(r.get.median, 1)
            row["redis_py_mget_pct_of_ceiling"] = round(100 * r.get.median / c.get_rps, 2)
            row["redis_py_mset_vps"] = round(r.set.median, 1)
            row["redis_py_mset_pct_of_ceiling"] = round(100 * r.set.median / c.set_rps, 2)
        rows.append(row)
    return rows


def run(server: RedisServer, cfg: LayersConfig, progress: Progress) -> dict[str, Any]:
    admin = server.client()
    peer = redisvl_available()
    if not peer:
        progress("layers: redisvl is not installed (pip install '.[bench]'): peer rows skipped")
    results: list[LayerResult] = []
    ceilings: list[CeilingResult] = []
    raw: dict[int, LayerResult] = {}

    def connect(db: int) -> redis.Redis:
        return redis.Redis(host=server.host, port=server.port, db=db)

    for dim in cfg.dims:
        admin.flushall()
        data = Dataset.make(dim, cfg.working_set)
        # The float32 entry's size, as cachebus stores it (checked against STRLEN below).
        value_bytes = len(cachebus.VectorCodec("float32").encode(data.vectors[0]))
        runs: dict[int, list[dict[str, float]]] = {c: [] for c in cfg.ceiling_clients}

        def ceiling_round(value_bytes: int = value_bytes, runs: dict[int, Any] = runs) -> None:
            for clients in cfg.ceiling_clients:
                runs[clients].append(
                    run_once(server.host, server.port, value_bytes, clients, cfg.ceiling_requests)
                )

        progress(
            f"dim {dim}: redis-benchmark GET/SET -d {value_bytes} -P {PIPELINE} -c "
            f"{'/'.join(map(str, cfg.ceiling_clients))} -n {cfg.ceiling_requests} after "
            "every round"
        )
        measured = measure_layers(
            make_subjects(connect, data, peer=peer),
            data,
            runs=cfg.runs,
            min_run_seconds=cfg.min_run_seconds,
            progress=progress,
            between_rounds=ceiling_round,
        )
        raw[dim] = next(r for r in measured if r.name == RAW)
        results += [r for r in measured if r.name != RAW]
        if int(raw[dim].value_bytes) != value_bytes:
            raise BenchError(f"float32 entry is {raw[dim].value_bytes} B, expected {value_bytes}")
        ceilings += [
            from_runs(dim, value_bytes, c, cfg.ceiling_requests, runs[c])
            for c in cfg.ceiling_clients
        ]
        admin.flushall()
    add_ratios(results)
    return {
        "config": {
            "dims": list(cfg.dims),
            "working_set": cfg.working_set,
            "runs": cfg.runs,
            "min_run_seconds": cfg.min_run_seconds,
            "batch": cfg.batch,
            "baseline": BASELINE,
            "codecs": [cachebus.VectorCodec(d, c).name for d, c in CODECS],
            "peer": [REDISVL, REDISVL_NO_TTL] if peer else [],
            "peer_ttl_s": PEER_TTL,
            "ceiling_clients": list(cfg.ceiling_clients),
            "ceiling_requests": cfg.ceiling_requests,
            "ceiling_runs": "one per client count after every timed round",
            "ceiling_pipeline": PIPELINE,
        },
        "results": [r.as_dict() for r in results],
        "redis_py_raw": [r.as_dict() for r in raw.values()],
        "ceiling": [c.as_dict() for c in ceilings],
        "ceiling_share": ceiling_rows(ceilings, results, raw),
    }
