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


def _git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def describe(client: redis.Redis) -> dict[str, Any]:
    """CPU, cores, OS, Python, numpy, redis-py, redis-server and redis-benchmark versions."""
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
        "git": _git_revision(),
    }
