"""worker.topic_watch's pure parts: metadata requests that never create a watched
topic, and the library lines about it that are dropped (the behaviour on a real
broker: tests/integration/test_worker_inputs.py)."""

from __future__ import annotations

import logging
import uuid

import aiokafka.client
from aiokafka.protocol.metadata import MetadataRequest_v1, MetadataRequest_v5

from worker.topic_watch import MissingTopicNoise, forbid_auto_create


def test_requests_naming_a_watched_topic_never_auto_create() -> None:
    watched, other = f"pg.public.t-{uuid.uuid4().hex[:6]}", "documents.events"
    forbid_auto_create([watched])
    forbid_auto_create([watched])  # idempotent: one patch
    request = aiokafka.client.MetadataRequest
    assert getattr(request, "cachebus_no_auto_create", False)
    assert request([other, watched]).build(MetadataRequest_v5).allow_auto_topic_creation is False
    # Other requests are left as aiokafka makes them.
    assert request([other]).build(MetadataRequest_v5).allow_auto_topic_creation is True
    assert request(None).build(MetadataRequest_v5).allow_auto_topic_creation is True
    assert request([watched], True).build(MetadataRequest_v5).allow_auto_topic_creation is True
    assert request([watched]).build(MetadataRequest_v1).topics == [watched]  # no such field


def test_missing_topic_noise_drops_only_the_watched_topics_lines() -> None:
    noise = MissingTopicNoise(["pg.t"])

    def record(name: str, msg: str, topic: str) -> logging.LogRecord:
        return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, (topic,), None)

    cluster = "Topic %s not found in cluster metadata"
    assert not noise.filter(record("aiokafka.cluster", cluster, "pg.t"))
    assert noise.filter(record("aiokafka.cluster", cluster, "events"))
    assert not noise.filter(
        record("faust.assignor.partition_assignor", "Ignoring missing topic: %r", "pg.t")
    )
    assert noise.filter(record("aiokafka.cluster", "Topic %s is not authorized", "pg.t"))
