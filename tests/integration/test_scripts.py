"""scripts/redis-server.sh and scripts/kafka.sh print `export CACHEBUS_...=...` lines that
the CLI's settings read as they are (real redis-server and Kafka broker)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parents[2]
READ_SETTINGS = (
    "from worker.settings import WorkerSettings; s = WorkerSettings.from_env(); "
    "print(s.redis_url); print(s.kafka_bootstrap)"
)


def first_line_then_stop(
    script: str, timeout: float, check: Callable[[str], None] = lambda line: None
) -> str:
    """Run ``script``, ``check`` its first stdout line while it runs, SIGTERM it, check
    that it exits 0; return the line."""
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}
    env.pop("CACHEBUS_TEST_REDIS_URL", None)
    env.pop("CACHEBUS_KAFKA_BOOTSTRAP", None)
    proc = subprocess.Popen(
        ["bash", str(ROOT / "scripts" / script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        check(line)
        proc.send_signal(signal.SIGTERM)  # the exec'd server itself gets it
        _out, err = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, err
        return line
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def settings_after(line: str) -> list[str]:
    """What WorkerSettings.from_env() reads in a shell that ran ``line``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHEBUS_")}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        ["bash", "-c", f'{line}\n"$0" -c "$1"', sys.executable, READ_SETTINGS],
        capture_output=True, text=True, env=env, timeout=60, check=True,
    )
    return done.stdout.split()


def ping(line: str) -> None:
    client = redis.Redis.from_url(line.rpartition("=")[2], socket_timeout=5)
    try:
        assert client.ping()
    finally:
        client.close()


def test_redis_server_script_prints_an_export_the_cli_reads() -> None:
    line = first_line_then_stop("redis-server.sh", timeout=30, check=ping)
    assert line.startswith("export CACHEBUS_REDIS_URL=redis://127.0.0.1:"), line
    url = line.removeprefix("export CACHEBUS_REDIS_URL=")
    assert settings_after(line)[0] == url


@pytest.mark.kafka
def test_kafka_script_prints_an_export_the_cli_reads() -> None:
    line = first_line_then_stop("kafka.sh", timeout=120)
    assert line.startswith("export CACHEBUS_KAFKA_BOOTSTRAP=127.0.0.1:"), line
    bootstrap = line.removeprefix("export CACHEBUS_KAFKA_BOOTSTRAP=")
    assert settings_after(line)[1] == bootstrap
