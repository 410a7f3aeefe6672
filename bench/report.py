"""Expectations check and the Markdown / JSON report."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .ceiling import PIPELINE, CeilingResult
from .client_layers import BASELINE, BATCH, LayerResult
from .timing import Throughput


@dataclass(frozen=True)
class Expectation:
    dim: int
    claim: str
    ok: bool
    detail: str

    def as_dict(self) -> dict[str, object]:
        return {"dim": self.dim, "claim": self.claim, "ok": self.ok, "detail": self.detail}


def check_expectations(results: Sequence[LayerResult]) -> list[Expectation]:
    """The obvious expectations, checked rather than assumed; misses are reported."""
    out: list[Expectation] = []
    by = {(r.dim, r.name): r for r in results}
    for r in results:
        if r.name == BASELINE:
            continue
        for key, what, want_above in (
            ("get_speed", "get_many faster than JSON", True),
            ("set_speed", "set_many faster than JSON", True),
            ("memory", "smaller in Redis than JSON", False),
        ):
            ratio = r.ratios[key]
            ok = ratio > 1.0 if want_above else ratio < 1.0
            out.append(Expectation(r.dim, f"{r.name}: {what}", ok, f"x{ratio:.2f}"))
    for dim in dict.fromkeys(r.dim for r in results):
        pairs = (
            ("float16", "float32", 0.6, "float16 at most 0.6x the memory of float32"),
            ("int8", "float16", 1.0, "int8 smaller than float16"),
            ("float32+zlib", "float32", 1.0, "zlib shrinks float32"),
            ("int8+zlib", "int8", 1.0, "zlib shrinks int8"),
        )
        for small, big, limit, claim in pairs:
            a, b = by.get((dim, small)), by.get((dim, big))
            if a is None or b is None:
                continue
            ratio = a.memory_usage / b.memory_usage
            out.append(Expectation(dim, claim, ratio < limit, f"x{ratio:.3f} of {big}"))
    return out


def _rate(t: Throughput) -> str:
    return f"{t.median:,.0f}"


def results_table(results: Sequence[LayerResult]) -> str:
    lines = [
        "| dim | layer | get_many vec/s | get x JSON | set_many vec/s | set x JSON "
        "| value B | MEMORY USAGE B | mem x JSON | min cos | IQR get/set |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.dim} | {r.name} | {_rate(r.get)} | {r.ratios['get_speed']:.2f} "
            f"| {_rate(r.set)} | {r.ratios['set_speed']:.2f} | {r.value_bytes:,.0f} "
            f"| {r.memory_usage:,.0f} | {r.ratios['memory']:.3f} "
            f"| {r.fidelity.min_cosine:.6f} "
            f"| {r.get.iqr:.0%}/{r.set.iqr:.0%} |"
        )
    return "\n".join(lines)


def ceiling_rows(
    ceilings: Sequence[CeilingResult],
    results: Sequence[LayerResult],
    raw: dict[int, LayerResult],
) -> list[dict[str, Any]]:
    """Our float32 get/set_many (and raw redis-py MGET/MSET) as shares of the ceiling."""
    ours = {r.dim: r for r in results if r.name == "float32"}
    rows = []
    for c in ceilings:
        f32 = ours.get(c.dim)
        row: dict[str, Any] = {
            "dim": c.dim,
            "clients": c.clients,
            "value_bytes": c.value_bytes,
            "get_ceiling_rps": c.get_rps,
            "set_ceiling_rps": c.set_rps,
        }
        if f32 is not None:
            row["float32_get_many_vps"] = round(f32.get.median, 1)
            row["float32_get_pct_of_ceiling"] = round(100 * f32.get.median / c.get_rps, 2)
            row["float32_set_many_vps"] = round(f32.set.median, 1)
            row["float32_set_pct_of_ceiling"] = round(100 * f32.set.median / c.set_rps, 2)
        if c.dim in raw:
            r = raw[c.dim]
            row["redis_py_mget_vps"] = round(r.get.median, 1)
            row["redis_py_mget_pct_of_ceiling"] = round(100 * r.get.median / c.get_rps, 2)
            row["redis_py_mset_vps"] = round(r.set.median, 1)
            row["redis_py_mset_pct_of_ceiling"] = round(100 * r.set.median / c.set_rps, 2)
        rows.append(row)
    return rows


def ceiling_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| dim | value B | redis-benchmark -c | GET req/s | SET req/s "
        "| float32 get_many vec/s | % of GET | float32 set_many vec/s | % of SET "
        "| redis-py MGET vec/s | % of GET | redis-py MSET vec/s | % of SET |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def cell(row: dict[str, Any], key: str, fmt: str) -> str:
        return format(row[key], fmt) if key in row else "-"

    for row in rows:
        lines.append(
            f"| {row['dim']} | {row['value_bytes']:,} | {row['clients']} "
            f"| {row['get_ceiling_rps']:,.0f} | {row['set_ceiling_rps']:,.0f} "
            f"| {cell(row, 'float32_get_many_vps', ',.0f')} "
            f"| {cell(row, 'float32_get_pct_of_ceiling', '.1f')}% "
            f"| {cell(row, 'float32_set_many_vps', ',.0f')} "
            f"| {cell(row, 'float32_set_pct_of_ceiling', '.1f')}% "
            f"| {cell(row, 'redis_py_mget_vps', ',.0f')} "
            f"| {cell(row, 'redis_py_mget_pct_of_ceiling', '.1f')}% "
            f"| {cell(row, 'redis_py_mset_vps', ',.0f')} "
            f"| {cell(row, 'redis_py_mset_pct_of_ceiling', '.1f')}% |"
        )
    return "\n".join(lines)


def expectations_block(expectations: Sequence[Expectation], *, show_met: bool = True) -> str:
    """Missed expectations first and always in full; met ones optionally."""
    missed = [e for e in expectations if not e.ok]
    lines = [
        f"{len(expectations) - len(missed)} of {len(expectations)} expectations met."
        + (" **Missed:**" if missed else "")
    ]
    lines += [f"- ✗ MISSED (dim {e.dim}) {e.claim}: {e.detail}" for e in missed]
    if show_met:
        lines += [f"- ✓ (dim {e.dim}) {e.claim}: {e.detail}" for e in expectations if e.ok]
    return "\n".join(lines)


NOTES = f"""\
- **Baseline** (`bench/lesson_baseline.py`): the lesson's JSON cache, reproduced on purpose
  with its flaws: 16-hex-char key digest, no model in the key, JSON text of Python floats
  (inputs are float32 vectors `.tolist()`-ed outside the timed region, so ~17 significant
  digits per component), `pipeline()` = MULTI/EXEC transaction, one round trip per batch.
- **Ours**: `cachebus.QueryEmbeddingCache` (`prefix="bench"`), returning float32 ndarrays.
  Each `get_many` is two round trips (ticket: sequence + namespace generation, then one
  MGET); each `set_many` is two (ticket read, then pipelined `SET … EX`).  Keys are longer
  than the baseline's (full sha256 + model/version/generation), which `MEMORY USAGE` counts.
- Batches of {BATCH} vectors.  Figures are medians of several timed runs (`IQR` =
  interquartile range / median; every run is in the JSON), taken in interleaved rounds
  (one run of every layer per round) so background load is shared out evenly; each layer
  has its own Redis database.  The working set is written once before timing and every
  value is read back and compared before anything is timed (float32 bit-exact, lossy
  codecs by cosine).  Server and clients share the machine's cores (not pinned).
- Vectors are random unit vectors: float mantissas look random to zlib, as real
  embeddings' do, so compression gains are small.
- **Ceiling**: `redis-benchmark` (C client, `-P {PIPELINE}`, one key, value size = our
  float32 entry) on the same server, median of its invocations.  Not like-for-like: our
  figure is one Python client hashing texts, building commands and decoding vectors.
  `redis-py MGET`/`MSET` (same float32 entries, plain keys, no layer, no decoding), timed
  in the same rounds as the layers, shows what the Python client alone reaches.
- `MEMORY USAGE key SAMPLES 0` (key + value + allocator overhead, Redis 7) and `STRLEN`:
  medians over all keys of the working set.
"""


def render_markdown(report: dict[str, Any], results: Sequence[LayerResult], ceiling: str) -> str:
    m = report["machine"]
    cfg = report["config"]
    parts = [
        f"# cachebus benchmark ({report['mode']})",
        "",
        f"{report['started_at']}, {report['duration_s']:.0f} s. "
        f"{m['cpu_model']}, {m['cpus_usable']} usable of {m['cpu_count']} CPUs, {m['os']}; "
        f"{m['python']}, numpy {m['numpy']}, redis-py {m['redis_py']}, "
        f"redis-server {m['redis_server']} ({m['redis_allocator']}), "
        f"{m['redis_benchmark']}; cachebus {m['cachebus']} @ {m['git']}.",
        "",
        f"Batches of {cfg['batch']} vectors, {cfg['working_set']} keys per layer, median of "
        f"{cfg['runs']} runs of ≥ {cfg['min_run_seconds']} s each.  Ratios are ours / JSON "
        "baseline of the same run (speed: higher is better; memory: lower is better).",
        "",
        "## Cache layers",
        "",
        results_table(results),
        "",
        "## Ceiling (redis-benchmark, same server)",
        "",
        ceiling,
        "",
        "## Expectations",
        "",
        expectations_block([Expectation(**e) for e in report["expectations"]]),
        "",
        "## Method",
        "",
        NOTES,
    ]
    return "\n".join(parts)


def write(stem: Path, report: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    md_path = stem.with_suffix(".md")
    json_path = stem.with_suffix(".json")
    md_path.write_text(markdown)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    return md_path, json_path
