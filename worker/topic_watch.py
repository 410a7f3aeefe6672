"""``[[debezium]]`` topics that do not exist yet: Kafka Connect creates a Debezium
topic on the table's first change, and the worker is often started first.

What the worker does (``tests/integration/test_worker_inputs.py`` checks it on a real
broker):

* **It never creates the topic.** aiokafka asks for the metadata of the topics a
  consumer subscribes to with ``allow_auto_topic_creation`` set (MetadataRequest v4+),
  so a broker with ``auto.create.topics.enable=true`` (Kafka's default) would create
  the topic at once, with the broker's ``num.partitions``, and Kafka Connect's
  ``topic.creation.*`` settings would never apply. :func:`forbid_auto_create` makes
  the metadata requests of this process that name a Debezium topic ask without it
  (faust itself only declares its internal topics).
* **It starts anyway** and logs one WARNING line per missing topic
  (:meth:`TopicWatch.check`), instead of aiokafka's ERROR ``Topic ... not found in
  cluster metadata`` at every metadata refresh and faust's ``Ignoring missing topic``
  at every rebalance (:class:`MissingTopicNoise` drops those for the watched topics).
* **It consumes the topic once it appears**: while a topic is missing, the consumer's
  metadata is refreshed every :data:`CHECK_INTERVAL` seconds (not only every
  ``consumer_metadata_max_age_ms``, 5 minutes), so the group rebalances onto its
  partitions within seconds; one INFO line says so.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Final

import structlog

log = structlog.get_logger("cachebus.worker")

CHECK_INTERVAL: Final = 5.0
"""Seconds between two metadata refreshes while a Debezium topic is missing."""

_protected: frozenset[str] = frozenset()
"""Topics no metadata request of this process may auto-create."""


def forbid_auto_create(topics: Iterable[str]) -> None:
    """Metadata requests of this process's Kafka clients that name one of ``topics``
    ask the broker not to create missing topics (idempotent; ``topics`` add up)."""
    global _protected
    _protected = _protected | frozenset(topics)
    if not _protected:
        return
    import aiokafka.client
    from aiokafka.protocol.metadata import MetadataRequest

    current = aiokafka.client.MetadataRequest
    if getattr(current, "cachebus_no_auto_create", False):
        return

    class NoAutoCreate(MetadataRequest):  # type: ignore[misc]  # aiokafka is untyped here
        """A metadata request that never creates a watched topic."""

        cachebus_no_auto_create = True

        def __init__(
            self, topics: list[str] | None = None, allow_auto_topic_creation: bool | None = None
        ) -> None:
            if allow_auto_topic_creation is None and topics and not _protected.isdisjoint(topics):
                allow_auto_topic_creation = False
            super().__init__(topics, allow_auto_topic_creation)

    # aiokafka.client looks the name up at every request (bootstrap, metadata updates).
    setattr(aiokafka.client, "MetadataRequest", NoAutoCreate)  # noqa: B010


class MissingTopicNoise(logging.Filter):
    """Drops aiokafka's and faust's repeated lines about a watched topic that is
    missing (:class:`TopicWatch` says it once)."""

    MESSAGES: Final = {
        "aiokafka.cluster": "Topic %s not found in cluster metadata",
        "faust.assignor.partition_assignor": "Ignoring missing topic: %r",
    }

    def __init__(self, topics: Iterable[str]) -> None:
        super().__init__()
        self.topics = frozenset(topics)

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        return not (
            record.msg == self.MESSAGES.get(record.name)
            and isinstance(args, tuple)
            and len(args) == 1
            and args[0] in self.topics
        )

    def install(self) -> MissingTopicNoise:
        for name in self.MESSAGES:
            logging.getLogger(name).addFilter(self)
        return self


def _consumer(app: Any) -> tuple[Any, Any]:
    """(faust's consumer thread, its aiokafka consumer), or Nones before they exist.
    The thread runs its own event loop: the aiokafka consumer is used through it."""
    consumer = getattr(app, "_consumer", None)
    thread = getattr(consumer, "_thread", None) if consumer is not None else None
    kafka = getattr(thread, "_consumer", None) if thread is not None else None
    return thread, kafka


async def _refresh(kafka: Any) -> None:
    """In the consumer's thread: one metadata update (its cluster listeners, the group
    coordinator among them, see the new topic and rejoin)."""
    await kafka._client.force_metadata_update()


class TopicWatch:
    """The Debezium topics the worker is waiting for (see the module doc)."""

    def __init__(self, topics: Iterable[str]) -> None:
        self.waiting = set(topics)
        """Topics not seen in the consumer's metadata yet."""
        self.announced: set[str] = set()
        """Missing topics already logged."""

    async def check(self, app: Any) -> None:
        """Refresh the consumer's metadata (while a topic is awaited), then log each
        topic missing for the first time, or appeared. Never raises (a failed refresh
        is retried at the next check)."""
        if not self.waiting:
            return
        try:
            await self._check(app)
        except Exception as exc:
            log.debug("input topic check failed", error=repr(exc))

    async def _check(self, app: Any) -> None:
        thread, kafka = _consumer(app)
        if thread is None or kafka is None:
            return  # the consumer is not started yet: next time
        await thread.call_thread(_refresh, kafka)
        cluster = kafka._client.cluster
        for topic in sorted(self.waiting):
            partitions = cluster.partitions_for_topic(topic)
            if partitions:
                self.waiting.discard(topic)
                if topic in self.announced:
                    log.info(
                        "debezium topic appeared; consuming it",
                        topic=topic,
                        partitions=len(partitions),
                    )
            elif topic not in self.announced and topic in cluster.unauthorized_topics:
                self.announced.add(topic)
                log.warning(
                    "debezium topic not authorized: the worker's Kafka principal needs "
                    "DESCRIBE and READ on it; it is consumed once granted",
                    topic=topic,
                    check_every_s=CHECK_INTERVAL,
                )
            elif topic not in self.announced:
                self.announced.add(topic)
                log.warning(
                    "debezium topic does not exist yet; the worker consumes it once Kafka "
                    "Connect creates it (on the table's first change) and never creates it "
                    "itself",
                    topic=topic,
                    check_every_s=CHECK_INTERVAL,
                )
