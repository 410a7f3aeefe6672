"""The applier with batches in flight (real Redis, standalone and cluster): the worker
applies the next batch before the previous one's high-water marks are in Redis (they are
raised after its audits are delivered), so marks of applied, uncommitted events must count
for the batches behind them."""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio

from cachebus.errors import PermissionDeniedError
from cachebus.keys import KeyScheme
from cachebus.settings import Settings
from devtools.stack import document_event
from worker.applier import Applier
from worker.events import DocumentEvent, parse_event
from worker.planner import plan
from worker.rules import load_rules

RULES = load_rules(None)
KEYS = KeyScheme("cb")


def event(doc_id: str, version: int, **extra: Any) -> DocumentEvent:
    raw = json.dumps(document_event("updated", doc_id, version, **extra)).encode()
    return parse_event(raw, max_bytes=1 << 20)


def batch(*events: DocumentEvent) -> list[tuple[DocumentEvent, Any]]:
    return [(e, plan(e, RULES, KEYS)) for e in events]


async def test_marks_of_uncommitted_batches_count(any_async_redis: Any) -> None:
    client = any_async_redis
    applier = Applier(client, Settings(prefix="cb"))
    first = event("doc-1", 5)
    other = event("doc-2", 1)
    assert [r.outcome for r in await applier.apply(batch(first, other))] == ["applied"] * 2
    # Batch 1's marks are not in Redis yet (its audits are in flight)...
    assert await client.get(KEYS.hwm("doc-1")) is None

    # ...but the batch behind it sees them: the re-delivered original is a duplicate, an
    # older version is stale, a newer one applies.
    older = event("doc-1", 4)
    newer = event("doc-1", 6)
    results = await applier.apply(batch(first, older, newer))
    assert [r.outcome for r in results] == ["skipped_duplicate", "skipped_stale", "applied"]

    # Batch 1 finishes: its marks go to Redis; doc-1's in-flight mark is now batch 2's.
    await applier.commit_marks([first, other])
    assert await client.get(KEYS.hwm("doc-1")) == f"5:{first.event_id}".encode()
    assert await client.get(KEYS.hwm("doc-2")) == f"1:{other.event_id}".encode()
    results = await applier.apply(batch(event("doc-1", 6)))
    assert [r.outcome for r in results] == ["skipped_stale"]  # 6 is in flight, not yet in Redis

    await applier.commit_marks([newer])
    assert await client.get(KEYS.hwm("doc-1")) == f"6:{newer.event_id}".encode()
    assert applier._uncommitted == {}


async def test_failed_apply_leaves_no_in_flight_mark(
    async_redis_client: Any, redis_server: Any
) -> None:
    """A batch that fails in Redis is retried whole: it must not leave marks behind that
    would make its own retry skip its events."""
    admin = async_redis_client
    await admin.acl_setuser(
        "noscripts", enabled=True, passwords=["+pw"], commands=["+@all", "-evalsha"], keys=["*"]
    )
    limited = redis.asyncio.Redis(
        host=redis_server.host, port=redis_server.port, username="noscripts", password="pw"
    )
    try:
        applier = Applier(limited, Settings(prefix="cb"))
        first = event("doc-1", 1)
        try:
            await applier.apply(batch(first))
        except PermissionDeniedError:
            pass
        else:
            raise AssertionError("the script call should have been refused")
        assert applier._uncommitted == {}
        # The retry (here: with the permission granted) applies the event, not skips it.
        await admin.acl_setuser("noscripts", commands=["+evalsha"])
        assert [r.outcome for r in await applier.apply(batch(first))] == ["applied"]
    finally:
        await limited.aclose()
        await admin.acl_deluser("noscripts")


async def test_commit_marks_one_call_per_batch(async_redis_client: Any) -> None:
    """High-water marks of a whole batch go to Redis in one script call (standalone)."""
    client = async_redis_client
    applier = Applier(client, Settings(prefix="cb"))
    events = [event(f"doc-{i}", 1) for i in range(50)]
    await applier.apply(batch(*events))

    async def evalsha_calls() -> int:
        stats = await client.info("commandstats")
        return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))

    before = await evalsha_calls()
    await applier.commit_marks(events)
    assert await evalsha_calls() - before == 1
    marks = await client.mget([KEYS.hwm(e.doc_id) for e in events])
    assert marks == [f"1:{e.event_id}".encode() for e in events]
