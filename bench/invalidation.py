"""Invalidation cost vs keyspace size: the lesson's SCAN + DEL per event vs cachebus.

Per keyspace size ``n`` (10k, 100k, 1M search result entries) two Redis databases hold
equivalent keyspaces:

* **ours**: ``n`` real cachebus search result entries of collection ``kb`` (each a few
  :class:`cachebus.SearchHit` of a pool of documents, tagged by the library's scheme),
  written with pipelined raw ``SET … EX`` built from the library's own key scheme and
  value encoding; a sample written through :class:`cachebus.SearchResultsCache` first
  proves the bytes are identical.  Before timing, a sample read through the library hits;
  after the document invalidations, the entries holding an invalidated document miss and
  the others still hit; after the bumps, every entry of the collection misses.
* **lesson**: ``n`` keys of the lesson's ``SearchResultsCache`` (``search:<sha256[:24]>``,
  JSON), refilled to ``n`` before every event (its invalidation deletes all of them).

Per event: (a) lesson: ``CacheInvalidator.invalidate_document`` (``DEL docembed:<id>:*``,
``SCAN MATCH search:* COUNT 100`` + ``DEL`` loop) + ``_invalidate_search_cache`` option 1
(``increment_version``); (b) ours: ``Invalidator.invalidate_documents([doc])`` and
``Invalidator.bump(collections=["kb"])``.  Wall time per event (median, p90) and Redis CPU
(``INFO cpu`` user+sys delta).  Ours runs interleaved across the sizes, in blocks, so drift
and background load hit every size alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis

import cachebus
from cachebus.codecs import pack_tagged
from cachebus.runner import SyncRunner
from cachebus.search_results import SearchRequest, SearchResultsCore
from cachebus.tags import Ticket, take_ticket

from .client_layers import BenchError
from .lesson_baseline import LessonCacheInvalidator, LessonSearchResultsCache

Progress = Callable[[str], None]

COLLECTION = "kb"
HITS_PER_ENTRY = 3
TOP_K = 10
WRITE_CHUNK = 5000
SAMPLE_READS = 300


@dataclass(frozen=True)
class InvalidationConfig:
    sizes: tuple[int, ...]
    ours_events: int
    lesson_events: tuple[int, ...]
    """Lesson events per size (same order as ``sizes``)."""
    documents: int
    block: int = 10


def bench_settings() -> cachebus.Settings:
    # A TTL longer than the section's runtime, so nothing expires while measuring.
    return cachebus.Settings(prefix="bench", search_results_ttl=3600)


def redis_cpu(client: redis.Redis) -> float:
    info: dict[str, Any] = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


@dataclass
class EventStats:
    """Per-event cost of one approach at one keyspace size."""

    approach: str
    keys: int
    events: int
    times_s: list[float]
    redis_cpu_s_per_event: float
    keys_deleted_per_event: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    def as_dict(self) -> dict[str, Any]:
        return {
            "approach": self.approach,
            "keys": self.keys,
            "events": self.events,
            "median_ms": round(self.median_s * 1000, 4),
            "p90_ms": round(_percentile(self.times_s, 90) * 1000, 4),
            "min_ms": round(min(self.times_s) * 1000, 4),
            "max_ms": round(max(self.times_s) * 1000, 4),
            "redis_cpu_ms_per_event": round(self.redis_cpu_s_per_event * 1000, 4),
            "keys_deleted_per_event": self.keys_deleted_per_event,
            "times_ms": [round(t * 1000, 4) for t in self.times_s],
            **self.extra,
        }


class Keyspace:
    """The entries both approaches hold: query ``i`` -> hits from a pool of documents."""

    def __init__(self, size: int, documents: int, seed: int = 7) -> None:
        rng = np.random.default_rng(seed)
        self.size = size
        self.documents = documents
        self.hit_docs = rng.integers(0, documents, size=(size, HITS_PER_ENTRY))
        self.scores = np.round(rng.random((size, HITS_PER_ENTRY)), 4)

    @staticmethod
    def query(i: int) -> str:
        return f"benchmark search query #{i}"

    @staticmethod
    def doc(d: int) -> str:
        return f"doc-{d}"

    def hits(self, i: int) -> list[cachebus.SearchHit]:
        return [
            cachebus.SearchHit(self.doc(int(d)), float(s))
            for d, s in zip(self.hit_docs[i], self.scores[i], strict=True)
        ]

    def docs_of(self, i: int) -> set[str]:
        return {self.doc(int(d)) for d in self.hit_docs[i]}


CONTROL_KEYS = 3
"""The sequence, the epoch and the collection's generation (created by the ticket)."""


class OursWriter:
    """Builds cachebus search result entries exactly as the library writes them."""

    def __init__(self, settings: cachebus.Settings) -> None:
        self.settings = settings
        self.core = SearchResultsCore(settings, COLLECTION)
        self.ttl = settings.search_results_ttl

    def tokens(self, space: Keyspace, i: int) -> list[str]:
        hits = space.hits(i)
        return sorted(
            {self.core.collection_tag.token, *(cachebus.Tag.doc(h.doc_id).token for h in hits)}
        )

    def entry(self, space: Keyspace, i: int, ticket: Ticket) -> tuple[str, bytes]:
        hits = space.hits(i)
        request = SearchRequest(space.query(i), None, TOP_K)
        generation = ticket.generations[self.core.namespace]
        key = self.core.keys.search_results(COLLECTION, generation, request.digest())
        payload = self.core.encode_value(hits)
        return key, pack_tagged(ticket.seq, self.tokens(space, i), payload, ticket.epoch)

    def prove_identical(self, client: redis.Redis, space: Keyspace, count: int = 20) -> None:
        """Write ``count`` entries through the library and compare with our bytes."""
        cache = cachebus.SearchResultsCache(client, COLLECTION, settings=self.settings)
        ticket = self.ticket(client)
        for i in range(count):
            cache.set(space.query(i), space.hits(i), None, TOP_K, ticket=ticket)
            key, payload = self.entry(space, i, ticket)
            stored = client.get(key)
            if stored != payload:
                raise BenchError(
                    f"bulk entry {i} differs from what SearchResultsCache.set wrote "
                    f"({stored!r:.80} vs {payload!r:.80})"
                )

    def ticket(self, client: redis.Redis) -> Ticket:
        """A ticket as the library takes it (creates the sequence, epoch, generation)."""
        return SyncRunner(client).run(take_ticket(self.core.keys, [self.core.namespace]))

    def populate(self, client: redis.Redis, space: Keyspace, upto: int) -> int:
        """Bulk-write ``upto`` entries as the library would, and their tags' stamps (at the
        ticket's sequence, as the library's first write creates them)."""
        ticket = self.ticket(client)
        pipe = client.pipeline(transaction=False)
        stamps: set[str] = set()
        for i in range(upto):
            key, payload = self.entry(space, i, ticket)
            stamps.update(self.tokens(space, i))
            pipe.set(key, payload, ex=self.ttl)
            if len(pipe) >= WRITE_CHUNK:
                pipe.execute()
        for token in stamps:
            pipe.set(self.core.keys.stamp(cachebus.Tag(token)), ticket.seq, nx=True)
            if len(pipe) >= WRITE_CHUNK:
                pipe.execute()
        pipe.execute()
        return len(stamps)


class LessonWriter:
    """Keys and values of the lesson's search results cache, built once, written often."""

    def __init__(self, space: Keyspace, upto: int) -> None:
        self.keys = [
            LessonSearchResultsCache.make_key(space.query(i), TOP_K, None) for i in range(upto)
        ]
        self.values = [
            LessonSearchResultsCache.encode([(h.doc_id, h.score) for h in space.hits(i)])
            for i in range(upto)
        ]
        self.ttl = LessonSearchResultsCache(redis.Redis()).ttl

    def fill(self, client: redis.Redis, n: int) -> None:
        """SETEX the first ``n`` entries (the lesson's write), pipelined."""
        pipe = client.pipeline(transaction=False)
        for k in range(n):
            pipe.setex(self.keys[k], self.ttl, self.values[k])
            if len(pipe) >= WRITE_CHUNK:
                pipe.execute()
        pipe.execute()


def _sample_reads(
    client: redis.Redis, settings: cachebus.Settings, space: Keyspace, n: int, rng: Any
) -> list[tuple[int, bool]]:
    """(entry index, hit?) for a sample of entries, read through the library."""
    cache = cachebus.SearchResultsCache(client, COLLECTION, settings=settings)
    picks = rng.choice(n, size=min(SAMPLE_READS, n), replace=False)
    return [(int(i), cache.get(space.query(int(i)), None, TOP_K) is not None) for i in picks]


def measure_ours(
    clients: dict[int, redis.Redis],
    admin: redis.Redis,
    space: Keyspace,
    cfg: InvalidationConfig,
    progress: Progress,
) -> list[EventStats]:
    """Document invalidations, then collection bumps, interleaved over the sizes in blocks."""
    settings = bench_settings()
    rng = np.random.default_rng(11)
    for n, client in clients.items():
        before = _sample_reads(client, settings, space, n, rng)
        if not all(hit for _, hit in before):
            raise BenchError(f"ours at {n:,} keys: a sample read missed before invalidating")
    # Documents to invalidate: distinct, and present in the 10k keyspace too.
    smallest = min(clients)
    present = sorted({int(d) for d in space.hit_docs[:smallest].ravel()})
    picked = rng.choice(present, size=cfg.ours_events, replace=False)
    docs = [space.doc(int(d)) for d in picked]
    out: list[EventStats] = []
    for kind in ("invalidate_documents", "bump"):
        times: dict[int, list[float]] = {n: [] for n in clients}
        cpu: dict[int, float] = dict.fromkeys(clients, 0.0)
        invalidators = {n: cachebus.Invalidator(c, settings=settings) for n, c in clients.items()}
        for start in range(0, cfg.ours_events, cfg.block):
            for n, inv in invalidators.items():
                chunk = docs[start : start + cfg.block]
                before_cpu = redis_cpu(admin)
                for doc in chunk:
                    t0 = time.perf_counter()
                    if kind == "bump":
                        inv.bump(collections=[COLLECTION])
                    else:
                        inv.invalidate_documents([doc])
                    times[n].append(time.perf_counter() - t0)
                cpu[n] += redis_cpu(admin) - before_cpu
        for n, client in clients.items():
            extra: dict[str, Any] = {}
            after = _sample_reads(client, settings, space, n, rng)
            if kind == "invalidate_documents":
                gone = set(docs)
                wrong = [i for i, hit in after if hit == bool(space.docs_of(i) & gone)]
                retired = sum(1 for i, _ in after if space.docs_of(i) & gone)
                if wrong:
                    raise BenchError(
                        f"ours at {n:,} keys: {len(wrong)} sample reads disagree with the "
                        "invalidations (an entry of an invalidated document served, or "
                        "another entry missed)"
                    )
                extra["sample_check"] = (
                    f"{len(after)} sampled entries read through the library: {retired} held "
                    f"an invalidated document and missed, {len(after) - retired} still hit"
                )
            else:
                if any(hit for _, hit in after):
                    raise BenchError(f"ours at {n:,} keys: an entry served after the bumps")
                extra["sample_check"] = (
                    f"{len(after)} sampled entries read through the library: all missed "
                    "after the bumps"
                )
            extra["dbsize"] = int(client.dbsize())
            stats = EventStats(
                f"ours: {kind}", n, len(times[n]), times[n], cpu[n] / len(times[n]), 0.0, extra
            )
            progress(
                f"invalidation ours {kind} at {n:,} keys: median "
                f"{stats.median_s * 1e3:.3f} ms, Redis CPU "
                f"{stats.redis_cpu_s_per_event * 1e3:.3f} ms/event"
            )
            out.append(stats)
    return out


def measure_lesson(
    client: redis.Redis,
    admin: redis.Redis,
    writer: LessonWriter,
    n: int,
    events: int,
    docs: Sequence[str],
    progress: Progress,
) -> EventStats:
    invalidator = LessonCacheInvalidator(client)
    times: list[float] = []
    cpu = 0.0
    deleted: list[int] = []
    for k in range(events):
        client.flushdb()
        writer.fill(client, n)
        size = int(client.dbsize())
        before_cpu = redis_cpu(admin)
        t0 = time.perf_counter()
        invalidator.handle_updated(docs[k % len(docs)])
        times.append(time.perf_counter() - t0)
        cpu += redis_cpu(admin) - before_cpu
        left = sum(1 for _ in client.scan_iter(match="search:*", count=1000))
        if left:
            raise BenchError(f"lesson at {n:,} keys: {left} search keys survived its SCAN + DEL")
        deleted.append(size)
        progress(f"invalidation lesson at {n:,} keys: event {k + 1}/{events} {times[-1]:.3f} s")
    client.flushdb()
    return EventStats(
        "lesson: SCAN search:* + DEL",
        n,
        events,
        times,
        cpu / events,
        float(statistics.mean(deleted)),
    )


def run(
    connect: Callable[[int], redis.Redis],
    admin: redis.Redis,
    cfg: InvalidationConfig,
    progress: Progress,
) -> dict[str, Any]:
    admin.flushall()
    settings = bench_settings()
    biggest = max(cfg.sizes)
    t0 = time.perf_counter()
    space = Keyspace(biggest, cfg.documents)
    ours = OursWriter(settings)
    clients: dict[int, redis.Redis] = {}
    for db, n in enumerate(sorted(cfg.sizes), start=1):
        client = connect(db)
        if db == 1:
            ours.prove_identical(client, space)
            client.flushdb()
        stamps = ours.populate(client, space, n)
        if int(client.dbsize()) != n + stamps + CONTROL_KEYS:
            raise BenchError(
                f"ours: {client.dbsize()} keys in db {db}, expected {n} entries, {stamps} "
                f"stamps and {CONTROL_KEYS} control keys"
            )
        clients[n] = client
        progress(f"invalidation: {n:,} cachebus entries written ({time.perf_counter() - t0:.1f} s)")
    memory = int(admin.info("memory")["used_memory"])
    results = measure_ours(clients, admin, space, cfg, progress)
    for client in clients.values():
        client.flushdb()
    lesson_db = len(cfg.sizes) + 1
    lesson_client = connect(lesson_db)
    writer = LessonWriter(space, biggest)
    docs = [space.doc(d) for d in range(cfg.documents)]
    for n, events in zip(cfg.sizes, cfg.lesson_events, strict=True):
        results.append(measure_lesson(lesson_client, admin, writer, n, events, docs, progress))
    admin.flushall()
    rows = [r.as_dict() for r in results]
    add_ratios(rows)
    return {
        "config": {
            "sizes": list(cfg.sizes),
            "ours_events": cfg.ours_events,
            "lesson_events": list(cfg.lesson_events),
            "documents": cfg.documents,
            "hits_per_entry": HITS_PER_ENTRY,
            "block": cfg.block,
        },
        "redis_used_memory_bytes_ours_all_sizes": memory,
        "results": rows,
    }


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Each row vs the same approach at the smallest size, and the lesson vs ours there."""
    smallest: dict[str, float] = {}
    for row in sorted(rows, key=lambda r: r["keys"]):
        smallest.setdefault(row["approach"], row["median_ms"])
    by = {(r["approach"], r["keys"]): r for r in rows}
    for row in rows:
        row["x_own_smallest"] = round(row["median_ms"] / smallest[row["approach"]], 3)
        ours = by.get(("ours: invalidate_documents", row["keys"]))
        if ours is not None:
            row["x_ours_invalidate_documents"] = round(row["median_ms"] / ours["median_ms"], 2)
