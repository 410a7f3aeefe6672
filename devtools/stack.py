"""A whole local deployment on loopback: Redis, Kafka and worker processes.

Used by ``make demo`` and the end-to-end tests; users can use it to test their
own pipelines against the real thing::

    with LocalStack() as stack:
        worker = stack.start_worker()
        stack.publish([...])
        audits = stack.read_audits(count=3)
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import TracebackType
from typing import Any

from devtools.local_kafka import LocalKafka
from devtools.redis_cluster import RedisClusterServers
from devtools.redis_server import RedisServer
from worker.settings import WorkerSettings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def settings_env(settings: WorkerSettings) -> dict[str, str]:
    """The CACHEBUS_* environment that reproduces ``settings`` in another process."""
    env = {}
    for f in fields(settings):
        value = getattr(settings, f.name)
        env[f"CACHEBUS_{f.name.upper()}"] = (
            ("true" if value else "false") if isinstance(value, bool) else str(value)
        )
    return env


@dataclass
class WorkerProcess:
    """One ``cachebus worker`` subprocess."""

    name: str
    settings: WorkerSettings
    log_path: Path
    proc: subprocess.Popen[bytes] = field(repr=False)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Ready = faust says so (partitions assigned, streams started)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited:\n{self.log_tail()}")
            if "[^Worker]: Ready" in self.log_path.read_text("utf-8", "replace"):
                return
            time.sleep(0.1)
        raise TimeoutError(f"worker {self.name} not ready after {timeout}s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no cleanup, no commit (a crash)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM: a graceful stop (faust commits acked offsets)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text("utf-8", "replace").splitlines()
        return "\n".join(text[-lines:])


class LocalStack:
    """Redis + Kafka on loopback, topics created, workers on demand."""

    def __init__(
        self,
        *,
        redis: RedisServer | RedisClusterServers | None = None,
        kafka: LocalKafka | None = None,
        settings: WorkerSettings | None = None,
        log_dir: Path | None = None,
    ) -> None:
        self._own_redis = redis is None
        self._own_kafka = kafka is None
        self.redis: RedisServer | RedisClusterServers = redis or RedisServer(use_env=False)
        self.kafka = kafka or LocalKafka()
        self._base = settings
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="cachebus-stack-"))
        self.workers: list[WorkerProcess] = []
        self.settings = WorkerSettings()

    def start(self) -> LocalStack:
        from worker.kafka import ensure_topics

        if self._own_redis:
            self.redis.start()
        if self._own_kafka:
            self.kafka.start()
        base = self._base or WorkerSettings()
        self.settings = base.with_(
            redis_url=self.redis.url,
            redis_cluster=isinstance(self.redis, RedisClusterServers),
            kafka_bootstrap=self.kafka.bootstrap,
        )
        asyncio.run(ensure_topics(self.settings))
        return self

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop(10)
        self.workers.clear()
        if self._own_kafka:
            self.kafka.stop()
        if self._own_redis:
            self.redis.stop()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def agent_crashes(self) -> list[str]:
        """Lines where faust restarted a crashed agent in any worker's log. faust
        restarts it past its buffered events, so this must never happen."""
        return [
            line
            for w in self.workers
            for line in w.log_path.read_text("utf-8", "replace").splitlines()
            if "Crashed reason=" in line
        ]

    # -- workers -------------------------------------------------------------
    def start_worker(
        self, name: str | None = None, *, wait: bool = True, **overrides: Any
    ) -> WorkerProcess:
        name = name or f"w{len(self.workers) + 1}"
        settings = self.settings.with_(
            worker_id=name, web_port=overrides.pop("web_port", _free_port()), **overrides
        )
        env = {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1"}
        # The consistency monitor's canaries are keys of their own: test workers run
        # without them unless a test (or the caller's environment) asks for them.
        env.setdefault("CACHEBUS_MONITOR_SAMPLE_RATE", "0")
        log_path = self.log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        out = log_path.open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "worker"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        out.close()
        worker = WorkerProcess(name, settings, log_path, proc)
        self.workers.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    # -- Kafka helpers -------------------------------------------------------
    def publish(
        self, events: Iterable[Mapping[str, Any] | bytes], *, key: bytes | None = None
    ) -> int:
        """Produce events (dicts are JSON-encoded and keyed by doc_id) and wait for acks."""
        return asyncio.run(self.apublish(events, key=key))

    async def apublish(
        self, events: Iterable[Mapping[str, Any] | bytes], *, key: bytes | None = None
    ) -> int:
        from aiokafka import AIOKafkaProducer

        from worker.kafka import client_config

        producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            acks="all",
            linger_ms=2,
            max_request_size=8 * 1024 * 1024,
            **client_config(self.settings),
        )
        await producer.start()
        try:
            futures = []
            for event in events:
                if isinstance(event, bytes):
                    value, k = event, key
                else:
                    value = json.dumps(event).encode("utf-8")
                    doc = event.get("doc_id")
                    k = key if key is not None else (doc.encode() if isinstance(doc, str) else None)
                futures.append(await producer.send(self.settings.events_topic, value, key=k))
            await asyncio.gather(*futures)
            return len(futures)
        finally:
            await producer.stop()

    def read_topic(
        self,
        topic: str,
        *,
        count: int,
        timeout: float = 60.0,
        until: Callable[[list[dict[str, Any]]], bool] | None = None,
    ) -> list[dict[str, Any]]:
        """Read JSON records from the start of ``topic`` until there are ``count``
        of them and ``until(records)`` holds (or fail after ``timeout``)."""
        return asyncio.run(self.aread_topic(topic, count=count, timeout=timeout, until=until))

    async def aread_topic(
        self,
        topic: str,
        *,
        count: int,
        timeout: float = 60.0,
        until: Callable[[list[dict[str, Any]]], bool] | None = None,
    ) -> list[dict[str, Any]]:
        from aiokafka import AIOKafkaConsumer

        from worker.kafka import client_config

        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=self.settings.kafka_bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            **client_config(self.settings),
        )
        await consumer.start()
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        try:

            def done() -> bool:
                return len(out) >= count and (until is None or until(out))

            while not done() and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    out.extend(json.loads(r.value) for r in records)
        finally:
            await consumer.stop()
        if not done():
            raise TimeoutError(
                f"{topic}: {len(out)} records (wanted {count}"
                f"{' and a condition' if until else ''}) after {timeout}s"
            )
        return out

    def count_records(self, topic: str) -> int:
        """How many records ``topic`` holds (sum of its partitions' end offsets)."""
        return asyncio.run(self.acount_records(topic))

    async def acount_records(self, topic: str) -> int:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        from worker.kafka import client_config

        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            group_id=None,
            **client_config(self.settings),
        )
        await consumer.start()
        try:
            partitions = consumer.partitions_for_topic(topic) or set()
            if not partitions:
                await consumer._client.force_metadata_update()
                partitions = consumer.partitions_for_topic(topic) or set()
            ends = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
            return sum(ends.values())
        finally:
            await consumer.stop()

    def read_audits(
        self,
        *,
        count: int,
        timeout: float = 60.0,
        until: Callable[[list[dict[str, Any]]], bool] | None = None,
    ) -> list[dict[str, Any]]:
        return self.read_topic(self.settings.audit_topic, count=count, timeout=timeout, until=until)

    def read_dead_letters(self, *, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        return self.read_topic(self.settings.dlq_topic, count=count, timeout=timeout)


def document_event(
    event_type: str,
    doc_id: str,
    version: int,
    *,
    collection: str = "kb",
    **extra: Any,
) -> dict[str, Any]:
    """A valid document event (for demos and tests)."""
    from datetime import UTC, datetime

    return {
        "event_id": str(uuid.uuid4()),
        "event_type": event_type,
        "doc_id": doc_id,
        "collection": collection,
        "doc_version": version,
        "occurred_at": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "schema_version": 1,
        **extra,
    }


def by_event_id(audits: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    out: dict[str, list[Mapping[str, Any]]] = {}
    for audit in audits:
        out.setdefault(str(audit.get("event_id")), []).append(audit)
    return out
