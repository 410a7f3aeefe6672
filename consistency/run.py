"""``python -m consistency.run [--quick] [--only NAME ...]`` (``make consistency``): the
failure-mode suite on real redis-servers, and its report.

Every registered scenario (:mod:`consistency.model`) runs on the new code (the working
tree) and, when registered with ``baseline=True``, on today's library (git
``077cbd4``, :mod:`consistency.baseline`), each in a subprocess of its own
(:mod:`consistency.entry`). Writes ``docs/consistency-report.md`` and ``.json``
(``--quick``: ``consistency/out/report-quick.*``, so a smoke run never overwrites the
real report) and prints the table.

Exit status: 0 when every new-code row has 0 stale reads; 1 when one has stale reads or
a new-code scenario failed (listed on stderr). The baseline's stale reads are the point
of the comparison, never a failure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.machine import git_revision

from . import report as rep
from .baseline import BASELINE_COMMIT, REPO, Baseline, extract, subprocess_env
from .model import Code, Scenario, load_scenarios

FULL_OUTPUT = REPO / "docs" / "consistency-report"
QUICK_OUTPUT = REPO / "consistency" / "out" / "report-quick"


@dataclass(frozen=True)
class Job:
    scenario: Scenario
    code: Code


class Clock:
    def __init__(self) -> None:
        self.start = time.monotonic()
        self._lock = threading.Lock()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def progress(self, message: str) -> None:
        with self._lock:
            print(f"[{self.elapsed:6.1f}s] {message}", file=sys.stderr, flush=True)


def run_job(
    job: Job, baseline: Baseline | None, *, quick: bool, out_dir: Path, seed: int, timeout: float
) -> dict[str, Any]:
    """One scenario on one library in a subprocess; its JSON result (or the failure)."""
    env, cwd = subprocess_env(job.code, baseline)
    cmd = [
        sys.executable,
        "-m",
        "consistency.entry",
        job.scenario.name,
        "--code",
        job.code,
        "--json",
        "--out-dir",
        str(out_dir),
        "--seed",
        str(seed),
    ]
    if quick:
        cmd.append("--quick")
    failed: dict[str, Any] = {"scenario": job.scenario.name, "code": job.code, "rows": []}
    try:
        done = subprocess.run(
            cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return failed | {"error": f"timed out after {timeout:g} s"}
    lines = done.stdout.strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        return failed | {"error": f"exit {done.returncode}, no result (see stderr)"}
    if job.code == "baseline" and baseline is not None and baseline.path is not None:
        library = Path(result.get("library", ""))
        if baseline.path not in library.parents:
            result["error"] = f"imported cachebus from {library}, not the baseline"
            result["rows"] = []
    return result


def redis_server_version() -> str:
    try:
        from devtools.redis_servers import find_redis_server

        out = subprocess.run(
            [find_redis_server(), "--version"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, RuntimeError, subprocess.CalledProcessError):
        return "unknown"
    for word in out.split():
        if word.startswith("v="):
            return word[2:]
    return out.strip()


def workload_docs(scenarios: Sequence[Scenario]) -> list[str]:
    """Docstrings of the modules the scenarios come from, once each, in order."""
    seen: list[str] = []
    docs: list[str] = []
    for scenario in scenarios:
        module = sys.modules.get(scenario.fn.__module__)
        if module is None or module.__name__ in seen:
            continue
        seen.append(module.__name__)
        if module.__doc__:
            docs.append(module.__doc__)
    return docs


def parse_args(argv: Sequence[str] | None, names: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m consistency.run", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="scaled-down smoke run (1-2 min)")
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        help=f"scenarios to run (default all: {' '.join(names)})",
    )
    parser.add_argument(
        "--skip", nargs="+", metavar="NAME", default=[], help="scenarios to leave out"
    )
    parser.add_argument("--no-baseline", action="store_true", help="new code only")
    parser.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="scenario subprocesses at once (default 2; exclusive scenarios run alone after)",
    )
    parser.add_argument("--seed", type=int, default=20261126)
    parser.add_argument("--output", help="report path without suffix (.md and .json written)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per scenario run")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = parser.parse_args(argv)
    unknown = set(args.only or []) | set(args.skip)
    unknown -= set(names)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; choose from {', '.join(names)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    registry = load_scenarios()
    args = parse_args(argv, list(registry))
    if args.list:
        for s in registry.values():
            flags = ("+baseline " if s.baseline else "") + ("exclusive " if s.exclusive else "")
            print(f"{s.name:36} {flags:19}{s.title}")
        return 0
    chosen = [s for s in registry.values() if (not args.only or s.name in args.only)]
    chosen = [s for s in chosen if s.name not in args.skip]
    output = Path(args.output) if args.output else (QUICK_OUTPUT if args.quick else FULL_OUTPUT)
    out_dir = output.parent.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    timeout = args.timeout or (300.0 if args.quick else 900.0)
    clock = Clock()

    with tempfile.TemporaryDirectory(prefix="cachebus-baseline-") as tmp:
        baseline: Baseline | None = None
        if not args.no_baseline and any(s.baseline for s in chosen):
            baseline = extract(Path(tmp))
            if baseline.available:
                clock.progress(f"baseline: git {baseline.commit} ({baseline.sha[:12]}) in {tmp}")
            else:
                clock.progress(f"baseline unavailable: {baseline.reason}")
        jobs = [Job(s, "new") for s in chosen]
        if baseline is not None and baseline.available:
            jobs += [Job(s, "baseline") for s in chosen if s.baseline]
        # Interleave so each scenario's two runs are next to each other.
        jobs.sort(key=lambda j: ([s.name for s in chosen].index(j.scenario.name), j.code != "new"))
        clock.progress(
            f"{len(jobs)} runs ({'quick' if args.quick else 'full'}), {args.jobs} at a time"
        )

        def go(job: Job) -> dict[str, Any]:
            clock.progress(f"start {job.scenario.name} ({job.code})")
            result = run_job(
                job, baseline, quick=args.quick, out_dir=out_dir, seed=args.seed, timeout=timeout
            )
            stale = sum(r["stale_reads"] for r in result["rows"])
            status = f"error: {result['error']}" if result.get("error") else f"{stale} stale reads"
            clock.progress(f"done  {job.scenario.name} ({job.code}): {status}")
            return result

        shared = [j for j in jobs if not j.scenario.exclusive]
        alone = [j for j in jobs if j.scenario.exclusive]
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            done = dict(zip(map(id, shared), pool.map(go, shared), strict=True))
        done.update({id(j): go(j) for j in alone})
        results = [done[id(j)] for j in jobs]

    report: dict[str, Any] = {
        "meta": {
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "quick": args.quick,
            "git": git_revision(REPO),
            "redis_version": redis_server_version(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "seconds": round(clock.elapsed, 1),
            "seed": args.seed,
            "jobs": args.jobs,
            "baseline_commit": BASELINE_COMMIT,
            "baseline_sha": baseline.sha if baseline else "",
            "baseline_unavailable": (
                "not requested (--no-baseline)"
                if args.no_baseline
                else (baseline.reason if baseline is not None and not baseline.available else "")
            ),
            "scenarios": [s.name for s in chosen],
            "workloads": workload_docs(chosen),
        },
        "results": results,
    }
    output.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    output.with_suffix(".md").write_text(rep.render(report))
    cells, _ = rep.table(report)
    print(rep.text_table(cells))
    print(f"\nreport: {output.with_suffix('.md')} and .json", file=sys.stderr)
    failed = rep.failures(report)
    if failed:
        print("\nFAILED (new code):", file=sys.stderr)
        for line in failed:
            print(f"  {line}", file=sys.stderr)
        return 1
    print("0 stale reads in every new-code row", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
