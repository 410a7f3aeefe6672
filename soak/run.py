"""The soak run: ``python -m soak.run [--minutes 10] [--rate 500]`` (``make soak``).

A whole deployment on loopback (redis-server, a Kafka broker, two worker
processes in one group over six partitions), a producer at a steady rate over
many documents (created / updated / deleted / re-created, versions only go
up), and a fault every ``--fault-every`` seconds, in rotation:

1. worker SIGKILL, then a replacement is started (a crash);
2. Redis suspended (SIGSTOP) for 3 s, past the worker's 0.5 s call timeout;
3. worker SIGTERM, then a replacement is started (a deploy).

The worker faults always hit the second worker, so the first one lives through
the whole run: its resident memory over time is the leak detector (sampled
every ``--sample-every`` seconds from /proc, growth per hour = least-squares
slope after a warm-up). At the end the producer stops, the run waits until
every event has an ``applied`` audit and the group has committed everything,
and checks every document's high-water mark against its last event.

Exit status: 0 when nothing was lost (every event applied and audited, marks
right, per-document order kept), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from devtools.audit_check import AuditChecker, check_marks, collect_audits
from devtools.fault_report import cpu_seconds, rss_kb
from devtools.redis_servers import RedisServer
from devtools.stack import LocalStack, WorkerProcess
from devtools.traffic import DocumentTraffic, SteadyProducer
from worker.settings import WorkerSettings

FAULTS = ("worker SIGKILL + restart", "Redis suspended 3 s", "worker SIGTERM + restart")


@dataclass
class Sample:
    t: float
    """Seconds since the producer started."""
    rss_kb: dict[str, int]
    """Worker (name@pid) -> VmRSS in KiB."""
    cpu_s: dict[str, float]
    """Worker (name@pid) -> CPU seconds used so far."""
    published: int
    audited: int


@dataclass
class Fault:
    t: float
    kind: str
    lasted_s: float
    detail: str = ""
    wall: float = 0.0
    """Wall-clock start (to attribute re-delivered audits to the fault before them)."""
    duplicated_audits: int = 0


@dataclass
class ProcessMemory:
    worker: str
    lifetime_s: float
    samples: int
    start_mb: float
    end_mb: float
    max_mb: float
    growth_mb_per_h: float | None
    cpu_percent: float | None
    """Average CPU use over the process's sampled lifetime (100 = one core)."""


@dataclass
class Report:
    minutes: float
    rate: float
    docs: int
    duration_s: float = 0.0
    events: int = 0
    achieved_rate: float = 0.0
    audits: int = 0
    duplicated_audits: int = 0
    duplicated_before_faults: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    unaudited: int = 0
    order_violations: int = 0
    mark_mismatches: int = 0
    drain_s: float = 0.0
    max_backlog: int = 0
    faults: list[Fault] = field(default_factory=list)
    memory: list[ProcessMemory] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.lost or self.unaudited or self.order_violations or self.mark_mismatches
            or self.problems
        )


def _slope_per_hour(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, per hour."""
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    var = sum((p[0] - mx) ** 2 for p in points)
    if var == 0:
        return None
    cov = sum((p[0] - mx) * (p[1] - my) for p in points)
    return cov / var * 3600


def memory_summary(samples: Sequence[Sample], warmup_s: float) -> list[ProcessMemory]:
    series: dict[str, list[tuple[float, int]]] = {}
    cpu: dict[str, list[tuple[float, float]]] = {}
    for sample in samples:
        for name, kb in sample.rss_kb.items():
            series.setdefault(name, []).append((sample.t, kb))
        for name, seconds in sample.cpu_s.items():
            cpu.setdefault(name, []).append((sample.t, seconds))
    out = []
    for name, points in series.items():
        born = points[0][0]
        steady = [(t, kb / 1024) for t, kb in points if t - born >= warmup_s]
        slope = _slope_per_hour(steady)
        ticks = cpu.get(name, [])
        busy = None
        if len(ticks) >= 2 and ticks[-1][0] > ticks[0][0]:
            busy = round(100 * (ticks[-1][1] - ticks[0][1]) / (ticks[-1][0] - ticks[0][0]), 1)
        out.append(
            ProcessMemory(
                worker=name,
                lifetime_s=round(points[-1][0] - born, 1),
                samples=len(points),
                start_mb=round(points[0][1] / 1024, 1),
                end_mb=round(points[-1][1] / 1024, 1),
                max_mb=round(max(kb for _, kb in points) / 1024, 1),
                growth_mb_per_h=None if slope is None else round(slope, 1),
                cpu_percent=busy,
            )
        )
    return out


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.report = Report(minutes=args.minutes, rate=args.rate, docs=args.docs)
        self.samples: list[Sample] = []
        self.checker = AuditChecker()
        self.traffic = DocumentTraffic(args.docs)

    def log(self, message: str) -> None:
        print(f"[soak {time.strftime('%H:%M:%S')}] {message}", flush=True)

    def run(self) -> Report:
        args = self.args
        settings = WorkerSettings(
            prefix="soak",
            events_topic="soak.events",
            audit_topic="soak.audit",
            dlq_topic="soak.dlq",
            consumer_group="soak-workers",
            redis_timeout=0.5,
            kafka_session_timeout=6.0,
        )
        log_dir = Path(args.log_dir) if args.log_dir else None
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
        with LocalStack(settings=settings, log_dir=log_dir) as stack:
            self.log(f"stack up: redis {stack.redis.url}, kafka {stack.kafka.bootstrap}, "
                     f"logs in {stack.log_dir}")
            stable = stack.start_worker("w1")
            self.victim = stack.start_worker("w2")
            self.log("2 workers ready; producing")
            producer = SteadyProducer(
                stack.settings, self.traffic, args.rate, on_sent=self.checker.expect_one
            )
            producer.start()
            started = time.monotonic()
            duration = args.minutes * 60
            next_sample = 0.0
            next_fault = min(30.0, args.fault_every)
            faults = 0
            try:
                while (now := time.monotonic() - started) < duration:
                    if not producer.is_alive():
                        raise RuntimeError(f"producer stopped early: {producer.error!r}")
                    if now >= next_sample:
                        self._sample(stack, now, producer)
                        next_sample += args.sample_every
                    if now >= next_fault and duration - now > 10:
                        self.victim = self._fault(stack, faults % len(FAULTS), self.victim, now)
                        faults += 1
                        next_fault += args.fault_every
                    time.sleep(0.2)
            finally:
                producer.stop()
                producer.finish()
            stopped = time.monotonic()
            self._sample(stack, stopped - started, producer)
            self.report.events = producer.published
            self.report.duration_s = round(stopped - started, 1)
            self.report.achieved_rate = round(producer.published / (stopped - started), 1)
            self.log(f"producer stopped: {producer.published} events in "
                     f"{stopped - started:.0f} s; waiting for the workers to drain")
            collect_audits(stack.settings, self.checker, timeout=args.drain_timeout)
            self.report.drain_s = round(time.monotonic() - stopped, 1)
            self._sample(stack, time.monotonic() - started, producer)
            client = stack.redis.client()
            try:
                mismatches = check_marks(client, stack.settings.prefix, self.traffic.last)
            finally:
                client.close()
            verdict = self.checker.verdict(mismatches)
            starts = [f.wall * 1000 for f in self.report.faults]
            for ts, _, _ in self.checker.repeats:
                before = [i for i, start in enumerate(starts) if start <= ts]
                if before:
                    self.report.faults[before[-1]].duplicated_audits += 1
                else:
                    self.report.duplicated_before_faults += 1
            self.report.audits = verdict.audits
            self.report.duplicated_audits = verdict.duplicated
            self.report.outcomes = dict(verdict.outcomes)
            self.report.lost = len(verdict.lost)
            self.report.unaudited = len(verdict.unaudited)
            self.report.order_violations = len(verdict.order_violations)
            self.report.mark_mismatches = len(verdict.mark_mismatches)
            if not verdict.ok:
                self.log("VERDICT: " + verdict.summary())
            for worker in (stable, self.victim):
                if not worker.alive:
                    self.report.problems.append(
                        f"worker {worker.name} is not alive:\n{worker.log_tail(10)}"
                    )
            warmup = min(60.0, duration / 4)
            self.report.memory = memory_summary(self.samples, warmup)
            self.report.max_backlog = max((s.published - s.audited for s in self.samples),
                                          default=0)
        return self.report

    def _sample(self, stack: LocalStack, now: float, producer: SteadyProducer) -> None:
        rss: dict[str, int] = {}
        cpu: dict[str, float] = {}
        for worker in stack.workers:
            if worker.alive:
                name = f"{worker.name}@{worker.proc.pid}"
                kb, used = rss_kb(worker.proc.pid), cpu_seconds(worker.proc.pid)
                if kb is not None and used is not None:
                    rss[name], cpu[name] = kb, used
        audited = stack.count_records(stack.settings.audit_topic)
        self.samples.append(Sample(round(now, 1), rss, cpu, producer.published, audited))
        mem = ", ".join(f"{k} {v / 1024:.0f} MB" for k, v in sorted(rss.items()))
        self.log(f"t={now:5.0f}s published={producer.published} audited={audited} rss: {mem}")

    def _fault(
        self, stack: LocalStack, kind: int, victim: WorkerProcess, now: float
    ) -> WorkerProcess:
        name = FAULTS[kind]
        self.log(f"fault: {name}")
        begun, wall = time.monotonic(), time.time()
        detail = ""
        if kind == 0:
            victim.kill()
            victim = stack.start_worker(victim.name)
            detail = f"replacement ready after {time.monotonic() - begun:.1f} s"
        elif kind == 1:
            redis = stack.redis
            assert isinstance(redis, RedisServer)
            redis.suspend()
            try:
                time.sleep(3.0)
            finally:
                redis.resume()
        else:
            victim.stop()
            victim = stack.start_worker(victim.name)
            detail = f"replacement ready after {time.monotonic() - begun:.1f} s"
        self.report.faults.append(
            Fault(round(now, 1), name, round(time.monotonic() - begun, 1), detail, wall)
        )
        return victim


def format_report(report: Report) -> str:
    lines = [
        "",
        "# Soak report",
        "",
        f"- duration: {report.duration_s:.0f} s of traffic ({report.minutes:g} min requested), "
        f"drain after the producer stopped: {report.drain_s:.1f} s",
        f"- events: {report.events} over {report.docs} documents, "
        f"{report.achieved_rate:.0f}/s achieved ({report.rate:g}/s requested)",
        f"- audits: {report.audits} ({report.duplicated_audits} duplicated by re-delivery), "
        f"outcomes {report.outcomes}",
        f"- re-delivered audits before the first fault: {report.duplicated_before_faults}",
        f"- max backlog (published - audited, at samples): {report.max_backlog}",
        f"- faults injected: {len(report.faults)}",
    ]
    for fault in report.faults:
        extra = f", {fault.detail}" if fault.detail else ""
        lines.append(
            f"  - t={fault.t:.0f}s {fault.kind} (took {fault.lasted_s:.1f} s{extra}); "
            f"re-delivered audits after it: {fault.duplicated_audits}"
        )
    lines += [
        "",
        "| worker process | lifetime | samples | RSS start | RSS end | RSS max | growth/h "
        "| CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in report.memory:
        growth = "-" if m.growth_mb_per_h is None else f"{m.growth_mb_per_h:+.1f} MB/h"
        busy = "-" if m.cpu_percent is None else f"{m.cpu_percent:.0f}%"
        lines.append(
            f"| {m.worker} | {m.lifetime_s:.0f} s | {m.samples} | {m.start_mb:.1f} MB | "
            f"{m.end_mb:.1f} MB | {m.max_mb:.1f} MB | {growth} | {busy} |"
        )
    lines += [
        "",
        f"- lost events: {report.lost} (without any audit: {report.unaudited})",
        f"- per-document order violations: {report.order_violations}",
        f"- high-water marks not at the last version: {report.mark_mismatches}",
    ]
    lines += [f"- problem: {p}" for p in report.problems]
    lines.append(f"- verdict: {'OK' if report.ok else 'FAILED'}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m soak.run", description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="traffic duration (10)")
    parser.add_argument("--rate", type=float, default=500.0, help="events per second (500)")
    parser.add_argument("--docs", type=int, default=5000, help="documents in the mix (5000)")
    parser.add_argument("--fault-every", type=float, default=90.0,
                        help="seconds between faults (90; the first comes after 30 s)")
    parser.add_argument("--sample-every", type=float, default=10.0,
                        help="seconds between RSS samples (10)")
    parser.add_argument("--drain-timeout", type=float, default=300.0,
                        help="seconds to wait for every event to be audited at the end")
    parser.add_argument("--log-dir", default=None, help="keep worker logs here")
    parser.add_argument("--json", default=None, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    soak = Soak(args)
    try:
        report = soak.run()
    except Exception as exc:
        print(f"soak failed: {exc!r}", file=sys.stderr)
        return 1
    print(format_report(report), flush=True)
    if args.json:
        data: dict[str, Any] = asdict(report)
        data["ok"] = report.ok
        data["samples"] = [asdict(s) for s in soak.samples]
        Path(args.json).write_text(json.dumps(data, indent=2), encoding="utf-8")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
