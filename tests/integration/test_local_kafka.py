"""Integration tests of :class:`devtools.kafka_broker.LocalKafka` against a REAL Kafka broker.

Nothing here is skipped when the broker cannot start: the ``kafka`` fixture then raises, and
every test that uses it errors, so a missing Java/Maven or a broken broker turns CI red.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from devtools.kafka_broker import LocalKafka, acreate_topics, create_topics

pytestmark = pytest.mark.kafka

N_MESSAGES = 10


@pytest.fixture(scope="module")
def kafka() -> Iterator[LocalKafka]:
    """One broker for the module; started eagerly so a failure is an error, never a skip."""
    broker = LocalKafka()
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def _topic() -> str:
    return f"test-local-kafka-{uuid.uuid4().hex[:10]}"


def _expected() -> list[tuple[bytes, bytes]]:
    return [(f"key-{i}".encode(), f"value-{i}".encode()) for i in range(N_MESSAGES)]


async def _produce(bootstrap: str, topic: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in _expected():
            await producer.send_and_wait(topic, value=value, key=key)
    finally:
        await producer.stop()


async def _consume(
    bootstrap: str, topic: str, want: int, timeout: float = 60.0
) -> list[tuple[bytes | None, bytes | None]]:
    """Read ``want`` messages with a fresh consumer group, starting at the earliest offset."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"test-group-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    got: list[tuple[bytes | None, bytes | None]] = []
    try:
        deadline = time.monotonic() + timeout
        while len(got) < want and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                got.extend((r.key, r.value) for r in records)
    finally:
        await consumer.stop()
    return got


def _assert_all_back(got: list[tuple[bytes | None, bytes | None]]) -> None:
    # Three partitions: order is only guaranteed per partition, so compare as sets.
    assert len(got) == N_MESSAGES, got
    assert sorted(got) == sorted(_expected())


def test_bootstrap_is_loopback(kafka: LocalKafka) -> None:
    host, _, port = kafka.bootstrap.rpartition(":")
    if not kafka.external:
        assert host == "127.0.0.1"
        assert kafka.running
        assert kafka.cluster_id is not None and len(kafka.cluster_id) == 22
    assert int(port) > 0


async def test_produce_and_consume_keyed_messages(kafka: LocalKafka) -> None:
    topic = _topic()
    await acreate_topics(kafka.bootstrap, {topic: 3})
    await acreate_topics(kafka.bootstrap, {topic: 3})  # already exists: must be ignored
    await _produce(kafka.bootstrap, topic)
    _assert_all_back(await _consume(kafka.bootstrap, topic, N_MESSAGES))


async def test_restart_and_kill_keep_data(kafka: LocalKafka) -> None:
    if kafka.external:
        pytest.skip("CACHEBUS_KAFKA_BOOTSTRAP points at a broker this test does not own")
    topic = _topic()
    bootstrap = kafka.bootstrap
    create_topics(bootstrap, {topic: 3})  # the sync wrapper, from inside a running loop
    await _produce(bootstrap, topic)

    kafka.restart()  # graceful: SIGTERM + start on the same data dir and ports
    assert kafka.running
    assert kafka.bootstrap == bootstrap
    _assert_all_back(await _consume(bootstrap, topic, N_MESSAGES))

    kafka.kill()  # a crash: SIGKILL, then a cold start with log recovery
    assert not kafka.running
    kafka.start()
    assert kafka.bootstrap == bootstrap
    _assert_all_back(await _consume(bootstrap, topic, N_MESSAGES))


async def test_kept_data_dir_survives_a_new_instance(tmp_path: Path) -> None:
    if os.environ.get("CACHEBUS_KAFKA_BOOTSTRAP"):
        pytest.skip("CACHEBUS_KAFKA_BOOTSTRAP set: LocalKafka starts no broker")
    topic = _topic()
    first = LocalKafka(tmp_path / "kafka")
    with first:
        port, cluster_id = first.port, first.cluster_id
        await acreate_topics(first.bootstrap, {topic: 3})
        await _produce(first.bootstrap, topic)
    assert (tmp_path / "kafka" / "data" / "meta.properties").is_file()  # kept on stop

    with LocalKafka(tmp_path / "kafka") as second:
        assert second.cluster_id == cluster_id
        assert second.port == port  # remembered, since it was still free
        _assert_all_back(await _consume(second.bootstrap, topic, N_MESSAGES))


def test_external_bootstrap_starts_nothing(
    kafka: LocalKafka, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CACHEBUS_KAFKA_BOOTSTRAP", kafka.bootstrap)
    other = LocalKafka()
    with other:
        assert other.external
        assert other.bootstrap == kafka.bootstrap
        assert other.data_dir is None
        with pytest.raises(RuntimeError, match="external"):
            other.restart()
    assert kafka.external or kafka.running  # stopping the external handle left it alone


def test_startup_failure_raises_with_log_tail() -> None:
    if os.environ.get("CACHEBUS_KAFKA_BOOTSTRAP"):
        pytest.skip("CACHEBUS_KAFKA_BOOTSTRAP set: LocalKafka starts no broker")
    # Occupy the broker port so the JVM fails to bind and exits: start() must say why.
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        broker = LocalKafka(port=port, startup_timeout=60)
        try:
            with pytest.raises(RuntimeError) as info:
                broker.start()
        finally:
            broker.stop()
    message = str(info.value)
    assert "exited early" in message or "not ready" in message
    assert "last 60 lines" in message
    assert "Address already in use" in message or "bind" in message.lower()
