"""The ceiling: ``redis-benchmark`` (C client) GET/SET against the benchmark's server."""

from __future__ import annotations

import csv
import io
import shutil
import statistics
import subprocess
from dataclasses import dataclass

PIPELINE = 100


@dataclass(frozen=True)
class CeilingResult:
    """Requests/s of redis-benchmark GET and SET: medians over ``repeats`` invocations."""

    dim: int
    value_bytes: int
    clients: int
    requests: int
    get_rps: float
    set_rps: float
    get_runs: list[float]
    set_runs: list[float]

    def as_dict(self) -> dict[str, object]:
        return {
            "dim": self.dim,
            "value_bytes": self.value_bytes,
            "clients": self.clients,
            "pipeline": PIPELINE,
            "requests": self.requests,
            "get_requests_per_s": self.get_rps,
            "set_requests_per_s": self.set_rps,
            "get_runs": self.get_runs,
            "set_runs": self.set_runs,
        }


def find_redis_benchmark() -> str:
    found = shutil.which("redis-benchmark")
    if found is None:
        raise RuntimeError("redis-benchmark not found (it ships with redis-server / redis-tools)")
    return found


def benchmark_version() -> str:
    done = subprocess.run(
        [find_redis_benchmark(), "--version"], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or done.stderr.strip()


def parse_csv(text: str) -> dict[str, float]:
    """``{"SET": rps, "GET": rps}`` from ``redis-benchmark --csv`` output."""
    rows = csv.DictReader(io.StringIO(text))
    out: dict[str, float] = {}
    for row in rows:
        test, rps = row.get("test"), row.get("rps")
        if test and rps:
            out[test.upper()] = float(rps)
    return out


def run_once(
    host: str, port: int, value_bytes: int, clients: int, requests: int
) -> dict[str, float]:
    """One ``redis-benchmark -t set,get``: SET runs first, so every GET finds its value."""
    cmd = [
        find_redis_benchmark(),
        "-h", host,
        "-p", str(port),
        "-t", "set,get",
        "-d", str(value_bytes),
        "-P", str(PIPELINE),
        "-c", str(clients),
        "-n", str(requests),
        "--csv",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    result = parse_csv(done.stdout)
    if done.returncode != 0 or not {"GET", "SET"} <= result.keys():
        raise RuntimeError(
            f"redis-benchmark failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
    return result


def from_runs(
    dim: int, value_bytes: int, clients: int, requests: int, runs: list[dict[str, float]]
) -> CeilingResult:
    """Medians of ``run_once`` results taken elsewhere (e.g. between layer rounds)."""
    gets = [r["GET"] for r in runs]
    sets = [r["SET"] for r in runs]
    return CeilingResult(
        dim=dim,
        value_bytes=value_bytes,
        clients=clients,
        requests=requests,
        get_rps=statistics.median(gets),
        set_rps=statistics.median(sets),
        get_runs=gets,
        set_runs=sets,
    )


def measure_ceiling(
    host: str, port: int, dim: int, value_bytes: int, clients: int, requests: int, repeats: int
) -> CeilingResult:
    runs = [run_once(host, port, value_bytes, clients, requests) for _ in range(repeats)]
    gets = [r["GET"] for r in runs]
    sets = [r["SET"] for r in runs]
    return CeilingResult(
        dim=dim,
        value_bytes=value_bytes,
        clients=clients,
        requests=requests,
        get_rps=statistics.median(gets),
        set_rps=statistics.median(sets),
        get_runs=gets,
        set_runs=sets,
    )
