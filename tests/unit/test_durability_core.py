"""The pure parts of durability and rollback detection, without Redis: node tags from a
slot map, the fence monitor's comparisons, the witness programs driven by hand (sans-IO),
error translation and the worker's health document."""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest
from redis.crc import key_slot
from redis.exceptions import OutOfMemoryError, ResponseError

from cachebus.commands import Call, EachPrimary, node_tags
from cachebus.durability import Durability, FenceMonitor, new_epoch
from cachebus.errors import (
    CacheUnavailableError,
    ConfigError,
    DurabilityError,
    RedisFullError,
)
from cachebus.invalidation import InvalidationCore
from cachebus.keys import KeyScheme, Tag
from cachebus.runner import translate
from cachebus.settings import Settings
from cachebus.tags import DocumentInvalidation
from worker.web import HealthState

KEYS = KeyScheme("cb")


def drive(program: Any, replies_for: Any) -> tuple[Any, list[Any]]:
    """Run a program by hand: ``replies_for(step)`` answers each step. Returns the
    program's value and the steps it yielded."""
    steps: list[Any] = []
    try:
        step = next(program)
        while True:
            steps.append(step)
            step = program.send(replies_for(step))
    except StopIteration as stop:
        return stop.value, steps


def each(values: dict[str, list[Any]]) -> Any:
    """Answer EachPrimary steps with ``values`` (node tag -> replies), calling make()
    like the runner does; answer a SET (the fence) with True."""

    def answer(step: Any) -> Any:
        if isinstance(step, EachPrimary):
            for tag in values:
                step.make(tag)
            return values
        return [True] * len(step)

    return answer


# --------------------------------------------------------------------------- node tags


def test_node_tags_smallest_integer_owned_by_each_primary() -> None:
    ranges = {"a": range(0, 5461), "b": range(5461, 10923), "c": range(10923, 16384)}

    def owner(slot: int) -> str | None:
        return next(name for name, r in ranges.items() if slot in r)

    tags = node_tags(owner, ["a", "b", "c"])
    assert set(tags) == {"a", "b", "c"}
    for name, tag in tags.items():
        assert key_slot(tag.encode()) in ranges[name]
        # the smallest such integer
        assert all(owner(key_slot(str(i).encode())) != name for i in range(int(tag)))
    assert node_tags(owner, ["a", "b", "c"]) == tags  # deterministic


def test_node_tags_skips_primaries_without_slots_and_odd_maps() -> None:
    def owner(slot: int) -> str | None:
        return "a" if slot == 12345 else None  # one slot only, the rest uncovered

    tags = node_tags(owner, ["a", "idle"])
    assert list(tags) == ["a"] and key_slot(tags["a"].encode()) == 12345
    assert node_tags(lambda slot: None, ["a"]) == {}


# --------------------------------------------------------------------------- monitor


def test_epoch_tokens() -> None:
    tokens = {new_epoch() for _ in range(200)}
    assert len(tokens) == 200
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{8}", t) for t in tokens)


def test_monitor_compares_with_what_was_seen_before_sending() -> None:
    m = FenceMonitor("cb")
    s0 = m.snapshot("0")
    assert not m.regressed("0", s0, 1, incremented=True)  # nothing seen yet
    m.observe("0", s0, 5)
    s1 = m.snapshot("0")
    assert not m.regressed("0", s1, 6, incremented=True)
    assert m.regressed("0", s1, 5, incremented=True)  # an INCR must return more
    assert not m.regressed("0", s1, 5, incremented=False)  # a GET at least as much
    assert m.regressed("0", s1, 4, incremented=False)
    assert m.regressed("0", s1, 0, incremented=False)  # missing key
    # Concurrent commands: one sent before 9 was seen returns 7; not a regression.
    early = m.snapshot("0")
    m.observe("0", m.snapshot("0"), 9)
    assert not m.regressed("0", early, 7, incremented=True)
    m.observe("0", early, 7)
    assert m.seen() == {"0": 9}


def test_fence_resets_the_baseline_and_ignores_replies_sent_before(
    caplog: pytest.LogCaptureFixture,
) -> None:
    m = FenceMonitor("cb", replay_margin=60)
    fired: list[Any] = []
    m.listeners.append(fired.append)
    m.observe("0", m.snapshot("0"), 3)
    old = m.snapshot("0")
    m.observe("0", m.snapshot("0"), 10)
    snap = m.snapshot("0")
    assert m.regressed("0", snap, 4, incremented=False)
    with caplog.at_level(logging.ERROR, "cachebus.durability"):
        event = m.fenced("0", snap, 4, incremented=False, primary="10.0.0.1:6379")
    assert m.fences == 1 and fired == [event] and m.last_fence is event
    assert event.remembered == 10 and event.found == 4 and m.seen() == {"0": 4}
    assert event.replay_command == f"cachebus replay --from-time {event.replay_from}"
    # the last time 3 (<= 4) was seen, minus the margin
    assert event.replay_from.endswith("Z")
    (record,) = caplog.records
    assert "10.0.0.1:6379" in record.getMessage() and event.replay_command in record.getMessage()
    # A reply to a command sent before the fence is not judged against the old baseline.
    assert not m.regressed("0", old, 5, incremented=True)
    assert not m.regressed("0", m.snapshot("0"), 5, incremented=True)


def test_shared_monitor_per_prefix() -> None:
    assert FenceMonitor.shared("pa") is FenceMonitor.shared("pa")
    assert FenceMonitor.shared("pa") is not FenceMonitor.shared("pb")


# --------------------------------------------------------------------------- programs


def test_confirm_without_durability_only_raises_witnesses() -> None:
    d = Durability(Settings(), FenceMonitor("cb"))
    sent: dict[str, list[Call]] = {}

    def answer(step: Any) -> Any:
        assert isinstance(step, EachPrimary)
        for tag in ("0", "5"):
            sent[tag] = step.make(tag)
        return {"0": [1], "5": [7]}

    report, steps = drive(d.confirm(), answer)
    assert len(steps) == 1
    assert sent == {
        "0": [Call.of("INCR", KEYS.witness("0"))],
        "5": [Call.of("INCR", KEYS.witness("5"))],
    }
    assert report.witnesses == {"0": 1, "5": 7} and not report.fences


def test_confirm_waits_and_raises_on_a_shortfall() -> None:
    d = Durability(
        Settings(durability_replicas=2, durability_timeout_ms=150),
        FenceMonitor("cb"),
        describe=lambda tag: f"host-{tag}:6379",
    )
    made: list[list[Call]] = []

    def answer(step: Any) -> Any:
        made.append(step.make("0"))
        step.make("7")
        return {"0": [1, 2], "7": [1, 1]}

    with pytest.raises(DurabilityError) as err:
        drive(d.confirm(), answer)
    assert made[0] == [Call.of("INCR", KEYS.witness("0")), Call.of("WAIT", 2, 150)]
    assert "host-7:6379: 1 of 2 replicas" in str(err.value) and "host-0" not in str(err.value)
    assert err.value.retriable
    report, _ = drive(d.confirm(), each({"0": [2, 2], "7": [2, 3]}))
    assert report.replicas == {"0": 2, "7": 3}


def test_confirm_fences_before_raising_a_shortfall() -> None:
    monitor = FenceMonitor("cb")
    d = Durability(Settings(durability_replicas=1, durability_timeout_ms=100), monitor)
    drive(d.confirm(), each({"0": [10, 1]}))
    steps: list[Any] = []

    def answer(step: Any) -> Any:
        steps.append(step)
        return each({"0": [3, 0]})(step)

    with pytest.raises(DurabilityError):
        drive(d.confirm(), answer)
    fence = steps[1]
    assert isinstance(fence, list) and fence[0].name == "SET"
    assert fence[0].args[0] == KEYS.epoch() and len(fence[0].args[1]) == 8
    assert monitor.fences == 1 and monitor.seen() == {"0": 3}


def test_check_reads_only_and_fences_on_a_missing_witness() -> None:
    monitor = FenceMonitor("cb")
    d = Durability(Settings(), monitor)
    report, steps = drive(d.check(), each({"0": [b"4"]}))
    assert report.witnesses == {"0": 4} and not report.fences
    assert steps[0].make("0") == [Call.of("GET", KEYS.witness("0"))]
    report, steps = drive(d.check(), each({"0": [None]}))
    assert [f.found for f in report.fences] == [None] and len(steps) == 2


def test_fsync_is_detected_and_refused_with_the_server_version() -> None:
    d = Durability(
        Settings(durability_fsync=True, durability_timeout_ms=100),
        FenceMonitor("cb"),
        describe=lambda tag: "10.0.0.2:6379",
    )

    def old_server(step: Any) -> Any:
        assert step.make("0") == [Call.of("COMMAND INFO", "WAITAOF"), Call.of("HELLO")]
        return {"0": [[None], {b"server": b"redis", b"version": b"7.0.15"}]}

    with pytest.raises(ConfigError, match=r"10\.0\.0\.2:6379 runs Redis 7\.0\.15"):
        drive(d.confirm(), old_server)
    # RESP2 HELLO (a flat list) works too
    with pytest.raises(ConfigError, match=r"runs Redis 7\.0\.9"):
        drive(d.confirm(), lambda s: {"0": [[None], [b"server", b"redis", b"version", b"7.0.9"]]})

    calls: list[list[Call]] = []

    def new_server(step: Any) -> Any:
        made = step.make("0")
        calls.append(made)
        if made[0].name == "COMMAND INFO":
            return {"0": [[[b"waitaof", 4]], {b"version": b"7.2.4"}]}
        return {"0": [1, [1, 0]]}

    drive(d.confirm(), new_server)
    assert calls[1] == [Call.of("INCR", KEYS.witness("0")), Call.of("WAITAOF", 1, 0, 100)]
    _, steps = drive(d.confirm(), each({"0": [2, [1, 0]]}))
    assert len(steps) == 1  # detected once
    with pytest.raises(DurabilityError, match="fsynced locally 0 of 1"):
        drive(d.confirm(), each({"0": [3, [0, 0]]}))


def test_wait_longer_than_the_socket_timeout_is_refused() -> None:
    with pytest.raises(ConfigError, match="redis_timeout"):
        Durability(
            Settings(durability_replicas=1, durability_timeout_ms=2000, redis_timeout=2.0),
            FenceMonitor("cb"),
        )
    Durability(Settings(durability_timeout_ms=5000, redis_timeout=2.0), FenceMonitor("cb"))


def test_redis_full_fallback_keys() -> None:
    core = InvalidationCore(Settings(prefix="cb"))
    keys = core.control_keys(
        [Tag.user("x"), Tag.collection("kb")],
        [DocumentInvalidation("d1", "tomb"), DocumentInvalidation("d2")],
        ["sr.kb"],
    )
    assert keys == [
        KEYS.stamp(Tag.user("x")),
        KEYS.stamp(Tag.collection("kb")),
        KEYS.seq(),  # the invalidation could not raise it: see control_keys
        KEYS.stamp(Tag.doc("d1")),
        KEYS.document_embeddings("d1"),
        KEYS.stamp(Tag.doc("d2")),
        KEYS.document_embeddings("d2"),
        KEYS.generation("sr.kb"),
    ]
    assert core.full_fallback(keys) == [Call("UNLINK", tuple(keys))]
    # A bump alone raises no stamp: the sequence stays.
    assert core.control_keys([], [], ["sr.kb"]) == [KEYS.generation("sr.kb")]
    with pytest.raises(ConfigError):
        InvalidationCore(Settings(prefix="cb"), fence=FenceMonitor("other"))


# --------------------------------------------------------------------------- errors


def test_translate_maps_oom_and_waitaof_errors() -> None:
    oom = translate(OutOfMemoryError("command not allowed when used memory > 'maxmemory'."))
    assert isinstance(oom, RedisFullError) and oom.retriable and "OOM" in str(oom)
    script = translate(
        ResponseError("OOM command not allowed when used memory > 'maxmemory'. script: x")
    )
    assert isinstance(script, RedisFullError)
    unknown = translate(ResponseError("unknown command 'WAITAOF', with args beginning with: '1'"))
    assert isinstance(unknown, ConfigError) and not unknown.retriable
    other = translate(ResponseError("ERR something"))
    assert type(other) is CacheUnavailableError


# --------------------------------------------------------------------------- health


def test_health_document() -> None:
    h = HealthState()
    assert h.ok and h.as_dict()["status"] == "ok"
    assert h.as_dict()["redis_full"] is False and h.as_dict()["last_fence"] is None
    h.redis_full = True
    assert not h.ok and h.as_dict()["status"] == "degraded"
    h.redis_full = False
    h.durability_shortfall = "0 of 1 replicas"
    assert not h.ok and h.as_dict()["durability_shortfall"] == "0 of 1 replicas"
