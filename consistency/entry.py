"""Run one scenario on one library: ``python -m consistency.entry NAME [--code new|baseline]
[--quick] [--json]``.

:mod:`consistency.run` starts this in a subprocess per scenario and library, so runs share
no state. For the baseline it is started with ``PYTHONPATH=<extracted 077cbd4>:<repo>``
from the extracted directory, so ``import cachebus`` is today's library and
``import consistency`` this harness. Progress goes to stderr; with ``--json`` stdout is
one JSON object: ``{"scenario", "code", "library", "rows": [...], "error", "seconds"}``.
Exit status 0 when the scenario ran (stale reads are data, not an error), 1 when it failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .model import CODES, Code, Row, RunContext, load_scenarios


def run_one(name: str, code: Code, *, quick: bool, out_dir: Path, seed: int) -> dict[str, Any]:
    """Run scenario ``name`` in this process; the JSON-able result."""
    import cachebus

    scenarios = load_scenarios()
    ctx = RunContext(code=code, quick=quick, out_dir=out_dir, scenario=name, seed=seed)
    started = time.monotonic()
    rows: list[Row] = []
    error = None
    try:
        scenario = scenarios[name]
        # Nothing but the JSON may reach stdout.
        with contextlib.redirect_stdout(sys.stderr):
            rows = scenario(ctx)
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        error = f"{type(exc).__name__}: {exc}"
    return {
        "scenario": name,
        "code": code,
        "quick": quick,
        "library": str(Path(cachebus.__file__).resolve().parent),
        "rows": [r.as_dict() for r in rows],
        "error": error,
        "seconds": round(time.monotonic() - started, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m consistency.entry", description="Run one consistency scenario."
    )
    parser.add_argument("scenario")
    parser.add_argument("--code", choices=CODES, default="new")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument("--out-dir", default="consistency/out")
    parser.add_argument("--seed", type=int, default=RunContext.seed)
    args = parser.parse_args(argv)
    # Fail-open reads and writes log a warning each (thousands under noeviction).
    logging.getLogger("cachebus").setLevel(logging.ERROR)
    known = load_scenarios()
    if args.scenario not in known:
        parser.error(f"unknown scenario {args.scenario!r}; choose from {', '.join(known)}")
    result = run_one(
        args.scenario, args.code, quick=args.quick, out_dir=Path(args.out_dir), seed=args.seed
    )
    if args.json:
        print(json.dumps(result), flush=True)
    else:
        for row in result["rows"]:
            print(json.dumps(row, indent=1))
        if result["error"]:
            print(f"error: {result['error']}", file=sys.stderr)
    return 0 if result["error"] is None else 1


if __name__ == "__main__":
    sys.exit(main())
