"""The README, docs/ and deployment files quote only settings that exist, and every
setting is documented: a newcomer who copies a variable from the docs gets what the
docs say, never a silently ignored name."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from cachebus.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCS = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "schemas" / "README.md",
    ROOT / "docker-compose.yml",
    ROOT / "Dockerfile",
]
CODE = [*sorted((ROOT / "cachebus").rglob("*.py")), *sorted((ROOT / "worker").rglob("*.py"))]
VARIABLE = re.compile(r"\bCACHEBUS_[A-Z0-9_]*[A-Z0-9]\b")
GENERATED = {"consistency-report.md"}
"""Reports written by a run: they quote what that run used."""


def documented() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in DOCS:
        if not path.is_file() or path.name in GENERATED:
            continue
        for name in VARIABLE.findall(path.read_text(encoding="utf-8")):
            found.setdefault(name, []).append(str(path.relative_to(ROOT)))
    return found


def read_by_code() -> set[str]:
    """Variables the code reads: Settings fields (``CACHEBUS_<FIELD>``) and literal names."""
    names = {f"CACHEBUS_{f.name.upper()}" for f in fields(Settings)}
    for path in CODE:
        names.update(VARIABLE.findall(path.read_text(encoding="utf-8")))
    return names


def test_every_documented_variable_is_read_by_the_code() -> None:
    unknown = {
        name: sorted(set(where))
        for name, where in documented().items()
        if name not in read_by_code()
    }
    assert not unknown, f"documented but never read: {unknown}"


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [
        f"CACHEBUS_{f.name.upper()}"
        for f in fields(Settings)
        if f"CACHEBUS_{f.name.upper()}" not in readme
    ]
    assert not missing, f"settings missing from the README's configuration table: {missing}"
