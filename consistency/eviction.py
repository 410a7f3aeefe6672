"""Eviction, full-memory and settings rows (standalone and a 3-primary cluster).

**Eviction** (every ``maxmemory-policy`` that evicts; ``standalone``: 12,000 entries,
20 MB). Tagged search results (one sixth in collection ``aux``, the rest in ``main``;
five documents each from a corpus of 10,000, ~1.4 KB each, filling ~85% of the memory)
are written through lookup -> ticket -> set, then read 15,000 times with Zipf popularity
(s = 1.1; a warm cache: popular entries carry access history). Then 200 documents are
updated (one ``invalidate_documents`` call each) and ``aux`` is bumped once. Then 45,000
new entries are written (search results of a third collection through ``set()``; for
``volatile-ttl``, query embeddings with their 48 h TTL, ``set_many`` by 50), pushing
memory over ``maxmemory`` about three times over, with 15,000 cache-aside reads of the
invalidated entries interleaved (same popularity; a miss is recomputed and written back
under its ticket). Today a stamp (TTL ``stamp_ttl``) or a generation key can be evicted
before the entries it retires: the entry serves again. The cluster rows run a third of
the workload with ``maxmemory`` per primary sized to the same proportions (a cluster
node starts at ~1.9 MB used); ``--quick`` runs about a twelfth.

**Full memory** (``noeviction``): the same entries and warm-up, then query embeddings
until Redis refuses writes, then the invalidations (today: refused, old values keep
serving; new code: control keys unlinked, ``RedisFullError``). An invalidation counts
as completed when its call ended, returned or raised: the caller asked for it. A third
of the reads follow at full memory; then cache entries expire (as TTLs do) until every
primary is at 97% of its maxmemory (writes succeed again for a while, so refills
re-create what the fallback unlinked) and a third more are read; then ``maxmemory`` is
lifted, the invalidations retried (as the worker does) and the rest read.

**Settings**: ``stamp_ttl`` 4 s, entry TTLs 4 s, ``max_ticket_age`` 3 s. 100 entries
(one document each) are computed under tickets, their documents invalidated, the values
written with the old tickets 1.5 s later (younger than ``max_ticket_age``: accepted) and
read 4.6 s after the invalidations, when 4 s stamps are gone and the entries are not.
The new ``Settings`` refuses that configuration (the row's result); the closest valid
one (``stamp_ttl`` 7 s = entry TTL + ticket age) runs the same timeline.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from .model import Row, RunContext, make_settings, register
from .nodes import (
    Topology,
    all_full,
    config_set,
    expire_until,
    info_sum,
    memory,
    started,
    topology_label,
)
from .workload import Workload

FillLayer = Literal["search_results", "query_embeddings"]

Progress = Callable[[str], None]


def _quiet(message: str) -> None:
    pass


QE_BATCH = 50
"""Query embeddings written per ``set_many`` while filling memory."""
EXPIRE_TO = 0.97
"""Under noeviction, cache entries (search results, query embeddings) expire after the
invalidations until every primary uses at most this share of its maxmemory."""


@dataclass(frozen=True)
class Size:
    entries: int
    docs: int
    """Corpus size: each document is in ~5-6 cached result lists (a corpus is much
    larger than the set of cached queries), so a stamp is read only when one of
    those few lists is."""
    invalidated: int
    fill: int
    reads: int
    maxmemory: str
    """Per server; on a cluster per primary."""
    content_bytes: int = 90
    """Text per search hit: an entry is ~1.4-1.5 KB in Redis, so the entries fill about
    85% of the memory left above an empty server's (a cache that evicts runs full)."""
    qe_dim: int = 256


FULL = Size(
    entries=12_000, docs=10_000, invalidated=200, fill=45_000, reads=15_000, maxmemory="20mb"
)
FULL_CLUSTER = Size(
    entries=4_000, docs=3_300, invalidated=200, fill=15_000, reads=5_000, maxmemory="4mb"
)
"""A third of the standalone workload (a cluster client is ~2.5x slower per call). A
cluster node starts at ~1.9 MB used (a standalone server at ~0.95 MB), so each primary has
~2.3 MB for a third of the entries: the same proportions as 20 MB for the whole."""
QUICK = Size(entries=1_000, docs=1_000, invalidated=25, fill=4_000, reads=1_200, maxmemory="2600kb")
QUICK_CLUSTER = Size(
    entries=750, docs=750, invalidated=25, fill=3_000, reads=900, maxmemory="2250kb"
)
TINY = Size(
    entries=300, docs=300, invalidated=10, fill=2_000, reads=600, maxmemory="1440kb", qe_dim=64
)
"""For the fast tests in ``make test`` (a few seconds per run, standalone)."""


def size_of(ctx: RunContext, topology: Topology) -> Size:
    if topology == "cluster":
        return QUICK_CLUSTER if ctx.quick else FULL_CLUSTER
    return QUICK if ctx.quick else FULL


def memory_label(size: Size, topology: Topology) -> str:
    per = " per primary" if topology == "cluster" else ""
    return f"maxmemory {size.maxmemory}{per}"


# --------------------------------------------------------------------------- eviction


@dataclass
class EvictionResult:
    row: Row
    evicted_keys: int


def populate(wl: Workload, size: Size) -> list[tuple[str, str]]:
    """Write the tagged entries (lookup -> ticket -> set); returns (collection, query)."""
    aux = size.entries // 6
    targets = [("aux" if i < aux else "main", f"q{i}") for i in range(size.entries)]
    for collection, query in targets:
        wl.write_search(collection, query)
    return targets


def invalidate(
    wl: Workload,
    size: Size,
    rng: random.Random,
    targets: Sequence[tuple[str, str]],
    *,
    count_attempts: bool = False,
) -> tuple[list[str], list[tuple[str, str]]]:
    """Update ``size.invalidated`` documents (one call each) and bump ``aux``.
    Returns the documents and the entries that were invalidated."""
    from cachebus.errors import CacheBusError

    done_on: tuple[type[BaseException], ...] = (CacheBusError,) if count_attempts else ()
    docs = rng.sample(wl.doc_ids, size.invalidated)
    for doc in docs:
        wl.invalidate_documents([doc], done_on=done_on)
    wl.bump_collection("aux", done_on=done_on)
    chosen = set(docs)
    affected = [
        (c, q) for c, q in targets if c == "aux" or chosen.intersection(wl.result_docs(c, q))
    ]
    return docs, affected


ZIPF_S = 1.1
"""Popularity skew of the reads (as ``bench/cache_aside``)."""


class Popularity:
    """A seeded popularity rank per entry; reads draw entries with Zipf weights, the
    same ranks before the invalidations (warm-up) and after (reads of the invalidated)."""

    def __init__(self, entries: Sequence[tuple[str, str]], rng: random.Random) -> None:
        ranked = list(entries)
        rng.shuffle(ranked)
        self.weight = {e: 1.0 / (rank + 1) ** ZIPF_S for rank, e in enumerate(ranked)}
        self.ranked = ranked

    def draw(
        self, k: int, rng: random.Random, among: Sequence[tuple[str, str]] | None = None
    ) -> list[tuple[str, str]]:
        entries = list(among) if among is not None else self.ranked
        return rng.choices(entries, weights=[self.weight[e] for e in entries], k=k)


def warm_up(wl: Workload, popularity: Popularity, reads: int, rng: random.Random) -> None:
    """Reads before the invalidations (a cache in service has been read: popular entries
    carry access history, a stamp an invalidation creates does not). Not counted."""
    for collection, query in popularity.draw(reads, rng):
        wl.read_search(collection, query)
    wl.oracle.reset_counts()


def reads_due(write: int, writes: int, reads: int) -> int:
    """Reads to do after write number ``write`` (0-based): ``reads`` spread evenly."""
    return (write + 1) * reads // writes - write * reads // writes


def run_eviction(
    code: Literal["new", "baseline"],
    policy: str,
    topology: Topology,
    size: Size,
    *,
    fill_layer: FillLayer = "search_results",
    seed: int = 1,
    progress: Progress | None = None,
) -> EvictionResult:
    """One eviction run on fresh servers; the row and the number of keys Redis evicted."""
    say = progress or _quiet
    config = [f"maxmemory {size.maxmemory}", f"maxmemory-policy {policy}"]
    rng = random.Random(seed)
    t0 = time.monotonic()
    with started(topology, config) as client:
        wl = Workload(
            client,
            make_settings(code),
            seed=seed,
            docs=size.docs,
            dim=size.qe_dim,
            content_bytes=size.content_bytes,
        )
        say(f"{policy}: writing {size.entries:,} tagged entries, {size.reads:,} warm-up reads")
        targets = populate(wl, size)
        popularity = Popularity(targets, rng)
        warm_up(wl, popularity, size.reads, rng)
        evicted_before = info_sum(client, "stats", "evicted_keys")
        docs, affected = invalidate(wl, size, rng, targets)
        say(
            f"{policy}: {len(docs)} documents invalidated + 1 bump ({len(affected):,} entries "
            f"affected); {size.fill:,} new writes"
        )
        plan = iter(popularity.draw(size.reads, rng, affected))
        step = max(1, size.fill // 5)
        batch: list[str] = []
        for j in range(size.fill):
            if fill_layer == "query_embeddings":
                batch.append(f"fill query {j}")
                if len(batch) == QE_BATCH or j == size.fill - 1:
                    wl.write_query_embeddings(batch)
                    batch = []
            else:
                wl.store_search("fill", f"f{j}")
            for _ in range(reads_due(j, size.fill, size.reads)):
                wl.read_search(*next(plan))
            if (j + 1) % step == 0:
                t = wl.oracle.total()
                say(f"{policy}: {j + 1:,} writes, {t.reads:,} reads, {t.stale} stale")
        evicted = info_sum(client, "stats", "evicted_keys")
    total = wl.oracle.total()
    fill_text = (
        "query embeddings, 48 h TTL" if fill_layer == "query_embeddings" else "search results"
    )
    notes = [
        f"{evicted:,} keys evicted ({evicted_before:,} before the invalidations)",
        f"{len(affected):,} of {size.entries:,} entries invalidated",
        f"fill: {fill_text}",
    ]
    if wl.errors:
        notes.append("invalidation errors: " + ", ".join(f"{k} x{v}" for k, v in wl.errors.items()))
    if wl.oracle.examples:
        notes.append("e.g. " + wl.oracle.examples[0])
    row = Row(
        scenario=(
            "eviction while query embeddings fill memory"
            if fill_layer == "query_embeddings"
            else "eviction under write pressure"
        ),
        redis_config=f"{memory_label(size, topology)}, {policy}",
        topology=topology_label(topology),
        code=code,
        entries=size.entries,
        invalidations=wl.oracle.invalidations,
        reads=total.reads,
        stale_reads=total.stale,
        hits=total.hits,
        notes="; ".join(notes),
        case=f"eviction/{policy}/{topology}",
        seconds=round(time.monotonic() - t0, 1),
    )
    return EvictionResult(row, evicted)


# --------------------------------------------------------------------------- full memory


def fill_until_refused(wl: Workload, client: Any) -> int:
    """Query embeddings until Redis refuses writes (on a cluster: until every primary
    is full). Returns how many were written."""
    written = 0
    n = 0
    while True:
        texts = [f"fill query {n + i}" for i in range(QE_BATCH)]
        n += QE_BATCH
        stored = wl.write_query_embeddings(texts)
        written += stored
        if stored == 0:
            break
        if n > 2_000_000:
            raise RuntimeError("memory never filled up: is maxmemory set?")
    # On a cluster the batch fails as a whole once one primary is full: go on one at a
    # time until every primary is (the ones still with room take their keys).
    attempts = 0
    while not all_full(client) and attempts < 200_000:
        for _ in range(200):
            written += wl.write_query_embeddings([f"fill query {n}"])
            n += 1
            attempts += 1
    return written


def run_noeviction(
    code: Literal["new", "baseline"],
    topology: Topology,
    size: Size,
    *,
    seed: int = 1,
    progress: Progress | None = None,
) -> Row:
    say = progress or _quiet
    config = [f"maxmemory {size.maxmemory}", "maxmemory-policy noeviction"]
    rng = random.Random(seed)
    t0 = time.monotonic()
    with started(topology, config) as client:
        wl = Workload(
            client,
            make_settings(code),
            seed=seed,
            docs=size.docs,
            dim=size.qe_dim,
            content_bytes=size.content_bytes,
        )
        say(f"noeviction: writing {size.entries:,} tagged entries")
        targets = populate(wl, size)
        popularity = Popularity(targets, rng)
        warm_up(wl, popularity, size.reads, rng)
        filled = fill_until_refused(wl, client)
        used = memory(client)
        say(f"noeviction: full after {filled:,} query embeddings ({used})")
        docs, affected = invalidate(wl, size, rng, targets, count_attempts=True)
        errors_full = dict(wl.errors)
        say(f"noeviction: invalidations at full memory: errors {errors_full or 'none'}")
        third = size.reads // 3
        for collection, query in popularity.draw(third, rng, affected):
            wl.read_search(collection, query)
        full = wl.oracle.total()
        # Some entries expire (as TTLs do): writes succeed again for a while, and
        # refills re-create the stamps the fallback unlinked.
        prefix = wl.settings.prefix
        expired = expire_until(client, [f"{prefix}:qe:*", f"{prefix}:sr:*"], EXPIRE_TO)
        for collection, query in popularity.draw(third, rng, affected):
            wl.read_search(collection, query)
        freed = wl.oracle.total()
        # Memory frees up (an operator raises maxmemory): retry what failed, read again.
        config_set(client, "maxmemory", 0)
        wl.errors.clear()
        retried = 0
        for doc in docs:
            if wl.retry_documents([doc]).ok:
                retried += 1
        if wl.bump_collection("aux", retry=True).ok:
            retried += 1
        for collection, query in popularity.draw(size.reads - 2 * third, rng, affected):
            wl.read_search(collection, query)
    total = wl.oracle.total()
    notes = [
        f"at full memory: {len(docs) + 1} invalidation calls, errors "
        + (", ".join(f"{k} x{v}" for k, v in errors_full.items()) or "none"),
        "an invalidation counts as completed when its call ended (returned or raised)",
        f"{full.reads:,} reads at full memory: {full.stale} stale, {full.hits} hits",
        f"{expired:,} entries expired, {freed.reads - full.reads:,} reads: "
        f"{freed.stale - full.stale} stale, {freed.hits - full.hits} hits",
        f"maxmemory lifted, {retried}/{len(docs) + 1} retries ok, "
        f"{total.reads - freed.reads:,} reads: {total.stale - freed.stale} stale",
    ]
    if wl.errors:
        notes.append("retry errors: " + ", ".join(f"{k} x{v}" for k, v in wl.errors.items()))
    if wl.oracle.examples:
        notes.append("e.g. " + wl.oracle.examples[0])
    return Row(
        scenario="full memory: invalidate, read, free memory, retry",
        redis_config=f"{memory_label(size, topology)}, noeviction",
        topology=topology_label(topology),
        code=code,
        entries=size.entries,
        invalidations=len(docs) + 1,
        reads=total.reads,
        stale_reads=total.stale,
        hits=total.hits,
        notes="; ".join(notes),
        case=f"noeviction/{topology}",
        seconds=round(time.monotonic() - t0, 1),
    )


# --------------------------------------------------------------------------- settings

UNSAFE_TTLS = {
    "stamp_ttl": 4,
    "search_results_ttl": 4,
    "rerank_scores_ttl": 4,
    "document_embedding_ttl": 4,
    "answers_ttl": 4,
    "max_ticket_age": 3.0,
}
"""Every tagged layer's TTL (the baseline's Settings drops the fields it lacks)."""
CLOSEST_VALID = dict(UNSAFE_TTLS, stamp_ttl=7)
"""The same entry TTLs and ticket age; ``stamp_ttl`` raised to TTL + ticket age."""
ENTRY_TTL = 4
WRITE_AFTER = 1.5
"""Seconds between taking the tickets and writing (under ``max_ticket_age``)."""
READ_AFTER = 4.6
"""Seconds after the invalidations when the entries are read (stamps of 4 s are gone,
entries written at 1.5 s with a 4 s TTL are not)."""


def _ttl_label(values: dict[str, float]) -> str:
    return (
        f"stamp_ttl {values['stamp_ttl']:g} s, entry TTLs {values['search_results_ttl']:g} s, "
        f"max_ticket_age {values['max_ticket_age']:g} s"
    )


def measure_old_tickets(
    code: Literal["new", "baseline"], settings: object, entries: int, seed: int
) -> tuple[Row, str]:
    """Tickets -> invalidations -> writes with the old tickets -> reads after 4 s."""
    with started("standalone") as client:
        wl = Workload(client, settings, seed=seed, docs=entries, hits_per_result=1)
        queries = [f"q{i}" for i in range(entries)]
        for query, doc in zip(queries, wl.doc_ids, strict=True):
            wl.pin_results("main", query, [doc])  # one document per entry
        t0 = time.monotonic()
        pending = [wl.prepare_search("main", q) for q in queries]
        for doc in wl.doc_ids:
            wl.invalidate_documents([doc])
        inv_end = time.monotonic()
        time.sleep(max(0.0, t0 + WRITE_AFTER - time.monotonic()))
        written = sum(p.commit() for p in pending)
        w_end = time.monotonic()
        time.sleep(max(0.0, inv_end + READ_AFTER - time.monotonic()))
        read_at = time.monotonic()
        for q in queries:
            wl.read_search("main", q, refill=False)
    total = wl.oracle.total()
    timing = (
        f"{written}/{entries} writes accepted {w_end - t0:.1f} s after their tickets; "
        f"read {read_at - inv_end:.1f} s after the invalidations, "
        f"{read_at - w_end:.1f} s after the writes"
    )
    if read_at - w_end >= ENTRY_TTL:
        timing += " (TIMING MISSED: the entries had expired, the row proves nothing)"
    row = Row(
        scenario="a write with an old ticket, read after its stamps' TTL",
        redis_config="",
        topology=topology_label("standalone"),
        code=code,
        entries=entries,
        invalidations=wl.oracle.invalidations,
        reads=total.reads,
        stale_reads=total.stale,
        hits=total.hits,
        notes=timing,
    )
    return row, timing


def settings_short_stamp_ttl(ctx: RunContext) -> list[Row]:
    """The unsafe TTL configuration, and the closest valid one on the same timeline."""
    from cachebus.errors import ConfigError

    entries = 100
    rows: list[Row] = []
    for label, values in (("unsafe", UNSAFE_TTLS), ("closest valid", CLOSEST_VALID)):
        config = f"{label}: {_ttl_label(values)}"
        case = f"settings/{label}"
        try:
            settings = make_settings(ctx.code, **values)
        except ConfigError as exc:
            ctx.progress(f"{label}: Settings refused it")
            rows.append(
                Row(
                    scenario="a write with an old ticket, read after its stamps' TTL",
                    redis_config=config,
                    topology=topology_label("standalone"),
                    code=ctx.code,
                    entries=0,
                    invalidations=0,
                    reads=0,
                    stale_reads=0,
                    hits=0,
                    notes=f"ConfigError: {exc}",
                    outcome="refused by Settings",
                    case=case,
                )
            )
            continue
        ctx.progress(f"{label}: {_ttl_label(values)}")
        t0 = time.monotonic()
        row, _ = measure_old_tickets(ctx.code, settings, entries, ctx.seed)
        rows.append(
            replace(row, redis_config=config, case=case, seconds=round(time.monotonic() - t0, 1))
        )
    return rows


# --------------------------------------------------------------------------- registry

POLICIES: tuple[tuple[str, FillLayer], ...] = (
    ("allkeys-lru", "search_results"),
    ("allkeys-lfu", "search_results"),
    ("allkeys-random", "search_results"),
    ("volatile-lru", "search_results"),
    ("volatile-lfu", "search_results"),
    ("volatile-random", "search_results"),
    ("volatile-ttl", "query_embeddings"),
)


def _eviction_scenario(policy: str, fill: FillLayer, topology: Topology) -> None:
    name = f"eviction-{policy}" + ("-cluster" if topology == "cluster" else "")

    def scenario(ctx: RunContext) -> list[Row]:
        result = run_eviction(
            ctx.code,
            policy,
            topology,
            size_of(ctx, topology),
            fill_layer=fill,
            seed=ctx.seed,
            progress=ctx.progress,
        )
        return [result.row]

    scenario.__name__ = name.replace("-", "_")
    title = f"{policy} eviction ({topology_label(topology)})"
    register(name, baseline=True, title=title)(scenario)


def _noeviction_scenario(topology: Topology) -> None:
    name = "noeviction-full" + ("-cluster" if topology == "cluster" else "")

    def scenario(ctx: RunContext) -> list[Row]:
        size = size_of(ctx, topology)
        return [run_noeviction(ctx.code, topology, size, seed=ctx.seed, progress=ctx.progress)]

    scenario.__name__ = name.replace("-", "_")
    title = f"noeviction at full memory ({topology_label(topology)})"
    register(name, baseline=True, title=title)(scenario)


# Report order: every standalone row, then the cluster's.
for _policy, _fill in POLICIES:
    _eviction_scenario(_policy, _fill, "standalone")
_noeviction_scenario("standalone")
register(
    "settings-short-stamp-ttl",
    baseline=True,
    title="stamp_ttl shorter than TTL + ticket age",
    exclusive=True,  # a timeline of seconds
)(settings_short_stamp_ttl)
for _policy, _fill in POLICIES:
    _eviction_scenario(_policy, _fill, "cluster")
_noeviction_scenario("cluster")
