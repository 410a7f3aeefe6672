"""The README, docs/ and deployment files quote only settings that exist, and every
setting is documented: a newcomer who copies a variable from the docs gets what the
docs say, never a silently ignored name."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from cachebus.settings import Settings
from worker.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
DOCS = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "schemas" / "README.md",
    ROOT / "docker-compose.yml",
    ROOT / "Dockerfile",
]
CODE = [
    *sorted((ROOT / "cachebus").rglob("*.py")),
    *sorted((ROOT / "worker").rglob("*.py")),
    *sorted((ROOT / "devtools").rglob("*.py")),  # the test services' variables
]
VARIABLE = re.compile(r"\bCACHEBUS_[A-Z0-9_]*[A-Z0-9]\b")
SETTINGS = (Settings, WorkerSettings)
"""The library's settings and the worker's (a subclass adding its own fields)."""
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
    names = {f"CACHEBUS_{f.name.upper()}" for cls in SETTINGS for f in fields(cls)}
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
        for cls in SETTINGS
        for f in fields(cls)
        if f"CACHEBUS_{f.name.upper()}" not in readme
    ]
    assert not missing, f"settings missing from the README's configuration table: {missing}"


COMMANDS = ("worker", "publish", "audit tail", "replay", "stats", "warm", "acl", "gc", "verify")
INVOCATION = re.compile(r"cachebus (audit tail|[a-z]+)\b([^`|#\n]*)")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def cli_help(command: str) -> str:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", *command.split(), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_every_documented_cli_flag_exists() -> None:
    """Every ``cachebus <command> ... --flag`` quoted in the docs is a flag of that
    command (or a global one): ``--help`` of the command lists it."""
    quoted: dict[str, set[str]] = {}
    for path in DOCS:
        if not path.is_file() or path.suffix != ".md" or path.name in GENERATED:
            continue
        for command, rest in INVOCATION.findall(path.read_text(encoding="utf-8")):
            if command in COMMANDS:
                quoted.setdefault(command, set()).update(FLAG.findall(rest))
    assert set(quoted) >= {"worker", "replay", "stats", "acl", "verify"}, quoted
    global_flags = set(FLAG.findall(cli_help("")))
    unknown = {
        command: sorted(flags - set(FLAG.findall(cli_help(command))) - global_flags)
        for command, flags in quoted.items()
    }
    unknown = {c: f for c, f in unknown.items() if f}
    assert not unknown, f"flags quoted in the docs that the CLI does not have: {unknown}"
