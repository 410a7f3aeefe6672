"""SCAN over every primary, written once (cachebus.commands.ScanEachPrimary), and what
is built on it: pattern invalidation (``scan_delete``), the control state, the
runner's ``scan`` iterator; without Redis.

Program-level tests use the scripted runner with several node tags (a 3-primary
cluster as EachPrimary sees it). The last tests hand a scripted ``redis.Redis`` (its
wire is a script, no socket) to the real runner and invalidator, standalone.
"""

from __future__ import annotations

from typing import Any

import pytest

from cachebus.commands import Call, EachPrimary, ScanEachPrimary, parse_scan_reply
from cachebus.control import ControlState, control_state, scan_keys
from cachebus.errors import CacheUnavailableError, ConfigError
from cachebus.invalidation import InvalidationCore, Invalidator
from cachebus.keys import KeyScheme, Tag
from cachebus.runner import SyncRunner
from cachebus.settings import Settings
from cachebus.tags import TOMBSTONE
from devtools.scripted import OnEachPrimary, ScriptedClient, ScriptedRunner, Send, Wire

PATTERN = "t:legacy:*"
NODES = ("0", "1", "2")


def scan(cursor: int, match: str = PATTERN, count: int = 1000) -> Call:
    return Call.of("SCAN", cursor, "MATCH", match, "COUNT", count)


def test_rounds_keep_one_cursor_per_primary_until_each_is_back_to_zero() -> None:
    runner = ScriptedRunner(
        [
            OnEachPrimary(
                {"0": [scan(0)], "1": [scan(0)], "2": [scan(0)]},
                {"0": [(12, [b"t:legacy:a"])], "1": [(0, [b"t:legacy:b"])], "2": [(7, [])]},
            ),
            # "1" is finished: it gets no command; the others continue from their cursors.
            OnEachPrimary(
                {"0": [scan(12)], "2": [scan(7)]},
                {"0": [(0, [b"t:legacy:c"])], "2": [(0, [b"t:legacy:d"])]},
            ),
        ],
        node_tags=NODES,
    )
    s = ScanEachPrimary(PATTERN)

    first = runner.run(s.round())
    assert first == {"0": [b"t:legacy:a"], "1": [b"t:legacy:b"], "2": []}
    assert not s.done
    second = runner.run(s.round())
    assert second == {"0": [b"t:legacy:c"], "2": [b"t:legacy:d"]}
    assert s.done
    assert runner.run(s.round()) == {}  # nothing more is sent
    runner.assert_done()


def test_keys_collects_the_whole_scan() -> None:
    runner = ScriptedRunner(
        [
            OnEachPrimary(
                {"0": [scan(0)], "1": [scan(0)]}, {"0": [(3, [b"a"])], "1": [(0, [b"b"])]}
            ),
            OnEachPrimary({"0": [scan(3)]}, {"0": [(0, [b"c"])]}),
        ],
        node_tags=("0", "1"),
    )
    assert runner.run(ScanEachPrimary(PATTERN).keys()) == [b"a", b"b", b"c"]
    runner.assert_done()


def test_a_primary_that_appears_mid_scan_starts_at_cursor_zero() -> None:
    """The runner calls make(tag) for the primaries it knows at each round; a new one
    (the cluster grew, a slot map changed) is scanned from the start."""
    s = ScanEachPrimary(PATTERN, count=10)
    program = s.round()
    step = next(program)
    assert isinstance(step, EachPrimary)
    assert step.make("0") == [scan(0, count=10)]
    with pytest.raises(StopIteration):
        program.send({"0": [(4, [b"x"])]})

    program = s.round()
    step = next(program)
    assert isinstance(step, EachPrimary)
    assert (step.make("0"), step.make("5")) == ([scan(4, count=10)], [scan(0, count=10)])
    with pytest.raises(StopIteration) as stop:
        program.send({"0": [(0, [])], "5": [(9, [b"y"])]})
    assert stop.value.value == {"0": [], "5": [b"y"]}
    assert not s.done and s.cursors == {"0": 0, "5": 9}


def test_scan_replies_parsed_or_raw() -> None:
    assert parse_scan_reply((0, [b"k"])) == (0, [b"k"])
    assert parse_scan_reply([b"17", [b"a", "b"]]) == (17, [b"a", b"b"])
    with pytest.raises(ValueError):
        ScanEachPrimary(PATTERN, count=0)


def test_scan_delete_unlinks_each_rounds_keys_in_one_step() -> None:
    core = InvalidationCore(Settings(prefix="t"), cluster=True)
    runner = ScriptedRunner(
        [
            OnEachPrimary(
                {tag: [scan(0)] for tag in NODES},
                {"0": [(5, [b"t:legacy:1"])], "1": [(0, [])], "2": [(0, [b"t:legacy:2"])]},
            ),
            Send([Call.of("UNLINK", b"t:legacy:1", b"t:legacy:2")], [2]),
            OnEachPrimary({"0": [scan(5)]}, {"0": [(0, [])]}),  # empty: no UNLINK
        ],
        node_tags=NODES,
    )

    assert runner.run(core.scan_delete(PATTERN)) == 2
    runner.assert_done()


def test_scan_delete_refuses_patterns_outside_the_prefix_or_the_whole_prefix() -> None:
    core = InvalidationCore(Settings(prefix="t"))
    for pattern in ("other:*", "t:*", "*"):
        with pytest.raises(ConfigError):
            core.scan_delete(pattern)


def test_a_scan_error_raises_the_translated_error() -> None:
    runner = ScriptedRunner(
        [OnEachPrimary({"0": [scan(0)]}, CacheUnavailableError("Redis call failed: reset"))]
    )
    with pytest.raises(CacheUnavailableError):
        runner.run(InvalidationCore(Settings(prefix="t")).scan_delete(PATTERN))
    runner.assert_done()


def test_control_state_program() -> None:
    keys = KeyScheme("t")
    hwm, tomb, live = keys.hwm("doc-1"), keys.stamp(Tag.doc("gone")), keys.stamp(Tag.doc("x"))
    gen = keys.generation("sr.kb")
    runner = ScriptedRunner(
        [
            OnEachPrimary({"0": [scan(0, "t:hwm:*")]}, {"0": [(0, [hwm.encode()])]}),
            Send([Call("MGET", (hwm.encode(),))], [[b"3:ev-9"]]),
            OnEachPrimary(
                {"0": [scan(0, "t:stamp:*")]}, {"0": [(0, [tomb.encode(), live.encode()])]}
            ),
            Send([Call("MGET", (tomb.encode(), live.encode()))], [[str(TOMBSTONE).encode(), b"7"]]),
            OnEachPrimary({"0": [scan(0, "t:gen:*")]}, {"0": [(0, [gen.encode()])]}),
            Send([Call("MGET", (gen.encode(),))], [[b"12"]]),
        ]
    )

    state = runner.run(control_state(keys))

    runner.assert_done()
    assert state == ControlState({"doc-1": "3:ev-9"}, frozenset({"gone"}), frozenset({"sr.kb"}))


# ----------------------------------------------------- the real runner, a scripted wire


def wire_scan(cursor: int, match: str = PATTERN) -> tuple[Any, ...]:
    return ("SCAN", cursor, "MATCH", match, "COUNT", 1000)


def test_sync_runner_scan_iterates_rounds_on_a_standalone_server() -> None:
    client = ScriptedClient(
        [
            Wire([wire_scan(0)], [(9, [b"t:legacy:a"])]),
            Wire([wire_scan(9)], [(0, [b"t:legacy:b"])]),
        ]
    )
    with SyncRunner(client) as runner:
        assert list(runner.scan(PATTERN)) == [("0", [b"t:legacy:a"]), ("0", [b"t:legacy:b"])]
    client.assert_done()

    client = ScriptedClient([Wire([wire_scan(0)], [(0, [b"t:legacy:z"])])])
    assert list(scan_keys(client, PATTERN)) == [b"t:legacy:z"]
    client.assert_done()


def test_invalidator_scan_delete_on_a_scripted_wire() -> None:
    client = ScriptedClient(
        [
            Wire([wire_scan(0)], [(4, [b"t:legacy:a", b"t:legacy:b"])]),
            Wire([("UNLINK", b"t:legacy:a", b"t:legacy:b")], [2]),
            Wire([wire_scan(4)], [(0, [b"t:legacy:c"])]),
            Wire([("UNLINK", b"t:legacy:c")], [1]),
        ]
    )
    invalidator = Invalidator(client, settings=Settings(prefix="t"))

    assert invalidator.scan_delete(PATTERN, confirm=False) == 3
    client.assert_done()
