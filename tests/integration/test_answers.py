"""The generated answers layer (cachebus.answers) on a real redis-server and a real
3-primary Redis Cluster: round trips sync and async, order-independent context
keys, tags (document, collection), TTL, the stale-set race, herd control, and the
worker retiring cached answers end to end."""

from __future__ import annotations

import threading
import time

import pytest

from cachebus import AsyncCacheBus, CacheBus, ConfigError, Settings, Tag
from cachebus.answers import (
    Answer,
    AnswerCache,
    AsyncAnswerCache,
    AsyncCachedAnswerService,
    CachedAnswerService,
)
from devtools.stack import LocalStack, document_event

S = Settings(prefix="t")
CONTEXT = [("doc-42", 3), ("doc-7", 1)]


def answers(bus: CacheBus, collection: str = "kb") -> AnswerCache:
    return bus.layer(AnswerCache, collection, "gpt-4o", "v3")


class TestAnswers:
    def test_round_trip_citations_metadata(self, any_redis) -> None:
        cache = answers(CacheBus(any_redis, S))
        value = Answer("25 days a year", ("doc-42",), {"tokens": 12, "finish": "stop"})
        assert cache.get("vacation days?", CONTEXT) is None
        assert cache.set("vacation days?", CONTEXT, value) == 1
        assert cache.get("vacation days?", CONTEXT) == value
        assert cache.metrics.hits == 1 and cache.metrics.misses == 1
        cache.set("plain", CONTEXT, "just text")
        assert cache.get("plain", CONTEXT) == Answer("just text")

    def test_context_in_any_order_is_one_entry(self, any_redis) -> None:
        """The (doc_id, doc_version) context is a set: order and repeats do not matter;
        a new version of a cited document is another key."""
        cache = answers(CacheBus(any_redis, S))
        cache.set("q", [("a", 1), ("b", 2), ("c", 3)], "A")
        assert cache.get("q", [("c", 3), ("a", 1), ("b", 2)]) == Answer("A")
        assert cache.get("q", [("b", 2), ("a", 1), ("c", 3), ("a", 1)]) == Answer("A")
        assert cache.get("q", [("a", 1), ("b", 2), ("c", 4)]) is None  # b updated
        assert cache.get("q", [("a", 1), ("b", 2)]) is None  # another context

    def test_key_names_model_template_and_hides_user_data(self, any_redis) -> None:
        bus = CacheBus(any_redis, S)
        cache = answers(bus)
        other_template = bus.layer(AnswerCache, "kb", "gpt-4o", "v4")
        other_model = bus.layer(AnswerCache, "kb", "llama-3", "v3")
        cache.set("secret question", [("secret-doc", 1)], "A")
        assert other_template.get("secret question", [("secret-doc", 1)]) is None
        assert other_model.get("secret question", [("secret-doc", 1)]) is None
        keys = [k for k in _all_keys(any_redis) if k.startswith(b"t:ga:")]
        assert len(keys) == 1
        assert keys[0].startswith(b"t:ga:kb:gpt-4o:v3:{")
        assert b"secret" not in keys[0]

    def test_document_invalidation_retires_answers_citing_it(self, any_redis) -> None:
        bus = CacheBus(any_redis, S)
        cache = answers(bus)
        cache.set("q1", CONTEXT, "cites 42 and 7")
        cache.set("q2", [("doc-7", 1)], "cites 7 only")
        bus.invalidator.invalidate_documents(["doc-42"])
        assert cache.get("q1", CONTEXT) is None
        assert cache.get("q2", [("doc-7", 1)]) == Answer("cites 7 only")
        bus.document_deleted("doc-7", "kb")
        assert cache.get("q2", [("doc-7", 1)]) is None

    def test_collection_tag_retires_the_collections_answers(self, any_redis) -> None:
        bus = CacheBus(any_redis, S)
        kb, other = answers(bus, "kb"), answers(bus, "other")
        kb.set("q", CONTEXT, "A")
        other.set("q", CONTEXT, "B")
        bus.invalidator.invalidate_tags([Tag.collection("kb")])
        assert kb.get("q", CONTEXT) is None
        assert other.get("q", CONTEXT) == Answer("B")

    def test_ttl_default_and_stamp_bound(self, any_redis) -> None:
        cache = answers(CacheBus(any_redis, S))
        cache.set("q", CONTEXT, "A")
        cache.set("short", CONTEXT, "A", ttl=30)
        key, short = cache.core.entry_keys([_request("q", CONTEXT), _request("short", CONTEXT)])
        assert 23 * 3600 < any_redis.ttl(key) <= 24 * 3600
        assert 0 < any_redis.ttl(short) <= 30
        with pytest.raises(ConfigError):
            cache.core.check_ttl(S.stamp_ttl)
        with pytest.raises(ConfigError):
            Settings(answers_ttl=S.stamp_ttl).validated()

    def test_stats_report_answers(self, any_redis) -> None:
        bus = CacheBus(any_redis, S)
        cache = answers(bus)
        cache.get("q", CONTEXT)
        cache.set("q", CONTEXT, "A")
        cache.get("q", CONTEXT)
        layer = bus.stats()["layers"]["answers"]
        assert layer["hits"] == 1 and layer["misses"] == 1 and layer["writes"] == 1

    async def test_async_round_trip_and_service(self, any_async_redis) -> None:
        bus = AsyncCacheBus(any_async_redis, S)
        cache = bus.layer(AsyncAnswerCache, "kb", "gpt-4o", "v3")
        assert await cache.get("q", CONTEXT) is None
        await cache.set("q", CONTEXT, Answer("A", ("doc-42",)))
        assert await cache.get("q", list(reversed(CONTEXT))) == Answer("A", ("doc-42",))
        calls: list[str] = []

        async def generate(query, context) -> Answer:
            calls.append(query)
            return Answer(f"answer to {query}", tuple(d for d, _ in context))

        service = AsyncCachedAnswerService(cache, generate)
        first = await service.answer("new", CONTEXT)
        again = await service.answer("new", list(reversed(CONTEXT)))
        assert first == again == Answer("answer to new", ("doc-42", "doc-7"))
        assert calls == ["new"]
        await bus.invalidator.invalidate_documents(["doc-7"])
        await service.answer("new", CONTEXT)
        assert calls == ["new", "new"]
        assert (await bus.stats())["layers"]["answers"]["provider_calls"] == 2


class TestAnswerRace:
    """A value computed before an invalidation and written after it never serves."""

    def test_stale_set_refused(self, any_redis) -> None:
        """lookup (ticket) -> invalidate a cited doc -> write old answer -> read: miss."""
        bus = CacheBus(any_redis, S)
        cache = answers(bus)
        lookup = cache.lookup("q", CONTEXT)
        assert lookup.values == [None]
        bus.invalidator.invalidate_documents(["doc-7"])
        cache.set("q", CONTEXT, "computed from the old doc-7", ticket=lookup.ticket)
        assert cache.get("q", CONTEXT) is None
        fresh = cache.lookup("q", CONTEXT)
        cache.set("q", CONTEXT, "fresh", ticket=fresh.ticket)
        assert cache.get("q", CONTEXT) == Answer("fresh")

    def test_service_generation_racing_an_update(self, any_redis) -> None:
        """The document changes while the LLM generates: that answer is not cached."""
        bus = CacheBus(any_redis, S)
        cache = answers(bus)
        calls = 0

        def generate(query, context) -> str:
            nonlocal calls
            calls += 1
            if calls == 1:
                bus.document_updated("doc-42", "kb")  # arrives mid-generation
            return f"answer {calls}"

        service = CachedAnswerService(cache, generate)
        assert service.answer("q", CONTEXT) == Answer("answer 1")  # served, not cached
        assert cache.get("q", CONTEXT) is None
        assert cache.metrics.writes_refused == 1
        assert service.answer("q", CONTEXT) == Answer("answer 2")
        assert cache.get("q", CONTEXT) == Answer("answer 2")


def test_herd_one_generation_for_concurrent_identical_requests(any_redis) -> None:
    """Eight threads ask the same question at once: the LLM is called once (lease)."""
    bus = CacheBus(any_redis, S)
    cache = answers(bus)
    calls: list[str] = []
    lock = threading.Lock()

    def generate(query, context) -> Answer:
        with lock:
            calls.append(query)
        time.sleep(0.3)  # a slow LLM widens the herd window
        return Answer("42")

    service = CachedAnswerService(cache, generate)
    barrier = threading.Barrier(8)
    got: list[Answer] = []
    errors: list[BaseException] = []

    def call(i: int) -> None:
        try:
            barrier.wait()
            context = CONTEXT if i % 2 else list(reversed(CONTEXT))
            got.append(service.answer("herd", context))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert calls == ["herd"]
    assert got == [Answer("42")] * 8


def test_generator_error_caches_nothing(any_redis) -> None:
    cache = answers(CacheBus(any_redis, S))

    def fail(query, context) -> str:
        raise RuntimeError("LLM down")

    with pytest.raises(RuntimeError):
        CachedAnswerService(cache, fail).answer("q", CONTEXT)
    assert cache.get("q", CONTEXT) is None
    assert CachedAnswerService(cache, lambda q, c: "ok").answer("q", CONTEXT) == Answer("ok")


@pytest.mark.parametrize("event_type", ["updated", "deleted"])
def test_worker_retires_answers_citing_the_document(any_stack: LocalStack, event_type) -> None:
    """A document event through Kafka and the real worker retires the cached answers
    that cited the document, and only those."""
    stack = any_stack
    stack.start_worker()
    bus = CacheBus(stack.redis.client(), stack.settings)
    cache = bus.layer(AnswerCache, "kb", "gpt-4o", "v3")
    cache.set("cites it", [("doc-1", 1), ("doc-2", 1)], "A")
    cache.set("does not", [("doc-2", 1)], "B")
    stack.publish([document_event(event_type, "doc-1", 2)])
    (audit,) = stack.read_audits(count=1)
    assert audit["outcome"] == "applied"
    assert cache.get("cites it", [("doc-1", 1), ("doc-2", 1)]) is None
    assert cache.get("does not", [("doc-2", 1)]) == Answer("B")


def _request(query, context):
    from cachebus.answers import AnswerRequest

    return AnswerRequest.of(query, context)


def _all_keys(client) -> list[bytes]:
    import redis.cluster

    if isinstance(client, redis.cluster.RedisCluster):
        return list(client.keys("*", target_nodes=redis.cluster.RedisCluster.PRIMARIES))
    return list(client.keys("*"))
