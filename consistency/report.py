"""The Markdown report, rendered from the run's JSON (``python -m consistency.report
docs/consistency-report.json`` re-renders it)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from .model import Row

COLUMNS = (
    "#",
    "scenario",
    "Redis configuration",
    "topology",
    "entries",
    "invalidations",
    "reads",
    "stale reads",
    "hit rate",
    "today: stale reads",
    "today: hit rate",
)


def _rate(row: Row | None) -> str:
    if row is None:
        return "—"
    if row.outcome:
        return "—"
    rate = row.hit_rate
    return "—" if rate is None else f"{rate:.1%}"


def _stale(row: Row | None) -> str:
    if row is None:
        return "—"
    if row.outcome:
        return row.outcome
    return f"**{row.stale_reads:,}**" if row.stale_reads else "0"


def rows_of(report: dict[str, Any], code: str) -> list[Row]:
    return [
        Row.from_dict(r)
        for result in report["results"]
        if result["code"] == code
        for r in result["rows"]
    ]


def failures(report: dict[str, Any]) -> list[str]:
    """Why the run fails: new-code rows with stale reads, scenarios that crashed."""
    out = [
        f"{r.scenario} [{r.redis_config}, {r.topology}]: {r.stale_reads} stale reads"
        for r in rows_of(report, "new")
        if r.stale_reads > 0
    ]
    out += [
        f"{res['scenario']} (new code) failed: {res['error']}"
        for res in report["results"]
        if res["code"] == "new" and res.get("error")
    ]
    return out


def table(report: dict[str, Any]) -> tuple[list[list[str]], list[str]]:
    """Table cells and numbered notes. A new-code row is paired with the baseline row
    of the same ``case``; baseline rows without a partner get a line of their own."""
    new_rows = rows_of(report, "new")
    base = {r.key: r for r in rows_of(report, "baseline")}
    baseline_ran = {res["scenario"] for res in report["results"] if res["code"] == "baseline"}
    scenario_of = {
        r["case"] or f"{r['scenario']} | {r['topology']}": res["scenario"]
        for res in report["results"]
        for r in res["rows"]
    }
    cells: list[list[str]] = []
    notes: list[str] = []
    used: set[str] = set()
    ordered: list[tuple[Row | None, Row | None]] = []
    for row in new_rows:
        partner = base.get(row.key)
        if partner is not None:
            used.add(row.key)
        ordered.append((row, partner))
    ordered += [(None, b) for k, b in base.items() if k not in used]
    unavailable = report["meta"].get("baseline_unavailable", "")
    for n, (new, old) in enumerate(ordered, start=1):
        shown = new or old
        assert shown is not None
        today_stale = _stale(old)
        if old is None and unavailable and scenario_of.get(shown.key) not in baseline_ran:
            today_stale = "unavailable"
        cells.append(
            [
                str(n),
                shown.scenario,
                shown.redis_config,
                shown.topology,
                f"{shown.entries:,}",
                f"{shown.invalidations:,}",
                f"{shown.reads:,}",
                _stale(new) if new is not None else "(not run)",
                _rate(new),
                today_stale,
                _rate(old),
            ]
        )
        parts = []
        if new is not None and new.notes:
            parts.append(f"new: {new.notes}")
        if old is not None and old.notes:
            parts.append(f"today: {old.notes}")
        if parts:
            notes.append(f"{n}. " + " — ".join(parts))
    for res in report["results"]:
        if res.get("error"):
            notes.append(f"- {res['scenario']} ({res['code']}) failed: {res['error']}")
    return cells, notes


def markdown_table(cells: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
    return "\n".join(lines)


def text_table(cells: Sequence[Sequence[str]]) -> str:
    """The table for a terminal (no Markdown bold)."""
    plain = [[c.replace("**", "") for c in row] for row in cells]
    widths = [max(len(h), *(len(r[i]) for r in plain)) for i, h in enumerate(COLUMNS)]
    out = ["  ".join(h.ljust(w) for h, w in zip(COLUMNS, widths, strict=True))]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in plain]
    return "\n".join(out)


def render(report: dict[str, Any]) -> str:
    meta = report["meta"]
    cells, notes = table(report)
    failed = failures(report)
    baseline = (
        f"library at git `{meta['baseline_commit']}` ({meta.get('baseline_sha', '')[:12]}), "
        "same run, same workload and seed, in its own subprocess"
        if not meta.get("baseline_unavailable")
        else f"**unavailable**: {meta['baseline_unavailable']}"
    )
    verdict = (
        "**0 stale reads in every new-code row.**"
        if not failed
        else "**FAILED** (new code):\n\n" + "\n".join(f"- {f}" for f in failed)
    )
    quick_note = " (quick: scaled down, not the real run)" if meta["quick"] else ""
    parts = [
        "# Consistency under failure: report",
        "",
        f"Generated by `python -m consistency.run{' --quick' if meta['quick'] else ''}` "
        f"(`make consistency`) on {meta['date']}: git {meta['git']}, redis-server "
        f"{meta['redis_version']}, Python {meta['python']}, {meta['cpus']} CPUs, "
        f"{meta['seconds']:.0f} s in all{quick_note}.",
        "",
        f"*Today* columns: {baseline}.",
        "",
        verdict,
        "",
        "A read is **stale** when it returns a value computed from a document version (or a "
        "collection/model generation) older than one whose invalidation call had returned "
        "before the read started. Every value carries the versions it was computed from "
        "(`SearchHit.doc_version`, the bump counter in the first hit's metadata, vector "
        "component 0, rerank scores), so the check needs no clock "
        "(see `consistency/oracle.py`). Hit rate = hits / reads of the invalidated entries "
        "(a miss is recomputed and written back with its ticket, as a service would).",
        "",
        markdown_table(cells),
        "",
    ]
    if notes:
        parts += ["Notes:", "", *notes, ""]
    parts += ["## Workloads", ""]
    for doc in meta.get("workloads", []):
        parts += [doc.strip(), ""]
    return "\n".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m consistency.report REPORT.json", file=sys.stderr)
        return 2
    with open(args[0]) as fh:
        report = json.load(fh)
    print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
