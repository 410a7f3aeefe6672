"""``cachebus gc``: stamps unused for ``stamp_ttl`` are removed, used ones kept;
removing a stamp costs a miss, never a stale read."""

from __future__ import annotations

import time

from cachebus import CacheBus, SearchHit, Settings
from cachebus.keys import Tag
from cachebus.stamp_gc import collect_stamps
from worker.cli import main

SHORT = Settings(
    prefix="gc",
    stamp_ttl=2,
    search_results_ttl=1,
    rerank_scores_ttl=1,
    document_embedding_ttl=1,
    max_ticket_age=1.0,
)


def test_idle_stamps_removed_used_ones_kept(any_redis) -> None:
    bus = CacheBus(any_redis, SHORT)
    sr = bus.search_results("col")
    sr.set("old", [SearchHit("old-doc", 1.0)])
    bus.invalidator.invalidate_documents(["gone"], deleted=True)
    time.sleep(2.2)
    sr.set("new", [SearchHit("new-doc", 1.0)])  # creates and so touches its stamps
    report = collect_stamps(any_redis, SHORT, dry_run=True)
    assert report.removed == 2 and report.mode == "idle"  # old-doc and the tombstone
    assert any_redis.exists(short_stamp("old-doc")) == 1  # dry run deletes nothing
    report = collect_stamps(any_redis, SHORT)
    assert (report.scanned, report.removed) == (4, 2)  # the collection's stamp is in use
    assert any_redis.exists(short_stamp("old-doc")) == 0
    assert any_redis.exists(short_stamp("new-doc")) == 1


def test_lfu_policy_judges_by_value(redis_client) -> None:
    """Under an LFU policy Redis tracks no idle time: stamps are judged by the
    sequence value they were raised to; tombstones are kept."""
    redis_client.config_set("maxmemory-policy", "allkeys-lfu")
    try:
        bus = CacheBus(redis_client, SHORT)
        bus.invalidator.invalidate_documents(["a"])
        bus.invalidator.invalidate_documents(["gone"], deleted=True)
        time.sleep(2.2)
        bus.invalidator.invalidate_documents(["b"])
        report = collect_stamps(redis_client, SHORT)
        assert report.mode == "value"
        assert report.removed == 1
        assert redis_client.exists(short_stamp("a")) == 0
        assert redis_client.exists(short_stamp("b"), short_stamp("gone")) == 2
    finally:
        redis_client.config_set("maxmemory-policy", "noeviction")


def test_removed_stamp_costs_a_miss_not_a_stale_read(redis_client) -> None:
    bus = CacheBus(redis_client, SHORT)
    sr = bus.search_results("col")
    lk = sr.lookup("q")
    bus.invalidator.invalidate_documents(["doc"])  # after the ticket
    time.sleep(2.2)
    collect_stamps(redis_client, SHORT)
    # A value computed before the invalidation, written after its stamp was collected.
    sr.set("q", [SearchHit("doc", 1.0, doc_version=0)], ticket=lk.ticket)
    assert sr.get("q") is None


def test_cli(redis_server, redis_client, capsys) -> None:
    CacheBus(redis_client, SHORT).invalidator.invalidate_documents(["x", "y"])
    code = main(["gc", "--redis-url", redis_server.url, "--prefix", "gc", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    assert "stamps: 2 scanned, would remove 0, kept 2 (unused for 2678400 s, judged by idle)" in out


def short_stamp(doc: str) -> str:
    return f"gc:stamp:{{{Tag.doc(doc).token}}}"
