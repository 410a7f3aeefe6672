"""Command packing of the asyncio clients cachebus builds: hiredis, byte for byte what
redis-py's own packer sends (no server needed: packing is pure)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from cachebus.connection import _connection_class, _FastConnection

ARG = (
    st.binary(max_size=64)
    | st.text(max_size=16)
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
)


def packed(connection: Any, *args: Any) -> bytes:
    return b"".join(bytes(part) for part in connection.pack_command(*args))


@given(st.sampled_from(["GET", "EVALSHA", "SET", b"MGET"]), st.lists(ARG, max_size=40))
def test_same_bytes_as_redis_py(name: Any, args: list[Any]) -> None:
    ours, theirs = _FastConnection(), Connection()
    assert packed(ours, name, *args) == packed(theirs, name, *args)


def test_large_commands_and_values() -> None:
    ours, theirs = _FastConnection(), Connection()
    args = ["EVALSHA", "f" * 40, 3000, *[f"cb:hwm:{{d.doc-{i}}}" for i in range(3000)]]
    assert packed(ours, *args) == packed(theirs, *args)
    big = b"\x00" * 200_000
    assert packed(ours, "SET", "k", big) == packed(theirs, "SET", "k", big)


def test_unusual_commands_take_redis_py_path() -> None:
    """A command name with a space is split by redis-py; refused types raise its error."""
    ours, theirs = _FastConnection(), Connection()
    assert packed(ours, "CONFIG GET", "maxmemory") == packed(theirs, "CONFIG GET", "maxmemory")
    for bad in (True, None, object()):
        with pytest.raises(DataError):
            ours.pack_command("SET", "k", bad)


def test_connection_class_by_scheme() -> None:
    assert _connection_class("redis://h:1/0").__name__ == "_FastConnection"
    assert _connection_class("rediss://h:1/0").__name__ == "_FastSSLConnection"
    assert _connection_class("unix:///tmp/r.sock").__name__ == "_FastUnixConnection"
