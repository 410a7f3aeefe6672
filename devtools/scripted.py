"""Run cachebus programs without Redis, against a script.

cachebus writes its cache logic once as sans-IO programs (:mod:`cachebus.commands`):
generators that yield what they need done and receive the results. In the spirit of
httpx's ``MockTransport`` and h11's in-memory connection pairs, this module drives
them against a **script**: the test states, in order, every step it expects the
program to yield and the reply Redis would give. A step that differs from the script
fails the test at once, naming the step; a script not used up is reported by
:meth:`ScriptedRunner.assert_done`. Nothing here imitates Redis' semantics: the
replies are what the test says they are, so a test reads as the exchange it checks.

Two levels:

* :class:`ScriptedRunner` / :class:`AsyncScriptedRunner` answer **steps** (a list of
  :class:`~cachebus.commands.Call` s, an ``EachPrimary``, a ``Sleep``, an ``Invoke``).
  They drive the program with :func:`cachebus.runner.drive` / ``drive_async``, the
  very loops the real runners use, so what happens on a Redis error (the program is
  closed and the error raised) or a user-code error (thrown into the program) is the
  production behaviour.
* :class:`ScriptedClient` / :class:`AsyncScriptedClient` are ``redis.Redis`` /
  ``redis.asyncio.Redis`` objects whose **wire** is a script: each round trip (one
  command, or one pipeline) must be the expected one. Handed to the real
  :class:`~cachebus.runner.SyncRunner` / ``AsyncRunner``, they test what the runners
  do below the step level, e.g. recovery from ``NOSCRIPT`` (load the script, resend).
  No socket is ever opened.

Arguments that vary from run to run (a lease token, a fresh random epoch) are matched
with :data:`ANY`.
"""

from __future__ import annotations

import asyncio
import pprint
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar
from unittest import mock

import redis
import redis.asyncio
from redis.exceptions import RedisError

from cachebus.commands import STANDALONE_NODE_TAG, Call, Invoke, Program
from cachebus.runner import check_each, drive, drive_async, translate

T = TypeVar("T")

ANY: Any = mock.ANY
"""Equal to anything: for arguments a test cannot predict (tokens, random epochs)."""


# --------------------------------------------------------------------------- steps


@dataclass(frozen=True)
class Send:
    """A list step: the program must yield exactly ``calls``, and receives ``replies``
    (one per call), or ``replies`` is an exception raised as the runner would raise
    it (a ``redis.exceptions.RedisError`` is translated into the cachebus error the
    real runner raises, e.g. ``CacheUnavailableError``)."""

    calls: Sequence[Call]
    replies: Sequence[Any] | BaseException


@dataclass(frozen=True)
class OnEachPrimary:
    """An ``EachPrimary`` step. The runner calls ``make(node_tag)`` for each of its
    node tags, like the real runner does for each primary; ``calls`` says what each
    must return (a tag left out: no command), ``replies`` what each primary answers
    (a tag left out: ``[]``), or an exception raised as the runner would."""

    calls: Mapping[str, Sequence[Call]]
    replies: Mapping[str, Sequence[Any]] | BaseException = field(default_factory=dict)


@dataclass(frozen=True)
class Slept:
    """A ``Sleep`` step (not slept: the script moves on at once); ``seconds=None``
    accepts any duration."""

    seconds: float | None = None


@dataclass(frozen=True)
class Invoked:
    """An ``Invoke`` step: the program calls user code here (the test's own function,
    called for real). ``args``, if given, must be the arguments it is called with."""

    args: tuple[Any, ...] | None = None


Expected = Send | OnEachPrimary | Slept | Invoked


class ScriptMismatch(AssertionError):
    """The program did something other than the script says."""


def _show(value: Any) -> str:
    return pprint.pformat(value, width=96, compact=True)


class _Script:
    """The expected steps, consumed in order, and what the program did."""

    def __init__(self, steps: Iterable[Any]) -> None:
        self.steps: list[Any] = list(steps)
        self.position = 0
        self.transcript: list[Any] = []
        """Every step the program yielded, in order (for debugging a test)."""
        self.failed: ScriptMismatch | None = None

    def expect(self, kind: type[Any], got: Any) -> Any:
        self.transcript.append(got)
        if self.failed is not None:
            # The run loop throws a failure into the program, whose cleanup (a
            # ``finally`` releasing leases) may yield more steps: report the first.
            raise self.failed
        number = self.position + 1
        if self.position >= len(self.steps):
            raise self.fail(
                f"step {number}: the script has ended, but the program yielded\n{_show(got)}"
            )
        expected = self.steps[self.position]
        if not isinstance(expected, kind):
            raise self.fail(
                f"step {number}: the script expects\n{_show(expected)}\n"
                f"but the program yielded\n{_show(got)}"
            )
        self.position += 1
        return expected

    def fail(self, message: str) -> ScriptMismatch:
        """The mismatch to raise (remembered: later steps raise it again)."""
        self.failed = ScriptMismatch(message)
        return self.failed

    def mismatch(
        self, what: str, expected: Any, got: Any, actor: str = "the program yielded"
    ) -> ScriptMismatch:
        return self.fail(
            f"step {self.position}: {what}: the script expects\n{_show(expected)}\n"
            f"but {actor}\n{_show(got)}"
        )

    def assert_done(self) -> None:
        if self.position != len(self.steps):
            left = self.steps[self.position :]
            raise ScriptMismatch(
                f"the program stopped after {self.position} steps; the script still "
                f"expects\n{_show(left)}"
            )


def _raise(error: BaseException) -> NoReturn:
    if isinstance(error, RedisError):
        raise translate(error) from error
    raise error


class _Steps:
    """What both scripted runners share: checking steps and choosing replies."""

    def __init__(self, script: Iterable[Expected], node_tags: Sequence[str]) -> None:
        self.script = _Script(script)
        self.node_tags = tuple(node_tags)

    @property
    def transcript(self) -> list[Any]:
        return self.script.transcript

    def assert_done(self) -> None:
        """Fail unless every scripted step was used."""
        self.script.assert_done()

    def primary_address(self, node_tag: str) -> str:
        return f"scripted-primary-{node_tag}"

    def _execute(self, calls: list[Call]) -> list[Any]:
        expected: Send = self.script.expect(Send, list(calls))
        if list(expected.calls) != list(calls):
            raise self.script.mismatch("commands", list(expected.calls), list(calls))
        if isinstance(expected.replies, BaseException):
            _raise(expected.replies)
        replies = list(expected.replies)
        if len(replies) != len(calls):
            raise self.script.fail(
                f"step {self.script.position}: the script gives {len(replies)} replies "
                f"to {len(calls)} commands"
            )
        return replies

    def _each_primary(self, make: Any) -> dict[str, list[Any]]:
        got = {tag: check_each(list(make(tag))) for tag in self.node_tags}
        expected: OnEachPrimary = self.script.expect(OnEachPrimary, got)
        want = {tag: list(expected.calls.get(tag, ())) for tag in self.node_tags}
        unknown = set(expected.calls) - set(self.node_tags)
        if want != got or unknown:
            raise self.script.mismatch("commands per node tag", dict(expected.calls), got)
        if isinstance(expected.replies, BaseException):
            _raise(expected.replies)
        return {tag: list(expected.replies.get(tag, ())) for tag in self.node_tags}

    def _sleep(self, seconds: float) -> None:
        expected: Slept = self.script.expect(Slept, Slept(seconds))
        if expected.seconds is not None and expected.seconds != seconds:
            raise self.script.mismatch("sleep", expected, Slept(seconds))

    def _invoke(self, step: Invoke) -> Any:
        expected: Invoked = self.script.expect(Invoked, Invoked(step.args))
        if expected.args is not None and tuple(expected.args) != tuple(step.args):
            raise self.script.mismatch("invoke arguments", expected.args, step.args)
        return step.fn(*step.args)


class ScriptedRunner(_Steps):
    """Runs programs like :class:`cachebus.runner.SyncRunner`, answering every step
    from the script instead of Redis.

    ``node_tags``: the primaries an ``EachPrimary`` step reaches (default: a standalone
    server, ``("0",)``). For example::

        runner = ScriptedRunner([Send([Call.of("GET", "k")], [b"v"])])
        assert runner.run(program) == ...
        runner.assert_done()
    """

    def __init__(
        self, script: Iterable[Expected], *, node_tags: Sequence[str] = (STANDALONE_NODE_TAG,)
    ) -> None:
        super().__init__(script, node_tags)

    def run(self, program: Program[T]) -> T:
        return drive(program, self.execute, self.each_primary, self._sleep, self._invoke)

    def execute(self, calls: list[Call]) -> list[Any]:
        return self._execute(calls)

    def each_primary(self, make: Any) -> dict[str, list[Any]]:
        return self._each_primary(make)


class AsyncScriptedRunner(_Steps):
    """The asyncio twin of :class:`ScriptedRunner` (:func:`cachebus.runner.drive_async`:
    an awaitable returned by user code is awaited)."""

    def __init__(
        self, script: Iterable[Expected], *, node_tags: Sequence[str] = (STANDALONE_NODE_TAG,)
    ) -> None:
        super().__init__(script, node_tags)

    async def run(self, program: Program[T]) -> T:
        return await drive_async(
            program, self.execute, self.each_primary, self._asleep, self._invoke
        )

    async def execute(self, calls: list[Call]) -> list[Any]:
        await asyncio.sleep(0)  # a real await point, as on a socket
        return self._execute(calls)

    async def each_primary(self, make: Any) -> dict[str, list[Any]]:
        await asyncio.sleep(0)
        return self._each_primary(make)

    async def _asleep(self, seconds: float) -> None:
        self._sleep(seconds)


# --------------------------------------------------------------------------- the wire


@dataclass(frozen=True)
class Wire:
    """One round trip on a scripted client: the commands (each a tuple of its
    arguments, e.g. ``("EVALSHA", sha, 1, "k")``), and the replies. A single command
    sent alone (``execute_command``) raises its reply if it is an exception; in a
    pipeline errors come back in the reply list (``raise_on_error=False``), as
    redis-py does."""

    commands: Sequence[tuple[Any, ...]]
    replies: Sequence[Any]


class _WireScript:
    def __init__(self, script: Iterable[Wire]) -> None:
        self.script = _Script(script)

    def round_trip(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        expected: Wire = self.script.expect(Wire, commands)
        want = [tuple(c) for c in expected.commands]
        if want != commands:
            raise self.script.mismatch("round trip", want, commands, "the client was sent")
        if len(expected.replies) != len(commands):
            raise self.script.fail(
                f"round trip {self.script.position}: the script gives "
                f"{len(expected.replies)} replies to {len(commands)} commands"
            )
        return list(expected.replies)

    def single(self, args: tuple[Any, ...]) -> Any:
        (reply,) = self.round_trip([args])
        if isinstance(reply, BaseException):
            raise reply
        return reply


def _pipeline_result(replies: list[Any], raise_on_error: bool) -> list[Any]:
    if raise_on_error:
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
    return replies


class _Pipeline:
    def __init__(self, wire: _WireScript) -> None:
        self._wire = wire
        self._commands: list[tuple[Any, ...]] = []

    def execute_command(self, *args: Any, **options: Any) -> _Pipeline:
        self._commands.append(args)
        return self

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        commands, self._commands = self._commands, []
        return _pipeline_result(self._wire.round_trip(commands), raise_on_error)


class _AsyncPipeline(_Pipeline):
    async def execute(self, raise_on_error: bool = True) -> list[Any]:  # type: ignore[override]
        await asyncio.sleep(0)
        return super().execute(raise_on_error)


class ScriptedClient(redis.Redis):
    """A ``redis.Redis`` whose wire is a script of :class:`Wire` round trips (a
    command sent alone, or a pipeline). For the real :class:`~cachebus.runner.SyncRunner`
    (it passes the runner's client checks: binary replies); never connects."""

    def __init__(self, script: Iterable[Wire]) -> None:
        super().__init__()  # a lazy pool: nothing connects until a command is sent
        self.wire = _WireScript(script)

    def execute_command(self, *args: Any, **options: Any) -> Any:
        return self.wire.single(args)

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        return _Pipeline(self.wire)

    def assert_done(self) -> None:
        self.wire.script.assert_done()


class AsyncScriptedClient(redis.asyncio.Redis):
    """The ``redis.asyncio.Redis`` twin of :class:`ScriptedClient`."""

    def __init__(self, script: Iterable[Wire]) -> None:
        super().__init__()
        self.wire = _WireScript(script)

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        await asyncio.sleep(0)
        return self.wire.single(args)

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        return _AsyncPipeline(self.wire)

    def assert_done(self) -> None:
        self.wire.script.assert_done()
