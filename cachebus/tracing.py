"""Optional OpenTelemetry tracing: W3C trace context in Kafka record headers, and
optional spans around the cache layers' reads and writes.

Everything here no-ops when ``opentelemetry`` is not installed (the base install is
redis + numpy; the ``otel`` extra adds opentelemetry-api and -sdk), and costs one
global check per call when it is installed but :func:`instrument` was not called.

* :func:`inject_headers` / :func:`extract_headers`: the current trace context as Kafka
  headers (``traceparent``, ``tracestate``) and back, through the globally configured
  propagator (W3C trace context by default; ``OTEL_PROPAGATORS``).
* :func:`instrument`: spans ``cachebus.<layer>.<operation>`` (``read``, ``write``, ...)
  around every call a cache layer makes to Redis. Off by default; with no tracer
  provider configured the spans are non-recording (a few hundred ns).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, Final, NamedTuple

try:
    from opentelemetry import propagate, trace
    from opentelemetry.context import Context
except ImportError:  # the base install: no tracing
    propagate = None  # type: ignore[assignment]
    trace = None  # type: ignore[assignment]
    Context = Any  # type: ignore[assignment,misc]

HAVE_OTEL: Final = trace is not None
"""Whether opentelemetry-api is importable."""

TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"
_TRACEPARENT = re.compile(
    r"^(?!ff)[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}\Z"
)
"""A W3C ``traceparent`` (https://www.w3.org/TR/trace-context/#traceparent-header) of
version 00 and the fields every later version starts with."""

_NULL: Final[AbstractContextManager[None]] = nullcontext()
_tracer: Any = None
"""The library's tracer while :func:`instrument` is on, else None (the hot-path check)."""


class TraceContext(NamedTuple):
    """A W3C trace context as carried in headers (and in an audit event's ``trace``)."""

    traceparent: str
    tracestate: str | None = None

    @property
    def trace_id(self) -> str:
        """The 32 hex digits of the trace id."""
        return self.traceparent.split("-")[1]

    @property
    def span_id(self) -> str:
        """The 16 hex digits of the parent span id."""
        return self.traceparent.split("-")[2]

    @property
    def sampled(self) -> bool:
        """The traceparent's sampled flag (bit 0 of its trace flags)."""
        return bool(int(self.traceparent[-2:], 16) & 1)

    def headers(self) -> list[tuple[str, bytes]]:
        """As Kafka record headers."""
        out = [(TRACEPARENT, self.traceparent.encode("ascii"))]
        if self.tracestate:
            out.append((TRACESTATE, self.tracestate.encode("ascii", "replace")))
        return out

    def to_json(self) -> dict[str, str]:
        out = {"traceparent": self.traceparent}
        if self.tracestate:
            out["tracestate"] = self.tracestate
        return out

    @classmethod
    def parse(cls, traceparent: bytes | str | None, tracestate: bytes | str | None = None
              ) -> TraceContext | None:
        """The context of these header values, or None when ``traceparent`` is not a
        valid W3C traceparent (then ``tracestate`` is ignored too, as the spec says)."""
        parent = _text(traceparent)
        if parent is None or not _TRACEPARENT.match(parent.strip()):
            return None
        return cls(parent.strip(), _text(tracestate) or None)


def _text(value: bytes | str | None) -> str | None:
    if isinstance(value, bytes):
        try:
            return value.decode("ascii")
        except UnicodeDecodeError:
            return None
    return value


def recording() -> bool:
    """Whether a tracer provider is configured (the SDK's or another), i.e. spans are
    recorded and exported; False without opentelemetry or with the API's default."""
    if trace is None:
        return False
    provider = trace.get_tracer_provider()
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def inject_headers(
    headers: list[tuple[str, bytes]] | None = None, context: Context | None = None
) -> list[tuple[str, bytes]]:
    """``headers`` (a new list if None) plus the current (or ``context``'s) trace
    context, through the global propagator. Nothing is added without opentelemetry or
    when there is no valid span context."""
    out = [] if headers is None else headers
    if propagate is None:
        return out
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    out.extend((name, value.encode("utf-8")) for name, value in carrier.items())
    return out


def extract_headers(headers: Iterable[tuple[str, bytes | None]]) -> Context | None:
    """The trace context of Kafka record headers (names case-insensitive; the last
    value of a name wins), as an OpenTelemetry ``Context`` to start spans in; None
    without opentelemetry."""
    if propagate is None:
        return None
    carrier: dict[str, str] = {}
    for name, value in headers:
        text = _text(value) if value is not None else ""
        if text is not None:
            carrier[name.lower()] = text
    return propagate.extract(carrier)


def context_of(trace: TraceContext) -> Context | None:
    """``trace`` as an OpenTelemetry ``Context`` to start spans in (through the W3C
    propagator); None without opentelemetry."""
    if propagate is None:
        return None
    carrier = {TRACEPARENT: trace.traceparent}
    if trace.tracestate:
        carrier[TRACESTATE] = trace.tracestate
    return propagate.extract(carrier)


def current(context: Context | None = None) -> TraceContext | None:
    """The current (or ``context``'s) span context as W3C headers would carry it (None
    when there is no valid span context, or without opentelemetry)."""
    carrier: dict[str, str] = {}
    if propagate is None:
        return None
    propagate.inject(carrier, context=context)
    return TraceContext.parse(carrier.get(TRACEPARENT), carrier.get(TRACESTATE))


def instrument(enabled: bool = True, tracer_provider: Any = None) -> bool:
    """Turn the library's spans around cache calls and invalidations on (or off).
    Returns whether they are on (False without opentelemetry). Spans go to
    ``tracer_provider``, by default the global one (without one configured they are
    non-recording)."""
    global _tracer
    _tracer = None
    if enabled and trace is not None:
        _tracer = (tracer_provider or trace.get_tracer_provider()).get_tracer("cachebus")
    return _tracer is not None


def instrumented() -> bool:
    return _tracer is not None


def layer_span(layer: str, operation: str) -> AbstractContextManager[Any]:
    """The span of one cache call (``cachebus.<layer>.<operation>``), current while the
    call runs; a shared no-op context manager while :func:`instrument` is off."""
    if _tracer is None:
        return _NULL
    return _span(layer, operation)


@contextmanager
def _span(layer: str, operation: str) -> Iterator[Any]:
    with _tracer.start_as_current_span(
        f"cachebus.{layer}.{operation.split(' ', 1)[0]}",
        attributes={"cachebus.layer": layer, "cachebus.operation": operation, "db.system": "redis"},
    ) as span:
        yield span
