"""The rate-limited warning of fail-open calls: one line per interval per key, with
the count of what was suppressed (pure: an injected clock, a real logger)."""

from __future__ import annotations

import logging
import threading

import pytest

from cachebus.errors import CacheUnavailableError, PermissionDeniedError
from cachebus.ratelog import FAIL_OPEN, RateLimitedLog, fail_open


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_one_line_per_interval_with_the_suppressed_count(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    log = RateLimitedLog(logging.getLogger("cachebus.test"), interval=10, clock=clock)
    with caplog.at_level(logging.WARNING, logger="cachebus.test"):
        assert log.warning("k", "failed %s", "x") is True
        for _ in range(499):
            clock.now += 0.01
            assert log.warning("k", "failed %s", "x") is False
        assert log.suppressed("k") == 499
        clock.now = 1010.0
        assert log.warning("k", "failed %s", "y") is True
        assert log.suppressed("k") == 0
    assert lines(caplog) == ["failed x", "failed y [499 more like this in the last 10 s]"]
    assert all(r.levelno == logging.WARNING for r in caplog.records)


def test_keys_are_limited_separately(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    log = RateLimitedLog(logging.getLogger("cachebus.test"), interval=10, clock=clock)
    with caplog.at_level(logging.WARNING, logger="cachebus.test"):
        for _ in range(3):
            log.warning(("query_embeddings", "CacheUnavailableError"), "a")
            log.warning(("search_results", "CacheUnavailableError"), "b")
            log.warning(("search_results", "RedisFullError"), "c")
    assert lines(caplog) == ["a", "b", "c"]


def test_many_threads_log_once(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    """A storm of failures from 8 threads at one instant: one line."""
    log = RateLimitedLog(logging.getLogger("cachebus.test"), interval=10, clock=clock)
    barrier = threading.Barrier(8)

    def storm() -> None:
        barrier.wait()
        for _ in range(100):
            log.warning("k", "down")

    with caplog.at_level(logging.WARNING, logger="cachebus.test"):
        threads = [threading.Thread(target=storm) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert lines(caplog) == ["down"]
    assert log.suppressed("k") == 799


def test_fail_open_names_layer_operation_and_error(caplog: pytest.LogCaptureFixture) -> None:
    """The shared helper the layers and services use: one line per (layer, error type)."""
    layer = "test_layer_fail_open"
    with caplog.at_level(logging.WARNING, logger="cachebus"):
        assert fail_open(layer, "get_many", CacheUnavailableError("Redis call failed: x"))
        assert not fail_open(layer, "set_many", CacheUnavailableError("Redis call failed: y"))
        assert fail_open(layer, "get", PermissionDeniedError("NOPERM"))
    assert lines(caplog) == [
        "cachebus test_layer_fail_open get_many failed open (CacheUnavailableError): "
        "Redis call failed: x",
        "cachebus test_layer_fail_open get failed open (PermissionDeniedError): NOPERM",
    ]
    assert FAIL_OPEN.suppressed((layer, "CacheUnavailableError")) == 1


def test_forgets_old_keys_beyond_the_bound(clock: Clock) -> None:
    log = RateLimitedLog(logging.getLogger("cachebus.test"), interval=10, clock=clock)
    for i in range(5000):
        log.warning(i, "x")
    assert len(log._entries) <= 1024
