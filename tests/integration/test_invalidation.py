"""Invalidation guarantees on real Redis and Redis Cluster: the stale-set race,
glob injection, tag integrity across TTLs, pattern scans on every primary."""

from __future__ import annotations

import random
import threading
import time

import numpy as np
import pytest

from cachebus import CacheBus, ChunkVector, SearchHit, Settings

S = Settings(prefix="t")
HOSTILE_IDS = ["*", "a*", "[ab]", "x\\", "{t}", "a:b", "?", "a b", "%2A", "t}"]
PLAIN_IDS = ["a", "b", "ab", "x", "t", "aXb", "canary"]


def v() -> np.ndarray:
    return np.ones(8, dtype=np.float32)


class TestStaleSetRace:
    """A value computed before an invalidation and written after it never serves."""

    def test_search_results_deterministic(self, any_redis) -> None:
        """lookup (ticket) -> invalidate doc -> write old value -> read: miss."""
        bus = CacheBus(any_redis, S)
        sr = bus.search_results("news")
        lookup = sr.lookup("q")
        assert lookup.values == [None]
        bus.invalidator.invalidate_documents(["x"])
        sr.set("q", [SearchHit("x", 1.0)], ticket=lookup.ticket)
        assert sr.get("q") is None
        # A value computed after the invalidation is served normally.
        fresh = sr.lookup("q")
        sr.set("q", [SearchHit("x", 1.0)], ticket=fresh.ticket)
        assert sr.get("q") is not None

    def test_document_embeddings_deterministic(self, any_redis) -> None:
        """The late write of an old chunk embedding is refused atomically."""
        bus = CacheBus(any_redis, S)
        de = bus.document_embeddings("m")
        lookup = de.lookup_chunks([])
        bus.invalidator.invalidate_documents(["d"])
        assert de.set("d", "c", v(), "h", ticket=lookup.ticket) == 0
        assert de.get("d", "c") is None

    def test_query_embeddings_deterministic(self, any_redis) -> None:
        """A write under the old generation lands where no reader looks."""
        bus = CacheBus(any_redis, S)
        qe = bus.query_embeddings("m")
        lookup = qe.lookup_many(["q"])
        bus.invalidator.bump(models=[("m", "1")])
        qe.set("q", v(), ticket=lookup.ticket)
        assert qe.get("q") is None

    def test_randomized_concurrent(self, any_redis) -> None:
        """3000 rounds of racing writers and invalidations: 0 stale reads.

        Writers take a ticket, then read doc X's version from a 'database' and
        write a result list carrying it. The invalidator bumps X's version in the
        database, then invalidates X, then records the version as retired-before.
        A read that starts after the invalidation of version N completed and
        returns a version older than N is stale."""
        bus = CacheBus(any_redis, S)
        sr = bus.search_results("race")
        db = {"version": 0, "invalidated": 0}
        lock = threading.Lock()
        rounds = 3000
        stale: list[tuple[int, int]] = []
        stop = threading.Event()

        def writer(seed: int) -> None:
            rnd = random.Random(seed)
            while not stop.is_set():
                lookup = sr.lookup("q")
                with lock:
                    seen = db["version"]
                if rnd.random() < 0.5:
                    time.sleep(rnd.random() / 5000)
                sr.set("q", [SearchHit("X", 1.0, doc_version=seen)], ticket=lookup.ticket)

        def reader(seed: int) -> None:
            while not stop.is_set():
                with lock:
                    current = db["invalidated"]
                got = sr.get("q")
                seen = None if got is None else got[0].doc_version
                if seen is not None and seen < current:
                    stale.append((seen, current))

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(3)]
        threads += [threading.Thread(target=reader, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        try:
            for _ in range(rounds):
                with lock:
                    db["version"] += 1
                bus.invalidator.invalidate_documents(["X"])
                with lock:
                    db["invalidated"] = db["version"]
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert sr.metrics.writes > 0 and sr.metrics.hits > 0
        assert stale == []


class TestGlobInjection:
    """Hostile ids only ever touch their own keys; a canary keyspace survives."""

    def _canary(self, bus: CacheBus, client) -> dict[str, bytes | None]:
        for doc in PLAIN_IDS + HOSTILE_IDS:
            bus.document_embeddings("m").set(doc, "c", v(), "h")
            bus.search_results("col").set(f"q-{doc}", [SearchHit(doc, 1.0)])
            client.set(f"t:legacy:{doc}:chunk", b"legacy")
        return {}

    @pytest.mark.parametrize("hostile", HOSTILE_IDS)
    def test_invalidate_and_scan_touch_only_own_keys(self, any_redis, hostile: str) -> None:
        """Tag invalidation and pattern scans of a hostile id leave all others intact."""
        bus = CacheBus(any_redis, S)
        self._canary(bus, any_redis)
        bus.invalidator.invalidate_documents([hostile], deleted=True)
        pattern = bus.invalidator.core.keys.pattern("legacy:{doc_id}:*", doc_id=hostile)
        removed = bus.invalidator.scan_delete(pattern)
        assert removed == 1
        for doc in PLAIN_IDS + HOSTILE_IDS:
            own = doc == hostile
            assert (bus.document_embeddings("m").get(doc, "c") is None) == own, doc
            assert (bus.search_results("col").get(f"q-{doc}") is None) == own, doc
            assert (any_redis.get(f"t:legacy:{doc}:chunk") is None) == own, doc

    def test_scan_pattern_must_stay_in_prefix(self, any_redis) -> None:
        """A scan may not leave the prefix nor cover all of it."""
        from cachebus import ConfigError

        inv = CacheBus(any_redis, S).invalidator
        with pytest.raises(ConfigError):
            inv.scan_delete("*")
        with pytest.raises(ConfigError):
            inv.scan_delete("t:*")


class TestTagIntegrity:
    def test_long_and_short_ttls_under_one_tag(self, any_redis) -> None:
        """Entries with long and short TTLs under one tag all stay invalidatable
        until they expire (the lesson's tag set forgot older members)."""
        bus = CacheBus(any_redis, S)
        sr = bus.search_results("news")
        sr.set("long", [SearchHit("X", 1.0)], ttl=600)
        sr.set("short", [SearchHit("X", 1.0)], ttl=1)
        time.sleep(1.3)
        assert sr.get("short") is None  # expired
        assert sr.get("long") is not None
        sr.set("short2", [SearchHit("X", 1.0)], ttl=1)  # newest member is short-lived
        bus.invalidator.invalidate_documents(["X"])
        assert sr.get("long") is None
        assert sr.get("short2") is None

    def test_invalidation_cost_independent_of_tagged_entries(self, any_redis) -> None:
        """Invalidating a tag is two round trips whatever the number of entries."""
        bus = CacheBus(any_redis, S)
        sr = bus.search_results("news")
        for i in range(300):
            sr.set(f"q{i}", [SearchHit("hot", 1.0)])
        report = bus.invalidator.invalidate_documents(["hot"])
        assert report.stamps == {"doc:hot": report.seq}
        assert all(sr.get(f"q{i}") is None for i in range(0, 300, 30))


class TestPatternScan:
    def test_scan_reaches_every_primary(self, cluster_client) -> None:
        """SCAN runs on every primary of the cluster: keys in all slots go."""
        bus = CacheBus(cluster_client, S)
        for i in range(300):
            cluster_client.set(f"t:legacy:doc1:{i}", b"x")
            cluster_client.set(f"t:legacy:doc2:{i}", b"x")
        nodes = {cluster_client.get_node_from_key(f"t:legacy:doc1:{i}").name for i in range(300)}
        assert len(nodes) == 3
        pattern = bus.invalidator.core.keys.pattern("legacy:{doc_id}:*", doc_id="doc1")
        assert bus.invalidator.scan_delete(pattern, count=50) == 300
        assert all(cluster_client.get(f"t:legacy:doc2:{i}") for i in range(300))

    async def test_async_scan(self, any_async_redis) -> None:
        """The asyncio invalidator scans and unlinks too."""
        from cachebus import AsyncCacheBus

        bus = AsyncCacheBus(any_async_redis, S)
        for i in range(120):
            await any_async_redis.set(f"t:legacy:d:{i}", b"x")
        await any_async_redis.set("t:legacy:e:0", b"x")
        pattern = bus.invalidator.core.keys.pattern("legacy:{doc_id}:*", doc_id="d")
        assert await bus.invalidator.scan_delete(pattern, count=25) == 120
        assert await any_async_redis.get("t:legacy:e:0") == b"x"


def test_chunk_write_refused_after_delete_even_with_fresh_ticket(any_redis) -> None:
    """Deletion tombstones the document: no embedding of it is cached until revived."""
    from cachebus import DocumentInvalidation

    bus = CacheBus(any_redis, S)
    bus.invalidator.invalidate_documents(["d"], deleted=True)
    assert bus.document_embeddings("m").set_many("d", [ChunkVector("c", v(), "h")]) == 0
    bus.invalidator.invalidate(documents=[DocumentInvalidation("d", "revive", "none")])
    assert bus.document_embeddings("m").set_many("d", [ChunkVector("c", v(), "h")]) == 1


def test_scripts_reload_after_script_flush(any_redis) -> None:
    """Scripts go by SHA; after the server forgets them (restart, SCRIPT FLUSH)
    they are loaded again transparently, in pipelines and single calls."""
    bus = CacheBus(any_redis, S)
    bus.document_embeddings("m").set("d", "c", v(), "h")
    any_redis.script_flush()
    report = bus.invalidator.invalidate_documents(["d", "e"])
    assert report.embeddings_removed == {"d": 1, "e": 0}
    any_redis.script_flush()
    assert bus.document_embeddings("m").set("d", "c", v(), "h") == 1


def test_document_guard_skips_when_mark_reached(any_redis) -> None:
    """A document invalidation guarded by a version is skipped once the document's
    high-water mark reached it (a newer event was applied meanwhile)."""
    from cachebus import DocumentInvalidation

    bus = CacheBus(any_redis, S)
    bus.document_embeddings("m").set("d", "c", v(), "h")
    any_redis.set(bus.invalidator.core.keys.hwm("d"), b"5:some-event")
    report = bus.invalidator.invalidate(
        documents=[DocumentInvalidation("d", "tomb", "all", if_below=5),
                   DocumentInvalidation("e", "tomb", "all", if_below=5)]
    )
    assert report.skipped == {"d"} and "doc:e" in report.stamps
    assert bus.document_embeddings("m").get("d", "c") is not None  # untouched
    report = bus.invalidator.invalidate(
        documents=[DocumentInvalidation("d", "tomb", "all", if_below=6)]
    )
    assert report.skipped == set() and bus.document_embeddings("m").get("d", "c") is None
