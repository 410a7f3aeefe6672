"""Lost control state costs misses, never stale reads (docs/consistency.md): the fast,
deterministic versions of ``make consistency``'s eviction, full-memory and settings rows.

Every read goes through :class:`consistency.workload.Workload` (the public API:
``lookup()`` -> ticket, compute, ``set(..., ticket=)``), whose oracle knows which
document versions and bumps each cached value was computed from and which invalidations
had completed: ``stale == 0`` is the claim, checked read by read.
"""

from __future__ import annotations

from typing import Any

import pytest

from cachebus import ChunkRef, ConfigError, KeyScheme, Settings, Tag
from cachebus.errors import RedisFullError
from consistency.eviction import (
    CLOSEST_VALID,
    TINY,
    UNSAFE_TTLS,
    fill_until_refused,
    measure_old_tickets,
    run_eviction,
)
from consistency.nodes import config_set, memory
from consistency.workload import Workload, qe_namespace
from devtools.redis_servers import RedisServer

KEYS = KeyScheme("cb")
A, B = "doc-00000", "doc-00001"


def workload(client: Any, **kwargs: Any) -> Workload:
    wl = Workload(client, Settings(), docs=10, dim=16, **kwargs)
    wl.pin_results("main", "q", [A, B])
    return wl


def stale(wl: Workload) -> int:
    return wl.oracle.total().stale


# --------------------------------------------------------------------------- lost stamps


class TestLostStamp:
    def test_invalidated_then_evicted_stamp_is_a_miss_then_caching_recovers(
        self, any_redis: Any
    ) -> None:
        """Today a missing stamp reads as "never invalidated": the old value serves."""
        wl = workload(any_redis)
        wl.write_search("main", "q")
        assert wl.read_search("main", "q") is True
        wl.invalidate_documents([A])
        any_redis.delete(KEYS.stamp(Tag.doc(A)))  # evicted before the entry
        hit = wl.read_search("main", "q")
        assert stale(wl) == 0, wl.oracle.examples
        assert hit is False  # a miss, recomputed under a new ticket
        assert wl.read_search("main", "q") is True  # recovered after one miss
        assert stale(wl) == 0

    @pytest.mark.parametrize("tag", [Tag.doc(B), Tag.collection("main")], ids=["doc", "collection"])
    def test_any_missing_stamp_of_an_entry_is_a_miss(self, any_redis: Any, tag: Tag) -> None:
        wl = workload(any_redis)
        wl.write_search("main", "q")
        assert wl.read_search("main", "q") is True
        any_redis.delete(KEYS.stamp(tag))
        assert wl.read_search("main", "q") is False
        assert wl.read_search("main", "q") is True
        assert stale(wl) == 0

    def test_write_with_a_ticket_from_before_an_invalidation_whose_stamp_was_lost(
        self, any_redis: Any
    ) -> None:
        """The stale-set race with the stamp evicted between invalidation and write: the
        stamp is re-created at a sequence read after it was seen missing, above the
        ticket's, so the late value never serves."""
        wl = workload(any_redis)
        pending = wl.prepare_search("main", "q")  # ticket, computed from A v1
        wl.invalidate_documents([A])  # A v2
        any_redis.delete(KEYS.stamp(Tag.doc(A)))
        pending.commit()
        assert wl.read_search("main", "q") is False
        assert wl.read_search("main", "q") is True
        assert stale(wl) == 0

    def test_rerank_scores_of_a_deleted_document_after_its_tombstone_is_lost(
        self, any_redis: Any
    ) -> None:
        wl = workload(any_redis)
        candidates = [(A, 1), (B, 1)]
        wl.write_rerank("query", candidates)
        assert wl.read_rerank("query", candidates) is True
        wl.invalidate_documents([A], deleted=True)
        any_redis.delete(KEYS.stamp(Tag.doc(A)))
        assert wl.read_rerank("query", candidates) is False
        assert stale(wl) == 0

    def test_document_embeddings_written_with_an_old_ticket_after_the_stamp_was_lost(
        self, any_redis: Any
    ) -> None:
        wl = workload(any_redis)
        cache = wl.document_cache
        lookup = cache.lookup_chunks([ChunkRef(A, c) for c in wl.chunk_ids(A)])
        chunks = wl.compute_chunks(A)  # from A v1, under a ticket taken before
        wl.invalidate_documents([A])
        any_redis.delete(KEYS.stamp(Tag.doc(A)))
        cache.set_many(A, chunks, ticket=lookup.ticket)
        wl.read_document(A)
        assert stale(wl) == 0
        assert wl.read_document(A) is True  # the refill under a new ticket serves
        assert stale(wl) == 0


# --------------------------------------------------------------------------- lost generations


class TestLostGeneration:
    def test_search_results_after_the_collection_generation_is_lost(self, any_redis: Any) -> None:
        """Today a missing generation reads as 0: the entries written before the first
        bump serve again."""
        wl = workload(any_redis)
        wl.write_search("main", "q")
        wl.bump_collection("main")
        assert wl.read_search("main", "q") is False
        assert wl.read_search("main", "q") is True
        any_redis.delete(KEYS.generation(KEYS.search_namespace("main")))
        hit = wl.read_search("main", "q")
        assert stale(wl) == 0, wl.oracle.examples
        assert hit is False
        assert wl.read_search("main", "q") is True
        assert stale(wl) == 0

    def test_query_embeddings_after_the_model_generation_is_lost(self, any_redis: Any) -> None:
        wl = workload(any_redis)
        texts = ["what is a vector?", "reset password"]
        wl.write_query_embeddings(texts)
        assert wl.read_query_embeddings(texts) == 2
        wl.bump_model()
        assert wl.read_query_embeddings(texts) == 0
        assert wl.read_query_embeddings(texts) == 2
        any_redis.delete(KEYS.generation(KEYS.query_namespace(*wl.model)))
        hits = wl.read_query_embeddings(texts)
        assert stale(wl) == 0, wl.oracle.examples
        assert hits == 0
        assert wl.read_query_embeddings(texts) == 2
        assert stale(wl) == 0
        assert wl.oracle.completed_bumps[qe_namespace(*wl.model)] == 1


# --------------------------------------------------------------------------- eviction runs


@pytest.mark.redis
@pytest.mark.parametrize("policy", ["allkeys-random", "volatile-lru"])
def test_small_eviction_run_has_no_stale_read(policy: str) -> None:
    """300 tagged entries, 10 document invalidations + a bump, 2,500 writes over 1.5 MB,
    600 interleaved reads of the invalidated entries."""
    result = run_eviction("new", policy, "standalone", TINY, seed=7)
    row = result.row
    assert result.evicted_keys > 0, "the run must actually evict"
    assert row.reads == TINY.reads
    assert row.invalidations == TINY.invalidated + 1
    assert row.stale_reads == 0, row.notes


# --------------------------------------------------------------------------- full memory


@pytest.mark.redis
def test_full_memory_invalidation_unlinks_control_keys_and_raises_redis_full() -> None:
    """At maxmemory under noeviction Redis refuses INCR and scripts that write but allows
    UNLINK: the invalidation deletes the control keys involved (a miss, never a stale
    read) and raises RedisFullError (retriable); after memory frees, the retry works
    and caching recovers."""
    config = ["maxmemory 1500kb", "maxmemory-policy noeviction"]
    with RedisServer(use_env=False, extra_config=config) as server:
        client = server.client()
        wl = workload(client)
        wl.pin_results("aux", "q", [B])
        texts = ["what is a vector?"]
        wl.write_search("main", "q")
        wl.write_search("aux", "q")
        wl.write_document(A)
        wl.write_query_embeddings(texts)
        assert fill_until_refused(wl, client) > 0
        assert all(used >= 0.98 * limit for used, limit in memory(client))

        for result in (
            wl.invalidate_documents([A]),
            wl.bump_collection("aux"),
            wl.bump_model(),
        ):
            assert isinstance(result.error, RedisFullError), result.error
            assert result.error.retriable
        assert wl.read_search("main", "q") is False
        assert wl.read_search("aux", "q") is False
        assert wl.read_document(A) is False
        assert wl.read_query_embeddings(texts) == 0
        assert stale(wl) == 0

        config_set(client, "maxmemory", 0)
        assert wl.retry_documents([A]).ok
        assert wl.read_search("main", "q") is False
        assert wl.read_search("main", "q") is True
        assert stale(wl) == 0
        client.close()


@pytest.mark.redis
def test_stamp_recreated_after_a_refused_invalidation_does_not_revive_old_entries() -> None:
    """Full memory refuses the invalidation's INCR of the sequence; the fallback unlinks
    A's stamp. Then a little memory frees up (entries expire) and a value computed after
    the invalidation is written: its ticket re-creates A's stamp at the sequence it
    reads, which the refused invalidation never raised. Entries computed *before* the
    invalidation carry that same sequence: they must still not serve."""
    config = ["maxmemory 1500kb", "maxmemory-policy noeviction"]
    with RedisServer(use_env=False, extra_config=config) as server:
        client = server.client()
        wl = workload(client)
        wl.pin_results("main", "other", [A])
        wl.write_search("main", "q")  # computed from A v1
        fill_until_refused(wl, client)
        result = wl.invalidate_documents([A])  # A v2
        assert isinstance(result.error, RedisFullError), result.error
        client.config_set("maxmemory", "4mb")  # memory frees up (TTLs expire)
        wl.write_search("main", "other")  # computed from A v2, re-creates A's stamp
        hit = wl.read_search("main", "q", refill=False)
        assert stale(wl) == 0, wl.oracle.examples
        assert hit is False
        client.close()


# --------------------------------------------------------------------------- settings


def test_settings_refuse_entry_ttl_plus_ticket_age_beyond_stamp_ttl() -> None:
    with pytest.raises(ConfigError, match="stamp_ttl"):
        Settings(**UNSAFE_TTLS).validated()
    for name in ("search_results_ttl", "rerank_scores_ttl", "document_embedding_ttl"):
        values: dict[str, Any] = dict(CLOSEST_VALID, **{name: 5})
        with pytest.raises(ConfigError, match=name):
            Settings(**values).validated()
    assert Settings(**CLOSEST_VALID).validated().stamp_ttl == 7


@pytest.mark.redis
def test_closest_valid_ttls_serve_nothing_stale_to_a_write_with_an_old_ticket() -> None:
    """Tickets, then the documents' invalidations, writes with the old tickets 1.5 s later,
    reads 4.6 s after the invalidations (when 4 s stamps would be gone)."""
    row, timing = measure_old_tickets("new", Settings(**CLOSEST_VALID).validated(), 20, seed=3)
    assert row.reads == 20
    assert row.stale_reads == 0, timing
