"""``cachebus worker``: run the invalidation worker (faust; the worker extra, imported
when run). See :mod:`worker.runtime`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from ..settings import WorkerSettings


def register(subparsers: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``cachebus worker``."""
    p = subparsers.add_parser("worker", help="run the invalidation worker (faust; worker extra)")
    add_common(p)
    p.add_argument("--rules", dest="rules_file", help="TOML rules file (default: shipped rules)")
    p.add_argument("--group", dest="consumer_group", help="consumer group id")
    p.set_defaults(run=run)


def run(settings: WorkerSettings, args: argparse.Namespace) -> int:
    """Run until SIGTERM/SIGINT; :func:`worker.runtime.run` exits the process itself."""
    from worker.runtime import run as run_worker

    # faust parses sys.argv itself; give it only the program name.
    sys.argv = sys.argv[:1]
    run_worker(settings)
    return 0
