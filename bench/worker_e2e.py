"""The invalidation worker end to end: local Kafka, local Redis, one worker process.

:class:`devtools.stack.LocalStack` starts a real redis-server, a real single-node Kafka broker
and a ``cachebus worker`` subprocess on loopback.  This module publishes valid ``updated``
document events with an aiokafka producer and reads the worker's audit events back:

* **offered loads** (1k/s, 5k/s, ... for a fixed time): a paced producer; the latency of
  every event is its audit's ``lag_ms`` (audit time minus the Kafka record timestamp the
  producer stamped at ``send()``: produce -> consumed -> applied to Redis);
* **flood**: ``flood_events`` published as fast as the producer goes; sustained events/s =
  events / (first send -> last audit), sampled every 0.25 s: events produced, audits
  written (``end offsets`` of the audit topic, as ``LocalStack.count_records`` counts them)
  and the group's committed offsets (consumer lag).

Each phase uses its own collection name, so its audits are told apart; every event must
come back audited ``applied`` exactly once or the run is broken.  Per phase the worker's
Prometheus metrics (``cachebus_apply_seconds``, ``cachebus_batch_size``) and the CPU
seconds of the worker, the Kafka broker, Redis and this process are recorded, so a missed
target points at a stage.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from worker.settings import WorkerSettings

from . import faust_ceiling
from .client_layers import BenchError

Progress = Callable[[str], None]
POLL_S = 0.25
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class WorkerConfig:
    flood_events: int
    loads: tuple[int, ...]
    """Offered loads (events/s), each for ``load_seconds``."""
    load_seconds: float
    near_max_fraction: float | None
    """Also offer this fraction of the flood's sustained rate (None: skip)."""
    warmup_events: int
    documents: int
    batch_max: int | None = None
    """CACHEBUS_BATCH_MAX of the workers (None: the worker's default)."""
    batch_wait_ms: int | None = None
    """CACHEBUS_BATCH_WAIT_MS of the workers (None: the worker's default)."""
    partitions: int = 6
    drain_timeout_s: float = 180.0
    scale_workers: int | None = None
    """Then start more workers in the same group (this many in all) and flood again."""
    compare_wait_ms: int | None = None
    """Then restart the worker with this CACHEBUS_BATCH_WAIT_MS and offer the first load
    again (shows what the batch window costs in latency)."""
    ceiling_runs: int = 2
    """Drain ``flood_events`` with a bare faust agent this many times (0: skip); see
    :mod:`bench.faust_ceiling`."""


def proc_cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of a process (0 when unknown)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def scrape(port: int) -> dict[str, float]:
    """The worker's Prometheus text, flattened to ``{sample name{labels}: value}``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            continue
    return out


def metrics_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    def d(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    batches = d("cachebus_batch_size_count")
    applies = d("cachebus_apply_seconds_count")
    return {
        "batches": batches,
        "mean_batch_size": round(d("cachebus_batch_size_sum") / batches, 1) if batches else 0.0,
        "apply_calls": applies,
        "apply_seconds_total": round(d("cachebus_apply_seconds_sum"), 3),
        "mean_apply_ms": round(1000 * d("cachebus_apply_seconds_sum") / applies, 3)
        if applies
        else 0.0,
        "redis_retries": d("cachebus_redis_retries_total"),
    }


class EventFactory:
    """Valid ``updated`` events over a pool of documents, versions rising per document."""

    def __init__(self, documents: int, seed: int = 5) -> None:
        self.rng = np.random.default_rng(seed)
        self.documents = documents
        self.versions = np.zeros(documents, dtype=np.int64)

    def make(self, count: int, collection: str) -> list[tuple[bytes, bytes]]:
        docs = self.rng.integers(0, self.documents, size=count)
        now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        out = []
        for d in docs:
            self.versions[d] += 1
            doc_id = f"doc-{int(d)}"
            event = {
                "event_id": str(uuid.uuid4()),
                "event_type": "updated",
                "doc_id": doc_id,
                "collection": collection,
                "doc_version": int(self.versions[d]),
                "occurred_at": now,
                "schema_version": 1,
            }
            out.append((doc_id.encode(), json.dumps(event, separators=(",", ":")).encode()))
        return out


@dataclass
class Sample:
    t: float
    produced: int
    audited: int
    committed: int


class Probe:
    """End offsets of the events and audit topics and the group's committed offsets."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.consumer: Any = None
        self.admin: Any = None
        self.events_tps: list[Any] = []
        self.audit_tps: list[Any] = []

    async def start(self) -> None:
        """Clients are made here: aiokafka wants a running event loop."""
        from aiokafka import AIOKafkaConsumer, TopicPartition
        from aiokafka.admin import AIOKafkaAdminClient

        from worker.kafka import client_config

        settings = self.settings
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap, group_id=None, **client_config(settings)
        )
        self.admin = AIOKafkaAdminClient(
            bootstrap_servers=settings.kafka_bootstrap, **client_config(settings)
        )
        await self.consumer.start()
        await self.admin.start()
        for attr, topic in (
            ("events_tps", settings.events_topic),
            ("audit_tps", settings.audit_topic),
        ):
            parts = self.consumer.partitions_for_topic(topic)
            if not parts:
                await self.consumer._client.force_metadata_update()
                parts = self.consumer.partitions_for_topic(topic) or set()
            setattr(self, attr, [TopicPartition(topic, p) for p in sorted(parts)])

    async def stop(self) -> None:
        await self.consumer.stop()
        await self.admin.close()

    async def ends(self, tps: Sequence[Any]) -> dict[Any, int]:
        got: dict[Any, int] = await self.consumer.end_offsets(list(tps))
        return got

    async def committed(self) -> int:
        offsets = await self.admin.list_consumer_group_offsets(
            self.settings.consumer_group, partitions=self.events_tps
        )
        return sum(max(0, o.offset) for o in offsets.values())

    async def sample(self) -> Sample:
        produced = sum((await self.ends(self.events_tps)).values())
        audited = sum((await self.ends(self.audit_tps)).values())
        return Sample(time.perf_counter(), produced, audited, await self.committed())


class AuditReader:
    """Reads the audit topic from where the last read stopped up to its current end."""

    def __init__(self, settings: WorkerSettings, probe: Probe) -> None:
        self.settings = settings
        self.probe = probe
        self.position: dict[Any, int] = {}

    async def mark(self) -> None:
        self.position = await self.probe.ends(self.probe.audit_tps)

    async def read_new(self) -> list[dict[str, Any]]:
        from aiokafka import AIOKafkaConsumer

        from worker.kafka import client_config

        ends = await self.probe.ends(self.probe.audit_tps)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            group_id=None,
            enable_auto_commit=False,
            max_partition_fetch_bytes=8 * 1024 * 1024,
            **client_config(self.settings),
        )
        await consumer.start()
        out: list[dict[str, Any]] = []
        try:
            todo = [tp for tp in ends if ends[tp] > self.position.get(tp, 0)]
            if not todo:
                return out
            consumer.assign(todo)
            for tp in todo:
                consumer.seek(tp, self.position.get(tp, 0))
            remaining = {tp: ends[tp] - self.position.get(tp, 0) for tp in todo}
            deadline = time.monotonic() + 120
            while any(v > 0 for v in remaining.values()) and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500, max_records=20000)
                for tp, records in batch.items():
                    for r in records:
                        if r.offset < ends[tp]:
                            out.append(json.loads(r.value))
                            remaining[tp] -= 1
            if any(v > 0 for v in remaining.values()):
                raise BenchError(f"could not read back the audits: {remaining} left")
        finally:
            await consumer.stop()
        self.position = ends
        return out


def latency_summary(lags: Sequence[float]) -> dict[str, float]:
    arr = np.asarray(lags, dtype=np.float64)
    return {
        "events": int(arr.size),
        "p50_ms": round(float(np.percentile(arr, 50)), 2),
        "p90_ms": round(float(np.percentile(arr, 90)), 2),
        "p99_ms": round(float(np.percentile(arr, 99)), 2),
        "p999_ms": round(float(np.percentile(arr, 99.9)), 2),
        "max_ms": round(float(arr.max()), 2),
        "mean_ms": round(float(arr.mean()), 2),
    }


class WorkerBench:
    def __init__(
        self, stack: Any, workers: list[Any], cfg: WorkerConfig, progress: Progress
    ) -> None:
        self.stack = stack
        self.workers = workers
        self.cfg = cfg
        self.progress = progress
        self.settings: WorkerSettings = stack.settings
        self.factory = EventFactory(cfg.documents)
        self.probe = Probe(self.settings)
        self.audits = AuditReader(self.settings, self.probe)
        self.producer: Any = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaProducer

        from worker.kafka import client_config

        await self.probe.start()
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            acks="all",
            linger_ms=1,
            max_batch_size=256 * 1024,
            **client_config(self.settings),
        )
        await self.producer.start()

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()
        await self.probe.stop()

    def _scrape(self) -> dict[str, float]:
        """The workers' metrics, summed over the workers."""
        total: dict[str, float] = {}
        for w in self.workers:
            for k, v in scrape(w.settings.web_port).items():
                total[k] = total.get(k, 0.0) + v
        return total

    def _cpu(self) -> dict[str, float]:
        redis_info = self.stack.redis.client().info("cpu")
        return {
            "worker": sum(proc_cpu_s(w.proc.pid) for w in self.workers),
            "kafka": proc_cpu_s(self.stack.kafka.pid),
            "redis": float(redis_info["used_cpu_sys"]) + float(redis_info["used_cpu_user"]),
            "bench": sum(os.times()[:2]),
        }

    async def _wait_audited(self, target: int, samples: list[Sample]) -> float:
        deadline = time.perf_counter() + self.cfg.drain_timeout_s
        while True:
            s = await self.probe.sample()
            samples.append(s)
            if s.audited >= target:
                return s.t
            if time.perf_counter() > deadline:
                raise BenchError(
                    f"worker: {target - s.audited} events not audited after "
                    f"{self.cfg.drain_timeout_s:.0f} s\n{self.workers[0].log_tail()}"
                )
            for w in self.workers:
                if not w.alive:
                    raise BenchError(f"worker {w.name} exited:\n{w.log_tail()}")
            await asyncio.sleep(POLL_S / 2)

    async def _monitor(self, samples: list[Sample], stop: asyncio.Event) -> None:
        while not stop.is_set():
            samples.append(await self.probe.sample())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), POLL_S)

    async def phase(
        self, name: str, events: list[tuple[bytes, bytes]], rate: float | None
    ) -> dict[str, Any]:
        """Publish ``events`` (at ``rate``/s, or as fast as possible) and wait until audited."""
        topic = self.settings.events_topic
        expected = {json.loads(value)["event_id"] for _, value in events}
        await self.audits.mark()
        start_sample = await self.probe.sample()
        metrics_before = self._scrape()
        cpu_before = self._cpu()
        samples: list[Sample] = [start_sample]
        stop = asyncio.Event()
        monitor = asyncio.create_task(self._monitor(samples, stop))
        futures = []
        t0 = time.perf_counter()
        t0_epoch = time.time()
        if rate is None:
            for n, (key, value) in enumerate(events):
                futures.append(await self.producer.send(topic, value, key=key))
                if n % 1000 == 999:
                    await asyncio.sleep(0)  # let the monitor sample
        else:
            sent = 0
            while sent < len(events):
                due = min(len(events), int((time.perf_counter() - t0) * rate) + 1)
                while sent < due:
                    key, value = events[sent]
                    futures.append(await self.producer.send(topic, value, key=key))
                    sent += 1
                await asyncio.sleep(0.002)
        send_done = time.perf_counter()
        await asyncio.gather(*futures)
        acked = time.perf_counter()
        stop.set()
        await monitor
        # At-least-once: a rebalance may hand a processed but uncommitted batch to another
        # worker, which audits it again (skipped_duplicate, or applied again: idempotent).
        # Wait until every event has an audit; its first audit is when it was applied.
        target = start_sample.audited + len(events)
        audits: list[dict[str, Any]] = []
        first: dict[str, dict[str, Any]] = {}
        while True:
            await self._wait_audited(target, samples)
            for a in await self.audits.read_new():
                if a.get("collection") != name:
                    continue
                audits.append(a)
                first.setdefault(str(a.get("event_id")), a)
            missing = len(expected - first.keys())
            if not missing:
                break
            target = samples[-1].audited + missing
        cpu_after = self._cpu()
        metrics_after = self._scrape()
        outcomes: dict[str, int] = {}
        by_worker: dict[str, int] = {}
        applied: set[str] = set()
        for a in audits:
            outcomes[a["outcome"]] = outcomes.get(a["outcome"], 0) + 1
            by_worker[a["worker_id"]] = by_worker.get(a["worker_id"], 0) + 1
            if a["outcome"] == "applied":
                applied.add(str(a["event_id"]))
        if first.keys() != expected or applied != expected:
            raise BenchError(
                f"worker phase {name}: {len(audits)} audits for {len(events)} events, "
                f"{len(expected - applied)} never applied, outcomes {outcomes}"
            )
        done_epoch = max(_epoch(first[e]["processed_at"]) for e in expected)
        wall = max(done_epoch - t0_epoch, 1e-3)
        lags = [float(a["lag_ms"]) for a in first.values() if a.get("lag_ms") is not None]
        backlog = [s.produced - s.audited for s in samples]
        group_lag = [s.produced - s.committed for s in samples]
        cpu = {k: round(cpu_after[k] - cpu_before[k], 2) for k in cpu_before}
        result: dict[str, Any] = {
            "phase": name,
            "offered_per_s": rate,
            "events": len(events),
            "produce_s": round(acked - t0, 3),
            "produced_per_s": round(len(events) / (send_done - t0), 1),
            "wall_s": round(wall, 3),
            "throughput_per_s": round(len(events) / wall, 1),
            "latency": latency_summary(lags),
            "backlog_max": max(backlog) - backlog[0],
            "consumer_lag_max": max(group_lag),
            "consumer_lag_mean": round(float(np.mean(group_lag)), 1),
            "outcomes": outcomes,
            "redelivered": len(audits) - len(expected),
            "workers": len(self.workers),
            "batch_wait_ms": self.workers[0].settings.batch_wait_ms,
            "events_by_worker": by_worker,
            "worker_metrics": metrics_delta(metrics_before, metrics_after),
            "cpu_seconds": cpu,
            "cpu_share_of_wall": {k: round(v / wall, 3) for k, v in cpu.items()},
            "samples": [
                [
                    round(s.t - t0, 3),
                    s.produced - start_sample.produced,
                    s.audited - start_sample.audited,
                    s.produced - s.committed,
                ]
                for s in samples
            ],
        }
        if rate is None:
            result["steady_per_s"] = steady_rate(samples, start_sample.audited, len(events))
            after = [s for s in samples if s.t >= acked]
            if len(after) >= 2 and after[-1].audited > after[0].audited:
                result["drain_per_s"] = round(
                    (after[-1].audited - after[0].audited) / (after[-1].t - after[0].t), 1
                )
        lat = result["latency"]
        self.progress(
            f"worker {name}: {len(events):,} events in {wall:.1f} s "
            f"({result['throughput_per_s']:,.0f}/s), p50 {lat['p50_ms']} ms, "
            f"p99 {lat['p99_ms']} ms, p99.9 {lat['p999_ms']} ms, worker CPU "
            f"{result['cpu_share_of_wall']['worker']:.0%}"
        )
        return result


def _epoch(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def steady_rate(samples: Sequence[Sample], base: int, total: int) -> float:
    """Audits/s between 10% and 90% of the phase's events audited."""
    lo, hi = base + 0.1 * total, base + 0.9 * total
    inside = [s for s in samples if lo <= s.audited <= hi]
    if len(inside) < 2 or inside[-1].t <= inside[0].t:
        return 0.0
    return round((inside[-1].audited - inside[0].audited) / (inside[-1].t - inside[0].t), 1)


async def _run_phases(bench: WorkerBench, cfg: WorkerConfig) -> list[dict[str, Any]]:
    await bench.start()
    try:
        phases: list[dict[str, Any]] = []
        bench.progress(f"worker: warm-up with {cfg.warmup_events:,} events")
        await bench.phase("warmup", bench.factory.make(cfg.warmup_events, "warmup"), 1000.0)
        for rate in cfg.loads:
            name = f"load-{rate}"
            count = int(rate * cfg.load_seconds)
            bench.progress(f"worker: offering {rate:,}/s for {cfg.load_seconds:g} s")
            phases.append(await bench.phase(name, bench.factory.make(count, name), float(rate)))
        bench.progress(f"worker: flood of {cfg.flood_events:,} events, as fast as possible")
        flood = await bench.phase("flood", bench.factory.make(cfg.flood_events, "flood"), None)
        phases.append(flood)
        if cfg.near_max_fraction:
            rate = round(cfg.near_max_fraction * flood["throughput_per_s"], -2)
            if rate > max(cfg.loads, default=0):
                name = f"load-{int(rate)}"
                count = int(rate * cfg.load_seconds)
                bench.progress(
                    f"worker: offering {rate:,.0f}/s ({cfg.near_max_fraction:.0%} of the flood's "
                    f"rate) for {cfg.load_seconds:g} s"
                )
                phases.append(await bench.phase(name, bench.factory.make(count, name), rate))
        return phases
    finally:
        await bench.stop()


def _failure(name: str, exc: Exception, workers: list[Any], progress: Progress) -> dict[str, str]:
    """What broke a phase: the exception and the crash lines of workers that died."""
    dead = []
    for w in workers:
        if w.alive:
            continue
        lines = w.log_path.read_text("utf-8", "replace").splitlines()
        crash = [i for i, line in enumerate(lines) if "Crashed reason=" in line]
        start = crash[0] if crash else max(0, len(lines) - 20)
        dead.append(
            f"worker {w.name} exited; its log from the first crash:\n"
            + "\n".join(lines[start : start + 20])
        )
    error = f"{exc!r}"[:1000] + ("\n" + "\n".join(dead) if dead else "")
    progress(f"worker: phase {name} FAILED: {error[:600]}")
    return {"phase": name, "error": error}


async def _again(bench: WorkerBench, rate: float | None, count: int, name: str) -> dict[str, Any]:
    """A warm-up (which also lets the group finish rebalancing), then one phase."""
    await bench.start()
    try:
        warm = f"{name}-warmup"
        await bench.phase(warm, bench.factory.make(2000, warm), 1000.0)
        return await bench.phase(name, bench.factory.make(count, name), rate)
    finally:
        await bench.stop()


def run(cfg: WorkerConfig, progress: Progress) -> dict[str, Any]:
    from devtools.stack import LocalStack

    base = WorkerSettings(prefix="bench", topic_partitions=cfg.partitions)
    batch_max = cfg.batch_max if cfg.batch_max is not None else base.batch_max
    wait_ms = cfg.batch_wait_ms if cfg.batch_wait_ms is not None else base.batch_wait_ms
    t0 = time.perf_counter()
    progress("worker: starting redis-server, Kafka broker (KRaft) and topics")
    with LocalStack(settings=base) as stack:
        progress(f"worker: stack up in {time.perf_counter() - t0:.1f} s, starting the worker")
        first = stack.start_worker("bench-1", batch_max=batch_max, batch_wait_ms=wait_ms)
        progress(f"worker: ready ({time.perf_counter() - t0:.1f} s)")
        bench = WorkerBench(stack, [first], cfg, progress)
        phases = asyncio.run(_run_phases(bench, cfg))
        workers = [first]
        errors: list[dict[str, str]] = []
        ceiling = None
        if cfg.ceiling_runs:
            progress(
                f"worker: the framework's ceiling: a bare faust agent (the worker's faust "
                f"settings, acks only) drains {cfg.flood_events:,} events, "
                f"{cfg.ceiling_runs} time(s)"
            )
            try:
                backlog = EventFactory(cfg.documents, seed=9).make(cfg.flood_events, "ceiling")
                ceiling = faust_ceiling.run(stack.settings, backlog, cfg.ceiling_runs)
                progress(
                    "worker: faust alone: "
                    + ", ".join(f"{r['per_s']:,.0f}/s" for r in ceiling["runs"])
                )
            except Exception as exc:
                errors.append(_failure("faust-ceiling", exc, [], progress))
        if cfg.scale_workers and cfg.scale_workers > 1:
            name = f"flood-{cfg.scale_workers}-workers"
            progress(f"worker: starting {cfg.scale_workers - 1} more worker(s) in the group")
            try:
                workers += [
                    stack.start_worker(f"bench-{i}", batch_max=batch_max, batch_wait_ms=wait_ms)
                    for i in range(2, cfg.scale_workers + 1)
                ]
                scaled = WorkerBench(stack, workers, cfg, progress)
                scaled.factory = bench.factory  # versions keep rising per document
                phases.append(asyncio.run(_again(scaled, None, cfg.flood_events, name)))
            except Exception as exc:
                # A worker that dies here is a finding, not a reason to lose the other phases.
                errors.append(_failure(name, exc, workers, progress))
        other = cfg.compare_wait_ms
        if other is not None and other != wait_ms and cfg.loads:
            for w in workers:
                w.stop()
            rate = cfg.loads[0]
            name = f"wait-{other}ms-load-{rate}"
            progress(f"worker: one worker again, with CACHEBUS_BATCH_WAIT_MS={other}")
            started: list[Any] = []
            try:
                compare = stack.start_worker(
                    f"bench-wait-{other}", batch_max=batch_max, batch_wait_ms=other
                )
                started.append(compare)
                again = WorkerBench(stack, [compare], cfg, progress)
                again.factory = bench.factory
                count = int(rate * cfg.load_seconds)
                phases.append(asyncio.run(_again(again, float(rate), count, name)))
            except Exception as exc:
                errors.append(_failure(name, exc, started, progress))
        kafka_version = getattr(stack.kafka, "_version", None)
    return {
        "config": {
            "flood_events": cfg.flood_events,
            "loads": list(cfg.loads),
            "load_seconds": cfg.load_seconds,
            "near_max_fraction": cfg.near_max_fraction,
            "documents": cfg.documents,
            "batch_max": batch_max,
            "batch_wait_ms": wait_ms,
            "scale_workers": cfg.scale_workers,
            "compare_wait_ms": cfg.compare_wait_ms,
            "ceiling_runs": cfg.ceiling_runs,
            "partitions": cfg.partitions,
            "kafka": str(kafka_version) if kafka_version else None,
        },
        "phases": phases,
        "faust_ceiling": ceiling,
        "errors": errors,
    }
