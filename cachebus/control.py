"""The control state the worker keeps in Redis, read for comparison and
operations (replay rebuilds it; tests compare it before and after).

It is: per-document high-water marks, tombstoned (deleted) documents, and the
namespaces that were version-bumped. Generation and sequence *values* are
clock-floored counters (see :data:`cachebus.tags.SEQUENCE_SCRIPT`): what
matters is that they only move forward, not their exact numbers.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

from .commands import SCAN_COUNT, Call, Program, ScanEachPrimary
from .keys import KeyScheme, decode_part
from .runner import SyncClient, SyncRunner
from .tags import TOMBSTONE


@dataclass(frozen=True, slots=True)
class ControlState:
    high_water_marks: dict[str, str] = field(default_factory=dict)
    """doc_id -> "<doc_version>:<event_id>" of the last applied event."""
    tombstones: frozenset[str] = frozenset()
    """Documents whose last applied event deleted them (within the stamp TTL)."""
    bumped: frozenset[str] = frozenset()
    """Namespaces (``sr.<collection>``, ``qe.<model>.<version>``) with a generation: bumped
    by an event, or used by the library (whose first ticket creates a missing one)."""

    def equivalent(self, other: ControlState) -> bool:
        return (
            self.high_water_marks == other.high_water_marks
            and self.tombstones == other.tombstones
            and self.bumped == other.bumped
        )


def scan_keys(
    client: SyncClient, pattern: str, count: int = SCAN_COUNT
) -> Generator[bytes, None, None]:
    """SCAN MATCH ``pattern`` over every primary (an operator tool, never KEYS), as
    the keys come (:meth:`cachebus.runner.SyncRunner.scan`). Redis errors raise as
    cachebus errors."""
    with SyncRunner(client) as runner:
        for _, keys in runner.scan(pattern, count):
            yield from keys


def _tag_value(key: bytes, head: str) -> str:
    """``<head>{<value>}`` -> value."""
    text = key.decode("utf-8")
    return text[len(head) + 1 : -1]


def _values(pattern: str) -> Program[list[tuple[bytes, Any]]]:
    """Every key matching ``pattern`` (SCAN on every primary) and its value (MGET)."""
    found = yield from ScanEachPrimary(pattern).keys()
    found = list(dict.fromkeys(found))  # SCAN may return a key twice
    if not found:
        return []
    (values,) = yield [Call("MGET", tuple(found))]
    return list(zip(found, values, strict=True))


def control_state(keys: KeyScheme) -> Program[ControlState]:
    """The program of :func:`read_control_state`."""
    p = keys.prefix
    marks = {}
    for key, raw in (yield from _values(f"{p}:hwm:*")):
        token = _tag_value(key, f"{p}:hwm:")
        if raw is not None and token.startswith("d."):
            marks[decode_part(token[2:])] = raw.decode("utf-8")
    tombs = set()
    for key, raw in (yield from _values(f"{p}:stamp:*")):
        token = _tag_value(key, f"{p}:stamp:")
        if raw is not None and token.startswith("d.") and int(raw) >= TOMBSTONE:
            tombs.add(decode_part(token[2:]))
    gens = yield from _values(f"{p}:gen:*")
    bumped = {_tag_value(key, f"{p}:gen:") for key, raw in gens if raw}
    return ControlState(marks, frozenset(tombs), frozenset(bumped))


def read_control_state(client: SyncClient, keys: KeyScheme) -> ControlState:
    """SCAN the prefix's control keys (an operator/test tool, not a hot path)."""
    with SyncRunner(client) as runner:
        return runner.run(control_state(keys))
