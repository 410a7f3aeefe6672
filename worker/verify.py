"""Consistency over a window, as the workers' monitors published it (see
:mod:`worker.monitor`): per-minute buckets ``<prefix>:metrics:{consistency}:<minute>``
summed and shown as nines by ``cachebus stats`` and ``cachebus verify``.

Only Redis and the library: this is what the base install (no worker extra) needs
to read the buckets; the monitor that writes them lives in :mod:`worker.monitor`.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TextIO

from cachebus.commands import Call, Script
from cachebus.connection import connect
from cachebus.errors import ConfigError
from cachebus.keys import KeyScheme
from cachebus.metrics_store import metrics_key
from cachebus.runner import AsyncClient, AsyncRunner, SyncClient, SyncRunner
from cachebus.settings import Settings

ENV_SAMPLE_RATE: Final = "CACHEBUS_MONITOR_SAMPLE_RATE"
"""The monitor's sample rate variable (named in the no-checks line)."""

BUCKET_SECONDS: Final = 60
RETENTION_MINUTES: Final = 24 * 60
"""Buckets live a day: the longest window ``stats`` / ``verify`` can show."""
DEFAULT_WINDOW: Final = "15m"


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def window_label(seconds: float) -> str:
    s = int(seconds)
    if s % 3600 == 0:
        return f"{s // 3600} h"
    if s % 60 == 0:
        return f"{s // 60} min"
    return f"{s} s"


@dataclass(frozen=True, slots=True)
class Consistency:
    """Checks and violations over a window, as nines."""

    window_s: float
    checks: int
    violations: int

    @property
    def nines(self) -> int | None:
        """The largest k with violations / checks <= 10^-k (exact, integers). With no
        violation, the same bound with one: what the checks can show at least.
        None without checks."""
        if self.checks <= 0:
            return None
        bad = max(self.violations, 1)
        k = 0
        while bad * 10 ** (k + 1) <= self.checks:
            k += 1
        return k

    @property
    def percent(self) -> str | None:
        """Share of checks passed, rounded *down* to the digits the nines carry (a
        violation never shows as 100%)."""
        if self.checks <= 0:
            return None
        if self.violations <= 0:
            return "100"
        digits = max(0, (self.nines or 0) - 2)
        scaled = (self.checks - self.violations) * 100 * 10**digits // self.checks
        text = str(scaled).rjust(digits + 1, "0")
        return f"{text[:-digits]}.{text[-digits:]}" if digits else text

    def line(self) -> str:
        over = f"over {window_label(self.window_s)}"
        if self.checks <= 0:
            return (
                f"consistency: no checks {over} (the workers' monitor is off or saw no "
                f"invalidations; see {ENV_SAMPLE_RATE})"
            )
        k = self.nines or 0
        nines = f"{k} nine" + ("" if k == 1 else "s")
        if self.violations <= 0:
            nines = f"at least {nines}"
        return (
            f"consistency: {self.percent}% ({nines}) {over}: "
            f"{_plural(self.checks, 'check')}, {_plural(self.violations, 'violation')}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "window_s": self.window_s,
            "checks": self.checks,
            "violations": self.violations,
            "percent": self.percent,
            "nines": self.nines,
            "nines_lower_bound": self.violations <= 0 and self.checks > 0,
            "line": self.line(),
        }


_WINDOW_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$", re.IGNORECASE)
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_window(text: str) -> int:
    """``15m``, ``2h``, ``900s``, ``900`` -> seconds, rounded up to whole minutes
    (the buckets' size), between 1 minute and a day."""
    match = _WINDOW_RE.match(text)
    if not match:
        raise ConfigError(f"window {text!r} must look like 15m, 2h, 1d or 900s")
    seconds = float(match.group(1)) * _UNIT[match.group(2).lower()]
    minutes = max(1, math.ceil(seconds / BUCKET_SECONDS))
    if minutes > RETENTION_MINUTES:
        raise ConfigError(f"window {text!r} is longer than the day the buckets are kept")
    return minutes * BUCKET_SECONDS


def window_minutes(now: float, window_s: float) -> list[int]:
    """The minute buckets (Unix minutes) of the last ``window_s`` seconds, the
    current one included."""
    last = int(now // BUCKET_SECONDS)
    count = max(1, math.ceil(window_s / BUCKET_SECONDS))
    return list(range(last - count + 1, last + 1))


# -- Redis buckets -----------------------------------------------------------------


def bucket_key(keys: KeyScheme, minute: int) -> str:
    """``<prefix>:metrics:{consistency}:<unix minute>``: every bucket in one slot."""
    return f"{metrics_key(keys, 'consistency')}:{minute}"


# KEYS: minute buckets (one hash tag). ARGV: ttl, then checks, violations per key.
# Adds to "<checks>:<violations>" with GET and SET .. EX only (granted to the worker role).
BUCKETS_SCRIPT: Final = Script("""
for i = 1, #KEYS do
  local c, v = 0, 0
  local raw = redis.call('GET', KEYS[i])
  if raw then
    local a, b = string.match(raw, '^(%d+):(%d+)$')
    c, v = tonumber(a) or 0, tonumber(b) or 0
  end
  c = c + tonumber(ARGV[2 * i])
  v = v + tonumber(ARGV[2 * i + 1])
  redis.call('SET', KEYS[i], string.format('%d:%d', c, v), 'EX', ARGV[1])
end
return #KEYS
""")


def _parse_bucket(raw: Any) -> tuple[int, int]:
    if raw is None:
        return 0, 0
    text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)
    checks, _, violations = text.partition(":")
    try:
        return int(checks), int(violations)
    except ValueError:
        return 0, 0


def _window_calls(prefix: str, window_s: float, now: float) -> list[Call]:
    keys = KeyScheme(prefix)
    return [Call("MGET", tuple(bucket_key(keys, m) for m in window_minutes(now, window_s)))]


def _summed(window_s: float, raw: Sequence[Any]) -> Consistency:
    checks = violations = 0
    for item in raw:
        c, v = _parse_bucket(item)
        checks += c
        violations += v
    return Consistency(window_s, checks, violations)


def read_consistency(
    client: SyncClient, prefix: str, window_s: float, *, now: float | None = None
) -> Consistency:
    """Checks and violations every worker published over the last ``window_s``."""
    now = time.time() if now is None else now
    (raw,) = SyncRunner(client).execute(_window_calls(prefix, window_s, now))
    return _summed(window_s, raw)


async def aread_consistency(
    client: AsyncClient, prefix: str, window_s: float, *, now: float | None = None
) -> Consistency:
    now = time.time() if now is None else now
    (raw,) = await AsyncRunner(client).execute(_window_calls(prefix, window_s, now))
    return _summed(window_s, raw)


# -- cachebus verify ---------------------------------------------------------------


def register(subparsers: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``cachebus verify``."""
    p = subparsers.add_parser(
        "verify",
        help="consistency over a window (checks and violations the workers' monitors "
        "published); exit 1 on any violation",
    )
    add_common(p)
    p.add_argument(
        "--window",
        default=DEFAULT_WINDOW,
        help=f"how far back: 15m, 2h, 1d (default {DEFAULT_WINDOW}; buckets are kept a day)",
    )
    p.add_argument(
        "--min-checks",
        type=int,
        default=0,
        help="also exit 1 with fewer checks than this (default 0)",
    )
    p.add_argument("--json", action="store_true", help="one JSON document for machines")
    p.set_defaults(run=run)


def run(settings: Settings, args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Print the consistency line; 0 if no violation (and enough checks), 1 if not.
    Redis errors raise :class:`~cachebus.errors.CacheBusError` (exit 2 in the CLI)."""
    out = out or sys.stdout
    window = parse_window(args.window)
    client = connect(settings)
    try:
        found = read_consistency(client, settings.prefix, window)
    finally:
        client.close()
    print(json.dumps(found.as_dict()) if args.json else found.line(), file=out)
    if found.violations > 0:
        return 1
    if found.checks < args.min_checks:
        print(
            f"cachebus verify: {found.checks} checks over {window_label(window)}, "
            f"fewer than --min-checks {args.min_checks}",
            file=sys.stderr,
        )
        return 1
    return 0
