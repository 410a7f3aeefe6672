"""Targets, the Markdown report and the JSON file, all rendered from the report dict.

Everything here reads the ``report`` dictionary that ``bench.run`` also writes as JSON, so
a report can be re-rendered from its JSON (``python -m bench.report bench/report.json``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .client_layers import BASELINE
from .durability import durability_md
from .integrations import integrations_md

Row = dict[str, Any]


@dataclass(frozen=True)
class Target:
    section: str
    claim: str
    ok: bool | None
    """None: not measured in this run (section skipped or failed)."""
    measured: str
    why: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _section(report: dict[str, Any], name: str) -> dict[str, Any] | None:
    sec = report.get("sections", {}).get(name)
    if not isinstance(sec, dict) or "error" in sec or sec.get("skipped"):
        return None
    return sec


def _layer(sec: dict[str, Any], dim: int, name: str) -> Row | None:
    return next((r for r in sec["results"] if r["dim"] == dim and r["layer"] == name), None)


def _missing(section: str, claim: str, report: dict[str, Any], name: str) -> Target:
    sec = report.get("sections", {}).get(name) or {}
    why = sec.get("error") or sec.get("note") or "section not run"
    return Target(section, claim, None, "not measured", str(why)[:300])


def layer_targets(report: dict[str, Any]) -> list[Target]:
    sec = _section(report, "layers")
    claims = [
        "get_many at dim 1536 >= 40x the lesson's JSON cache",
        "get_many at dim 1536 >= 50x RedisVL EmbeddingsCache",
        "get_many at dim 1536 >= 35% of the redis-benchmark GET ceiling",
        "int8 entries <= 0.3x float32's bytes with cosine >= 0.999",
    ]
    if sec is None:
        return [_missing("1 layers", c, report, "layers") for c in claims]
    out: list[Target] = []
    f32 = _layer(sec, 1536, "float32")
    if f32 is None:
        return [_missing("1 layers", c, report, "layers") for c in claims]
    get = f32["get_many"]["vectors_per_s"]
    ratio = f32["ratios_vs_baseline"]["get_speed"]
    base = _layer(sec, 1536, BASELINE)
    base_get = base["get_many"]["vectors_per_s"] if base else float("nan")
    out.append(
        Target(
            "1 layers",
            claims[0],
            ratio >= 40,
            f"x{ratio:.1f} (float32 {get:,.0f} vec/s vs JSON {base_get:,.0f})",
            ""
            if ratio >= 40
            else "see the layer table and the ceiling: both sides are "
            "bounded by one Python client on a 2-core machine shared with Redis",
        )
    )
    rv = f32["ratios_vs_baseline"].get("get_speed_vs_redisvl")
    rv_fast = f32["ratios_vs_baseline"].get("get_speed_vs_redisvl_no_ttl")
    if rv is None or rv_fast is None:
        out.append(_missing("1 layers", claims[1], report, "layers"))
    else:
        ok = rv >= 50 and rv_fast >= 50
        out.append(
            Target(
                "1 layers",
                claims[1],
                ok,
                f"x{rv:.1f} vs RedisVL with a TTL (like-for-like: its hits refresh the TTL "
                f"with one EXPIRE round trip each), x{rv_fast:.1f} vs RedisVL without TTL",
                ""
                if ok
                else (
                    "RedisVL without TTL reads one pipelined HGETALL per batch, as fast as "
                    "its JSON + pydantic decoding allows; see the layer table"
                ),
            )
        )
    shares = [
        r for r in sec["ceiling_share"] if r["dim"] == 1536 and "float32_get_pct_of_ceiling" in r
    ]
    if shares:
        one = min(shares, key=lambda r: r["clients"])
        pct = one["float32_get_pct_of_ceiling"]
        others = ", ".join(
            f"{r['float32_get_pct_of_ceiling']:.1f}% of -c {r['clients']}" for r in shares
        )
        raw_pct = one.get("redis_py_mget_pct_of_ceiling")
        ours_runs = f32["get_many"]["runs_vectors_per_s"]
        ceil_runs = next(
            c["get_runs"]
            for c in sec["ceiling"]
            if c["dim"] == 1536 and c["clients"] == one["clients"]
        )
        spread = (
            f"run to run: ours {min(ours_runs):,.0f}-{max(ours_runs):,.0f} vec/s, ceiling "
            f"{min(ceil_runs):,.0f}-{max(ceil_runs):,.0f} req/s"
        )
        out.append(
            Target(
                "1 layers",
                claims[2],
                pct >= 35,
                f"{pct:.1f}% of redis-benchmark -c {one['clients']} -P 100 GET "
                f"({one['get_ceiling_rps']:,.0f} req/s; medians); {others}; {spread}",
                ""
                if pct >= 35
                else (
                    f"one Python client: redis-py's own MGET of the same values, no cache "
                    f"layer and no decoding, reaches {raw_pct:.1f}% of the same ceiling, "
                    f"so the layer costs {100 * (1 - pct / raw_pct):.0f}% on top of redis-py"
                    if raw_pct
                    else "see the ceiling table"
                ),
            )
        )
    else:
        out.append(_missing("1 layers", claims[2], report, "layers"))
    raw = next((r for r in sec.get("redis_py_raw", []) if r["dim"] == 1536), None)
    claim = "float32 get_many at dim 1536 >= 53% of redis-py's raw MGET of the same values"
    if raw is None:
        out.append(_missing("1 layers", claim, report, "layers"))
    else:
        raw_get = raw["get_many"]["vectors_per_s"]
        share = get / raw_get if raw_get else 0.0
        out.append(
            Target(
                "1 layers",
                claim,
                share >= 0.53,
                f"{share:.1%} ({get:,.0f} vs {raw_get:,.0f} vec/s; the epoch and the "
                "generation ride in the same MGET)",
                ""
                if share >= 0.53
                else "the fail-safe checks (generation and epoch keys, key building, decoding) "
                "cost more than the target allows on this run; see the layer table",
            )
        )
    fid = _section(report, "fidelity")
    real = next((r for r in fid["rows"] if r["codec"] == "int8"), None) if fid else None
    for dim in sec["config"]["dims"]:
        i8, f = _layer(sec, dim, "int8"), _layer(sec, dim, "float32")
        if i8 is None or f is None:
            continue
        mem = i8["ratios_vs_baseline"]["memory_vs_float32"]
        cos = i8["round_trip"]["min_cosine"]
        measured = f"x{mem:.3f} of float32's MEMORY USAGE, min cosine {cos:.6f} (random vectors)"
        ok = mem <= 0.3 and cos >= 0.999
        if fid is not None and real is not None and dim == fid["dim"]:
            measured += (
                f"; real MiniLM embeddings: min cosine {real['cosine_min']:.6f}, top-10 "
                f"overlap {real['top10_overlap_mean']:.1%}"
            )
            ok = ok and real["cosine_min"] >= 0.999
        value = i8["value_bytes_median"] / f["value_bytes_median"]
        fixed = f["memory_usage_bytes_median"] - f["value_bytes_median"]
        out.append(
            Target(
                "1 layers",
                f"{claims[3]} (dim {dim})",
                ok,
                measured,
                ""
                if ok
                else (
                    f"the value itself is x{value:.3f} of float32's; the rest of an entry "
                    f"(key, Redis object, allocator size class: ~{fixed:,.0f} B) is about the "
                    f"same for every codec and weighs more at {dim} dimensions"
                ),
            )
        )
    return out


def invalidation_targets(report: dict[str, Any]) -> list[Target]:
    claim = "ours at the largest keyspace within 1.2x of ours at the smallest"
    sec = _section(report, "invalidation")
    if sec is None:
        return [_missing("2 invalidation", claim, report, "invalidation")]
    out = []
    sizes = sec["config"]["sizes"]
    lo, hi = min(sizes), max(sizes)
    for approach in ("ours: invalidate_documents", "ours: bump"):
        rows = {r["keys"]: r for r in sec["results"] if r["approach"] == approach}
        a, b = rows.get(lo), rows.get(hi)
        if a is None or b is None:
            continue
        ratio = b["median_ms"] / a["median_ms"]
        cpu = (
            b["redis_cpu_ms_per_event"] / a["redis_cpu_ms_per_event"]
            if a["redis_cpu_ms_per_event"]
            else float("nan")
        )
        out.append(
            Target(
                "2 invalidation",
                f"{approach.removeprefix('ours: ')}: {hi:,} keys within 1.2x of {lo:,}",
                ratio <= 1.2,
                f"x{ratio:.2f} ({b['median_ms']:.3f} vs {a['median_ms']:.3f} ms per event; "
                f"Redis CPU x{cpu:.2f})",
                ""
                if ratio <= 1.2
                else "a few round trips of ~0.1 ms each: jitter of the shared machine at "
                "this scale, see p90 and the Redis CPU ratio",
            )
        )
    lesson = {r["keys"]: r for r in sec["results"] if r["approach"].startswith("lesson")}
    if lo in lesson and hi in lesson:
        ratio = lesson[hi]["median_ms"] / lesson[lo]["median_ms"]
        out.append(
            Target(
                "2 invalidation",
                f"(context) the lesson's per-event cost grows with the keyspace: {hi:,} vs {lo:,}",
                None,
                f"x{ratio:.0f} ({lesson[hi]['median_ms'] / 1000:.2f} s vs "
                f"{lesson[lo]['median_ms']:.1f} ms per event; "
                f"x{lesson[hi].get('x_ours_invalidate_documents', 0):,.0f} of ours)",
            )
        )
    return out


def _phase(sec: dict[str, Any], name: str) -> Row | None:
    return next((p for p in sec["phases"] if p["phase"] == name), None)


def worker_hint(sec: dict[str, Any], phase: Row) -> str:
    """Where the time goes in a phase, from the worker's metrics and CPU seconds."""
    m = phase["worker_metrics"]
    share = phase["cpu_share_of_wall"]
    apply_share = m["apply_seconds_total"] / phase["wall_s"] if phase["wall_s"] else 0.0
    workers = phase.get("workers", 1)
    who = "worker process" if workers == 1 else f"{workers} worker processes"
    return (
        f"{who} CPU {share['worker']:.0%} of one core, Kafka broker "
        f"{share['kafka']:.0%}, Redis {share['redis']:.0%}, load generator {share['bench']:.0%}; "
        f"{m['batches']:.0f} batches of {m['mean_batch_size']:.0f} events, apply (Redis) "
        f"{m['mean_apply_ms']:.1f} ms per batch = {apply_share:.0%} of the wall time"
    )


def ceiling_note(ceiling: Row, rate: float) -> str:
    """The bare faust agent's drain rate next to the worker's."""
    best = ceiling["best_per_s"]
    runs = ", ".join(f"{r['per_s']:,.0f}/s" for r in ceiling["runs"])
    return (
        f"faust itself, configured as the worker and doing nothing but acknowledge "
        f"batches, drains {ceiling['events']:,} events at {runs} on this machine (best "
        f"{best:,.0f}/s{', below the target' if best < 10_000 else ''}): the worker "
        f"reaches {rate / best:.0%} of its framework's own ceiling, and its per-event "
        f"work runs in the same Python thread as faust's"
    )


def worker_targets(report: dict[str, Any]) -> list[Target]:
    claims = [
        ">= 10k events/s sustained",
        "p50 <= 25 ms at 1k events/s offered",
        "p99 <= 100 ms at 1k events/s offered",
    ]
    sec = _section(report, "worker")
    if sec is None:
        return [_missing("3 worker", c, report, "worker") for c in claims]
    out = []
    flood = _phase(sec, "flood")
    scaled = next((p for p in sec["phases"] if p["phase"].endswith("-workers")), None)
    if flood is not None:
        rate = flood["throughput_per_s"]
        ok = rate >= 10_000
        why = ""
        ceiling = sec.get("faust_ceiling")
        if not ok:
            why = worker_hint(sec, flood)
            if flood["cpu_share_of_wall"]["worker"] >= 0.7:
                why += (
                    ": the one worker process is CPU-bound in Python (faust's consumer and "
                    "per-event dispatch, parse/validate/plan, audit JSON, redis-py and aiokafka "
                    "client work; no single hot spot)"
                )
            if ceiling:
                why += "; " + ceiling_note(ceiling, rate)
        failed = [e for e in sec.get("errors", []) if e["phase"].endswith("-workers")]
        if failed:
            why += (
                f"{'; ' if why else ''}the scale-out phase failed: a worker died when another "
                "joined the group (see the worker section)"
            )
        if scaled is not None:
            why += (
                f"{'; ' if why else ''}{scaled['workers']} workers in the group reach "
                f"{scaled['throughput_per_s']:,.0f} events/s "
                f"(x{scaled['throughput_per_s'] / rate:.2f}) on the same 2 cores"
            )
        out.append(
            Target(
                "3 worker",
                claims[0],
                ok,
                f"{rate:,.0f} events/s with one worker ({flood['events']:,} events, first "
                f"send to last event applied; steady {flood.get('steady_per_s', 0):,.0f}/s, after "
                f"the producer finished {flood.get('drain_per_s', 0):,.0f}/s) = "
                f"x{rate / 10_000:.2f} of the target",
                why,
            )
        )
    low = _phase(sec, "load-1000")
    tuned = next((p for p in sec["phases"] if p["phase"].startswith("wait-")), None)
    if low is not None:
        lat = low["latency"]
        tuned_note = ""
        if tuned is not None:
            t = tuned["latency"]
            tuned_note = (
                f"; with CACHEBUS_BATCH_WAIT_MS={tuned.get('batch_wait_ms')} instead "
                f"p50 {t['p50_ms']:.1f} ms, p99 {t['p99_ms']:.1f} ms"
            )
        rate = low["offered_per_s"] or 1000
        wait = low.get("batch_wait_ms", sec["config"]["batch_wait_ms"])
        # More than 250 ms of events queued, or a median far beyond what the window explains.
        stalled = low["backlog_max"] > 0.25 * rate or lat["p50_ms"] > 2 * wait + 15
        busy = report.get("section_runs", {}).get("worker", {}).get("machine_busy")
        for claim, key, limit in ((claims[1], "p50_ms", 25), (claims[2], "p99_ms", 100)):
            ok = lat[key] <= limit
            if stalled and not ok:
                why = (
                    f"more than the batch window ({wait} ms) explains: the worker fell "
                    f"behind (backlog up to {low['backlog_max']:,} events) while the machine "
                    f"was {busy or 0:.0%} busy; rerun when it is quiet (--only worker "
                    "--merge); " + worker_hint(sec, low)
                )
            else:
                why = (
                    f"the batch window: the agent collects events for "
                    f"CACHEBUS_BATCH_WAIT_MS={wait} ms before "
                    f"it applies a batch, then waits for the batch's audits to be "
                    f"delivered before the next; " + worker_hint(sec, low)
                )
            out.append(
                Target(
                    "3 worker",
                    claim,
                    ok,
                    f"{lat[key]:.1f} ms (x{lat[key] / limit:.2f} of the limit){tuned_note}",
                    "" if ok else why,
                )
            )
    else:
        out += [_missing("3 worker", c, report, "worker") for c in claims[1:]]
    return out


def other_targets(report: dict[str, Any]) -> list[Target]:
    out = []
    sec = _section(report, "cache_aside")
    claim = "cache-aside hit rate in or above the lesson's 60-80% target"
    if sec is None:
        out.append(_missing("5 cache-aside", claim, report, "cache_aside"))
    else:
        w = sec["with_cache"]
        hit = w["hit_rate"]
        out.append(
            Target(
                "5 cache-aside",
                claim,
                hit >= 0.6,
                f"{hit:.1%} ({w['provider_calls']:,} provider calls for "
                f"{sec['config']['queries']:,} queries; x{sec['ratios']['provider_calls']:.3f} "
                "of no cache)",
            )
        )
    return out


def targets(report: dict[str, Any]) -> list[Target]:
    return [
        *layer_targets(report),
        *invalidation_targets(report),
        *worker_targets(report),
        *other_targets(report),
    ]


# -- Markdown -------------------------------------------------------------------------------


def _mark(ok: bool | None) -> str:
    return {True: "✓ met", False: "✗ MISSED", None: "· info"}[ok]


def targets_block(items: Sequence[dict[str, Any]]) -> str:
    graded = [t for t in items if t["ok"] is not None]
    met = sum(1 for t in graded if t["ok"])
    lines = [f"{met} of {len(graded)} targets met."]
    for t in items:
        if t["ok"] is None and t["measured"] == "not measured":
            lines.append(f"- ? NOT MEASURED [{t['section']}] {t['claim']}: {t['why']}")
            continue
        line = f"- {_mark(t['ok'])} [{t['section']}] {t['claim']}: {t['measured']}"
        if t["why"]:
            line += f". **Why:** {t['why']}"
        lines.append(line)
    return "\n".join(lines)


def _f(value: float | None, fmt: str = ",.0f") -> str:
    return "-" if value is None else format(value, fmt)


def layers_md(sec: dict[str, Any]) -> str:
    lines = [
        "| dim | layer | get_many vec/s | × JSON | × RedisVL (ttl / no ttl) | set_many vec/s "
        "| × JSON | × RedisVL (ttl / no ttl) | value B | MEMORY USAGE B | × JSON | × float32 "
        "| min cos | IQR get/set |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sec["results"]:
        q = r["ratios_vs_baseline"]

        def vs(kind: str, q: dict[str, float] = q) -> str:
            a, b = q.get(f"{kind}_vs_redisvl"), q.get(f"{kind}_vs_redisvl_no_ttl")
            return "-" if a is None or b is None else f"{a:.1f} / {b:.1f}"

        lines.append(
            f"| {r['dim']} | {r['layer']} | {r['get_many']['vectors_per_s']:,.0f} "
            f"| {q['get_speed']:.2f} | {vs('get_speed')} "
            f"| {r['set_many']['vectors_per_s']:,.0f} | {q['set_speed']:.2f} | {vs('set_speed')} "
            f"| {r['value_bytes_median']:,.0f} | {r['memory_usage_bytes_median']:,.0f} "
            f"| {q['memory']:.3f} | {_f(q.get('memory_vs_float32'), '.3f')} "
            f"| {r['round_trip']['min_cosine']:.6f} "
            f"| {r['get_many']['iqr']:.0%}/{r['set_many']['iqr']:.0%} |"
        )
    lines += [
        "",
        "Ceiling: `redis-benchmark` on the same server, value size = our float32 entry.",
        "",
        "| dim | value B | redis-benchmark -c | GET req/s | SET req/s | float32 get_many vec/s "
        "| % of GET | float32 set_many vec/s | % of SET | redis-py MGET vec/s | % of GET "
        "| redis-py MSET vec/s | % of SET |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in sec["ceiling_share"]:
        lines.append(
            f"| {c['dim']} | {c['value_bytes']:,} | {c['clients']} | {c['get_ceiling_rps']:,.0f} "
            f"| {c['set_ceiling_rps']:,.0f} | {_f(c.get('float32_get_many_vps'))} "
            f"| {_f(c.get('float32_get_pct_of_ceiling'), '.1f')}% "
            f"| {_f(c.get('float32_set_many_vps'))} "
            f"| {_f(c.get('float32_set_pct_of_ceiling'), '.1f')}% "
            f"| {_f(c.get('redis_py_mget_vps'))} "
            f"| {_f(c.get('redis_py_mget_pct_of_ceiling'), '.1f')}% "
            f"| {_f(c.get('redis_py_mset_vps'))} "
            f"| {_f(c.get('redis_py_mset_pct_of_ceiling'), '.1f')}% |"
        )
    return "\n".join(lines)


def invalidation_md(sec: dict[str, Any]) -> str:
    lines = [
        "| approach | keys | events | median ms/event | p90 ms | Redis CPU ms/event "
        "| × own at smallest | × ours (invalidate_documents) | keys deleted/event |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(sec["results"], key=lambda r: (r["approach"], r["keys"])):
        lines.append(
            f"| {r['approach']} | {r['keys']:,} | {r['events']} | {r['median_ms']:,.3f} "
            f"| {r['p90_ms']:,.3f} | {r['redis_cpu_ms_per_event']:,.3f} "
            f"| {r['x_own_smallest']:.2f} | {_f(r.get('x_ours_invalidate_documents'), ',.1f')} "
            f"| {r['keys_deleted_per_event']:,.0f} |"
        )
    checks = [
        f"- {r['approach']} at {r['keys']:,} keys: {r['sample_check']}"
        for r in sec["results"]
        if "sample_check" in r
    ]
    return "\n".join([*lines, "", "Correctness checks (reads through the library):", *checks])


def worker_md(sec: dict[str, Any]) -> str:
    lines = [
        "| phase | workers | batch wait ms | offered /s | events | achieved /s | p50 ms "
        "| p99 ms | p99.9 ms | max ms | backlog max | committed lag max "
        "| batches × mean size | apply ms/batch | CPU worker(s) / Kafka / Redis / loadgen "
        "| re-audited |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for p in sec["phases"]:
        lat, m, c = p["latency"], p["worker_metrics"], p["cpu_share_of_wall"]
        offered = "max" if p["offered_per_s"] is None else f"{p['offered_per_s']:,.0f}"
        wait = p.get("batch_wait_ms", sec["config"]["batch_wait_ms"])
        lines.append(
            f"| {p['phase']} | {p.get('workers', 1)} | {wait} | {offered} | {p['events']:,} "
            f"| {p['throughput_per_s']:,.0f} "
            f"| {lat['p50_ms']:,.1f} | {lat['p99_ms']:,.1f} | {lat['p999_ms']:,.1f} "
            f"| {lat['max_ms']:,.1f} | {p['backlog_max']:,} | {p['consumer_lag_max']:,} "
            f"| {m['batches']:.0f} × {m['mean_batch_size']:.0f} | {m['mean_apply_ms']:.1f} "
            f"| {c['worker']:.0%} / {c['kafka']:.0%} / {c['redis']:.0%} / {c['bench']:.0%} "
            f"| {p.get('redelivered', 0):,} |"
        )
    for err in sec.get("errors", []):
        lines += ["", f"**Phase {err['phase']} FAILED:**", "", "```", err["error"][-1500:], "```"]
    single = _phase(sec, "flood")
    over = [
        p["phase"]
        for p in sec["phases"]
        if single is not None
        and p["offered_per_s"] is not None
        and p["offered_per_s"] > single["throughput_per_s"]
        and p.get("workers", 1) == 1
    ]
    if over:
        lines += [
            "",
            f"Offered above one worker's capacity: {', '.join(over)}; the events queue up "
            "and their latencies are mostly waiting, like the floods'.",
        ]
    flood = single
    if flood is not None:
        lines += [
            "",
            f"Flood: {flood['events']:,} events produced in {flood['produce_s']:.1f} s "
            f"({flood['produced_per_s']:,.0f}/s handed to the producer), all audited after "
            f"{flood['wall_s']:.1f} s: {flood['throughput_per_s']:,.0f} events/s end to end, "
            f"{flood.get('steady_per_s', 0):,.0f}/s between 10% and 90% audited, "
            f"{flood.get('drain_per_s', 0):,.0f}/s once the producer was done.  "
            f"{worker_hint(sec, flood)}.",
        ]
        ceiling = sec.get("faust_ceiling")
        if ceiling:
            lines += [
                "",
                "Framework ceiling (`bench/faust_ceiling.py`): "
                + ceiling_note(ceiling, flood["throughput_per_s"])
                + ".",
            ]
    return "\n".join(lines)


def fidelity_md(sec: dict[str, Any]) -> str:
    lines = [
        f"{sec['model']}, {sec['dim']} dimensions, {sec['passages']:,} passages and "
        f"{sec['queries']:,} queries (stdlib docstrings), embedded on CPU in "
        f"{sec['embed_seconds']:.0f} s ({sec['torch_threads']} torch threads, max "
        f"{sec['max_seq_length']} tokens).",
        "",
        "| codec | bytes/vector | × float32 | cosine min | cosine p1 | cosine mean "
        "| top-10 overlap mean | min | top-10 identical | top-1 agreement |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = sec["rows"][0]["bytes_per_vector"]
    for r in sec["rows"]:
        lines.append(
            f"| {r['codec']} | {r['bytes_per_vector']:,} | {r['bytes_per_vector'] / base:.3f} "
            f"| {r['cosine_min']:.6f} | {r['cosine_p1']:.6f} | {r['cosine_mean']:.6f} "
            f"| {r['top10_overlap_mean']:.2%} | {r['top10_overlap_min']:.0%} "
            f"| {r['top10_identical_share']:.1%} | {r['top1_agreement']:.1%} |"
        )
    return "\n".join(lines)


def cache_aside_md(sec: dict[str, Any]) -> str:
    cfg = sec["config"]
    w, n = sec["with_cache"], sec["without_cache"]
    lines = [
        f"{cfg['queries']:,} queries, Zipf s={cfg['zipf_s']} over {cfg['vocabulary']:,} texts "
        f"({cfg['distinct_queries']:,} distinct), provider {cfg['provider_ms']:g} ms per call, "
        f"{cfg['callers']} concurrent callers.",
        "",
        "| | provider calls | hit rate | wall s | p50 ms | p90 ms | p99 ms | mean ms "
        "| latency sum s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| no cache (every query a provider call; latency of a {n['measured_sample']}-query "
        f"sample) | {n['provider_calls']:,} | 0% | ~{n['wall_s_estimated']:,.0f} "
        f"| {n['p50_ms']:.2f} | {n['p90_ms']:.2f} | {n['p99_ms']:.2f} | {n['mean_ms']:.2f} "
        f"| ~{n['sum_s']:,.0f} |",
        f"| CachedEmbeddingService | {w['provider_calls']:,} | {w['hit_rate']:.1%} "
        f"| {w['wall_s']:,.1f} | {w['p50_ms']:.2f} | {w['p90_ms']:.2f} | {w['p99_ms']:.2f} "
        f"| {w['mean_ms']:.2f} | {w['sum_s']:,.1f} |",
        f"| ratio (cache / no cache) | {sec['ratios']['provider_calls']:.3f} | | "
        f"| {sec['ratios']['p50']:.4f} | | {sec['ratios']['p99']:.2f} | "
        f"| {sec['ratios']['latency_sum']:.3f} |",
        "",
        f"Library metrics: {w['library_metrics']['hits']:,} hits, "
        f"{w['library_metrics']['misses']:,} misses, {w['library_metrics']['provider_calls']:,} "
        f"provider calls; misses beyond provider calls waited on another caller's lease "
        f"(herd control).  Ideal hit rate of the second half of the stream (every text "
        f"embedded once): {w['hit_rate_second_half_ideal']:.1%}.",
    ]
    return "\n".join(lines)


NOTES = """\
- **Every figure is a ratio to a baseline measured in the same run**, on servers the run
  starts itself (redis-server on loopback; Kafka 4.x in KRaft mode from Maven Central jars).
  The machine has 2 cores shared by the client, Redis, Kafka and the worker; nothing is
  pinned.  Per section the run records the load average and the machine's busy share (all
  processes, this run's included) in `section_runs`; other work on the machine shows up
  there and in the IQR (interquartile range / median) of the layer figures.
- **1. Layers**: batches of 100 vectors per call; medians of interleaved timed runs (one
  run of every layer per round).  Baseline = the lesson's JSON cache
  (`bench/lesson_baseline.py`, its flaws kept).  RedisVL = `EmbeddingsCache.mset` /
  `mget` (its batch API: pipelined HSET / HGETALL of a hash holding the vector as JSON
  text); with a TTL its `mget` sends one `EXPIRE` per hit (sliding expiry), without a TTL
  it does not.  Ours: `cachebus.QueryEmbeddingCache` (one MGET round trip per get_many,
  two round trips per set_many), returning float32 ndarrays.  Ceiling: `redis-benchmark
  -P 100` (C client) GET/SET of one key with the float32 entry's size, one invocation per
  client count after every timed round (so it shares the rounds' background noise); the
  median is reported.  Memory:
  `MEMORY USAGE key SAMPLES 0`, median over the working set (random unit vectors).
- **2. Invalidation**: see `bench/invalidation.py`.  The lesson's per-event work
  (`invalidate_document`: SCAN MATCH search:* COUNT 100 + DEL of all, and option 1
  `increment_version`) on a keyspace refilled to its size before every event; ours =
  `Invalidator.invalidate_documents([doc])` (sequence INCR, then the document's stamp and
  embeddings: two round trips) and `Invalidator.bump(collections=[c])` (one generation
  INCR: one round trip), interleaved across the sizes in blocks of 10 events.
  The lesson also throws away every cached search result on every event (hit rate 0
  after each document change); ours retires only the entries that hold the document
  (or, for a bump, the collection's).
- **3. Worker**: `devtools.stack.LocalStack` (redis-server, one Kafka broker, one `cachebus
  worker` process with the worker's default settings, 6 partitions; then a second worker
  in the group for a second flood, and one worker with another batch window at the first
  load, for comparison); load from an aiokafka producer in this process (acks=all,
  linger 1 ms).  Latency = the audit's `lag_ms`: audit time minus the Kafka record
  timestamp (CreateTime at the producer), i.e. produce -> consume -> validate -> plan ->
  apply to Redis.  Achieved rate = events / (first send -> the last event's audit
  `processed_at`).  Every event must be audited `applied`; a rebalance may re-deliver
  a processed batch whose offsets were not committed yet (at-least-once), which is
  audited again (`re-audited`); latency counts an event's first audit.  Backlog = events
  produced minus audits written (sampled every 0.25 s);
  committed lag = events produced minus the group's committed offsets (faust commits every
  second, so ~1 s of events at any load).  The flood's latencies are queueing behind the
  backlog, not service time.
- **4. Fidelity**: vectors round-trip through `VectorCodec(...).encode` and
  `decode_vector`; nearest neighbours by exact cosine over all passages, both sides
  quantized, vs both sides float32.
- **5. Cache-aside**: `cachebus.CachedEmbeddingService` over a simulated provider that
  sleeps 50 ms per call; callers are threads sharing one stream in order.
"""


def render_markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    parts = [
        f"# cachebus benchmark ({report['mode']})",
        "",
        f"{report['started_at']}, {report['duration_s']:.0f} s. {m['cpu_model']}, "
        f"{m['cpus_usable']} usable of {m['cpu_count']} CPUs, {m.get('memory_gib', '?')} GiB, "
        f"{m['os']}; {m['python']}, numpy {m['numpy']}, redis-py {m['redis_py']}, "
        f"redis-server {m['redis_server']} ({m['redis_allocator']}), {m['redis_benchmark']}; "
        f"redisvl {m.get('redisvl') or '-'}; cachebus {m['cachebus']} @ {m['git']}.",
        "",
        f"Load average at start {m.get('loadavg_start', '?')}.  Section times (and the "
        "machine's busy share, all processes): "
        + ", ".join(
            f"{k} {v['seconds']:.0f} s ({v.get('machine_busy', 0):.0%})"
            for k, v in report.get("section_runs", {}).items()
        )
        + ".",
        "",
        *(
            [
                "Sections rerun later and merged in: "
                + "; ".join(
                    f"{', '.join(r['sections'])} at {r['started_at']} (load average "
                    f"{r['machine'].get('loadavg_start', '?')})"
                    for r in report["reruns"]
                )
                + ".",
                "",
            ]
            if report.get("reruns")
            else []
        ),
        "![benchmark figure](" + report.get("figure", "report.png") + ")",
        "",
        "## Targets",
        "",
        targets_block(report["targets"]),
    ]
    titles = {
        "layers": ("1. Client layers: lesson JSON, cachebus codecs, RedisVL, ceiling", layers_md),
        "invalidation": ("2. Invalidation cost vs keyspace size", invalidation_md),
        "durability": ("2b. Durable invalidations: WAIT / WAITAOF against none", durability_md),
        "worker": ("3. The worker end to end (local Kafka + Redis)", worker_md),
        "fidelity": ("4. Quantization fidelity on real sentence embeddings", fidelity_md),
        "cache_aside": (
            "5. Cache-aside effect (Zipf query stream, 50 ms provider)",
            cache_aside_md,
        ),
        "integrations": (
            "6. Integrations: LangChain query cache hits, worker tracing overhead",
            integrations_md,
        ),
    }
    for name, (title, render) in titles.items():
        sec = report["sections"].get(name)
        parts += ["", f"## {title}", ""]
        if sec is None:
            parts.append("Not run (excluded on the command line).")
        elif "error" in sec:
            parts.append(f"**FAILED**: `{sec['error']}`")
        elif sec.get("skipped"):
            parts.append(f"Skipped: {sec['note']}")
        else:
            parts.append(render(sec))
    parts += ["", "## Method", "", NOTES]
    return "\n".join(parts)


def headline(report: dict[str, Any]) -> str:
    """What ``bench.run`` prints at the end: the targets."""
    return "## Targets\n\n" + targets_block(report["targets"])


def write(stem: Path, report: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    md_path = stem.with_suffix(".md")
    json_path = stem.with_suffix(".json")
    md_path.write_text(markdown)
    json_path.write_text(json.dumps(report, indent=1) + "\n")
    return md_path, json_path


def main(argv: Sequence[str]) -> int:
    """Re-render the Markdown of a report JSON (targets recomputed)."""
    path = Path(argv[1])
    report = json.loads(path.read_text())
    report["targets"] = [t.as_dict() for t in targets(report)]
    path.with_suffix(".md").write_text(render_markdown(report))
    print(f"wrote {path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
