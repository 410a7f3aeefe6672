"""A text corpus from the Python standard library's docstrings (for the fidelity section).

Run as a subprocess (``python -m bench.corpus OUT.json``): importing every stdlib module
has side effects (some print, some start things), which stay out of the benchmark process.
Writes a JSON list of unique docstrings (cleaned, whitespace collapsed), sorted.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import io
import json
import pkgutil
import re
import sys
import warnings
from pathlib import Path
from typing import Any

# Importing these does something besides defining names (a browser, a GUI, the Zen).
SKIP = frozenset(
    {
        "antigravity",
        "this",
        "idlelib",
        "tkinter",
        "_tkinter",
        "turtle",
        "turtledemo",
        "__hello__",
        "__phello__",
        "_testcapi",
        "_testinternalcapi",
        "_testmultiphase",
        "_xxtestfuzz",
        "xxsubtype",
    }
)
# Packages' parts that are tests or command-line entry points (importing runs them).
_SKIP_PARTS = frozenset({"test", "tests", "idle_test", "__main__"})
MIN_CHARS = 40
MAX_CHARS = 1000
_SPACE = re.compile(r"\s+")


def clean(doc: object) -> str | None:
    if not isinstance(doc, str):
        return None
    text = _SPACE.sub(" ", inspect.cleandoc(doc)).strip()
    if len(text) < MIN_CHARS:
        return None
    return text[:MAX_CHARS]


def _docs_of(module: Any) -> list[str]:
    name = module.__name__
    found = [module.__doc__]
    for attr in sorted(vars(module)):
        if attr.startswith("__"):
            continue
        obj = getattr(module, attr, None)
        if not (inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj)):
            continue
        if getattr(obj, "__module__", None) != name:
            continue
        found.append(obj.__doc__)
        if inspect.isclass(obj):
            for member in sorted(vars(obj)):
                if member.startswith("__"):
                    continue
                found.append(getattr(vars(obj)[member], "__doc__", None))
    return [d for d in (clean(x) for x in found) if d]


def _skipped(name: str) -> bool:
    parts = name.split(".")
    return parts[0] in SKIP or any(p in _SKIP_PARTS for p in parts)


def module_names() -> list[str]:
    """Top-level stdlib modules and the submodules of stdlib packages (tests excluded)."""
    names = []
    for name in sorted(sys.stdlib_module_names):
        if _skipped(name):
            continue
        names.append(name)
        spec = importlib.util.find_spec(name) if name not in sys.builtin_module_names else None
        paths = spec.submodule_search_locations if spec else None
        if paths:
            names += sorted(
                info.name
                for info in pkgutil.walk_packages(paths, prefix=f"{name}.", onerror=lambda _: None)
                if not _skipped(info.name)
            )
    return names


def collect() -> list[str]:
    docs: set[str] = set()
    for name in module_names():
        sink = io.StringIO()
        try:
            with (
                warnings.catch_warnings(),
                contextlib.redirect_stdout(sink),
                contextlib.redirect_stderr(sink),
            ):
                warnings.simplefilter("ignore")
                module = importlib.import_module(name)
                docs.update(_docs_of(module))
        except BaseException:  # a module that cannot import is skipped
            continue
    return sorted(docs)


def main(argv: list[str]) -> int:
    out = Path(argv[1])
    out.write_text(json.dumps(collect()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
