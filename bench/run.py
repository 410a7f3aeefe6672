"""``python -m bench.run`` (``make bench``): cachebus side by side with the lesson's design,
a peer library (RedisVL) and the hardware limit.

Sections (each a table in the report, every figure a ratio to a baseline of the same run):

1. ``layers``: client cache layers at dims 1536 and 384 (lesson JSON, cachebus codecs,
   RedisVL ``EmbeddingsCache``) and the redis-benchmark ceiling;
2. ``invalidation``: cost per document event vs keyspace size, lesson SCAN+DEL vs ours;
3. ``worker``: the faust worker end to end on a local Kafka broker and Redis;
4. ``fidelity``: float16/int8 on real all-MiniLM-L6-v2 embeddings (skipped, with a note,
   when the ``bench-models`` extra is not installed);
5. ``cache_aside``: a Zipf query stream through ``CachedEmbeddingService``;
6. ``integrations``: LangChain ``CachedEmbeddings`` hits vs LangChain's own
   ``CacheBackedEmbeddings`` on the same Redis, and the worker's per-event tracing cost.

Starts its own servers (:class:`devtools.redis_servers.RedisServer`, never
``$CACHEBUS_TEST_REDIS_URL``: the benchmark runs FLUSHALL; Kafka through
:class:`devtools.stack.LocalStack`).  Writes ``bench/report.md``, ``bench/report.json`` and
``bench/report.png``.  ``--quick`` is a CI smoke of about a minute with too few repetitions
to trust; it writes ``bench/out/report-quick.*`` so it never overwrites a real report.

Exit status: 0 when every section measured (missed targets are reported, not fatal); 1
when a section failed (wrong data read back, a service that did not start); the report is
still written, with the failure in it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from devtools.redis_servers import RedisServer

from . import cache_aside, durability, fidelity, integrations, invalidation, layers, worker_e2e
from . import plot as plotting
from . import report as rep
from .machine import BusyMeter, describe, loadavg

HERE = Path(__file__).resolve().parent
SECTIONS = (
    "layers",
    "invalidation",
    "durability",
    "cache_aside",
    "fidelity",
    "integrations",
    "worker",
)


@dataclass(frozen=True)
class Config:
    layers: layers.LayersConfig
    invalidation: invalidation.InvalidationConfig
    durability: durability.DurabilityConfig
    worker: worker_e2e.WorkerConfig
    fidelity: fidelity.FidelityConfig
    cache_aside: cache_aside.CacheAsideConfig
    integrations: integrations.IntegrationsConfig
    output: str


FULL = Config(
    layers=layers.LayersConfig(
        dims=(1536, 384),
        working_set=1000,
        runs=11,
        min_run_seconds=0.25,
        ceiling_clients=(1, 4),
        ceiling_requests=200_000,
    ),
    invalidation=invalidation.InvalidationConfig(
        sizes=(10_000, 100_000, 1_000_000),
        ours_events=50,
        lesson_events=(10, 5, 3),
        documents=10_000,
    ),
    durability=durability.DurabilityConfig(calls=2000, batch=100, batches=200),
    worker=worker_e2e.WorkerConfig(
        flood_events=100_000,
        loads=(1000, 5000),
        load_seconds=20,
        near_max_fraction=0.8,
        warmup_events=5000,
        documents=100_000,
        scale_workers=2,
        compare_wait_ms=20,
    ),
    fidelity=fidelity.FidelityConfig(passages=5000, queries=500),
    cache_aside=cache_aside.CacheAsideConfig(
        queries=20_000,
        vocabulary=5000,
        zipf_s=1.1,
        provider_ms=50,
        callers=8,
        no_cache_sample=400,
    ),
    integrations=integrations.IntegrationsConfig(),
    output=str(HERE / "report"),
)
QUICK = Config(
    layers=replace(
        FULL.layers,
        working_set=200,
        runs=3,
        min_run_seconds=0.03,
        ceiling_clients=(1,),
        ceiling_requests=50_000,
    ),
    invalidation=replace(
        FULL.invalidation, sizes=(10_000, 50_000), ours_events=20, lesson_events=(2, 1)
    ),
    durability=durability.DurabilityConfig(calls=200, batch=100, batches=20),
    worker=replace(
        FULL.worker,
        flood_events=10_000,
        loads=(1000,),
        load_seconds=5,
        near_max_fraction=None,
        warmup_events=1000,
        scale_workers=None,
        compare_wait_ms=None,
        ceiling_runs=1,
    ),
    fidelity=replace(FULL.fidelity, passages=500, queries=50),
    cache_aside=replace(FULL.cache_aside, queries=2000, vocabulary=500, no_cache_sample=80),
    integrations=replace(
        FULL.integrations,
        queries=100,
        doc_batches=2,
        runs=3,
        min_run_seconds=0.03,
        trace_runs=3,
    ),
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


def parse_args(argv: Sequence[str] | None) -> tuple[Config, str, list[str], bool]:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke: about a minute")
    parser.add_argument(
        "--only", help=f"comma-separated sections to run (default all: {','.join(SECTIONS)})"
    )
    parser.add_argument("--skip", help="comma-separated sections to leave out")
    parser.add_argument("--dims", help="layers: comma-separated dimensions (default 1536,384)")
    parser.add_argument("--runs", type=int, help="layers: timed runs per figure")
    parser.add_argument("--output", help="report path without suffix (.md/.json/.png written)")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="replace only the sections run now in the existing report (e.g. rerun a noisy "
        "section: --only worker --merge)",
    )
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    if args.dims:
        cfg = replace(
            cfg, layers=replace(cfg.layers, dims=tuple(int(d) for d in args.dims.split(",")))
        )
    if args.runs:
        cfg = replace(cfg, layers=replace(cfg.layers, runs=args.runs))
    if args.output:
        cfg = replace(cfg, output=args.output)
    chosen = [s.strip() for s in args.only.split(",")] if args.only else list(SECTIONS)
    skipped = {s.strip() for s in args.skip.split(",")} if args.skip else set()
    unknown = (set(chosen) | skipped) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    sections = [s for s in SECTIONS if s in chosen and s not in skipped]
    return cfg, "quick" if args.quick else "full", sections, bool(args.merge)


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it is below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _runners(
    cfg: Config, server: RedisServer, clock: Clock
) -> dict[str, Callable[[], dict[str, Any]]]:
    def connect(db: int) -> redis.Redis:
        return redis.Redis(host=server.host, port=server.port, db=db)

    return {
        "layers": lambda: layers.run(server, cfg.layers, clock.progress),
        "invalidation": lambda: invalidation.run(
            connect, server.client(), cfg.invalidation, clock.progress
        ),
        "durability": lambda: durability.run(cfg.durability, clock.progress),
        "cache_aside": lambda: cache_aside.run(connect(0), cfg.cache_aside, clock.progress),
        "fidelity": lambda: fidelity.run(cfg.fidelity, clock.progress),
        "integrations": lambda: integrations.run(connect, cfg.integrations, clock.progress),
        "worker": lambda: worker_e2e.run(cfg.worker, clock.progress),
    }


def merged(old: dict[str, Any], new: dict[str, Any], sections: list[str]) -> dict[str, Any]:
    """``old`` with ``sections`` (and their run records) taken from ``new``."""
    out = dict(old)
    out["sections"] = {**old.get("sections", {}), **new["sections"]}
    out["section_runs"] = {**old.get("section_runs", {}), **new["section_runs"]}
    out["duration_s"] = round(sum(r["seconds"] for r in out["section_runs"].values()), 1)
    out["reruns"] = [
        *old.get("reruns", []),
        {"sections": sections, "started_at": new["started_at"], "machine": new["machine"]},
    ]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    cfg, mode, sections, merge = parse_args(argv)
    clock = Clock()
    started = datetime.now(UTC).isoformat(timespec="seconds")
    clock.progress(f"{mode} benchmark: sections {', '.join(sections)}; starting redis-server")
    report: dict[str, Any] = {
        "schema": 2,
        "mode": mode,
        "started_at": started,
        "sections": {},
        "section_runs": {},
    }
    failed: list[str] = []
    with RedisServer(use_env=False) as server:
        report["machine"] = describe(server.client())
        clock.progress(
            f"redis-server {report['machine']['redis_server']} on port {server.port}; "
            f"load average {report['machine']['loadavg_start']}"
        )
        runners = _runners(cfg, server, clock)
        for name in sections:
            clock.progress(f"=== section {name}")
            meter = BusyMeter()
            t0 = time.perf_counter()
            try:
                result = runners[name]()
            except Exception as exc:  # a broken section is reported, the others still run
                failed.append(name)
                clock.progress(f"section {name} FAILED: {exc!r}")
                result = {"error": repr(exc)[:2000], "traceback": traceback.format_exc()[-4000:]}
            if isinstance(result, dict) and result.get("errors"):
                failed.append(name)  # measured, but part of it broke: say so in the exit status
            server.client().flushall()
            report["sections"][name] = result
            report["section_runs"][name] = {
                "seconds": round(time.perf_counter() - t0, 1),
                "machine_busy": meter.busy(),
                "loadavg_end": loadavg(),
            }
    stem = Path(cfg.output)
    report["duration_s"] = round(clock.elapsed, 1)
    report["config"] = {
        **{k: v for k, v in asdict(cfg).items() if k != "output"},
        "output": _shown(stem),
        "sections": sections,
    }
    if merge and stem.with_suffix(".json").exists():
        report = merged(json.loads(stem.with_suffix(".json").read_text()), report, sections)
        clock.progress(f"merged {', '.join(sections)} into {_shown(stem.with_suffix('.json'))}")
    report["figure"] = stem.with_suffix(".png").name
    report["targets"] = [t.as_dict() for t in rep.targets(report)]
    try:
        png = plotting.write_png(report, stem.with_suffix(".png"))
    except ImportError as exc:
        clock.progress(f"no figure: {exc} (pip install '.[bench]' brings matplotlib)")
        png = None
    markdown = rep.render_markdown(report)
    md_path, json_path = rep.write(stem, report, markdown)
    print(rep.headline(report))
    written = ", ".join(_shown(p) for p in (md_path, json_path, png) if p is not None)
    print(f"\nwrote {written} in {clock.elapsed:.1f} s")
    if failed:
        print(f"FAILED sections: {', '.join(failed)} (see the report)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
