"""Load the JSON Schemas (the one source of truth in ``schemas/``) and compile
their validators once."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema_rs

_HERE = Path(__file__).resolve().parent
# In a checkout the schemas live at the repo root; in a wheel, inside the package.
_CANDIDATES = (_HERE.parent / "schemas", _HERE / "schemas")


def schema_dir() -> Path:
    for path in _CANDIDATES:
        if (path / "document-event.schema.json").is_file():
            return path
    raise FileNotFoundError(f"cachebus JSON schemas not found in {[str(p) for p in _CANDIDATES]}")


@cache
def load_schema(name: str) -> dict[str, Any]:
    """``name`` is ``document-event``, ``audit-event`` or ``dead-letter``."""
    data: dict[str, Any] = json.loads((schema_dir() / f"{name}.schema.json").read_text("utf-8"))
    return data


@cache
def validator(name: str) -> jsonschema_rs.Draft202012Validator:
    """A compiled validator (jsonschema-rs: ~2 us per event against ~130 us for
    the pure-Python validator). The schemas' patterns carry the format rules."""
    return jsonschema_rs.Draft202012Validator(load_schema(name))
