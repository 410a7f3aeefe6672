"""``python -m bench.run`` (``make bench``): cachebus vs the lesson's JSON cache vs redis-benchmark.

Starts its own redis-server (:class:`cachebus.testing.RedisServer`, never
``$CACHEBUS_TEST_REDIS_URL``: the benchmark runs FLUSHALL), measures, prints the tables and
writes ``bench/report.md`` + ``bench/report.json``.  ``--quick`` is a CI smoke of a few
seconds with too few repetitions to trust; it writes ``bench/out/report-quick.*`` so it
never overwrites a real report.

Exit status: 0 when measured (missed expectations are reported, not fatal); 1 when the run
is broken (wrong data read back, errors while timing), in which case nothing is written.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

import cachebus
from cachebus.testing import RedisServer

from . import report as rep
from .ceiling import PIPELINE, CeilingResult, measure_ceiling
from .client_layers import (
    BASELINE,
    BATCH,
    CODECS,
    RAW,
    BenchError,
    Dataset,
    LayerResult,
    add_ratios,
    make_subjects,
    measure_layers,
)
from .machine import describe

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Config:
    dims: tuple[int, ...]
    working_set: int
    runs: int
    min_run_seconds: float
    ceiling_clients: tuple[int, ...]
    ceiling_requests: int
    ceiling_repeats: int
    output: str
    batch: int = BATCH


FULL = Config(
    dims=(1536, 384),
    working_set=1000,
    runs=11,
    min_run_seconds=0.25,
    ceiling_clients=(1, 4),
    ceiling_requests=300_000,
    ceiling_repeats=3,
    output=str(HERE / "report"),
)
QUICK = Config(
    dims=(1536, 384),
    working_set=200,
    runs=3,
    min_run_seconds=0.03,
    ceiling_clients=(1,),
    ceiling_requests=50_000,
    ceiling_repeats=1,
    output=str(HERE / "out" / "report-quick"),
)


class Clock:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def progress(self, message: str) -> None:
        print(f"[{self.elapsed:6.1f}s] {message}", file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None) -> tuple[Config, str]:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke: a few seconds")
    parser.add_argument("--dims", help="comma-separated dimensions (default 1536,384)")
    parser.add_argument("--runs", type=int, help="timed runs per figure (median reported)")
    parser.add_argument("--output", help="report path without suffix (.md and .json written)")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    changes: dict[str, Any] = {}
    if args.dims:
        changes["dims"] = tuple(int(d) for d in args.dims.split(","))
    if args.runs:
        changes["runs"] = args.runs
    if args.output:
        changes["output"] = args.output
    return Config(**{**asdict(cfg), **changes}), "quick" if args.quick else "full"


def measure(
    cfg: Config, server: RedisServer, clock: Clock
) -> tuple[list[LayerResult], list[CeilingResult], dict[int, LayerResult]]:
    admin = server.client()
    results: list[LayerResult] = []
    ceilings: list[CeilingResult] = []
    raw: dict[int, LayerResult] = {}

    def connect(db: int) -> redis.Redis:
        return redis.Redis(host=server.host, port=server.port, db=db)

    for dim in cfg.dims:
        admin.flushall()
        data = Dataset.make(dim, cfg.working_set)
        measured = measure_layers(
            make_subjects(connect, data),
            data,
            runs=cfg.runs,
            min_run_seconds=cfg.min_run_seconds,
            progress=clock.progress,
        )
        raw[dim] = next(r for r in measured if r.name == RAW)
        results += [r for r in measured if r.name != RAW]
        admin.flushall()
        value_bytes = int(raw[dim].value_bytes)  # the float32 entry, as cachebus stores it
        for clients in cfg.ceiling_clients:
            clock.progress(
                f"dim {dim}: redis-benchmark GET/SET -d {value_bytes} -P {PIPELINE} "
                f"-c {clients} -n {cfg.ceiling_requests} x{cfg.ceiling_repeats}"
            )
            ceilings.append(
                measure_ceiling(
                    server.host,
                    server.port,
                    dim,
                    value_bytes,
                    clients,
                    cfg.ceiling_requests,
                    cfg.ceiling_repeats,
                )
            )
        admin.flushall()
    add_ratios(results)
    return results, ceilings, raw


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it is below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def main(argv: Sequence[str] | None = None) -> int:
    cfg, mode = parse_args(argv)
    clock = Clock()
    started = datetime.now(UTC).isoformat(timespec="seconds")
    clock.progress(f"{mode} benchmark: dims {list(cfg.dims)}, starting redis-server")
    try:
        with RedisServer(use_env=False) as server:
            machine = describe(server.client())
            clock.progress(f"redis-server {machine['redis_server']} on port {server.port}")
            results, ceilings, raw = measure(cfg, server, clock)
    except BenchError as exc:
        print(f"BROKEN RUN, nothing reported: {exc}", file=sys.stderr)
        return 1
    expectations = rep.check_expectations(results)
    rows = rep.ceiling_rows(ceilings, results, raw)
    report: dict[str, Any] = {
        "schema": 1,
        "mode": mode,
        "started_at": started,
        "duration_s": round(clock.elapsed, 1),
        "machine": machine,
        "config": {
            **asdict(cfg),
            "output": _shown(Path(cfg.output)),
            "baseline": BASELINE,
            "codecs": [cachebus.VectorCodec(d, c).name for d, c in CODECS],
            "ceiling_pipeline": PIPELINE,
        },
        "results": [r.as_dict() for r in results],
        "redis_py_raw": [r.as_dict() for r in raw.values()],
        "ceiling": [c.as_dict() for c in ceilings],
        "ceiling_share": rows,
        "expectations": [e.as_dict() for e in expectations],
    }
    markdown = rep.render_markdown(report, results, rep.ceiling_table(rows))
    md_path, json_path = rep.write(Path(cfg.output), report, markdown)
    compact = markdown.split("\n## Expectations")[0]
    print(f"{compact}\n## Expectations\n\n{rep.expectations_block(expectations, show_met=False)}")
    print(f"\nwrote {md_path} and {json_path} in {clock.elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
