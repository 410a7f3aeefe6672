"""What the change-data-capture test and demo share: the documents table, a Kafka topic
reset, and :class:`TopicTail`, a background reader of the Debezium and audit topics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

#: The table the README's ``debezium-rules`` example maps (``pg.public.documents``).
DOCUMENTS_DDL = """
CREATE TABLE documents (
    id           text PRIMARY KEY,
    collection   text NOT NULL,
    title        text NOT NULL,
    body         text NOT NULL,
    rev          integer NOT NULL DEFAULT 1,
    tags         text[] NOT NULL DEFAULT '{}',
    chunks       jsonb NOT NULL DEFAULT '[]',
    content_hash text
);
-- Deletes carry the whole row (collection, tags, chunks), not just the primary key.
ALTER TABLE documents REPLICA IDENTITY FULL;
"""


@dataclass(frozen=True)
class Record:
    """One Kafka record, its value decoded from JSON (None: a tombstone)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: Any


def debezium_payload(value: Any) -> Any:
    """The envelope of a Debezium value, with or without the JSON converter's schema part."""
    if isinstance(value, dict) and "payload" in value and "schema" in value:
        return value["payload"]
    return value


async def areset_topic(bootstrap: str, topic: str, partitions: int, timeout: float = 30.0) -> None:
    """Delete ``topic`` if it exists and create it empty with ``partitions`` partitions."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError, UnknownTopicOrPartitionError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if topic in await admin.list_topics():
            with contextlib.suppress(UnknownTopicOrPartitionError):
                await admin.delete_topics([topic])
        deadline = time.monotonic() + timeout
        while True:
            try:
                result = await admin.create_topics(
                    [NewTopic(topic, num_partitions=partitions, replication_factor=1)]
                )
            except TopicAlreadyExistsError:
                result = None
            errors = [] if result is None else [e for _, e, *_ in result.topic_errors if e]
            if result is not None and not errors:
                return
            # Still marked for deletion: retry until the broker has finished deleting it.
            if time.monotonic() > deadline:
                raise RuntimeError(f"could not re-create topic {topic}: {errors or 'exists'}")
            await asyncio.sleep(0.2)
    finally:
        await admin.close()


def reset_topic(bootstrap: str, topic: str, partitions: int) -> None:
    asyncio.run(areset_topic(bootstrap, topic, partitions))


async def adelete_topic(bootstrap: str, topic: str) -> None:
    """Delete ``topic`` if it exists."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import UnknownTopicOrPartitionError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if topic in await admin.list_topics():
            with contextlib.suppress(UnknownTopicOrPartitionError):
                await admin.delete_topics([topic])
    finally:
        await admin.close()


def delete_topic(bootstrap: str, topic: str) -> None:
    asyncio.run(adelete_topic(bootstrap, topic))


class TopicTail:
    """Reads ``topics`` from their beginning in a background thread and keeps every record
    (in each partition's order), until :meth:`stop`. Tests and the demo wait on it."""

    def __init__(self, bootstrap: str, topics: Iterable[str]) -> None:
        self.bootstrap = bootstrap
        self.topics = tuple(topics)
        self._records: list[Record] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="topic-tail", daemon=True)

    def start(self) -> TopicTail:
        self._thread.start()
        if not self._started.wait(30.0):
            raise RuntimeError(f"could not start reading {self.topics} within 30s")
        if self._error is not None:
            raise RuntimeError(f"reading {self.topics} failed: {self._error!r}")
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15.0)

    def __enter__(self) -> TopicTail:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def records(self, topic: str | None = None) -> list[Record]:
        with self._cond:
            return [r for r in self._records if topic is None or r.topic == topic]

    def wait(
        self,
        predicate: Callable[[list[Record]], Any],
        timeout: float = 60.0,
        what: str = "a condition",
    ) -> Any:
        """Block until ``predicate(records)`` is truthy; return its value.

        Raises:
            TimeoutError: not within ``timeout`` (naming ``what``).
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if self._error is not None:
                    raise RuntimeError(f"reading {self.topics} failed: {self._error!r}")
                found = predicate(list(self._records))
                if found:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{what}: not seen within {timeout}s")
                self._cond.wait(min(left, 0.5))

    def _run(self) -> None:
        try:
            asyncio.run(self._consume())
        except BaseException as exc:  # surfaced by wait() / start()
            self._error = exc
            self._started.set()
            with self._cond:
                self._cond.notify_all()

    async def _consume(self) -> None:
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(
            *self.topics,
            bootstrap_servers=self.bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            metadata_max_age_ms=1000,
        )
        await consumer.start()
        self._started.set()
        try:
            while not self._stop.is_set():
                batch = await consumer.getmany(timeout_ms=100)
                if not batch:
                    continue
                got = [
                    Record(
                        r.topic,
                        r.partition,
                        r.offset,
                        r.key,
                        json.loads(r.value) if r.value else None,
                    )
                    for records in batch.values()
                    for r in records
                ]
                with self._cond:
                    self._records.extend(got)
                    self._cond.notify_all()
        finally:
            await consumer.stop()
