"""Client-side helpers for the local broker (aiokafka): wait for it, create topics, from sync
code even inside a running event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from worker.kafka import acreate_topics

_T = TypeVar("_T")


# --------------------------------------------------------------------------------------------
# Client-side helpers (aiokafka)
# --------------------------------------------------------------------------------------------


def _run_sync(factory: Callable[[], Awaitable[_T]]) -> _T:
    """Run a coroutine to completion from sync code, even when an event loop is running.

    A sync helper called from an async test would break ``asyncio.run``; a private thread with
    its own loop works in both cases.
    """

    async def runner() -> _T:
        return await factory()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(runner())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, runner()).result()


async def _probe_metadata(bootstrap: str, timeout_s: float) -> list[Any]:
    """One metadata round trip; returns the broker list the cluster reports."""
    from aiokafka.admin import AIOKafkaAdminClient

    ms = max(int(timeout_s * 1000), 500)
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=ms, retry_backoff_ms=100
    )
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        cluster = await asyncio.wait_for(admin.describe_cluster(), timeout_s)
    finally:
        await admin.close()
    brokers = cluster.get("brokers") or []
    return list(brokers)


async def _wait_ready_async(
    bootstrap: str,
    timeout: float,
    alive: Callable[[], str | None] | None,
) -> None:
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        if alive is not None:
            reason = alive()
            if reason is not None:
                raise RuntimeError(reason)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        # Cheap TCP check first: aiokafka logs every refused connection at ERROR level.
        if not _tcp_open(bootstrap):
            last_error = ConnectionError(f"nothing accepts TCP connections at {bootstrap}")
            await asyncio.sleep(0.2)
            continue
        try:
            if await _probe_metadata(bootstrap, min(5.0, max(remaining, 0.5))):
                return
            last_error = RuntimeError("metadata lists no brokers yet")
        except Exception as exc:  # any failure just means "not ready yet"
            last_error = exc
        await asyncio.sleep(0.2)
    raise TimeoutError(
        f"Kafka at {bootstrap} not ready after {timeout:.0f}s (last error: {last_error!r})"
    )


def _tcp_open(bootstrap: str) -> bool:
    # Only the first address matters here: it is the one clients bootstrap from.
    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=1.0):
            return True
    except (OSError, ValueError):
        return False


def wait_for_kafka(bootstrap: str, timeout: float = 90.0) -> None:
    """Block until a metadata request to ``bootstrap`` succeeds and lists at least one broker.

    Raises:
        TimeoutError: the broker did not answer in time.
    """
    _run_sync(lambda: _wait_ready_async(bootstrap, timeout, None))


def create_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    replication: int = 1,
    timeout: float = 30.0,
) -> None:
    """Sync wrapper of :func:`acreate_topics`; safe to call from inside a running event loop."""
    _run_sync(lambda: acreate_topics(bootstrap, topics, replication, timeout))
