"""``make demo-cdc`` (``python -m devtools.demo_cdc``) end to end on the session's Kafka
broker (its own PostgreSQL, Kafka Connect, redis-server and worker): what it claims to show
must be what happened."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from devtools.kafka_broker import LocalKafka

pytestmark = [pytest.mark.kafka, pytest.mark.redis]


def test_demo_cdc_shows_each_change_retired_with_its_audit(kafka_broker: LocalKafka) -> None:
    env = {**os.environ, "CACHEBUS_KAFKA_BOOTSTRAP": kafka_broker.bootstrap}
    proc = subprocess.run(
        [sys.executable, "-m", "devtools.demo_cdc"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]

    def step(title: str) -> str:
        """The lines of one ``== title`` step."""
        match = re.search(rf"^== {re.escape(title)}.*?$(.*?)(?=^== |\Z)", out, re.M | re.S)
        assert match, f"step {title!r} missing from:\n{out}"
        return match.group(1)

    inserted = step("INSERT three documents")
    assert inserted.count("worker audited created") == 3
    cached = step("the search service answers")
    assert "cache HIT" in cached

    updated = step("UPDATE vacation-policy")
    assert "sql> UPDATE documents" in updated
    assert "worker audited updated vacation-policy" in updated
    assert "applied, actions: tag doc:vacation-policy" in updated
    retired = updated.split("are retired:", 1)[1]
    assert "cache MISS" in retired and "30 vacation days" in retired

    deleted = step("DELETE remote-work")
    assert "worker audited deleted remote-work" in deleted
    assert "applied, actions: tombstone doc:remote-work" in deleted
    assert "skipped_tombstone" in deleted
    assert "not served (retired)" in deleted

    trail = [line for line in step("audit trail").splitlines() if re.match(r"\s+\d{4}-", line)]
    assert len(trail) == 6, out  # 3 inserts, 1 update, 1 delete, 1 Debezium tombstone
    assert sum("applied" in line for line in trail) == 5
    assert sum("skipped_tombstone" in line for line in trail) == 1
    # In the order written: the delete's audit, then its tombstone's.
    delete_at = next(i for i, line in enumerate(trail) if "deleted remote-work" in line)
    tombstone_at = next(i for i, line in enumerate(trail) if "skipped_tombstone" in line)
    assert delete_at < tombstone_at
    # Progress of the slow steps goes to stderr.
    assert "Kafka Connect ready" in proc.stderr
    assert "snapshot done, streaming" in proc.stderr
