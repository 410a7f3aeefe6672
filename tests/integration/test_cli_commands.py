"""CLI commands end to end on a real Kafka broker: `audit tail` (follows until Ctrl-C /
SIGTERM, `-n` = the last N, time order across partitions, `-m` = stop after N),
`publish` creating a missing topic with CACHEBUS_TOPIC_PARTITIONS partitions, and
`python -m devtools.demo --help`."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from devtools.kafka_broker import LocalKafka
from devtools.stack import document_event
from worker.audit_tail import topic_partitions
from worker.kafka import acreate_topics
from worker.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHEBUS_")}
    return {**env, **extra}


def _audit(doc: str, n: int) -> dict[str, object]:
    return {
        "event_id": str(uuid.uuid4()), "event_type": "updated", "doc_id": doc, "doc_version": n,
        "outcome": "applied", "actions": [], "keys_removed": 0, "worker_id": "t",
        "processed_at": "2026-01-01T00:00:00Z", "source": {"partition": 0, "offset": n},
    }


async def _produce(bootstrap: str, topic: str, records: Sequence[tuple[int, int, dict]]) -> None:
    """(partition, timestamp_ms, audit) records, in this order."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for partition, stamp, audit in records:
            await producer.send_and_wait(
                topic, json.dumps(audit).encode(), partition=partition, timestamp_ms=stamp
            )
    finally:
        await producer.stop()


def _topic(kafka: LocalKafka, partitions: int = 3) -> str:
    topic = f"audit-cli-{uuid.uuid4().hex[:8]}"
    asyncio.run(acreate_topics(kafka.bootstrap, {topic: partitions}))
    return topic


def _tail(kafka: LocalKafka, topic: str, *argv: str,
          json_lines: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", "audit", "tail", *(["--json"] * json_lines), *argv],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
        env=_env(CACHEBUS_KAFKA_BOOTSTRAP=kafka.bootstrap, CACHEBUS_AUDIT_TOPIC=topic),
    )


def _docs(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return [json.loads(line)["doc_id"] for line in result.stdout.splitlines()]


# Written partition by partition; in time order they interleave.
T0 = int(time.time() * 1000) - 60_000
SPREAD = [
    (0, T0 + 10, "a"), (0, T0 + 40, "d"), (0, T0 + 70, "g"),
    (1, T0 + 20, "b"), (1, T0 + 50, "e"),
    (2, T0 + 30, "c"), (2, T0 + 60, "f"), (2, T0 + 80, "h"),
]


def _spread(kafka: LocalKafka) -> str:
    topic = _topic(kafka)
    asyncio.run(_produce(kafka.bootstrap, topic,
                         [(p, t, _audit(doc, i)) for i, (p, t, doc) in enumerate(SPREAD)]))
    return topic


def test_from_beginning_is_in_time_order(kafka_broker: LocalKafka) -> None:
    topic = _spread(kafka_broker)
    assert _docs(_tail(kafka_broker, topic, "--from-beginning")) == list("abcdefgh")
    # with -n: the first N; -m: stop after N (same here)
    assert _docs(_tail(kafka_broker, topic, "--from-beginning", "-n", "3")) == list("abc")
    assert _docs(_tail(kafka_broker, topic, "--from-beginning", "-m", "2")) == list("ab")


def test_n_is_the_last_n_over_all_partitions(kafka_broker: LocalKafka) -> None:
    topic = _spread(kafka_broker)
    assert _docs(_tail(kafka_broker, topic, "-n", "3")) == list("fgh")
    assert _docs(_tail(kafka_broker, topic, "-n", "100")) == list("abcdefgh")
    assert _docs(_tail(kafka_broker, topic, "-n", "0")) == []
    human = _tail(kafka_broker, topic, "-n", "1", json_lines=False)
    assert human.returncode == 0 and "updated h v7" in human.stdout, human.stderr


class Follow:
    """`cachebus audit tail --json ARGS` running, its output read line by line."""

    def __init__(self, kafka: LocalKafka, topic: str, *argv: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "audit", "tail", "--json", *argv],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
            env=_env(CACHEBUS_KAFKA_BOOTSTRAP=kafka.bootstrap, CACHEBUS_AUDIT_TOPIC=topic),
        )
        self.out: queue.Queue[str | None] = queue.Queue()
        self.err: queue.Queue[str | None] = queue.Queue()
        for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._pump, args=(stream, lines), daemon=True).start()
        first = self.err.get(timeout=60)
        assert first is not None and first.startswith(f"cachebus: following {topic}"), first

    @staticmethod
    def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
        for line in stream:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    def docs(self, count: int) -> list[str]:
        return [json.loads(str(self.out.get(timeout=30)))["doc_id"] for _ in range(count)]

    def finish(self, timeout: float = 15) -> tuple[int, list[str], list[str]]:
        """Exit code, then the rest of stdout and stderr."""
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        rest = []
        for lines in (self.out, self.err):
            got = []
            while (line := lines.get(timeout=10)) is not None:
                got.append(line)
            rest.append(got)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return code, rest[0], rest[1]


def test_no_flags_follows_until_sigterm(kafka_broker: LocalKafka) -> None:
    """No flags: old audits are not printed, new ones are, until SIGTERM: exit 0."""
    topic = _spread(kafka_broker)
    tail = Follow(kafka_broker, topic)
    now = int(time.time() * 1000)
    asyncio.run(_produce(kafka_broker.bootstrap, topic,
                         [(1, now, _audit("new-1", 1)), (2, now + 1, _audit("new-2", 2))]))
    assert sorted(tail.docs(2)) == ["new-1", "new-2"]
    time.sleep(2.5)  # the old behaviour exited after 2 s idle
    assert tail.proc.poll() is None
    tail.proc.send_signal(signal.SIGTERM)
    code, out, err = tail.finish()
    assert code == 0 and out == [] and err == []  # no traceback, no "Unclosed ..."


def test_ctrl_c_stops_a_follow_cleanly(kafka_broker: LocalKafka) -> None:
    topic = _spread(kafka_broker)
    tail = Follow(kafka_broker, topic, "-n", "2", "-f")
    assert tail.docs(2) == ["g", "h"]
    tail.proc.send_signal(signal.SIGINT)
    assert tail.finish() == (0, [], [])


def test_max_count_stops_a_follow(kafka_broker: LocalKafka) -> None:
    topic = _topic(kafka_broker)
    tail = Follow(kafka_broker, topic, "-m", "1")
    now = int(time.time() * 1000)
    asyncio.run(_produce(kafka_broker.bootstrap, topic, [(0, now, _audit("only", 1))]))
    assert tail.docs(1) == ["only"]
    assert tail.finish(30) == (0, [], [])


def test_tail_of_a_missing_topic_does_not_create_it(kafka_broker: LocalKafka) -> None:
    topic = f"audit-missing-{uuid.uuid4().hex[:8]}"
    result = _tail(kafka_broker, topic)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"cachebus: audit topic {topic!r} does not exist at {kafka_broker.bootstrap} (the "
        "worker creates it when it starts; check CACHEBUS_AUDIT_TOPIC)"
    ]
    settings = WorkerSettings(kafka_bootstrap=kafka_broker.bootstrap)
    assert asyncio.run(topic_partitions(settings, topic)) is None


def test_publish_creates_a_missing_topic_with_the_configured_partitions(
    kafka_broker: LocalKafka,
) -> None:
    topic = f"events-cli-{uuid.uuid4().hex[:8]}"
    events = "\n".join(json.dumps(document_event("created", f"d{i}", 1)) for i in range(20))
    env = _env(CACHEBUS_KAFKA_BOOTSTRAP=kafka_broker.bootstrap, CACHEBUS_EVENTS_TOPIC=topic,
               CACHEBUS_TOPIC_PARTITIONS="4")
    cmd = [sys.executable, "-m", "worker.cli", "publish"]
    result = subprocess.run(cmd, input=events, capture_output=True, text=True, cwd=ROOT, env=env,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"created topic {topic} with 4 partitions" in result.stderr
    assert f"published 20 events to {topic}" in result.stdout
    settings = WorkerSettings(kafka_bootstrap=kafka_broker.bootstrap)
    assert asyncio.run(topic_partitions(settings, topic)) == [0, 1, 2, 3]
    again = subprocess.run(cmd, input=events, capture_output=True, text=True, cwd=ROOT, env=env,
                           timeout=60)
    assert again.returncode == 0 and "created topic" not in again.stderr, again.stderr


def test_demo_help_prints_help_and_starts_nothing() -> None:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "devtools.demo", "--help"], capture_output=True,
                            text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m devtools.demo")
    assert "starting services" not in result.stdout and result.stderr == ""
    assert time.monotonic() - started < 20
