"""Fault-run bookkeeping: :class:`FaultRow` and :func:`markdown_table` for the fault
suite's report, :func:`rss_kb` / :func:`cpu_seconds` of a process (psutil-free).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------- reports


@dataclass
class FaultRow:
    """One line of the fault table."""

    scenario: str
    events: int
    lost: int
    duplicated: int
    audited_at_fault: int
    fault_s: float
    first_audit_s: float | None
    all_audited_s: float | None
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def markdown_table(rows: Sequence[FaultRow]) -> str:
    head = (
        "| scenario | events | lost | duplicated audits | audited before fault | fault lasted "
        "| recovery: first audit | recovery: all audited | notes |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---|\n"
    )
    body = "".join(
        f"| {r.scenario} | {r.events} | {r.lost} | {r.duplicated} | {r.audited_at_fault} | "
        f"{_secs(r.fault_s)} | {_secs(r.first_audit_s)} | {_secs(r.all_audited_s)} | "
        f"{r.notes} |\n"
        for r in rows
    )
    return head + body


# --------------------------------------------------------------------------- processes


def rss_kb(pid: int) -> int | None:
    """Resident set size of ``pid`` in KiB (``VmRSS`` of /proc), None if gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of ``pid`` in seconds (/proc/<pid>/stat), None if gone."""
    import os

    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces: split after its closing parenthesis.
    fields = text.rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")
