"""The loops that drive a :mod:`cachebus.commands` program: hand each step to an
executor, send the result back in, throw a user-code error into the program, close it
on a Redis error. One sync and one async loop, shared by the real runners
(:mod:`cachebus.runner`) and the scripted ones of the tests (:mod:`devtools.scripted`).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .commands import Call, EachPrimary, Invoke, Program, Sleep
from .errors import ConfigError, mark_user_code

T = TypeVar("T")


def invoke(step: Invoke) -> Any:
    """Call an :class:`Invoke` step's user code."""
    return step.fn(*step.args)


def drive(
    program: Program[T],
    execute: Callable[[list[Call]], list[Any]],
    each_primary: Callable[[Callable[[str], list[Call]]], dict[str, list[Any]]],
    sleep: Callable[[float], None],
    call: Callable[[Invoke], Any] = invoke,
) -> T:
    """The sync run loop, apart from I/O: ``execute`` answers a list step,
    ``each_primary`` an :class:`EachPrimary` step's ``make``, ``sleep`` a
    :class:`Sleep`, ``call`` an :class:`Invoke` (user code; an awaitable result is
    a :class:`ConfigError`). A user-code error, and an error from a step (Redis
    errors come translated into cachebus errors), is thrown into the program at the
    step that failed: its ``finally`` blocks run and may send cleanup steps (a
    read-through releases its leases), then the error comes out of the program and
    of ``drive``. (Closing the program instead would turn such a ``finally`` into a
    ``RuntimeError: generator ignored GeneratorExit`` that no fail-open catches.)

    :class:`SyncRunner` drives programs with it on Redis; ``devtools.scripted``
    with a script, so unit tests run this very loop."""
    try:
        step = next(program)
        while True:
            if isinstance(step, Sleep):
                sleep(step.seconds)
                reply: Any = None
            elif isinstance(step, Invoke):
                try:
                    reply = call(step)
                    if inspect.isawaitable(reply):
                        if inspect.iscoroutine(reply):
                            reply.close()  # closed, so it is not reported as never awaited
                        raise ConfigError("a sync cache was given an async callable")
                except Exception as exc:
                    # Let the program clean up (release leases), then re-raise; marked,
                    # so no fail-open takes the user's error for a Redis one.
                    mark_user_code(exc)
                    step = program.throw(exc)
                    continue
            else:
                try:
                    if isinstance(step, EachPrimary):
                        reply = each_primary(step.make)
                    else:
                        reply = execute(step)
                except Exception as exc:
                    # Thrown in like a user-code error, not closed: a program whose
                    # ``finally`` sends a cleanup step (read-through releasing its
                    # leases) gets it run, then the error comes out of the program.
                    step = program.throw(exc)
                    continue
            step = program.send(reply)
    except StopIteration as stop:
        value: T = stop.value
        return value


async def drive_async(
    program: Program[T],
    execute: Callable[[list[Call]], Awaitable[list[Any]]],
    each_primary: Callable[[Callable[[str], list[Call]]], Awaitable[dict[str, list[Any]]]],
    sleep: Callable[[float], Awaitable[None]],
    call: Callable[[Invoke], Any] = invoke,
) -> T:
    """The asyncio run loop (see :func:`drive`); an awaitable from user code is awaited."""
    try:
        step = next(program)
        while True:
            if isinstance(step, Sleep):
                await sleep(step.seconds)
                reply: Any = None
            elif isinstance(step, Invoke):
                try:
                    reply = call(step)
                    if inspect.isawaitable(reply):
                        reply = await reply
                except Exception as exc:
                    mark_user_code(exc)
                    step = program.throw(exc)
                    continue
            else:
                try:
                    if isinstance(step, EachPrimary):
                        reply = await each_primary(step.make)
                    else:
                        reply = await execute(step)
                except Exception as exc:
                    step = program.throw(exc)
                    continue
            step = program.send(reply)
    except StopIteration as stop:
        value: T = stop.value
        return value
