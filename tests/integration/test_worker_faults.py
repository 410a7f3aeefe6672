"""Faults on real processes: worker SIGKILL mid-stream and Redis down mid-stream.
Every event ends up applied and audited; nothing is lost or acked early.

SIGTERM during a Redis or Kafka outage (exit code, committed offsets against the
audits, a restart applying everything): tests/integration/test_worker_lifecycle.py."""

from __future__ import annotations

import time
from pathlib import Path

from cachebus.keys import KeyScheme
from devtools.kafka_broker import LocalKafka
from devtools.redis_servers import RedisServer
from devtools.stack import LocalStack, by_event_id, document_event


def _stream(docs: int, versions: int) -> list[dict]:
    """Events of many documents, each with increasing versions (created, then updates)."""
    events = []
    for v in range(1, versions + 1):
        for d in range(docs):
            kind = "created" if v == 1 else "updated"
            events.append(document_event(kind, f"doc-{d}", v, collection=f"c{d % 3}"))
    return events


def _assert_all_applied(stack: LocalStack, events: list[dict], docs: int, versions: int) -> None:
    wanted = {e["event_id"] for e in events}
    audits = stack.read_audits(
        count=len(events), timeout=120,
        until=lambda got: wanted <= {a["event_id"] for a in got},
    )
    grouped = by_event_id(audits)
    missing = [e["event_id"] for e in events if e["event_id"] not in grouped]
    assert missing == []
    # Every event has an "applied" audit; a re-delivery after the crash may add
    # a second audit (re-applied, or skipped once its mark was raised).
    for event in events:
        outcomes = [a["outcome"] for a in grouped[event["event_id"]]]
        assert "applied" in outcomes, outcomes
    client = stack.redis.client()
    keys = KeyScheme(stack.settings.prefix)
    marks = client.mget([keys.hwm(f"doc-{d}") for d in range(docs)])
    assert all(m is not None and int(m.split(b":")[0]) == versions for m in marks)
    client.close()


def test_worker_sigkill_mid_stream(stack: LocalStack) -> None:
    """SIGKILL the worker while it works through 6000 events, start it again:
    every event is applied and audited, none lost."""
    docs, versions = 600, 10
    events = _stream(docs, versions)
    worker = stack.start_worker(batch_max=10)
    stack.publish(events)
    stack.read_audits(count=300, timeout=60)
    worker.kill()
    audited = stack.count_records(stack.settings.audit_topic)
    assert 300 <= audited < len(events), f"not killed mid-stream: {audited} audited"
    stack.start_worker("w2", batch_max=100)
    _assert_all_applied(stack, events, docs, versions)


def test_redis_down_mid_stream(redis_server: RedisServer, kafka_broker: LocalKafka,
                               tmp_path: Path) -> None:
    """Redis stops for a few seconds mid-stream: the worker retries with backoff,
    acks nothing meanwhile, and catches up when Redis returns."""
    durable = RedisServer(use_env=False, extra_config=["appendonly yes", "appendfsync always"])
    durable.start()
    uid = str(time.time_ns())[-8:]
    from worker.settings import WorkerSettings

    settings = WorkerSettings(
        prefix="f", events_topic=f"ev-{uid}", audit_topic=f"au-{uid}", dlq_topic=f"dl-{uid}",
        consumer_group=f"g-{uid}", redis_timeout=0.5, batch_wait_ms=10,
    )
    try:
        with LocalStack(redis=durable, kafka=kafka_broker, settings=settings,
                        log_dir=tmp_path) as stack:
            docs, versions = 100, 10
            events = _stream(docs, versions)
            worker = stack.start_worker(batch_max=20)
            stack.publish(events[:300])
            stack.read_audits(count=100)
            durable.kill()  # Redis is gone (its append-only file stays)
            stack.publish(events[300:])
            time.sleep(1)
            frozen = stack.count_records(stack.settings.audit_topic)
            time.sleep(3)
            # Nothing is processed, so nothing is audited or acked, while Redis is away.
            assert stack.count_records(stack.settings.audit_topic) == frozen < len(events)
            assert worker.alive
            durable.start()  # back on the same port, data from the append-only file
            _assert_all_applied(stack, events, docs, versions)
            log = worker.log_path.read_text()
            assert "redis unavailable; retrying batch" in log
    finally:
        durable.stop()
