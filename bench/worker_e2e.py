"""The invalidation worker end to end: local Kafka, local Redis, one worker process.

:class:`worker.stack.LocalStack` starts a real redis-server, a real single-node Kafka broker
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

from cachebus.settings import Settings

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
    batch_max: int = 500
    batch_wait_ms: int = 20
    partitions: int = 6
    drain_timeout_s: float = 180.0
    tuned_wait_ms: int | None = None
    """Then restart the worker with this CACHEBUS_BATCH_WAIT_MS and offer the first load
    again (shows what the batch window costs in latency)."""


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

    def __init__(self, settings: Settings) -> None:
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

    def __init__(self, settings: Settings, probe: Probe) -> None:
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
    def __init__(self, stack: Any, worker: Any, cfg: WorkerConfig, progress: Progress) -> None:
        self.stack = stack
        self.worker = worker
        self.cfg = cfg
        self.progress = progress
        self.settings: Settings = stack.settings
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

    def _cpu(self) -> dict[str, float]:
        redis_info = self.stack.redis.client().info("cpu")
        return {
            "worker": proc_cpu_s(self.worker.proc.pid),
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
                    f"{self.cfg.drain_timeout_s:.0f} s\n{self.worker.log_tail()}"
                )
            if not self.worker.alive:
                raise BenchError(f"worker exited:\n{self.worker.log_tail()}")
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
        await self.audits.mark()
        start_sample = await self.probe.sample()
        metrics_before = scrape(self.worker.settings.web_port)
        cpu_before = self._cpu()
        samples: list[Sample] = [start_sample]
        stop = asyncio.Event()
        monitor = asyncio.create_task(self._monitor(samples, stop))
        futures = []
        t0 = time.perf_counter()
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
        t_done = await self._wait_audited(start_sample.audited + len(events), samples)
        cpu_after = self._cpu()
        metrics_after = scrape(self.worker.settings.web_port)
        audits = [a for a in await self.audits.read_new() if a.get("collection") == name]
        outcomes: dict[str, int] = {}
        for a in audits:
            outcomes[a["outcome"]] = outcomes.get(a["outcome"], 0) + 1
        if len(audits) != len(events) or outcomes.get("applied", 0) != len(events):
            raise BenchError(
                f"worker phase {name}: {len(audits)} audits for {len(events)} events, "
                f"outcomes {outcomes}"
            )
        wall = t_done - t0
        lags = [float(a["lag_ms"]) for a in audits if a.get("lag_ms") is not None]
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
        await bench.phase("warmup", bench.factory.make(cfg.warmup_events, "warmup"), 2000.0)
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


async def _tuned_phase(bench: WorkerBench, rate: int, seconds: float) -> dict[str, Any]:
    await bench.start()
    try:
        await bench.phase("tuned-warmup", bench.factory.make(500, "tuned-warmup"), 1000.0)
        name = f"tuned-load-{rate}"
        return await bench.phase(name, bench.factory.make(int(rate * seconds), name), float(rate))
    finally:
        await bench.stop()


def run(cfg: WorkerConfig, progress: Progress) -> dict[str, Any]:
    from worker.stack import LocalStack

    base = Settings(prefix="bench", topic_partitions=cfg.partitions)
    t0 = time.perf_counter()
    progress("worker: starting redis-server, Kafka broker (KRaft) and topics")
    with LocalStack(settings=base) as stack:
        progress(f"worker: stack up in {time.perf_counter() - t0:.1f} s, starting the worker")
        worker = stack.start_worker(
            "bench", batch_max=cfg.batch_max, batch_wait_ms=cfg.batch_wait_ms
        )
        progress(f"worker: ready ({time.perf_counter() - t0:.1f} s)")
        bench = WorkerBench(stack, worker, cfg, progress)
        phases = asyncio.run(_run_phases(bench, cfg))
        if cfg.tuned_wait_ms is not None and cfg.loads:
            worker.stop()
            progress(f"worker: restarting it with CACHEBUS_BATCH_WAIT_MS={cfg.tuned_wait_ms}")
            tuned = stack.start_worker(
                "bench-tuned", batch_max=cfg.batch_max, batch_wait_ms=cfg.tuned_wait_ms
            )
            again = WorkerBench(stack, tuned, cfg, progress)
            again.factory = bench.factory  # versions keep rising per document
            phases.append(asyncio.run(_tuned_phase(again, cfg.loads[0], cfg.load_seconds)))
        kafka_version = getattr(stack.kafka, "_version", None)
    return {
        "config": {
            "flood_events": cfg.flood_events,
            "loads": list(cfg.loads),
            "load_seconds": cfg.load_seconds,
            "near_max_fraction": cfg.near_max_fraction,
            "documents": cfg.documents,
            "batch_max": cfg.batch_max,
            "batch_wait_ms": cfg.batch_wait_ms,
            "tuned_wait_ms": cfg.tuned_wait_ms,
            "partitions": cfg.partitions,
            "kafka": str(kafka_version) if kafka_version else None,
        },
        "phases": phases,
    }
