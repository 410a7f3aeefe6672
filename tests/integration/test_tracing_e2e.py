"""Trace context across Kafka on the real worker (faust process), real Kafka and Redis:
the README's tracing example publishes inside a span, the worker continues the trace
(spans exported by ``OTEL_TRACES_EXPORTER=console`` into its log), and the audit event
and its record headers carry it; ``cachebus publish`` hands on ``TRACEPARENT``."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cachebus.tracing import TraceContext
from devtools.stack import LocalStack, WorkerProcess, document_event, settings_env

ROOT = Path(__file__).resolve().parents[2]
RUN_EXAMPLE = """
import json
from tests.readme_examples import run_example
ns = run_example("tracing")
span = ns["producer_span"]
print(json.dumps({"trace_id": ns["trace_id"], "span_id": format(span.span_id, "016x"),
                  "event_id": ns["event"]["event_id"], "audit": ns["audit"]}))
"""


def worker_spans(worker: WorkerProcess, trace_id: str, want: int) -> list[dict[str, Any]]:
    """The console exporter's spans of ``trace_id`` in the worker's log (one JSON line
    per span), once ``want`` of them are there."""
    deadline = time.monotonic() + 30
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        found = []
        for line in worker.log_path.read_text("utf-8", "replace").splitlines():
            if not line.startswith("{") or '"context"' not in line:
                continue
            span = json.loads(line)
            if span.get("context", {}).get("trace_id") == f"0x{trace_id}":
                found.append(span)
        if len(found) >= want:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{len(found)} spans of trace {trace_id}:\n{worker.log_tail()}")


async def audit_records(stack: LocalStack, count: int) -> list[Any]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        stack.settings.audit_topic,
        bootstrap_servers=stack.settings.kafka_bootstrap,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    out: list[Any] = []
    try:
        deadline = time.monotonic() + 60
        while len(out) < count and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                out.extend(records)
    finally:
        await consumer.stop()
    assert len(out) >= count, f"{len(out)} audit records, wanted {count}"
    return out


def test_trace_continues_through_the_worker(
    stack: LocalStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")  # the worker's spans, in its log
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "cachebus-worker-test")
    worker = stack.start_worker()
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("OTEL_")
    } | settings_env(stack.settings)

    # 1. The README example: a producer span, its context in the headers.
    done = subprocess.run(
        [sys.executable, "-c", RUN_EXAMPLE], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    trace_id, producer_span = result["trace_id"], result["span_id"]
    audit = result["audit"]
    assert audit["outcome"] == "applied"
    context = TraceContext.parse(audit["trace"]["traceparent"])
    assert context is not None and context.trace_id == trace_id

    spans = {s["name"]: s for s in worker_spans(worker, trace_id, 4)}
    assert {"cachebus.consume", "cachebus.plan", "cachebus.apply", "cachebus.audit"} <= set(
        spans
    )
    consume = spans["cachebus.consume"]
    assert consume["parent_id"] == f"0x{producer_span}"  # continues the producer's span
    assert consume["kind"] == "SpanKind.CONSUMER"
    assert consume["attributes"]["cachebus.event_id"] == result["event_id"]
    assert consume["resource"]["attributes"]["service.name"] == "cachebus-worker-test"
    for name in ("cachebus.plan", "cachebus.apply", "cachebus.audit"):
        assert spans[name]["parent_id"] == consume["context"]["span_id"], name
    # The audit names the worker's consume span.
    assert context.span_id == consume["context"]["span_id"].removeprefix("0x")

    # 2. `cachebus publish` hands on TRACEPARENT (no exporter of its own here).
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    event = document_event("updated", "traced-by-cli", 1)
    published = subprocess.run(
        [sys.executable, "-m", "worker.cli", "publish"], input=json.dumps(event), text=True,
        capture_output=True, env=env | {"TRACEPARENT": parent, "TRACESTATE": "ci=1"},
        timeout=60,
    )
    assert published.returncode == 0, published.stderr
    records = asyncio.run(audit_records(stack, 2))
    by_event = {json.loads(r.value)["event_id"]: r for r in records}
    record = by_event[event["event_id"]]
    headers = dict(record.headers)
    sent = TraceContext.parse(headers["traceparent"], headers.get("tracestate"))
    assert sent is not None and sent.trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert sent.tracestate == "ci=1"
    assert json.loads(record.value)["trace"] == sent.to_json()
    cli_spans = {s["name"]: s for s in worker_spans(worker, sent.trace_id, 4)}
    assert cli_spans["cachebus.consume"]["parent_id"] == "0xb7ad6b7169203331"

    # The README example's audit record carries the context in its headers too.
    first = dict(by_event[result["event_id"]].headers)
    assert TraceContext.parse(first["traceparent"]) == context
