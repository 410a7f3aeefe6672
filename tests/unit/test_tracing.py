"""W3C trace context across Kafka, without services: extraction from record headers,
the spans of a batch (in-memory exporter), the audit event's ``trace`` and headers,
injection by producers, the library's layer spans, and the no-otel fallbacks."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cachebus import tracing as lib
from cachebus.tracing import TraceContext
from tests.hostile_events import encode, valid_event
from worker import tracing
from worker.audit import SourceRecord
from worker.processor import Outbound, Processor
from worker.rules import load_rules
from worker.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """The worker's spans go to an in-memory exporter (the global provider untouched)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "TRACER_PROVIDER", provider)
    yield exporter
    provider.shutdown()


def rec(value: bytes, offset: int, headers: tuple[tuple[str, bytes], ...] = ()) -> SourceRecord:
    return SourceRecord(
        "documents.events", 0, offset, int(time.time() * 1000), None, value, headers
    )


async def process(*records: SourceRecord) -> Outbound:
    processor = Processor(None, WorkerSettings(), load_rules(), worker_id="w:1", dry_run=True)
    return await processor.process(list(records))


def audit_validator() -> Draft202012Validator:
    schema = json.loads((ROOT / "schemas/audit-event.schema.json").read_text("utf-8"))
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (PARENT, True),
        (PARENT.encode(), True),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", True),  # not sampled
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", False),  # zero trace id
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", False),  # zero span id
        ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", False),  # version ff
        ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", False),  # uppercase
        (PARENT + "\n", True),  # stripped
        (PARENT[:-1], False),
        (b"\xff", False),
        ("", False),
        (None, False),
    ],
)
def test_traceparent_parsing(value: Any, ok: bool) -> None:
    parsed = TraceContext.parse(value, "k=v")
    assert (parsed is not None) is ok
    if parsed is not None:
        assert parsed.trace_id == PARENT.split("-")[1] and parsed.tracestate == "k=v"


def test_headers_round_trip_through_the_propagator() -> None:
    """inject_headers writes what extract_headers reads (case-insensitive names)."""
    ctx = lib.extract_headers([("TraceParent", PARENT.encode()), ("tracestate", b"a=1")])
    span_context = trace.get_current_span(ctx).get_span_context()
    assert format(span_context.trace_id, "032x") == TRACE_ID
    assert span_context.is_remote and span_context.trace_flags.sampled
    headers = dict(lib.inject_headers(context=ctx))
    assert headers == {"traceparent": PARENT.encode(), "tracestate": b"a=1"}
    assert lib.current(ctx) == TraceContext(PARENT, "a=1")
    assert lib.inject_headers() == [] and lib.current() is None  # no current span


async def test_audit_carries_the_producers_context_without_a_provider(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No tracer provider: no spans, the audit event carries the producer's own context
    (in its JSON and in its record headers); a record without one gets no ``trace``."""
    monkeypatch.setattr(lib, "recording", lambda: False)  # whatever the process set up
    traced = rec(encode(valid_event(doc_id="t")), 0, (("traceparent", PARENT.encode()),))
    plain = rec(encode(valid_event(doc_id="p")), 1)
    bad = rec(encode(valid_event(doc_id="b")), 2, (("traceparent", b"garbage"),))
    out = await process(traced, plain, bad)
    docs = [doc for _, doc in out.audit_docs]
    assert docs[0]["trace"] == {"traceparent": PARENT}
    assert "trace" not in docs[1] and "trace" not in docs[2]
    first = out.audit_events[0].trace
    assert first is not None and first.headers() == [("traceparent", PARENT.encode())]
    validator = audit_validator()
    for doc in docs:
        validator.validate(doc)


async def test_spans_continue_the_producers_trace(spans: InMemorySpanExporter) -> None:
    """consume (child of the producer's span) -> plan, apply, audit; a dead-lettered
    record has no apply span; the audit names the consume span; one batch span."""
    headers = (("traceparent", PARENT.encode()), ("tracestate", b"vendor=x"))
    ok = rec(encode(valid_event(doc_id="ok")), 7, headers)
    broken = rec(b"{not json", 8, headers)
    plain = rec(encode(valid_event(doc_id="plain")), 9)
    out = await process(ok, broken, plain)
    finished = spans.get_finished_spans()
    by_name: dict[str, list[ReadableSpan]] = {}
    for span in finished:
        by_name.setdefault(span.name, []).append(span)
    assert sorted(by_name) == [
        "cachebus.apply", "cachebus.audit", "cachebus.batch", "cachebus.consume", "cachebus.plan"
    ]
    assert len(by_name["cachebus.consume"]) == 2  # the untraced record has none
    assert len(by_name["cachebus.apply"]) == 1 and len(by_name["cachebus.batch"]) == 1
    consumes = by_name["cachebus.consume"]
    for consume in consumes:
        assert consume.kind is trace.SpanKind.CONSUMER
        assert consume.parent is not None and consume.parent.span_id == 0x00F067AA0BA902B7
        assert format(consume.context.trace_id, "032x") == TRACE_ID
    children = [s for name in ("plan", "apply", "audit") for s in by_name[f"cachebus.{name}"]]
    consume_ids = {c.context.span_id for c in consumes}
    for child in children:
        assert child.parent is not None and child.parent.span_id in consume_ids
        assert format(child.context.trace_id, "032x") == TRACE_ID
        assert child.start_time is not None and child.end_time is not None
        assert child.start_time <= child.end_time
    outcomes = {c.attributes["cachebus.outcome"] for c in consumes if c.attributes}
    assert outcomes == {"applied", "dead_lettered"}
    batch = by_name["cachebus.batch"][0]
    assert batch.attributes is not None and batch.attributes["messaging.batch.message_count"] == 3
    validator = audit_validator()
    for (_, doc), consume in zip(out.audit_docs[:2], sorted(consumes, key=_offset), strict=True):
        context = TraceContext.parse(doc["trace"]["traceparent"], doc["trace"].get("tracestate"))
        assert context is not None and context.trace_id == TRACE_ID
        assert context.span_id == format(consume.context.span_id, "016x")
        assert doc["trace"]["tracestate"] == "vendor=x"
        validator.validate(doc)
    assert "trace" not in out.audit_docs[2][1]


def _offset(span: ReadableSpan) -> int:
    assert span.attributes is not None
    offset = span.attributes["messaging.kafka.offset"]
    assert isinstance(offset, int)
    return offset


def test_producer_headers(monkeypatch: pytest.MonkeyPatch, spans: InMemorySpanExporter) -> None:
    """`cachebus publish`'s headers: a producer span under TRACEPARENT's context."""
    monkeypatch.setenv("TRACEPARENT", PARENT)
    with tracing.producer_headers("documents.events") as headers:
        pass
    assert headers is not None
    sent = TraceContext.parse(dict(headers)["traceparent"])
    (span,) = spans.get_finished_spans()
    assert span.name == "cachebus.publish" and span.kind is trace.SpanKind.PRODUCER
    assert sent is not None and sent.trace_id == TRACE_ID
    assert sent.span_id == format(span.context.span_id, "016x")


def test_producer_headers_without_a_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lib, "recording", lambda: False)
    monkeypatch.setenv("TRACEPARENT", PARENT)
    with tracing.producer_headers("t") as headers:
        assert headers == [("traceparent", PARENT.encode())]
    monkeypatch.delenv("TRACEPARENT")
    with tracing.producer_headers("t") as headers:
        assert headers is None


def test_configure_refuses_an_unknown_exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    from cachebus.errors import ConfigError

    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "no-such-exporter")
    with pytest.raises(ConfigError, match="no span exporter 'no-such-exporter'"):
        tracing._exporter("no-such-exporter")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert tracing.configure() is lib.recording()


def test_layer_spans_are_off_by_default_and_cheap() -> None:
    assert not lib.instrumented()
    assert lib.layer_span("query_embeddings", "read") is lib.layer_span("x", "write")
    try:
        assert lib.instrument()
        with lib.layer_span("query_embeddings", "read") as span:
            assert span is not None  # non-recording without a provider
    finally:
        lib.instrument(False)
    assert not lib.instrumented()


def test_everything_no_ops_without_opentelemetry() -> None:
    """The base install (no opentelemetry): the modules import, the producer's
    traceparent still reaches the audit, nothing is injected or recorded."""
    code = """
import asyncio, sys, time
sys.modules["opentelemetry"] = None  # as if not installed
from cachebus import tracing as lib
from worker import tracing
from worker.audit import SourceRecord
from worker.processor import Processor
from worker.rules import load_rules
from worker.settings import WorkerSettings
from tests.hostile_events import encode, valid_event
assert not lib.HAVE_OTEL and not lib.recording() and not lib.instrument()
assert lib.inject_headers() == [] and lib.extract_headers([]) is None and lib.current() is None
assert tracing.configure() is False  # OTEL_TRACES_EXPORTER unset
import os
from cachebus.errors import ConfigError
os.environ["OTEL_TRACES_EXPORTER"] = "console"
try:
    tracing.configure()
    raise AssertionError("configure() accepted an exporter without the SDK")
except ConfigError as exc:
    assert "opentelemetry-sdk" in str(exc)
P = sys.argv[1]
r = SourceRecord("t", 0, 0, int(time.time() * 1000), None, encode(valid_event()),
                 (("traceparent", P.encode()),))
p = Processor(None, WorkerSettings(), load_rules(), worker_id="w", dry_run=True)
out = asyncio.run(p.process([r]))
assert out.audit_docs[0][1]["trace"] == {"traceparent": P}, out.audit_docs
print("ok")
"""
    env = {"PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", code, PARENT], cwd=ROOT, capture_output=True, text=True, env=env,
        timeout=60,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_base_install_imports_without_otel_or_prometheus() -> None:
    """redis + numpy only: the library, its layers and tracing import and no-op."""
    code = """
import sys
sys.modules["opentelemetry"] = None
sys.modules["prometheus_client"] = None
import redis
from cachebus import CacheBus, Settings, tracing
bus = CacheBus(redis.Redis(), Settings(prefix="x"))
bus.query_embeddings("m")  # a layer registers its counters; nothing exported
assert not tracing.instrument() and tracing.layer_span("q", "read") is tracing.layer_span("q", "w")
try:
    import cachebus.prometheus
    raise AssertionError("cachebus.prometheus imported without prometheus_client")
except ImportError:
    pass
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_cloudevents_binary_mode_trace_extension_is_read() -> None:
    """A binary-mode CloudEvent carries its trace context as ce_traceparent (the
    distributed-tracing extension); a plain traceparent header wins when both exist."""
    from worker.audit import SourceRecord
    from worker.tracing import record_context

    ce = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    plain = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    only_ce = SourceRecord("t", 0, 0, None, None, b"{}", (("ce_traceparent", ce.encode()),))
    found = record_context(only_ce)
    assert found is not None and found.traceparent == ce
    both = SourceRecord(
        "t", 0, 0, None, None, b"{}",
        (("ce_traceparent", ce.encode()), ("traceparent", plain.encode())),
    )
    found = record_context(both)
    assert found is not None and found.traceparent == plain


async def test_unsampled_producer_gets_no_spans(spans: InMemorySpanExporter) -> None:
    """flags 00: the default (parent-based) sampler records nothing for the record; the
    audit carries the producer's own context."""
    unsampled = PARENT[:-2] + "00"
    record = rec(encode(valid_event(doc_id="u")), 0, (("traceparent", unsampled.encode()),))
    out = await process(record)
    assert [s.name for s in spans.get_finished_spans()] == ["cachebus.batch"]
    assert out.audit_docs[0][1]["trace"] == {"traceparent": unsampled}


async def test_binary_cloudevent_trace_is_continued_by_the_spans(
    spans: InMemorySpanExporter,
) -> None:
    """A binary-mode CloudEvent's ce_traceparent parents the consume span (not a new
    root trace), as a plain traceparent header does."""
    data = json.dumps({"collection": "c", "doc_version": 3}).encode()
    headers = (
        ("ce_specversion", b"1.0"),
        ("ce_id", b"b6b5a0a4-4f1e-4c1e-9d43-0a0c9d7f0e11"),
        ("ce_source", b"/cms"),
        ("ce_type", b"com.example.document.updated"),
        ("ce_subject", b"ce-doc"),
        ("ce_time", b"2026-11-26T10:00:00Z"),
        ("content-type", b"application/json"),
        ("ce_traceparent", PARENT.encode()),
    )
    out = await process(rec(data, 0, headers))
    consume = [s for s in spans.get_finished_spans() if s.name == "cachebus.consume"]
    assert len(consume) == 1
    assert format(consume[0].context.trace_id, "032x") == TRACE_ID
    assert consume[0].parent is not None and consume[0].parent.span_id == 0x00F067AA0BA902B7
    assert out.audit_events[0].outcome == "applied"


def test_sampled_flag_of_a_traceparent() -> None:
    assert TraceContext(PARENT).sampled
    assert not TraceContext(PARENT[:-2] + "00").sampled
    assert TraceContext(PARENT[:-2] + "03").sampled  # other flag bits are ignored


async def test_a_sampler_that_records_unsampled_parents_still_gets_spans(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The shortcut for unsampled producers holds only for a parent-based sampler that
    drops them: with OTEL_TRACES_SAMPLER=always_on every record gets its spans."""
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON

    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_ON)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "TRACER_PROVIDER", provider)
    unsampled = PARENT[:-2] + "00"
    await process(rec(encode(valid_event(doc_id="a")), 0, (("traceparent", unsampled.encode()),)))
    names = sorted(s.name for s in exporter.get_finished_spans())
    assert names.count("cachebus.consume") == 1
