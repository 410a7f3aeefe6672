"""Timing of batch operations: calibrate once, then time runs and take the median.

Callers interleave the runs of the things they compare (one run of each per round), so a
burst of background load or a frequency change hits every contender alike instead of
skewing one of them.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

BatchOp = Callable[[int], object]


@dataclass(frozen=True, slots=True)
class Throughput:
    """Vectors per second of one operation: the median of its timed runs."""

    median: float
    runs: list[float]
    calls_per_run: int
    batch: int

    @classmethod
    def of(cls, runs: list[float], calls_per_run: int, batch: int) -> Throughput:
        return cls(statistics.median(runs), runs, calls_per_run, batch)

    @property
    def spread(self) -> float:
        """(max - min) / median of the runs."""
        return (max(self.runs) - min(self.runs)) / self.median if self.median else 0.0

    @property
    def iqr(self) -> float:
        """Interquartile range / median: how stable the figure is, robust to a stray run."""
        if len(self.runs) < 2 or not self.median:
            return 0.0
        q1, _, q3 = statistics.quantiles(self.runs, n=4)
        return (q3 - q1) / self.median

    def as_dict(self) -> dict[str, object]:
        return {
            "vectors_per_s": round(self.median, 1),
            "runs_vectors_per_s": [round(r, 1) for r in self.runs],
            "spread": round(self.spread, 4),
            "iqr": round(self.iqr, 4),
            "calls_per_run": self.calls_per_run,
            "batch": self.batch,
        }


def calibrate(op: BatchOp, *, batches: int, min_run_seconds: float, min_calls: int = 2) -> int:
    """Untimed warm-up over every batch; returns the calls a run needs to last long enough."""
    start = time.perf_counter()
    for i in range(batches):
        op(i)
    per_call = (time.perf_counter() - start) / batches
    return max(min_calls, math.ceil(min_run_seconds / max(per_call, 1e-9)))


def timed_run(op: BatchOp, *, calls: int, batches: int, batch: int) -> float:
    """One timed run of ``calls`` calls (``i`` cycling over ``batches``): vectors/s.

    The garbage collector stays enabled (collecting is part of the real cost of building
    Python objects) but is emptied first so that runs start alike.
    """
    gc.collect()
    start = time.perf_counter()
    for i in range(calls):
        op(i % batches)
    return calls * batch / (time.perf_counter() - start)
