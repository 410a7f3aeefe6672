"""``cachebus stats``: keys and memory per cache layer, hit rates, Redis memory
and the worker's consumer lag.

Keys are counted with one ``SCAN MATCH <prefix>:* COUNT 1000`` pass over every
primary (classified by layer as they come, so the keyspace is walked once, not
once per layer). Memory is ``MEMORY USAGE`` of a uniform sample of up to 500
keys per layer, extrapolated to the layer's key count. Hit rates come from the
totals the library processes publish (:mod:`cachebus.metrics_store`). Lag is
the events topic's end offsets minus the worker group's committed offsets.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Final, TextIO

from redis.exceptions import RedisError

from cachebus import metrics_store, registry
from cachebus.bus import info_per_node, used_memory
from cachebus.connection import connect
from cachebus.keys import KeyScheme
from cachebus.runner import SyncClient, SyncRunner, translate

from .settings import WorkerSettings
from .verify import DEFAULT_WINDOW, parse_window, read_consistency

LAYERS: tuple[tuple[str, str], ...] = tuple((s.key_segment, s.name) for s in registry.LAYERS)
"""(key segment, layer name as published by the library), from the layer registry."""
LABELS: dict[str, str] = {s.key_segment: s.stats_label for s in registry.LAYERS}
SCAN_COUNT = 1000
SAMPLE_SIZE = 500
MEMORY_BATCH = 100


@dataclass(slots=True)
class LayerUsage:
    """Keys of one layer and their (sampled) memory."""

    keys: int = 0
    sample: list[bytes] = field(default_factory=list, repr=False)
    sampled: int = 0
    """Keys whose MEMORY USAGE was measured."""
    sample_bytes: int = 0

    @property
    def memory_bytes(self) -> int:
        """Measured bytes, extrapolated from the sample to every key."""
        if not self.sampled:
            return 0
        return round(self.sample_bytes * self.keys / self.sampled)

    @property
    def estimated(self) -> bool:
        return self.sampled < self.keys


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """One partition of the events topic."""

    partition: int
    end: int
    committed: int | None
    """None: the group has not committed on this partition (lag counts from the log start)."""
    lag: int


@dataclass(frozen=True, slots=True)
class ConsumerLag:
    """The worker group's lag on the events topic."""

    topic: str
    group: str
    partitions: list[PartitionLag]

    @property
    def total(self) -> int:
        return sum(p.lag for p in self.partitions)


# -- Redis -------------------------------------------------------------------


def scan_layers(
    client: SyncClient,
    prefix: str,
    *,
    sample_size: int = SAMPLE_SIZE,
    progress: Callable[[str], None] | None = None,
    rng: random.Random | None = None,
) -> tuple[dict[str, LayerUsage], int]:
    """Count the keys of every layer (and the prefix's other keys) in one SCAN
    pass, then measure a sample of each layer. Returns (usage per layer, other keys)."""
    rng = rng or random.Random()
    head = KeyScheme(prefix).prefix + ":"
    usage = {segment: LayerUsage() for segment, _ in LAYERS}
    other = seen = 0
    runner = SyncRunner(client)
    try:
        # One SCAN pass over every primary (cachebus.commands.ScanEachPrimary).
        for tag, batch in runner.scan(KeyScheme(prefix).pattern("*"), SCAN_COUNT):
            node = runner.primary_address(tag)
            for key in batch:
                segment = key[len(head) :].split(b":", 1)[0].decode("ascii", "replace")
                layer = usage.get(segment)
                if layer is None:
                    other += 1
                    continue
                layer.keys += 1
                # Reservoir sampling: every key of the layer equally likely.
                if len(layer.sample) < sample_size:
                    layer.sample.append(key)
                else:
                    slot = rng.randrange(layer.keys)
                    if slot < sample_size:
                        layer.sample[slot] = key
            seen += len(batch)
            if progress is not None:
                progress(f"scanning {node}: {seen} keys under {head}*")
        for segment, layer in usage.items():
            if progress is not None and layer.sample:
                progress(f"measuring {len(layer.sample)} {segment} keys")
            _measure(client, layer)
    except RedisError as exc:
        raise translate(exc) from exc
    finally:
        runner.close()
    return usage, other


def _measure(client: SyncClient, layer: LayerUsage) -> None:
    for start in range(0, len(layer.sample), MEMORY_BATCH):
        pipe = client.pipeline(transaction=False)
        for key in layer.sample[start : start + MEMORY_BATCH]:
            pipe.execute_command("MEMORY USAGE", key)
        for size in pipe.execute(raise_on_error=False):
            if isinstance(size, int):  # None: expired since the scan
                layer.sampled += 1
                layer.sample_bytes += size


def _info(client: SyncClient, section: str) -> list[dict[str, Any]]:
    """One INFO section per node (the primaries of a cluster)."""
    try:
        return info_per_node(client, section)
    except RedisError as exc:
        raise translate(exc) from exc


EVICTION_SAFE: Final = "noeviction"


def eviction(memory: list[dict[str, Any]], stats: list[dict[str, Any]]) -> dict[str, Any]:
    """The eviction policies of the nodes (INFO memory) and the keys they evicted so far
    (INFO stats). Any policy but ``noeviction`` may evict a tag stamp, and an evicted
    stamp loses the invalidation it recorded (docs/operations.md, "Memory policy")."""
    policies = sorted({str(node["maxmemory_policy"]) for node in memory})
    evicted = sum(int(node.get("evicted_keys", 0)) for node in stats)
    return {
        "maxmemory_policy": policies,
        "evicted_keys": evicted,
        "stamps_safe": policies == [EVICTION_SAFE] and evicted == 0,
    }


# -- Kafka -------------------------------------------------------------------


async def consumer_lag(settings: WorkerSettings, *, timeout: float = 10.0) -> ConsumerLag:
    """End offsets of ``settings.events_topic`` minus the committed offsets of
    ``settings.consumer_group``. Raises on any Kafka error or after ``timeout``.
    Never creates the topic (metadata is read for all topics, not requested by name)."""
    return await asyncio.wait_for(_consumer_lag(settings, timeout), timeout)


async def _consumer_lag(settings: WorkerSettings, timeout: float) -> ConsumerLag:
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    from .kafka import client_config

    config = client_config(settings)
    common: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "request_timeout_ms": int(timeout * 1000),
        **config,
    }
    consumer = AIOKafkaConsumer(group_id=None, enable_auto_commit=False, **common)
    admin = AIOKafkaAdminClient(**common)
    try:
        await consumer.start()
        await admin.start()
        topic = settings.events_topic
        # All topics' metadata: asking for the topic by name would auto-create it.
        described = {t["topic"]: t for t in await admin.describe_topics()}
        info = described.get(topic)
        if info is None or info.get("error_code") or not info.get("partitions"):
            raise LookupError(f"topic {topic!r} does not exist")
        tps = [TopicPartition(topic, p["partition"]) for p in info["partitions"]]
        tps.sort(key=lambda tp: tp.partition)
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        committed = await admin.list_consumer_group_offsets(settings.consumer_group, partitions=tps)
    finally:
        await consumer.stop()
        await admin.close()
    partitions = []
    for tp in tps:
        meta = committed.get(tp)
        done = meta.offset if meta is not None and meta.offset >= 0 else None
        base = starts[tp] if done is None else done
        partitions.append(PartitionLag(tp.partition, ends[tp], done, max(0, ends[tp] - base)))
    return ConsumerLag(topic, settings.consumer_group, partitions)


# -- report ------------------------------------------------------------------


def collect(
    settings: WorkerSettings,
    client: SyncClient,
    *,
    sample_size: int = SAMPLE_SIZE,
    kafka: bool = True,
    kafka_timeout: float = 10.0,
    progress: Callable[[str], None] | None = None,
    consistency_window: float = 900.0,
) -> dict[str, Any]:
    """Everything ``cachebus stats`` shows, as JSON-ready data. Redis errors
    raise; a Kafka failure is reported under ``kafka.error``. ``consistency``: the
    workers' consistency checks over the last ``consistency_window`` seconds."""
    usage, other = scan_layers(client, settings.prefix, sample_size=sample_size, progress=progress)
    published = metrics_store.read(client, settings.prefix)
    memory = _info(client, "memory")
    layers: dict[str, Any] = {}
    for segment, name in LAYERS:
        layer = usage[segment]
        metrics = published.get(name)
        layers[segment] = {
            "layer": name,
            "keys": layer.keys,
            "memory_bytes": layer.memory_bytes,
            "memory_sampled_keys": layer.sampled,
            "memory_estimated": layer.estimated,
            "hit_rate": metrics["hit_rate"] if metrics else None,
            "metrics": metrics,
        }
    report: dict[str, Any] = {
        "prefix": settings.prefix,
        "layers": layers,
        "other_keys": other,
        "redis_used_memory": used_memory(memory),
        "redis_eviction": eviction(memory, _info(client, "stats")),
        "consistency": read_consistency(client, settings.prefix, consistency_window).as_dict(),
        "kafka": None,
    }
    if kafka:
        report["kafka"] = kafka_report(settings, kafka_timeout)
    return report


def kafka_report(settings: WorkerSettings, timeout: float) -> dict[str, Any]:
    """The lag as data, or ``{"available": false, "error": ...}``."""
    base = {"topic": settings.events_topic, "group": settings.consumer_group}
    try:
        lag = asyncio.run(consumer_lag(settings, timeout=timeout))
    except TimeoutError:
        return {**base, "available": False, "error": f"no answer within {timeout:g} s"}
    except Exception as exc:  # any Kafka trouble: the Redis part still stands
        name, text = type(exc).__name__, str(exc)
        error = text if text.startswith(name) else f"{name}: {text}".rstrip(": ")
        return {**base, "available": False, "error": error}
    return {
        **base,
        "available": True,
        "total_lag": lag.total,
        "partitions": [asdict(p) for p in lag.partitions],
    }


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def render(report: dict[str, Any]) -> str:
    """The human table."""
    lines = [f"prefix {report['prefix']}", ""]
    lines.append(f"{'layer':<25} {'keys':>10}  {'memory':<32} {'hit rate':>8}")
    for segment, data in report["layers"].items():
        memory = _size(data["memory_bytes"])
        if data["memory_estimated"]:
            memory = f"~{memory} (sampled {data['memory_sampled_keys']})"
        rate = "-" if data["hit_rate"] is None else f"{data['hit_rate']:.1%}"
        label = f"{segment} {LABELS.get(segment, data['layer'].replace('_', ' '))}"
        lines.append(f"{label:<25} {data['keys']:>10,}  {memory:<32} {rate:>8}")
    lines.append(f"{'other keys under prefix':<25} {report['other_keys']:>10,}")
    lines.append("")
    lines.append(f"redis used_memory {_size(report['redis_used_memory'])}")
    evict = report.get("redis_eviction")
    if evict is not None:
        policy = ", ".join(evict["maxmemory_policy"])
        lines.append(f"redis maxmemory-policy {policy}, evicted_keys {evict['evicted_keys']:,}")
        if not evict["stamps_safe"]:
            lines.append(
                "WARNING: this Redis can evict (or has evicted) keys; an evicted tag stamp "
                "loses the invalidation it recorded. Use maxmemory-policy noeviction "
                "(docs/operations.md, Memory policy)."
            )
    consistency = report.get("consistency")
    if consistency is not None:
        lines.append(consistency["line"])
    kafka = report.get("kafka")
    if kafka is None:
        return "\n".join(lines)
    if not kafka["available"]:
        lines.append(f"worker lag: unavailable ({kafka['error']})")
        return "\n".join(lines)
    lines.append(
        f"worker lag: {kafka['total_lag']:,} events (group {kafka['group']} on {kafka['topic']})"
    )
    for p in kafka["partitions"]:
        committed = "none" if p["committed"] is None else f"{p['committed']:,}"
        lines.append(
            f"  partition {p['partition']:>3}: end {p['end']:>10,}  committed {committed:>10}"
            f"  lag {p['lag']:>10,}"
        )
    return "\n".join(lines)


class _Progress:
    """Progress lines on stderr, only for scans that take a while, at most one a second."""

    def __init__(self, out: TextIO, delay: float = 1.0) -> None:
        self.out = out
        self._next = time.monotonic() + delay

    def __call__(self, message: str) -> None:
        now = time.monotonic()
        if now >= self._next:
            print(message, file=self.out, flush=True)
            self._next = now + 1.0


# -- command -----------------------------------------------------------------


def register(subparsers: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``cachebus stats``."""
    p = subparsers.add_parser("stats", help="keys, memory and hit rate per layer; worker lag")
    add_common(p)
    p.add_argument("--group", dest="consumer_group", help="the worker's consumer group id")
    p.add_argument("--json", action="store_true", help="one JSON document for machines")
    p.add_argument(
        "--sample",
        type=int,
        default=SAMPLE_SIZE,
        help=f"keys per layer measured with MEMORY USAGE (default {SAMPLE_SIZE})",
    )
    p.add_argument(
        "--kafka-timeout", type=float, default=10.0, help="seconds to wait for Kafka (default 10)"
    )
    p.add_argument("--no-kafka", action="store_true", help="skip the consumer lag")
    p.add_argument(
        "--window",
        default=DEFAULT_WINDOW,
        help=f"window of the consistency line: 15m, 2h, 1d (default {DEFAULT_WINDOW})",
    )
    p.set_defaults(run=run)


def run(settings: WorkerSettings, args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Print the stats; exit 0 unless Redis cannot be read (that raises
    :class:`~cachebus.errors.CacheUnavailableError`, exit 2 in the CLI)."""
    out = out or sys.stdout
    window = parse_window(getattr(args, "window", DEFAULT_WINDOW))
    client = connect(settings)
    try:
        report = collect(
            settings,
            client,
            sample_size=max(1, args.sample),
            kafka=not args.no_kafka,
            kafka_timeout=args.kafka_timeout,
            progress=_Progress(sys.stderr),
            consistency_window=window,
        )
    finally:
        client.close()
    print(json.dumps(report, indent=2) if args.json else render(report), file=out)
    kafka = report["kafka"]
    if kafka is not None and not kafka["available"] and args.json:
        print(f"cachebus stats: consumer lag unavailable: {kafka['error']}", file=sys.stderr)
    return 0
