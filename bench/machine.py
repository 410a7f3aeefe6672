"""Describe the machine and software versions a report was measured with."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import redis

import cachebus

from .ceiling import benchmark_version


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Hardware", "Processor"):
                return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_revision(repo: Path | None = None) -> str:
    """``<short sha>`` of ``repo`` (default: the working directory), ``+dirty`` when
    tracked files changed; ``unknown`` without git."""
    where = ["-C", str(repo)] if repo is not None else []
    try:
        rev = subprocess.run(
            ["git", *where, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", *where, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


class BusyMeter:
    """Share of the machine's CPU time that was busy (any process) since ``start()``."""

    def __init__(self) -> None:
        self._start = self._read()

    @staticmethod
    def _read() -> tuple[int, int]:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        except (OSError, ValueError):
            return (0, 0)
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle

    def busy(self) -> float:
        total, idle = self._read()
        d_total, d_idle = total - self._start[0], idle - self._start[1]
        return round(1 - d_idle / d_total, 3) if d_total > 0 else 0.0


def _version(module: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return None


def describe(client: redis.Redis) -> dict[str, Any]:
    """CPU, cores, memory, OS, Python, numpy, redis-py, redis-server, redis-benchmark and
    peer library versions, and the load average."""
    info: dict[str, Any] = client.info("server")
    memory: dict[str, Any] = client.info("memory")
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "numpy": np.__version__,
        "redis_py": redis.__version__,
        "redis_server": str(info.get("redis_version")),
        "redis_allocator": str(memory.get("mem_allocator")),
        "redis_benchmark": benchmark_version(),
        "cachebus": cachebus.__version__,
        "git": git_revision(),
        "memory_gib": memory_gib(),
        "redisvl": _version("redisvl"),
        "sentence_transformers": _version("sentence-transformers"),
        "aiokafka": _version("aiokafka"),
        "faust_streaming": _version("faust-streaming"),
        "loadavg_start": loadavg(),
    }
