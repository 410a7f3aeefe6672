"""CacheBus / AsyncCacheBus lifecycle: flush(), close() and context managers publish
the layers' metrics counters, so a short-lived process does not lose them (real Redis)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
import redis

from cachebus import AsyncCacheBus, CacheBus, Settings, metrics_store
from cachebus.ratelog import FAIL_OPEN
from devtools.redis_servers import RedisServer

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = """
import numpy as np
from cachebus import CacheBus, Settings

settings = Settings(redis_url={url!r}, prefix={prefix!r})
{open}
    qe = bus.query_embeddings("m")
    qe.set("a", np.ones(4, dtype=np.float32))
    assert qe.get("a") is not None and qe.get("b") is None
"""


def run_script(url: str, prefix: str, opener: str) -> None:
    code = textwrap.dedent(SCRIPT).format(url=url, prefix=prefix, open=opener)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr


def test_short_lived_process_counters_land(redis_server, redis_client) -> None:
    """A process that exits before the flush interval (10 s): with the bus as a context
    manager its counters are in Redis; without close() they were lost."""
    prefix = f"lc{uuid.uuid4().hex[:6]}"
    run_script(redis_server.url, prefix, "with CacheBus.from_settings(settings) as bus:")
    totals = metrics_store.read(redis_client, prefix)["query_embeddings"]
    assert (totals["hits"], totals["misses"], totals["writes"]) == (1, 1, 1)

    lost = f"lc{uuid.uuid4().hex[:6]}"
    run_script(redis_server.url, lost, "if True:\n    bus = CacheBus.from_settings(settings)")
    assert metrics_store.read(redis_client, lost) == {}


def test_close_flushes_and_closes_only_its_own_client(redis_client) -> None:
    prefix = f"lc{uuid.uuid4().hex[:6]}"
    bus = CacheBus(redis_client, Settings(prefix=prefix))
    bus.search_results("kb").get("q")
    bus.close()
    bus.close()  # idempotent: nothing counted twice
    assert metrics_store.read(redis_client, prefix)["search_results"]["misses"] == 1
    assert redis_client.ping()  # the caller's client stays open
    assert bus.closed and not bus.owns_client


def test_flush_publishes_now_and_never_twice(redis_client) -> None:
    prefix = f"lc{uuid.uuid4().hex[:6]}"
    bus = CacheBus(redis_client, Settings(prefix=prefix, metrics_flush_interval=3600))
    rr = bus.rerank_scores("r")
    rr.get("q", [("d", 1)])
    assert bus.flush() == 1
    assert bus.flush() == 0  # nothing new
    rr.get("q", [("d", 1)])
    assert bus.flush() == 1
    assert metrics_store.read(redis_client, prefix)["rerank_scores"]["misses"] == 2


def test_flush_fails_open_and_sends_the_counters_later(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis down at close(): nothing raises, one warning line; the counters stay
    pending and the next successful flush sends them once."""
    prefix = f"lc{uuid.uuid4().hex[:6]}"
    with RedisServer(use_env=False) as server:
        client = server.client(socket_timeout=1.0, retry=redis.retry.Retry(
            redis.backoff.NoBackoff(), 0))
        bus = CacheBus(client, Settings(prefix=prefix, metrics_flush_interval=3600))
        qe = bus.query_embeddings("m")
        qe.set("a", np.ones(4, dtype=np.float32))
        qe.get("a")
        server.kill()
        FAIL_OPEN.reset()
        with caplog.at_level(logging.WARNING, logger="cachebus"):
            assert bus.flush() == 0
            assert bus.flush() == 0
        flush_lines = [r for r in caplog.records if "metrics flush failed open" in r.getMessage()]
        assert len(flush_lines) == 1
        server.restart()  # empty: the counters were never written
        assert bus.flush() == 1
        assert bus.flush() == 0
        totals = metrics_store.read(client, prefix)["query_embeddings"]
        assert (totals["writes"], totals["hits"]) == (1, 1)
        client.close()


def test_strict_settings_raise_from_flush() -> None:
    with RedisServer(use_env=False) as server:
        client = server.client(socket_timeout=1.0)
        bus = CacheBus(client, Settings(prefix="lcs", strict=True))
        bus.query_embeddings("m").get("x")
        server.kill()
        with pytest.raises(Exception, match="Redis"):
            bus.flush()
        client.close()


async def test_async_context_manager_flushes_and_closes(redis_server, redis_client) -> None:
    prefix = f"lc{uuid.uuid4().hex[:6]}"
    settings = Settings(redis_url=redis_server.url, prefix=prefix)
    async with await AsyncCacheBus.from_settings(settings) as bus:
        await bus.search_results("kb").get("q")
        await bus.document_embeddings("m").get("d", "c")
    assert bus.closed and bus.owns_client
    totals = metrics_store.read(redis_client, prefix)
    assert totals["search_results"]["misses"] == 1
    assert totals["document_embeddings"]["misses"] == 1
