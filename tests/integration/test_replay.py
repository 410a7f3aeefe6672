"""Replay on the real broker and Redis: rebuild after Redis lost everything,
idempotence, replay from a timestamp, refusal next to a live worker, dry run."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime

import pytest

from cachebus.control import read_control_state
from cachebus.keys import KeyScheme
from devtools.stack import LocalStack, document_event
from worker.replay import ReplayOptions, ReplayRefused, replay


def _mixed_stream(docs: int, seed: int = 3) -> list[dict | bytes]:
    """created, updates (with chunk hashes), deletes, re-creations, duplicates,
    out-of-order versions and a few broken records."""
    rnd = random.Random(seed)
    out: list[dict | bytes] = []
    for d in range(docs):
        doc = f"doc-{d}"
        coll = f"c{d % 4}"
        version = 1
        out.append(document_event("created", doc, version, collection=coll))
        for _ in range(rnd.randint(1, 6)):
            version += 1
            kind = rnd.choice(["updated", "updated", "updated", "deleted", "created"])
            chunks = [{"chunk_id": f"c{i}", "content_hash": f"h{rnd.randint(0, 3)}"}
                      for i in range(3)]
            event = document_event(kind, doc, version, collection=coll,
                                   **({"chunks": chunks} if kind == "updated" else {}))
            out.append(event)
            if rnd.random() < 0.1:
                out.append(dict(event))  # a duplicate delivery
            if rnd.random() < 0.1:
                out.append(document_event("updated", doc, version - 1, collection=coll))
        if rnd.random() < 0.05:
            out.append(b'{"broken": ')
    return out


def test_rebuild_after_redis_wipe_and_idempotence(stack: LocalStack) -> None:
    """A mixed stream of a few thousand events through the live worker; wipe
    Redis; replay; the control state is equal. Replaying again: still equal."""
    events = _mixed_stream(700)
    assert len(events) > 2500
    worker = stack.start_worker(batch_max=200)
    stack.publish(events)
    stack.read_audits(count=len(events), timeout=180)
    worker.stop()
    client = stack.redis.client()
    keys = KeyScheme(stack.settings.prefix)
    live = read_control_state(client, keys)
    assert len(live.high_water_marks) == 700 and live.tombstones and live.bumped

    client.flushall()  # Redis restarted empty (test server only)
    assert not read_control_state(client, keys).high_water_marks
    report = asyncio.run(replay(stack.settings, ReplayOptions(progress=False)))
    assert report.events == len(events)
    assert report.outcomes["applied"] > 0 and report.outcomes["dead_lettered"] >= 0
    rebuilt = read_control_state(client, keys)
    assert rebuilt.equivalent(live)
    assert rebuilt == live

    again = asyncio.run(replay(stack.settings, ReplayOptions(progress=False)))
    assert again.outcomes.get("applied", 0) == 0  # everything is at or below its mark
    assert read_control_state(client, keys) == live

    audits = stack.read_audits(count=3 * len(events), timeout=120)
    replayed = [a for a in audits if a["replay"]]
    assert len(replayed) == 2 * len(events)
    assert all(a["worker_id"].startswith("replay-") for a in replayed)


def test_replay_from_timestamp(stack: LocalStack) -> None:
    """A replay from a timestamp applies only the events at or after it."""
    before = [document_event("created", f"old-{i}", 1) for i in range(50)]
    stack.publish(before)
    time.sleep(1.2)
    cut = datetime.now(UTC)
    time.sleep(0.2)
    after = [document_event("created", f"new-{i}", 1) for i in range(40)]
    stack.publish(after)
    report = asyncio.run(replay(stack.settings, ReplayOptions(from_time=cut, progress=False)))
    assert report.events == 40 and report.outcomes["applied"] == 40
    state = read_control_state(stack.redis.client(), KeyScheme(stack.settings.prefix))
    assert set(state.high_water_marks) == {f"new-{i}" for i in range(40)}


def test_replay_refuses_live_group_and_dry_run_touches_nothing(stack: LocalStack) -> None:
    """Replay into the group of a running worker is refused with the group's
    name; a dry run reports counts and leaves Redis untouched."""
    stack.start_worker()
    stack.publish([document_event("created", "a", 1), document_event("deleted", "b", 1)])
    stack.read_audits(count=2)
    group = stack.settings.consumer_group
    with pytest.raises(ReplayRefused, match=group):
        asyncio.run(replay(stack.settings, ReplayOptions(group=group, progress=False)))

    client = stack.redis.client()
    client.flushall()
    report = asyncio.run(replay(stack.settings, ReplayOptions(dry_run=True, progress=False)))
    assert report.events == 2
    assert report.actions["tombstone"] == 1 and report.actions["bump"] == 1
    assert client.dbsize() == 0


def test_replay_into_a_stopped_group_commits_its_end(stack: LocalStack) -> None:
    """With --group and no live member, replay consumes as that group and leaves
    its committed offsets at the end, so a restarted worker does not redo it."""
    worker = stack.start_worker()
    stack.publish([document_event("created", f"d{i}", 1) for i in range(30)])
    stack.read_audits(count=30)
    worker.stop()
    deadline = time.monotonic() + 30
    from worker.replay import live_members

    while asyncio.run(live_members(stack.settings, stack.settings.consumer_group)):
        assert time.monotonic() < deadline, "worker did not leave the group"
        time.sleep(0.5)
    stack.redis.client().flushall()
    report = asyncio.run(replay(stack.settings, ReplayOptions(
        group=stack.settings.consumer_group, progress=False)))
    assert report.events == 30 and report.outcomes["applied"] == 30
    stack.start_worker("w2")
    last = document_event("created", "after-replay", 1)
    stack.publish([last])
    audits = stack.read_audits(
        count=61, until=lambda got: any(a["event_id"] == last["event_id"] for a in got)
    )
    time.sleep(1)  # a worker that re-did the replayed range would add 30 more audits
    assert stack.count_records(stack.settings.audit_topic) == 61 == len(audits)


def test_dry_run_predicts_the_real_replay(stack: LocalStack) -> None:
    """A dry run reads the high-water marks: where the real replay of events already
    applied says `skipped_duplicate 3`, so does the dry run (it said `applied 3`), and
    it still writes nothing (no Redis key, no audit). The CLI prints the same."""
    import os
    import subprocess
    import sys

    from devtools.stack import settings_env

    stack.publish([document_event("created", f"doc-{i}", 1) for i in range(3)])
    first = asyncio.run(replay(stack.settings, ReplayOptions(progress=False)))
    assert first.outcomes == {"applied": 3}
    client = stack.redis.client()
    keys = KeyScheme(stack.settings.prefix)
    state, size = read_control_state(client, keys), client.dbsize()
    audits = stack.count_records(stack.settings.audit_topic)

    dry = asyncio.run(replay(stack.settings, ReplayOptions(dry_run=True, progress=False)))
    assert dry.outcomes == {"skipped_duplicate": 3}
    assert read_control_state(client, keys) == state and client.dbsize() == size
    assert stack.count_records(stack.settings.audit_topic) == audits

    env = {**os.environ, **settings_env(stack.settings)}
    cli = subprocess.run(
        [sys.executable, "-m", "worker.cli", "replay", "--dry-run", "--quiet"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert cli.returncode == 0, cli.stderr
    assert "outcomes: skipped_duplicate 3" in cli.stdout and "nothing written" in cli.stdout

    real = asyncio.run(replay(stack.settings, ReplayOptions(progress=False)))
    assert real.outcomes == dry.outcomes


def test_dry_run_outcomes_equal_the_replay_on_a_mixed_stream(stack: LocalStack) -> None:
    """Duplicates, stale versions, broken records, several batches: from an empty Redis
    and again over the rebuilt state, the dry run's outcomes and actions are the real
    replay's, and the dry run leaves Redis as it found it."""
    events = _mixed_stream(120, seed=11)
    stack.publish(events)
    client = stack.redis.client()
    client.flushall()
    keys = KeyScheme(stack.settings.prefix)
    for _ in range(2):  # from nothing, then over the rebuilt marks
        state, size = read_control_state(client, keys), client.dbsize()
        dry = asyncio.run(
            replay(stack.settings, ReplayOptions(dry_run=True, batch=37, progress=False))
        )
        assert read_control_state(client, keys) == state and client.dbsize() == size
        real = asyncio.run(
            replay(stack.settings, ReplayOptions(batch=37, audit=False, progress=False))
        )
        assert dry.events == real.events == len(events)
        assert dry.outcomes == real.outcomes
        assert dry.actions == real.actions
    assert real.outcomes.get("applied", 0) == 0  # the second time: all at or below marks
    assert real.outcomes["skipped_duplicate"] > 0
