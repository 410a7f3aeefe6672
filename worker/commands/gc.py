"""``cachebus gc``: remove tag stamps unused for ``stamp_ttl`` (see
:mod:`cachebus.stamp_gc`; deleting a stamp costs at most a miss, never a stale read)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, TextIO

from cachebus.connection import connect
from cachebus.settings import Settings
from cachebus.stamp_gc import GcReport, collect_stamps


def register(subparsers: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``cachebus gc``."""
    p = subparsers.add_parser(
        "gc",
        help="remove tag stamps unused for stamp_ttl (bounded; a miss, never a stale read)",
        description=(
            "Stamps carry no TTL so no eviction policy but allkeys-* can pick them. This "
            "removes those nobody used for CACHEBUS_STAMP_TTL seconds (OBJECT IDLETIME; under "
            "LFU policies, the stamp's own sequence value). Run it daily, e.g. from cron."
        ),
    )
    add_common(p)
    p.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    p.add_argument("--limit", type=int, default=None, help="scan at most N stamps")
    p.set_defaults(run=run)


def run(settings: Settings, args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout

    def progress(report: GcReport) -> None:
        print(
            f"\rgc: {report.scanned} stamps scanned, {report.removed} removed",
            end="",
            file=sys.stderr,
            flush=True,
        )

    client = connect(settings)
    try:
        report = collect_stamps(
            client, settings, dry_run=args.dry_run, limit=args.limit, progress=progress
        )
    finally:
        client.close()
    print(file=sys.stderr)
    verb = "would remove" if args.dry_run else "removed"
    print(
        f"stamps: {report.scanned} scanned, {verb} {report.removed}, kept {report.kept} "
        f"(unused for {settings.stamp_ttl} s, judged by {report.mode})",
        file=out,
    )
    return 0
