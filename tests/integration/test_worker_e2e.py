"""The worker end to end: real Kafka producer -> faust worker process -> real
Redis, audits consumed from the audit topic (the README's guarantees 1-5)."""

from __future__ import annotations

import pytest

from cachebus import CacheBus, SearchHit
from devtools.stack import LocalStack, by_event_id, document_event
from tests.guarantees import V, check_guarantees


def _bus(stack: LocalStack) -> CacheBus:
    return CacheBus(stack.redis.client(), stack.settings)


def test_guarantees_created_updated_deleted(any_stack: LocalStack) -> None:
    """created/updated/deleted retire exactly what guarantees 1-3 say; canaries
    stay; on a standalone Redis and on Redis Cluster (no CROSSSLOT anywhere)."""
    stack = any_stack
    stack.start_worker()
    check_guarantees(stack)


def test_audits_match_one_to_one_and_skip_stale_and_duplicates(any_stack: LocalStack) -> None:
    """One audit per input event; older versions and re-deliveries are skipped."""
    stack = any_stack
    stack.start_worker()
    v1 = document_event("created", "doc", 1)
    v3 = document_event("updated", "doc", 3)
    v2 = document_event("updated", "doc", 2)  # arrives after v3: stale
    others = [document_event("created", f"o{i}", 1) for i in range(20)]
    stack.publish([v1, v3, v2, v3, *others])  # v3 twice: a re-delivery
    audits = stack.read_audits(count=24)
    grouped = by_event_id(audits)
    assert len(grouped) == 23
    assert [a["outcome"] for a in grouped[v3["event_id"]]] == ["applied", "skipped_duplicate"]
    assert grouped[v2["event_id"]][0]["outcome"] == "skipped_stale"
    assert grouped[v1["event_id"]][0]["outcome"] == "applied"
    assert all(grouped[o["event_id"]][0]["outcome"] == "applied" for o in others)
    hwm = stack.redis.client().get(_bus(stack).invalidator.core.keys.hwm("doc"))
    assert hwm is not None and hwm.startswith(b"3:")
    for audit in audits:
        assert audit["worker_id"] == "w1" and audit["replay"] is False
        assert audit["source"]["topic"] == stack.settings.events_topic


@pytest.mark.parametrize("doc_id", ["*", "a*", "[ab]", "x\\", "{t}", "a:b"])
def test_hostile_ids_touch_only_their_keys(stack: LocalStack, doc_id: str) -> None:
    """A delete of a glob-character id retires only that document (canaries intact)."""
    stack.start_worker()
    bus = _bus(stack)
    canaries = ["a", "ab", "b", "x", "t", "canary"]
    for doc in [*canaries, doc_id]:
        bus.document_embeddings("m").set(doc, "c", V, "h")
        bus.search_results("other").set(f"q-{doc}", [SearchHit(doc, 1.0)])
    stack.publish([document_event("deleted", doc_id, 1)])
    stack.read_audits(count=1)
    assert bus.document_embeddings("m").get(doc_id, "c") is None
    assert bus.search_results("other").get(f"q-{doc_id}") is None
    for doc in canaries:
        assert bus.document_embeddings("m").get(doc, "c") is not None, doc
        assert bus.search_results("other").get(f"q-{doc}") is not None, doc


def test_scan_rule_health_metrics_and_cli(stack: LocalStack, tmp_path) -> None:
    """A pattern-scan rule removes a document's legacy keys (escaped, canaries
    intact); /health and /metrics answer; `cachebus publish` refuses invalid
    lines and `cachebus audit tail` prints the trail."""
    import json
    import os
    import subprocess
    import sys
    import urllib.request

    from devtools.stack import settings_env

    rules = tmp_path / "rules.toml"
    rules.write_text('[[scan]]\nevents = ["deleted"]\npattern = "legacy:docembed:{doc_id}:*"\n')
    worker = stack.start_worker(rules_file=str(rules))
    client = stack.redis.client()
    prefix = stack.settings.prefix
    for doc in ["a*", "ab", "a"]:
        for chunk in range(30):
            client.set(f"{prefix}:legacy:docembed:{doc}:{chunk}", b"x")

    lines = [
        json.dumps(document_event("deleted", "a*", 1)),
        '{"event_type": "deleted"}',
        json.dumps(document_event("created", "fresh", 1)),
    ]
    env = {**os.environ, **settings_env(stack.settings)}
    published = subprocess.run(
        [sys.executable, "-m", "worker.cli", "publish"], input="\n".join(lines), text=True,
        capture_output=True, env=env, timeout=60,
    )
    assert published.returncode == 1  # one line refused
    assert "line 2: refused (schema_violation)" in published.stderr
    assert "published 2 events" in published.stdout

    audits = stack.read_audits(count=2)
    deleted = next(a for a in audits if a["doc_id"] == "a*")
    scan = next(a for a in deleted["actions"] if a["kind"] == "scan")
    assert scan["target"] == f"{prefix}:legacy:docembed:a\\*:*"
    assert scan["detail"]["keys_removed"] == 30 and deleted["keys_removed"] >= 30
    assert client.get(f"{prefix}:legacy:docembed:a*:0") is None
    assert client.get(f"{prefix}:legacy:docembed:ab:0") == b"x"
    assert client.get(f"{prefix}:legacy:docembed:a:0") == b"x"

    tail = subprocess.run(
        [sys.executable, "-m", "worker.cli", "audit", "tail", "--from-beginning", "-n", "2"],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert tail.returncode == 0 and len(tail.stdout.splitlines()) == 2
    assert "applied" in tail.stdout and "deleted a*" in tail.stdout

    port = worker.settings.web_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as resp:
        health = json.loads(resp.read())
    assert health["status"] == "ok" and health["events_processed"] >= 2
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    assert 'cachebus_events_total{outcome="applied"}' in text
    assert "cachebus_apply_seconds_count" in text and "cachebus_consumer_lag" in text
