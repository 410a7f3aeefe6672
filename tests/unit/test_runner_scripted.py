"""The runners without Redis: their pure helpers (cluster split and regroup, NOSCRIPT
detection), the run loop they share with the scripted runner (``drive``), and what
they do below the step level, on a scripted wire.

The wire tests hand the real ``SyncRunner`` / ``AsyncRunner`` a ``redis.Redis`` /
``redis.asyncio.Redis`` whose ``execute_command`` and ``pipeline`` answer from a
script (devtools.scripted.ScriptedClient): what is checked is the exact commands the
runner sends in each round trip. This is a unit test of the runner's logic, not of
redis-py's protocol handling or of a server; the integration suite covers those.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from cachebus.commands import Call, EachPrimary, Invoke, Program, Script
from cachebus.errors import CacheUnavailableError, ConfigError, PermissionDeniedError
from cachebus.runner import AsyncRunner, SyncRunner, missing_scripts, regroup, split_per_key
from devtools.scripted import (
    AsyncScriptedClient,
    AsyncScriptedRunner,
    Invoked,
    OnEachPrimary,
    ScriptedClient,
    ScriptedRunner,
    ScriptMismatch,
    Send,
    Wire,
)

ECHO = Script("return ARGV[1] -- test_runner_scripted")
NOSCRIPT = "NOSCRIPT No matching script. Please use EVAL."


# ------------------------------------------------------------ cluster split and regroup


def test_split_per_key_on_a_cluster() -> None:
    calls = [
        Call.of("MGET", "a", "b", "c"),
        Call.of("SET", "k", b"v"),
        Call.of("UNLINK", "x", "y"),
        Call.of("MGET", "only"),  # one key: sent as it is
        ECHO.call(1, "k", "arg"),
    ]
    flat, sizes = split_per_key(calls, cluster=True)
    assert flat == [
        Call.of("GET", "a"),
        Call.of("GET", "b"),
        Call.of("GET", "c"),
        Call.of("SET", "k", b"v"),
        Call.of("UNLINK", "x"),
        Call.of("UNLINK", "y"),
        Call.of("MGET", "only"),
        ECHO.call(1, "k", "arg"),
    ]
    assert sizes == [3, -1, 2, -1, -1]
    replies = [b"1", None, b"3", True, 1, 0, [b"o"], b"arg"]
    assert regroup(calls, replies, sizes) == [[b"1", None, b"3"], True, 1, [b"o"], b"arg"]


def test_split_per_key_leaves_a_standalone_server_alone() -> None:
    calls = [Call.of("MGET", "a", "b"), Call.of("UNLINK", "x", "y")]
    assert split_per_key(calls, cluster=False) == (calls, [])
    assert regroup(calls, [[b"1", b"2"], 2], []) == [[b"1", b"2"], 2]


def test_missing_scripts_are_evalsha_calls_answered_noscript() -> None:
    calls = [ECHO.call(0, "a"), Call.of("GET", "k"), ECHO.call(0, "b")]
    replies = [NoScriptError(NOSCRIPT), NoScriptError("not a script call"), b"b"]
    assert missing_scripts(calls, replies) == [0]


# ------------------------------------------------------------ NOSCRIPT recovery, wire


def test_noscript_on_a_single_call_loads_the_script_and_resends() -> None:
    client = ScriptedClient(
        [
            Wire([("EVALSHA", ECHO.sha, 0, "hi")], [NoScriptError(NOSCRIPT)]),
            Wire([("SCRIPT LOAD", ECHO.source)], [ECHO.sha]),
            Wire([("EVALSHA", ECHO.sha, 0, "hi")], [b"hi"]),
        ]
    )
    assert SyncRunner(client).execute([ECHO.call(0, "hi")]) == [b"hi"]
    client.assert_done()


def test_noscript_in_a_pipeline_resends_only_the_missing_scripts() -> None:
    client = ScriptedClient(
        [
            Wire(
                [("GET", "k"), ("EVALSHA", ECHO.sha, 0, "x"), ("EVALSHA", ECHO.sha, 0, "y")],
                [b"v", NoScriptError(NOSCRIPT), NoScriptError(NOSCRIPT)],
            ),
            Wire([("SCRIPT LOAD", ECHO.source)], [ECHO.sha]),
            Wire([("SCRIPT LOAD", ECHO.source)], [ECHO.sha]),
            Wire([("EVALSHA", ECHO.sha, 0, "x"), ("EVALSHA", ECHO.sha, 0, "y")], [b"x", b"y"]),
        ]
    )
    calls = [Call.of("GET", "k"), ECHO.call(0, "x"), ECHO.call(0, "y")]
    assert SyncRunner(client).execute(calls) == [b"v", b"x", b"y"]
    client.assert_done()


async def test_async_runner_recovers_from_noscript_too() -> None:
    client = AsyncScriptedClient(
        [
            Wire([("GET", "k"), ("EVALSHA", ECHO.sha, 0, "x")], [None, NoScriptError(NOSCRIPT)]),
            Wire([("SCRIPT LOAD", ECHO.source)], [ECHO.sha]),
            Wire([("EVALSHA", ECHO.sha, 0, "x")], [b"x"]),
            Wire([("EVALSHA", ECHO.sha, 0, "z")], [NoScriptError(NOSCRIPT)]),
            Wire([("SCRIPT LOAD", ECHO.source)], [ECHO.sha]),
            Wire([("EVALSHA", ECHO.sha, 0, "z")], [b"z"]),
        ]
    )
    runner = AsyncRunner(client)
    assert await runner.execute([Call.of("GET", "k"), ECHO.call(0, "x")]) == [None, b"x"]
    assert await runner.execute([ECHO.call(0, "z")]) == [b"z"]
    client.assert_done()


def test_an_error_reply_in_a_pipeline_raises_translated() -> None:
    client = ScriptedClient(
        [
            Wire(
                [("GET", "a"), ("SET", "b", b"1")],
                [b"1", ResponseError("NOPERM this user has no permissions to run 'set'")],
            )
        ]
    )
    with pytest.raises(PermissionDeniedError):
        SyncRunner(client).execute([Call.of("GET", "a"), Call.of("SET", "b", b"1")])
    client.assert_done()


def test_each_primary_on_a_standalone_server_is_one_pipeline_and_refuses_scripts() -> None:
    client = ScriptedClient([Wire([("INCR", "t:witness:{0}"), ("WAIT", 1, 100)], [5, 1])])
    runner = SyncRunner(client)

    def make(tag: str) -> list[Call]:
        return [Call.of("INCR", f"t:witness:{{{tag}}}"), Call.of("WAIT", 1, 100)]

    assert runner.each_primary(make) == {"0": [5, 1]}
    client.assert_done()
    with pytest.raises(ConfigError, match="cannot call scripts"):
        runner.each_primary(lambda tag: [ECHO.call(0, "x")])


# ------------------------------------------------------------ the run loop (drive)


def test_user_code_errors_are_thrown_into_the_program() -> None:
    seen: list[str] = []

    def program() -> Program[str]:
        try:
            yield Invoke(lambda: 1 / 0)
        except ZeroDivisionError:
            seen.append("caught")
        (reply,) = yield [Call.of("GET", "k")]
        return str(reply)

    runner = ScriptedRunner([Invoked(), Send([Call.of("GET", "k")], [b"v"])])
    assert runner.run(program()) == "b'v'"
    assert seen == ["caught"]
    runner.assert_done()


def test_a_sync_runner_refuses_async_user_code() -> None:
    async def compute() -> int:
        return 1

    def program() -> Program[Any]:
        return (yield Invoke(compute))

    runner = ScriptedRunner([Invoked()])
    with pytest.raises(ConfigError, match="async callable"):
        runner.run(program())  # the coroutine is closed: no "never awaited" warning
    runner.assert_done()


async def test_the_async_loop_awaits_user_code_and_answers_each_primary() -> None:
    async def compute(x: int) -> int:
        return x * 2

    def program() -> Generator[Any, Any, tuple[int, dict[str, list[Any]]]]:
        doubled = yield Invoke(compute, (21,))
        replies = yield EachPrimary(lambda tag: [Call.of("GET", f"k{{{tag}}}")])
        return doubled, replies

    runner = AsyncScriptedRunner(
        [
            Invoked((21,)),
            OnEachPrimary(
                {"0": [Call.of("GET", "k{0}")], "7": [Call.of("GET", "k{7}")]},
                {"0": [b"a"], "7": [b"b"]},
            ),
        ],
        node_tags=("0", "7"),
    )
    assert await runner.run(program()) == (42, {"0": [b"a"], "7": [b"b"]})
    runner.assert_done()


def test_a_step_error_is_thrown_into_the_program_whose_cleanup_still_runs() -> None:
    """Like read-through's lease release: a ``finally`` that sends a step. A Redis
    error comes out translated; any other error as it is."""

    def program() -> Program[None]:
        try:
            yield [Call.of("SET", "k", b"v")]
        finally:
            yield [Call.of("DEL", "lease")]

    runner = ScriptedRunner(
        [
            Send([Call.of("SET", "k", b"v")], RedisConnectionError("reset")),
            Send([Call.of("DEL", "lease")], [1]),
        ]
    )
    with pytest.raises(CacheUnavailableError, match="reset"):
        runner.run(program())
    runner.assert_done()

    runner = ScriptedRunner(
        [
            Send([Call.of("SET", "k", b"v")], KeyError("a bug below the step")),
            Send([Call.of("DEL", "lease")], [1]),
        ]
    )
    with pytest.raises(KeyError):
        runner.run(program())
    runner.assert_done()


# ------------------------------------------------------------ the scripted runner itself


def test_a_step_other_than_scripted_fails_naming_the_step() -> None:
    def program() -> Program[None]:
        try:
            yield [Call.of("GET", "a")]
            yield [Call.of("GET", "b")]
        finally:
            yield [Call.of("DEL", "cleanup")]

    runner = ScriptedRunner(
        [Send([Call.of("GET", "a")], [None]), Send([Call.of("GET", "c")], [None])]
    )
    # The first mismatch is what is reported, not what the cleanup yields after it.
    with pytest.raises(ScriptMismatch, match="step 2: commands") as raised:
        runner.run(program())
    assert "GET', args=('b',)" in str(raised.value)

    runner = ScriptedRunner(
        [
            Send([Call.of("GET", "a")], [None]),
            Send([Call.of("GET", "b")], [None]),
            Send([Call.of("DEL", "cleanup")], [1]),
            Send([Call.of("GET", "never")], [None]),
        ]
    )
    runner.run(program())
    with pytest.raises(ScriptMismatch, match="stopped after 3 steps; the script still expects"):
        runner.assert_done()
