"""The README's first command, ``make demo`` (``python -m devtools.demo``), end to end on the
session's Kafka broker (its own redis-server and worker): what it claims to show must be
what happened."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from devtools.kafka_broker import LocalKafka


def test_demo_shows_each_step_with_its_own_audit(kafka_broker: LocalKafka) -> None:
    env = {**os.environ, "CACHEBUS_KAFKA_BOOTSTRAP": kafka_broker.bootstrap}
    proc = subprocess.run(
        [sys.executable, "-m", "devtools.demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]

    def step(title: str) -> str:
        """The lines of one ``== title`` step."""
        match = re.search(rf"^== {re.escape(title)}.*?$(.*?)(?=^== |\Z)", out, re.M | re.S)
        assert match, f"step {title!r} missing from:\n{out}"
        return match.group(1)

    # Each step reports the audit of its own event (the audit topic is read back
    # partition by partition; the demo must not show another partition's audit).
    updated = step("vacation-policy is updated")
    assert "audited it after" in updated
    assert "applied, actions: tag doc:vacation-policy" in updated
    deleted = step("remote-work is deleted")
    assert "applied, actions: tombstone doc:remote-work" in deleted
    assert "not served (retired)" in deleted
    late = step("a broken event")
    assert "dead_lettered, reason: invalid_json" in late
    assert "skipped_stale, reason: doc_version 1 is not above" in late
    assert "holds it: invalid_json" in late

    trail = [line for line in step("audit trail").splitlines() if line.strip()]
    assert len(trail) == 7  # one audit event per input event
    stamps = [line.split()[0] for line in trail]
    assert stamps == sorted(stamps)  # in the order they were written
    assert sum("dead_lettered" in line for line in trail) == 1
    assert sum("skipped_stale" in line for line in trail) == 1
