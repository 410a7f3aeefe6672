"""Section 6: the integrations' own costs.

**LangChain query cache, hits.** ``cachebus.integrations.langchain.CachedEmbeddings``
against LangChain's ``CacheBackedEmbeddings`` (``langchain_classic.embeddings``, the
langchain 1.x home of ``langchain.embeddings.CacheBackedEmbeddings``; langchain-core has
none) with ``query_embedding_cache=True`` over a Redis ``ByteStore`` on the same
redis-server (:class:`RedisByteStore`, as langchain-community's ``RedisStore``), and
against redis-py's bare ``GET`` / ``MGET`` of float32 payloads (the ceiling: no hashing,
no decoding). All three wrap ``DeterministicFakeEmbedding`` through a call counter; the
caches are warmed first, the counter must not move while timing. Figures are medians of
interleaved timed runs (:mod:`bench.timing`), one run of every contender per round.

**Worker tracing overhead.** ``worker.processor.Processor.process`` in process,
``dry_run=True`` (plan and audit, no Redis), on batches of ``trace_batch`` valid
``updated`` events: without a ``traceparent`` header (the baseline) vs with one (sampled,
flags 01; and unsampled, flags 00), with an SDK ``TracerProvider`` (parent-based
always-on sampler) whose ``SimpleSpanProcessor`` hands every span to an
``InMemorySpanExporter`` (an append: the exporter's own serialization and network are
not measured; with the ``BatchSpanProcessor`` the worker configures they run on a
background thread), and without a provider. Best of N runs, interleaved; µs per event.
The spans are counted after every run.
"""

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from .client_layers import BenchError
from .timing import BatchOp, Throughput, calibrate, timed_run

Progress = Callable[[str], None]
Connect = Callable[[int], redis.Redis]

PREFIX = "bi"
LC_NAMESPACE = "lc"
CACHEBUS = "cachebus CachedEmbeddings"
LANGCHAIN = "LangChain CacheBackedEmbeddings"
RAW = "redis-py raw"
TRACE_VARIANTS = (
    ("baseline", "no traceparent, no tracer provider (baseline)"),
    ("no_header_provider", "no traceparent, SDK provider (one batch span)"),
    ("sampled", "sampled traceparent (01), SDK provider"),
    ("sampled_batch", "sampled traceparent (01), SDK provider, BatchSpanProcessor"),
    ("unsampled", "unsampled traceparent (00), SDK provider"),
    ("sampled_no_provider", "sampled traceparent, no provider (context passed on)"),
)
SAMPLED = ("sampled", "sampled_batch")
SPANS_PER_TRACED_RECORD = 4
"""``cachebus.consume`` and its children ``plan``, ``apply``, ``audit``."""


@dataclass(frozen=True)
class IntegrationsConfig:
    dims: tuple[int, ...] = (384, 1536)
    queries: int = 500
    """Distinct query texts (warm), cycled through by the timed ``embed_query`` calls."""
    doc_batches: int = 8
    """Distinct ``embed_documents`` batches (warm)."""
    doc_batch: int = 64
    runs: int = 7
    min_run_seconds: float = 0.25
    trace_batch: int = 500
    trace_runs: int = 21


# -- LangChain ------------------------------------------------------------------------------


def langchain_available() -> str | None:
    """None when the LangChain side can run, else why not."""
    try:
        import langchain_core.embeddings  # noqa: F401
    except ImportError:
        return "langchain-core is not installed (pip install '.[langchain]')"
    try:
        import langchain_classic.embeddings  # noqa: F401
    except ImportError:
        return (
            "langchain-classic is not installed (pip install langchain-classic: LangChain's "
            "CacheBackedEmbeddings lives there since langchain 1.0)"
        )
    return None


def _store_class() -> type[Any]:
    from langchain_core.stores import ByteStore

    class RedisByteStore(ByteStore):
        """A minimal Redis ``ByteStore``, as langchain-community's ``RedisStore``
        (``langchain_community.storage.RedisStore``: keys ``<namespace>/<key>``, ``MGET``,
        a pipeline of ``SET ... [EX ttl]``, ``DEL``, ``SCAN MATCH``); langchain-core ships
        no Redis store and langchain-community is not a dependency here."""

        def __init__(self, client: redis.Redis, *, namespace: str, ttl: int | None = None):
            self.client = client
            self.namespace = namespace
            self.ttl = ttl

        def _key(self, key: str) -> str:
            return f"{self.namespace}/{key}"

        def mget(self, keys: Sequence[str]) -> list[bytes | None]:
            if not keys:
                return []
            values = self.client.mget([self._key(k) for k in keys])
            return [v if v is None or isinstance(v, bytes) else str(v).encode() for v in values]

        def mset(self, key_value_pairs: Sequence[tuple[str, bytes]]) -> None:
            pipe = self.client.pipeline()
            for key, value in key_value_pairs:
                pipe.set(self._key(key), value, ex=self.ttl)
            pipe.execute()

        def mdelete(self, keys: Sequence[str]) -> None:
            if keys:
                self.client.delete(*(self._key(k) for k in keys))

        def yield_keys(self, *, prefix: str | None = None) -> Iterator[str]:
            pattern = self._key(prefix or "") + "*"
            skip = len(self.namespace) + 1
            for key in self.client.scan_iter(match=pattern):
                yield (key.decode() if isinstance(key, bytes) else str(key))[skip:]

    return RedisByteStore


def _counting(dim: int) -> Any:
    """``DeterministicFakeEmbedding(size=dim)`` behind a call counter."""
    from langchain_core.embeddings import DeterministicFakeEmbedding, Embeddings

    class Counting(Embeddings):
        def __init__(self) -> None:
            self.inner = DeterministicFakeEmbedding(size=dim)
            self.calls = 0
            self.texts = 0

        def embed_query(self, text: str) -> list[float]:
            self.calls += 1
            self.texts += 1
            return self.inner.embed_query(text)

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            self.calls += 1
            self.texts += len(texts)
            return self.inner.embed_documents(texts)

    return Counting()


def _sizes(client: redis.Redis, pattern: str) -> tuple[list[int], list[int]]:
    """STRLEN and ``MEMORY USAGE key SAMPLES 0`` of every key matching ``pattern``."""
    keys = list(client.scan_iter(match=pattern, count=1000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.strlen(key)
        pipe.memory_usage(key, samples=0)
    replies = pipe.execute()
    return [int(r) for r in replies[0::2]], [int(r) for r in replies[1::2]]


def _median(values: list[int]) -> float:
    return float(statistics.median(values)) if values else 0.0


def _same_f32(got: Any, want: Any) -> bool:
    return bool(np.array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32)))


def _langchain_dim(
    connect: Connect, dim: int, cfg: IntegrationsConfig, progress: Progress
) -> dict[str, Any]:
    from langchain_classic.embeddings import CacheBackedEmbeddings

    import cachebus
    from cachebus.integrations.langchain import CachedEmbeddings

    cb_client, lc_client, raw_client = connect(1), connect(2), connect(3)
    for c in (cb_client, lc_client, raw_client):
        c.flushdb()
    model = f"fake-{dim}"
    queries = [
        f"integration query #{i} at dim {dim}: how long is parental leave?"
        for i in range(cfg.queries)
    ]
    docs = [
        [f"passage {b}.{j} at dim {dim}: leave policy, section {j}" for j in range(cfg.doc_batch)]
        for b in range(cfg.doc_batches)
    ]
    reference = _counting(dim).inner  # the vectors every side must return
    want_q = [reference.embed_query(q) for q in queries]
    want_d = [reference.embed_documents(batch) for batch in docs]

    bus = cachebus.CacheBus(cb_client, cachebus.Settings(prefix=PREFIX))
    cb_embedder = _counting(dim)
    ours = CachedEmbeddings(cb_embedder, bus, model=model, model_version="1")
    lc_embedder = _counting(dim)
    store = _store_class()(lc_client, namespace=LC_NAMESPACE)
    theirs = CacheBackedEmbeddings.from_bytes_store(
        lc_embedder,
        store,
        namespace=f"{model}:1:",
        query_embedding_cache=True,
        key_encoder="sha256",  # the default sha1 warns; sha256 is what cachebus hashes with
    )
    f32 = cachebus.VectorCodec("float32")
    raw_q = [f"raw:q:{i}" for i in range(len(queries))]
    raw_d = [[f"raw:d:{b}:{j}" for j in range(cfg.doc_batch)] for b in range(cfg.doc_batches)]
    raw_client.mset(
        {k: f32.encode(np.asarray(v, np.float32)) for k, v in zip(raw_q, want_q, strict=True)}
    )
    for keys, vectors in zip(raw_d, want_d, strict=True):
        raw_client.mset(
            {k: f32.encode(np.asarray(v, np.float32)) for k, v in zip(keys, vectors, strict=True)}
        )

    # Warm both caches: every text a miss once, the embedder called for it.
    for q in queries:
        ours.embed_query(q)
        theirs.embed_query(q)
    for texts in docs:
        ours.embed_documents(texts)
        theirs.embed_documents(texts)
    for name, emb in ((CACHEBUS, cb_embedder), (LANGCHAIN, lc_embedder)):
        expected = len(queries) + cfg.doc_batches * cfg.doc_batch
        if emb.texts != expected:
            raise BenchError(
                f"dim {dim} {name}: warming embedded {emb.texts} texts, not {expected}"
            )
    warm_calls = (cb_embedder.calls, lc_embedder.calls)

    # Round trips: cachebus returns float32 (what it stores), LangChain the JSON floats.
    for i, q in enumerate(queries):
        if not _same_f32(ours.embed_query(q), want_q[i]):
            raise BenchError(f"dim {dim} {CACHEBUS}: query {i} read back different values")
        if theirs.embed_query(q) != want_q[i]:
            raise BenchError(f"dim {dim} {LANGCHAIN}: query {i} read back different values")
        back = raw_client.get(raw_q[i])
        if not isinstance(back, bytes) or not _same_f32(cachebus.decode_vector(back), want_q[i]):
            raise BenchError(f"dim {dim} {RAW}: key {raw_q[i]} read back different values")
    for b, texts in enumerate(docs):
        if not _same_f32(ours.embed_documents(texts), want_d[b]):
            raise BenchError(f"dim {dim} {CACHEBUS}: documents batch {b} read back different")
        if theirs.embed_documents(texts) != want_d[b]:
            raise BenchError(f"dim {dim} {LANGCHAIN}: documents batch {b} read back different")
    progress(
        f"integrations dim {dim}: warm; round trips equal (cachebus float32-exact, "
        "LangChain JSON-exact)"
    )

    def q_op(fn: Callable[[str], Any]) -> BatchOp:
        return lambda i: fn(queries[i])

    def d_op(fn: Callable[[list[str]], Any]) -> BatchOp:
        return lambda i: fn(docs[i])

    ops: list[tuple[str, str, BatchOp, int, int]] = [
        (CACHEBUS, "embed_query", q_op(ours.embed_query), len(queries), 1),
        (LANGCHAIN, "embed_query", q_op(theirs.embed_query), len(queries), 1),
        (RAW, "embed_query", lambda i: raw_client.get(raw_q[i]), len(queries), 1),
        (CACHEBUS, "embed_documents", d_op(ours.embed_documents), cfg.doc_batches, cfg.doc_batch),
        (
            LANGCHAIN,
            "embed_documents",
            d_op(theirs.embed_documents),
            cfg.doc_batches,
            cfg.doc_batch,
        ),
        (
            RAW,
            "embed_documents",
            lambda i: raw_client.mget(raw_d[i]),
            cfg.doc_batches,
            cfg.doc_batch,
        ),
    ]
    calls = [
        calibrate(op, batches=n, min_run_seconds=cfg.min_run_seconds) for _, _, op, n, _ in ops
    ]
    rates: list[list[float]] = [[] for _ in ops]
    for _ in range(cfg.runs):
        for k, (_, _, op, n, batch) in enumerate(ops):
            rates[k].append(timed_run(op, calls=calls[k], batches=n, batch=batch))
    if (cb_embedder.calls, lc_embedder.calls) != warm_calls:
        raise BenchError(
            f"dim {dim}: the embedder was called on hits (cachebus "
            f"{cb_embedder.calls - warm_calls[0]}, LangChain {lc_embedder.calls - warm_calls[1]} "
            "calls after warming)"
        )
    layer = bus.stats()["layers"]["query_embeddings"]
    if layer.get("errors"):
        raise BenchError(f"dim {dim} {CACHEBUS}: {layer['errors']} Redis errors (failed open)")

    n_texts = len(queries) + cfg.doc_batches * cfg.doc_batch
    cb_len, cb_mem = _sizes(cb_client, f"{PREFIX}:qe:*")
    lc_len, lc_mem = _sizes(lc_client, f"{LC_NAMESPACE}/*")
    raw_len, raw_mem = _sizes(raw_client, "raw:*")
    for name, lengths in ((CACHEBUS, cb_len), (LANGCHAIN, lc_len), (RAW, raw_len)):
        if len(lengths) != n_texts:
            raise BenchError(f"dim {dim} {name}: {len(lengths)} keys, expected {n_texts}")
    storage = {
        CACHEBUS: (cb_len, cb_mem, "float32 + 8 B header"),
        LANGCHAIN: (lc_len, lc_mem, "JSON floats"),
        RAW: (raw_len, raw_mem, "same payload"),
    }
    rows: list[dict[str, Any]] = []
    for k, (name, op_name, _, _, batch) in enumerate(ops):
        t = Throughput.of(rates[k], calls[k], batch)
        lengths, usage, fmt = storage[name]
        rows.append(
            {
                "dim": dim,
                "subject": name,
                "operation": op_name,
                "texts_per_s": round(t.median, 1),
                "calls_per_s": round(t.median / batch, 1),
                "timing": t.as_dict(),
                "value_bytes_median": _median(lengths),
                "memory_usage_bytes_median": _median(usage),
                "format": fmt,
            }
        )
    by = {(r["subject"], r["operation"]): r for r in rows}
    for r in rows:
        lc = by[(LANGCHAIN, r["operation"])]
        raw = by[(RAW, r["operation"])]
        r["x_langchain"] = round(r["texts_per_s"] / lc["texts_per_s"], 3)
        r["pct_of_raw"] = round(100 * r["texts_per_s"] / raw["texts_per_s"], 1)
        r["bytes_x_langchain"] = round(r["value_bytes_median"] / lc["value_bytes_median"], 4)
        progress(
            f"integrations dim {dim} {r['subject']} {r['operation']}: "
            f"{r['texts_per_s']:,.0f} texts/s (x{r['x_langchain']:.2f} LangChain, "
            f"{r['pct_of_raw']:.0f}% of raw), {r['value_bytes_median']:,.0f} B/value"
        )
    bus.close()
    for c in (cb_client, lc_client, raw_client):
        c.flushdb()
        c.close()
    return {
        "dim": dim,
        "rows": rows,
        "texts": {"queries": len(queries), "documents": cfg.doc_batches * cfg.doc_batch},
        "embedder_calls": {
            "cachebus_warm": warm_calls[0],
            "langchain_warm": warm_calls[1],
            "while_timed": (cb_embedder.calls - warm_calls[0])
            + (lc_embedder.calls - warm_calls[1]),
        },
        "cachebus_layer_metrics": layer,
    }


# -- worker tracing -------------------------------------------------------------------------


def _records(n: int, kind: str, seed: int) -> list[Any]:
    from worker.audit import SourceRecord

    from .worker_e2e import EventFactory

    rng = np.random.default_rng(seed)
    now = int(time.time() * 1000)
    out = []
    for offset, (key, value) in enumerate(EventFactory(documents=n, seed=seed).make(n, "bench")):
        headers: tuple[tuple[str, bytes], ...] = ()
        if kind != "baseline" and kind != "no_header_provider":
            flags = "00" if kind == "unsampled" else "01"
            trace_id = rng.bytes(16).hex()
            span_id = rng.bytes(8).hex()
            headers = (("traceparent", f"00-{trace_id}-{span_id}-{flags}".encode()),)
        out.append(SourceRecord("documents.events", 0, offset, now, key, value, headers))
    return out


def _expected_spans(kind: str, n: int) -> int:
    return {
        "baseline": 0,
        "no_header_provider": 1,
        "sampled": SPANS_PER_TRACED_RECORD * n + 1,
        "sampled_batch": SPANS_PER_TRACED_RECORD * n + 1,
        "unsampled": 1,
        "sampled_no_provider": 0,
    }[kind]


def _check_trace(kind: str, records: list[Any], out: Any, spans: list[Any]) -> None:
    """Every event applied (planned) and audited; sampled records continue their trace."""
    n = len(records)
    if out.outcomes != {"applied": n} or len(out.audit_events) != n:
        raise BenchError(f"tracing {kind}: outcomes {out.outcomes}, {len(out.audit_events)} audits")
    if len(spans) != _expected_spans(kind, n):
        raise BenchError(f"tracing {kind}: {len(spans)} spans, expected {_expected_spans(kind, n)}")
    traced = [a.trace for a in out.audit_events]
    if kind in ("baseline", "no_header_provider"):
        if any(t is not None for t in traced):
            raise BenchError(f"tracing {kind}: an audit carries a trace context")
        return
    for record, t in zip(records, traced, strict=True):
        header = record.header("traceparent").decode()
        if t is None or t.trace_id != header.split("-")[1]:
            raise BenchError(f"tracing {kind}: an audit lost the producer's trace id")
        if kind not in SAMPLED and t.traceparent != header:
            raise BenchError(f"tracing {kind}: audit context {t.traceparent} is not the producer's")
    if kind in SAMPLED:
        consume = {
            format(s.context.span_id, "016x"): s for s in spans if s.name == "cachebus.consume"
        }
        if len(consume) != n:
            raise BenchError(f"tracing {kind}: {len(consume)} consume spans for {n} records")
        for record, t in zip(records, traced, strict=True):
            span = consume.get(t.span_id)  # the audit names its consume span...
            parent = record.header("traceparent").decode().split("-")[2]
            if span is None or span.parent is None or format(span.parent.span_id, "016x") != parent:
                raise BenchError(f"tracing {kind}: a consume span is not the producer's child")


def _tracing(cfg: IntegrationsConfig, progress: Progress) -> dict[str, Any]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from cachebus import tracing as lib
    from worker import tracing
    from worker.processor import Processor
    from worker.rules import load_rules
    from worker.settings import WorkerSettings

    if lib.recording():
        raise BenchError("a global tracer provider is configured: the baseline would trace")
    # Default sampler: parent-based, always on. Simple: each span exported as it ends, in
    # the worker's thread; batch (what worker.tracing.configure sets up, default queue
    # 2048, batches of 512): queued, exported by the SDK's thread (same GIL).
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    batch_exporter = InMemorySpanExporter()
    batch_provider = TracerProvider()
    batch_provider.add_span_processor(BatchSpanProcessor(batch_exporter))
    providers = {
        "no_header_provider": (provider, exporter),
        "sampled": (provider, exporter),
        "unsampled": (provider, exporter),
        "sampled_batch": (batch_provider, batch_exporter),
    }
    processor = Processor(None, WorkerSettings(), load_rules(), worker_id="bench:1", dry_run=True)
    records = {kind: _records(cfg.trace_batch, kind, seed=11) for kind, _ in TRACE_VARIANTS}
    loop = asyncio.new_event_loop()
    times: dict[str, list[float]] = {kind: [] for kind, _ in TRACE_VARIANTS}
    spans_seen: dict[str, int] = {}
    saved = tracing.TRACER_PROVIDER

    def once(kind: str, check: bool) -> float:
        used, spans_to = providers.get(kind, (None, None))
        tracing.TRACER_PROVIDER = used
        gc.collect()
        t0 = time.perf_counter()
        out = loop.run_until_complete(processor.process(records[kind]))
        elapsed = time.perf_counter() - t0
        spans: list[Any] = []
        if used is not None and spans_to is not None:
            if not used.force_flush(10_000):
                raise BenchError(f"tracing {kind}: spans not exported within 10 s")
            spans = list(spans_to.get_finished_spans())
            spans_to.clear()
        spans_seen[kind] = len(spans)
        if check:
            _check_trace(kind, records[kind], out, spans)
        elif len(spans) != _expected_spans(kind, cfg.trace_batch):
            raise BenchError(f"tracing {kind}: {len(spans)} spans in a timed run")
        return elapsed

    try:
        for kind, _ in TRACE_VARIANTS:  # warm-up, fully checked
            once(kind, check=True)
        for _ in range(cfg.trace_runs):
            for kind, _ in TRACE_VARIANTS:
                times[kind].append(once(kind, check=False))
    finally:
        tracing.TRACER_PROVIDER = saved
        loop.close()
        provider.shutdown()
        batch_provider.shutdown()
    base = min(times["baseline"]) / cfg.trace_batch * 1e6
    rows = []
    for kind, label in TRACE_VARIANTS:
        best = min(times[kind]) / cfg.trace_batch * 1e6
        med = statistics.median(times[kind]) / cfg.trace_batch * 1e6
        rows.append(
            {
                "variant": kind,
                "label": label,
                "us_per_event_best": round(best, 2),
                "us_per_event_median": round(med, 2),
                "x_baseline": round(best / base, 3),
                "added_us_per_event": round(best - base, 2),
                "spans_per_batch": spans_seen[kind],
            }
        )
        progress(
            f"integrations tracing {kind}: {best:.1f} us/event best (median {med:.1f}), "
            f"x{best / base:.2f}, {spans_seen[kind]} spans per batch"
        )
    return {
        "batch": cfg.trace_batch,
        "runs": cfg.trace_runs,
        "span_processor": "SimpleSpanProcessor (or BatchSpanProcessor) -> InMemorySpanExporter",
        "results": rows,
    }


def run(connect: Connect, cfg: IntegrationsConfig, progress: Progress) -> dict[str, Any]:
    config = {
        "dims": list(cfg.dims),
        "queries": cfg.queries,
        "doc_batches": cfg.doc_batches,
        "doc_batch": cfg.doc_batch,
        "runs": cfg.runs,
        "min_run_seconds": cfg.min_run_seconds,
        "trace_batch": cfg.trace_batch,
        "trace_runs": cfg.trace_runs,
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }
    result: dict[str, Any] = {"config": config}
    missing = langchain_available()
    if missing is None:
        from importlib.metadata import version

        config["langchain_core"] = version("langchain-core")
        config["langchain_classic"] = version("langchain-classic")
        result["langchain"] = [_langchain_dim(connect, d, cfg, progress) for d in cfg.dims]
    else:
        progress(f"integrations: LangChain rows skipped: {missing}")
        result["langchain_note"] = missing
    try:
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError:
        result["tracing_note"] = "opentelemetry-sdk is not installed (pip install '.[otel]')"
        progress(f"integrations: {result['tracing_note']}")
    else:
        result["tracing"] = _tracing(cfg, progress)
    return result


# -- report ---------------------------------------------------------------------------------


def integrations_md(sec: dict[str, Any]) -> str:
    cfg = sec["config"]
    lines: list[str] = []
    if "langchain" in sec:
        lines += [
            f"**LangChain query cache, all hits** (langchain-core {cfg.get('langchain_core')}, "
            f"langchain-classic {cfg.get('langchain_classic')}). `CachedEmbeddings` vs "
            "`CacheBackedEmbeddings.from_bytes_store(..., query_embedding_cache=True, "
            'key_encoder="sha256")` over a minimal Redis `ByteStore` (as '
            "langchain-community's `RedisStore`) on the same redis-server, and redis-py's "
            "bare GET / MGET of float32 payloads (no hashing, no decoding: the ceiling). "
            f"{cfg['queries']} warm queries, {cfg['doc_batches']} warm batches of "
            f"{cfg['doc_batch']} texts; medians of {cfg['runs']} interleaved runs; the "
            "embedder (`DeterministicFakeEmbedding`) was not called while timing.",
            "",
            "| dim | operation | subject | texts/s | × LangChain | % of raw | bytes/value "
            "| MEMORY USAGE | × LangChain bytes |",
            "|---:|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for d in sec["langchain"]:
            for r in d["rows"]:
                lines.append(
                    f"| {r['dim']} | {r['operation']} | {r['subject']} | "
                    f"{r['texts_per_s']:,.0f} | {r['x_langchain']:.2f} | {r['pct_of_raw']:.0f}% "
                    f"| {r['value_bytes_median']:,.0f} ({r['format']}) "
                    f"| {r['memory_usage_bytes_median']:,.0f} | {r['bytes_x_langchain']:.3f} |"
                )
        lines.append("")
    elif "langchain_note" in sec:
        lines += [f"LangChain rows skipped: {sec['langchain_note']}", ""]
    tr = sec.get("tracing")
    if tr is not None:
        lines += [
            f"**Worker tracing overhead**: `Processor.process` (dry run: plan + audit, no "
            f"Redis) on batches of {tr['batch']} valid events, best of {tr['runs']} "
            f"interleaved runs; spans through {tr['span_processor']} (an in-memory list: a "
            "real exporter's serialization and network are not included).",
            "",
            "| variant | µs/event (best) | median | × baseline | + µs/event | spans/batch |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for r in tr["results"]:
            lines.append(
                f"| {r['label']} | {r['us_per_event_best']:.1f} | "
                f"{r['us_per_event_median']:.1f} | {r['x_baseline']:.2f} | "
                f"{r['added_us_per_event']:+.1f} | {r['spans_per_batch']:,} |"
            )
    elif "tracing_note" in sec:
        lines.append(f"Tracing rows skipped: {sec['tracing_note']}")
    return "\n".join(lines)
