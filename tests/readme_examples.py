"""The README's runnable examples, for the tests that run them.

An example is a fenced block (``python``, ``toml``, ``json``, ``bash``...) right after a
marker line::

    <!-- example: langchain -->
    ```python
    ...
    ```

:func:`example` returns its source (failing the test if the marker or the block is
missing, so a renamed or deleted example cannot pass unnoticed); :func:`run_example`
executes it in a fresh namespace seeded with what the test provides (a Redis URL in the
environment, a local server's address) and returns that namespace for the test's checks.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parent.parent / "README.md"
_BLOCK = re.compile(
    r"^<!-- example: (?P<name>[\w.-]+) -->\n```(?P<lang>\w+)\n(?P<code>.*?)^```$", re.M | re.S
)


def examples(path: Path = README) -> dict[str, str]:
    """Every marked example of ``path`` by name."""
    found: dict[str, str] = {}
    for m in _BLOCK.finditer(path.read_text("utf-8")):
        name = m.group("name")
        if name in found:
            raise AssertionError(f"{path.name}: two examples named {name!r}")
        found[name] = m.group("code")
    return found


def example(name: str, path: Path = README) -> str:
    found = examples(path)
    if name not in found:
        raise AssertionError(
            f"{path.name} has no example {name!r} (a fenced block right after "
            f"'<!-- example: {name} -->'); it has: {sorted(found)}"
        )
    return found[name]


def run_example(name: str, namespace: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run Python example ``name`` as a module body; its globals come back for the
    checks. (Other languages: take the text with :func:`example` and use it.)"""
    code = compile(example(name), f"README.md example {name!r}", "exec")
    scope: dict[str, Any] = {"__name__": f"readme_example_{name.replace('-', '_')}"}
    scope.update(namespace or {})
    exec(code, scope)
    return scope
