"""Bounded cleanup of tag stamps.

Stamps carry no TTL (an eviction policy of the ``volatile-*`` family must never
pick them), so stamps of documents nobody reads any more would stay forever.
Deleting a stamp is always safe: a missing stamp counts as invalidated, so the
entries tagged with it become misses and the stamp is re-created at the current
sequence by the next write (docs/consistency.md). The cleanup only decides
*which* stamps are worth keeping: those used within ``stamp_ttl``.

* Under LRU-style policies (and ``noeviction``) Redis tracks each key's idle time
  (``OBJECT IDLETIME``); every tagged read touches its stamps, so a stamp idle for
  ``stamp_ttl`` guards no entry that is still read.
* Under ``*-lfu`` policies idle time is not tracked; stamps are then judged by
  their value, a sequence number that never falls below the server clock in
  microseconds when it is written: a stamp raised longer than ``stamp_ttl`` ago
  is removed. Tombstones carry no time and are kept.

SCAN ``<prefix>:stamp:*`` runs over every primary in batches (never KEYS); the
work is bounded by ``limit`` keys per call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from redis.exceptions import RedisError, ResponseError

from .control import scan_keys
from .keys import escape_glob
from .runner import SyncClient, translate
from .settings import Settings
from .tags import TOMBSTONE

BATCH = 500


@dataclass(slots=True)
class GcReport:
    scanned: int = 0
    removed: int = 0
    kept: int = 0
    mode: str = "idle"
    """``idle`` (OBJECT IDLETIME) or ``value`` (stamp value vs server clock, LFU)."""


def collect_stamps(
    client: SyncClient,
    settings: Settings,
    *,
    dry_run: bool = False,
    limit: int | None = None,
    progress: Callable[[GcReport], None] | None = None,
) -> GcReport:
    """Remove stamps unused for ``settings.stamp_ttl`` seconds; see the module doc."""
    report = GcReport()
    pattern = f"{escape_glob(settings.prefix)}:stamp:*"
    batch: list[bytes] = []
    try:
        # SCAN on every primary (cachebus.commands.ScanEachPrimary); closed at a limit.
        with contextlib.closing(scan_keys(client, pattern)) as keys:
            for key in keys:
                batch.append(key)
                if len(batch) >= BATCH:
                    _sweep(client, settings, batch, report, dry_run)
                    batch = []
                    if progress is not None:
                        progress(report)
                if limit is not None and report.scanned + len(batch) >= limit:
                    break
        if batch:
            _sweep(client, settings, batch, report, dry_run)
    except RedisError as exc:
        raise translate(exc) from exc
    if progress is not None:
        progress(report)
    return report


def _sweep(
    client: SyncClient, settings: Settings, keys: list[bytes], report: GcReport, dry_run: bool
) -> None:
    report.scanned += len(keys)
    doomed: list[bytes] = []
    if report.mode == "idle":
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.object("idletime", key)
        idle = pipe.execute(raise_on_error=False)
        if any(isinstance(r, ResponseError) and "LFU" in str(r) for r in idle):
            report.mode = "value"
        else:
            doomed = [k for k, i in zip(keys, idle, strict=True) if _old_idle(i, settings)]
    if report.mode == "value":
        now = client.time()
        if isinstance(now, dict):  # a cluster answers per node
            now = next(iter(now.values()))
        seconds, micros = now
        horizon = (int(seconds) * 1_000_000 + int(micros)) - settings.stamp_ttl * 1_000_000
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
        values = pipe.execute(raise_on_error=False)
        doomed = [k for k, v in zip(keys, values, strict=True) if _old_value(v, horizon)]
    report.kept += len(keys) - len(doomed)
    if doomed and not dry_run:
        pipe = client.pipeline(transaction=False)
        for key in doomed:
            pipe.unlink(key)
        pipe.execute()
    report.removed += len(doomed)


def _old_idle(reply: object, settings: Settings) -> bool:
    return isinstance(reply, int) and reply >= settings.stamp_ttl


def _old_value(reply: object, horizon: int) -> bool:
    if not isinstance(reply, bytes):
        return False
    try:
        value = int(reply)
    except ValueError:
        return False
    return value < TOMBSTONE and value < horizon
