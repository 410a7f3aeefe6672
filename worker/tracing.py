"""The worker's OpenTelemetry tracing (optional: the ``otel`` extra).

Configuration (:func:`configure`, called when the app is built and by ``cachebus
publish``): a tracer provider someone else configured (``opentelemetry-instrument``,
an embedding application) is used as is. Otherwise, when ``OTEL_TRACES_EXPORTER`` names
exporters (``console``: one JSON line per span on stdout; ``otlp`` and others: the
exporter packages' ``opentelemetry_traces_exporter`` entry points), the SDK's provider is
set up with a batch span processor per exporter (``OTEL_BSP_*``), the resource from
``OTEL_RESOURCE_ATTRIBUTES`` / ``OTEL_SERVICE_NAME`` (default ``cachebus-worker``) and the
sampler from ``OTEL_TRACES_SAMPLER`` (default: parent-based, always on).
Unset or ``none``, or opentelemetry not installed: no spans.

Per batch (:class:`BatchTrace`): a record whose headers carry a W3C ``traceparent``
continues the producer's trace with spans ``cachebus.consume`` (a consumer span, child of
the producer's span) and its children ``cachebus.plan``, ``cachebus.apply`` (not for
dead-lettered records) and ``cachebus.audit``, timed by the batch's phases (plan and
apply run per batch). Records without a ``traceparent`` get no span of their own; a
``cachebus.batch`` span per batch times the batch. The record's audit event carries
the trace context (``trace.traceparent``: the ``cachebus.consume`` span, or the
producer's own context when no provider records spans), and so do its record headers.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from cachebus import tracing as lib
from cachebus.errors import ConfigError
from cachebus.tracing import TRACEPARENT, TRACESTATE, TraceContext

if TYPE_CHECKING:
    from .audit import SourceRecord
    from .audit_event import AuditEvent

DEFAULT_SERVICE = "cachebus-worker"
CE_TRACEPARENT = "ce_traceparent"
CE_TRACESTATE = "ce_tracestate"
"""CloudEvents' distributed-tracing extension as binary-mode headers (read when a
record has no plain ``traceparent``)."""
TRACER_PROVIDER: Any = None
"""The tracer provider of the worker's spans; None: the global one (tests set their
own, with an in-memory exporter)."""


def _tracer() -> Any:
    """The worker's tracer, or None when no provider records spans."""
    if TRACER_PROVIDER is not None:
        return TRACER_PROVIDER.get_tracer("cachebus.worker")
    if not lib.recording():
        return None
    from opentelemetry import trace

    return trace.get_tracer("cachebus.worker")


def configure(service_name: str = DEFAULT_SERVICE) -> bool:
    """Set up span export from the ``OTEL_*`` environment (see the module doc) unless a
    tracer provider is already configured. Returns whether spans are recorded.

    Raises:
        ConfigError: an exporter is named that is not installed, or
            ``OTEL_TRACES_EXPORTER`` is set without the SDK (the ``otel`` extra).
    """
    names = [
        n.strip()
        for n in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",")
        if n.strip() and n.strip().lower() != "none"
    ]
    disabled = os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    if lib.recording():
        return True
    if not names or disabled:
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER={','.join(names)} needs opentelemetry-sdk: "
            "pip install 'cachebus[otel]'"
        ) from None
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": service_name}
    provider = TracerProvider(resource=Resource.create(attributes))
    for name in names:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name)))
    trace.set_tracer_provider(provider)
    return lib.recording()


def _exporter(name: str) -> Any:
    if name == "console":  # one compact JSON line per span (the SDK's default is indented)
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(
            out=sys.stdout, formatter=lambda span: span.to_json(indent=None) + "\n"
        )
    found = entry_points(group="opentelemetry_traces_exporter", name=name)
    if not found:
        raise ConfigError(
            f"OTEL_TRACES_EXPORTER: no span exporter {name!r} is installed (e.g. "
            "pip install opentelemetry-exporter-otlp for 'otlp'; built in: 'console')"
        )
    return next(iter(found)).load()()


def record_context(record: SourceRecord) -> TraceContext | None:
    """The producer's trace context in a record's headers (None: none, or invalid)."""
    parent = record.header(TRACEPARENT)
    if parent is None:
        # CloudEvents' distributed-tracing extension in binary mode: ce_traceparent.
        parent = record.header(CE_TRACEPARENT)
        if parent is None:
            return None
        return TraceContext.parse(parent, record.header(CE_TRACESTATE))
    return TraceContext.parse(parent, record.header(TRACESTATE))


@dataclass(slots=True)
class BatchTrace:
    """The phases of one batch (``time.time_ns()``) and the spans they become.

    :meth:`mark_planned` and :meth:`mark_applied` record the phases;
    :meth:`audit_context` makes a record's spans (if it carries a trace context) and
    returns what its audit event carries."""

    tracer: Any
    """The worker's tracer, or None when no provider records spans."""
    started: int = field(default_factory=time.time_ns)
    planned: int = 0
    applied: int = 0
    drops_unsampled: bool = False
    """The tracer's sampler records nothing under a remote parent that was not sampled
    (the SDK's default, parent-based): such records skip the span machinery."""

    def __post_init__(self) -> None:
        describe = getattr(getattr(self.tracer, "sampler", None), "get_description", None)
        if describe is not None:
            self.drops_unsampled = "remoteParentNotSampled:AlwaysOffSampler" in describe()

    @classmethod
    def begin(cls) -> BatchTrace:
        return cls(_tracer())

    def mark_planned(self) -> None:
        self.planned = time.time_ns()

    def mark_applied(self) -> None:
        self.applied = time.time_ns()

    def audit_context(self, record: SourceRecord, audit: AuditEvent) -> TraceContext | None:
        """The trace context for ``record``'s audit event: without a recording tracer,
        the producer's own; with one, the ``cachebus.consume`` span continuing it
        (its ``plan``, ``apply`` and ``audit`` children are recorded here)."""
        parent = record_context(record)
        if parent is None or self.tracer is None:
            return parent
        if self.drops_unsampled and not parent.sampled:
            return parent  # what start_span would decide, without building a context
        from opentelemetry.trace import SpanKind, set_span_in_context

        # From the context already read (a plain traceparent header, or a CloudEvent's
        # ce_traceparent). The attributes are set once the span is known to be sampled:
        # an unsampled producer's records cost no more than the sampling decision.
        now = time.time_ns()
        planned = self.planned or self.started
        applied = self.applied or planned
        consume = self.tracer.start_span(
            "cachebus.consume",
            context=lib.context_of(parent),
            kind=SpanKind.CONSUMER,
            start_time=self.started,
        )
        if not consume.is_recording():  # not sampled (e.g. the producer's flags 00)
            return parent
        consume.set_attributes(
            {
                "messaging.system": "kafka",
                "messaging.operation.type": "process",
                "messaging.destination.name": record.topic,
                "messaging.destination.partition.id": str(record.partition),
                "messaging.kafka.offset": record.offset,
                "cachebus.event_id": audit.event_id or "",
                "cachebus.doc_id": audit.doc_id or "",
                "cachebus.outcome": audit.outcome,
            }
        )
        inner = set_span_in_context(consume)
        self.tracer.start_span("cachebus.plan", context=inner, start_time=self.started).end(
            end_time=planned
        )
        if not audit.dead_lettered:
            self.tracer.start_span(
                "cachebus.apply",
                context=inner,
                start_time=planned,
                attributes={
                    "cachebus.outcome": audit.outcome,
                    "cachebus.keys_removed": audit.keys_removed,
                    "cachebus.actions": len(audit.actions),
                },
            ).end(end_time=applied)
        self.tracer.start_span(
            "cachebus.audit",
            context=inner,
            start_time=applied,
            attributes={"cachebus.reason": audit.reason or ""} if audit.reason else None,
        ).end(end_time=now)
        consume.end(end_time=now)
        return _context_of(consume.get_span_context(), parent.tracestate) or parent

    def end(self, records: int, outcomes: dict[str, int]) -> None:
        """The batch's own span (only while spans are recorded)."""
        if self.tracer is None:
            return
        attributes: dict[str, Any] = {"messaging.batch.message_count": records}
        attributes.update({f"cachebus.outcome.{k}": v for k, v in outcomes.items()})
        self.tracer.start_span(
            "cachebus.batch", start_time=self.started, attributes=attributes
        ).end()


@contextmanager
def producer_headers(
    topic: str, name: str = "cachebus.publish"
) -> Iterator[list[tuple[str, bytes]] | None]:
    """Kafka headers carrying the trace context for records produced inside this block
    (None: there is none). The parent is the current span, else the ``TRACEPARENT`` /
    ``TRACESTATE`` environment variables (how a CI job or a shell script hands its trace
    to a command). While spans are recorded a producer span ``cachebus.publish``
    continues it, and the headers name that span."""
    env = TraceContext.parse(os.environ.get("TRACEPARENT"), os.environ.get("TRACESTATE"))
    parent = lib.current() or env
    tracer = _tracer()
    if tracer is None:
        yield None if parent is None else parent.headers()
        return
    from opentelemetry import trace

    ctx = lib.context_of(parent) if parent is not None else None
    with tracer.start_as_current_span(
        name,
        context=ctx,
        kind=trace.SpanKind.PRODUCER,
        attributes={"messaging.system": "kafka", "messaging.destination.name": topic},
    ):
        yield lib.inject_headers() or None


def _context_of(span_context: Any, tracestate: str | None) -> TraceContext | None:
    """A span's context as W3C headers carry it (what the propagator would write:
    formatted here directly, once per traced record)."""
    if not span_context.is_valid:
        return None
    state = span_context.trace_state.to_header() if span_context.trace_state else tracestate
    return TraceContext(
        f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-"
        f"{int(span_context.trace_flags):02x}",
        state or None,
    )
