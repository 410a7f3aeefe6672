"""The report's figure (``report.png``): four panels drawn from the report dict.

1. client layer throughput at dim 1536 (get_many / set_many, log scale) with the
   redis-benchmark GET ceiling;
2. invalidation cost per event vs keyspace size (log-log), lesson vs ours;
3. worker produce-to-applied latency percentiles per offered load, with the targets;
4. the worker flood: events produced and audited over time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _skip(ax: Any, title: str, why: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, why, ha="center", va="center", wrap=True, transform=ax.transAxes)
    ax.set_axis_off()


def _usable(report: dict[str, Any], name: str) -> dict[str, Any] | None:
    sec = report.get("sections", {}).get(name)
    if not isinstance(sec, dict) or "error" in sec or sec.get("skipped"):
        return None
    return sec


def _layers(ax: Any, report: dict[str, Any]) -> None:
    title = "1. Client layers, dim 1536 (vectors/s, batches of 100)"
    sec = _usable(report, "layers")
    rows = [r for r in sec["results"] if r["dim"] == 1536] if sec else []
    if not rows:
        _skip(ax, title, "layers not measured at dim 1536")
        return
    names = [r["layer"] for r in rows]
    gets = [r["get_many"]["vectors_per_s"] for r in rows]
    sets = [r["set_many"]["vectors_per_s"] for r in rows]
    x = list(range(len(names)))
    ax.bar([i - 0.2 for i in x], gets, 0.4, label="get_many", color="#3b7dd8")
    ax.bar([i + 0.2 for i in x], sets, 0.4, label="set_many", color="#f0a23b")
    assert sec is not None
    ceiling = [c for c in sec["ceiling_share"] if c["dim"] == 1536]
    if ceiling:
        one = min(ceiling, key=lambda c: c["clients"])
        ax.axhline(
            one["get_ceiling_rps"],
            color="#444",
            linestyle="--",
            linewidth=1,
            label=f"redis-benchmark GET -c {one['clients']} -P 100",
        )
    ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("vectors / s")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(axis="y", alpha=0.3)


def _invalidation(ax: Any, report: dict[str, Any]) -> None:
    title = "2. Invalidation cost per document event"
    sec = _usable(report, "invalidation")
    if sec is None:
        _skip(ax, title, "invalidation not measured")
        return
    styles = {
        "lesson: SCAN search:* + DEL": ("#d83b3b", "o"),
        "ours: invalidate_documents": ("#3b7dd8", "s"),
        "ours: bump": ("#3bb36b", "^"),
    }
    for approach, (color, marker) in styles.items():
        rows = sorted(
            (r for r in sec["results"] if r["approach"] == approach), key=lambda r: r["keys"]
        )
        if rows:
            ax.plot(
                [r["keys"] for r in rows],
                [r["median_ms"] for r in rows],
                marker=marker,
                color=color,
                label=approach,
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("search result keys in Redis")
    ax.set_ylabel("ms per event (median)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")


def _latency(ax: Any, report: dict[str, Any]) -> None:
    title = "3. Worker produce-to-applied latency"
    sec = _usable(report, "worker")
    if sec is None:
        _skip(ax, title, "worker not measured")
        return
    phases = sec["phases"]
    labels = [
        ("max" if p["offered_per_s"] is None else f"{p['offered_per_s']:,.0f}/s")
        + (f"\n{p['workers']} workers" if p.get("workers", 1) > 1 else "")
        + f"\nwait {p.get('batch_wait_ms', '?')} ms"
        for p in phases
    ]
    x = list(range(len(phases)))
    for offset, key, color in (
        (-0.27, "p50_ms", "#3b7dd8"),
        (0, "p99_ms", "#f0a23b"),
        (0.27, "p999_ms", "#d83b3b"),
    ):
        ax.bar(
            [i + offset for i in x],
            [max(p["latency"][key], 0.1) for p in phases],
            0.27,
            label=key.removesuffix("_ms").replace("p999", "p99.9"),
            color=color,
        )
    ax.axhline(25, color="#3b7dd8", linestyle=":", linewidth=1, label="p50 target 25 ms")
    ax.axhline(100, color="#f0a23b", linestyle=":", linewidth=1, label="p99 target 100 ms")
    ax.set_yscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_xlabel("offered load (events/s)")
    ax.set_ylabel("ms")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(axis="y", alpha=0.3, which="both")


def _flood(ax: Any, report: dict[str, Any]) -> None:
    title = "3b. Worker flood: produced vs audited"
    sec = _usable(report, "worker")
    flood = next((p for p in sec["phases"] if p["phase"] == "flood"), None) if sec else None
    if flood is None:
        _skip(ax, title, "no flood phase")
        return
    assert sec is not None
    t = [s[0] for s in flood["samples"]]
    ax.plot(t, [s[1] for s in flood["samples"]], label="produced", color="#444")
    ax.plot(
        t,
        [s[2] for s in flood["samples"]],
        label=f"audited, 1 worker ({flood['throughput_per_s']:,.0f}/s)",
        color="#3bb36b",
    )
    ax.plot(
        t,
        [s[3] for s in flood["samples"]],
        label="committed lag, 1 worker",
        color="#d83b3b",
        linestyle="--",
    )
    scaled = next((p for p in sec["phases"] if p["phase"].endswith("-workers")), None)
    if scaled is not None:
        ax.plot(
            [s[0] for s in scaled["samples"]],
            [s[2] for s in scaled["samples"]],
            label=f"audited, {scaled['workers']} workers ({scaled['throughput_per_s']:,.0f}/s)",
            color="#3b7dd8",
        )
    ax.set_xlabel("seconds since the first send")
    ax.set_ylabel("events")
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def write_png(report: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    _layers(axes[0][0], report)
    _invalidation(axes[0][1], report)
    _latency(axes[1][0], report)
    _flood(axes[1][1], report)
    m = report["machine"]
    fig.suptitle(
        f"cachebus benchmark ({report['mode']}), {report['started_at']}: {m['cpu_model']}, "
        f"{m['cpus_usable']} CPUs, redis-server {m['redis_server']}",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
