"""The control state the worker keeps in Redis, read for comparison and
operations (replay rebuilds it; tests compare it before and after).

It is: per-document high-water marks, tombstoned (deleted) documents, and the
namespaces that were version-bumped. Generation and sequence *values* are
clock-floored counters (see :data:`cachebus.tags.SEQUENCE_SCRIPT`): what
matters is that they only move forward, not their exact numbers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .keys import KeyScheme, decode_part
from .runner import SyncClient, is_cluster
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


def scan_keys(client: SyncClient, pattern: str) -> Iterator[bytes]:
    """SCAN MATCH ``pattern`` over every primary (an operator tool, never KEYS)."""
    if is_cluster(client):
        for node in client.get_primaries():  # type: ignore[union-attr]
            yield from client.scan_iter(match=pattern, count=1000, target_nodes=node)
    else:
        yield from client.scan_iter(match=pattern, count=1000)


def _tag_value(key: bytes, head: str) -> str:
    """``<head>{<value>}`` -> value."""
    text = key.decode("utf-8")
    return text[len(head) + 1 : -1]


def read_control_state(client: SyncClient, keys: KeyScheme) -> ControlState:
    """SCAN the prefix's control keys (an operator/test tool, not a hot path)."""
    p = keys.prefix

    def values(pattern: str) -> list[tuple[bytes, Any]]:
        found = list(scan_keys(client, pattern))
        if not found:
            return []
        pipe = client.pipeline(transaction=False)
        for k in found:
            pipe.get(k)
        return list(zip(found, pipe.execute(), strict=True))

    marks = {}
    for key, raw in values(f"{p}:hwm:*"):
        token = _tag_value(key, f"{p}:hwm:")
        if raw is not None and token.startswith("d."):
            marks[decode_part(token[2:])] = raw.decode("utf-8")
    tombs = set()
    for key, raw in values(f"{p}:stamp:*"):
        token = _tag_value(key, f"{p}:stamp:")
        if raw is not None and token.startswith("d.") and int(raw) >= TOMBSTONE:
            tombs.add(decode_part(token[2:]))
    bumped = {_tag_value(key, f"{p}:gen:") for key, raw in values(f"{p}:gen:*") if raw}
    return ControlState(marks, frozenset(tombs), frozenset(bumped))
