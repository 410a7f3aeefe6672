"""The fail-open policy, written once (cachebus.layer.fail_open_or_raise, used by
``SyncShell.run`` / ``AsyncShell.run`` with a ``fallback``), as the caches and the
services apply it; without Redis.

The caches run on a ``redis.Redis`` whose wire is a script (devtools.scripted): the
first command gets a connection error, as from a Redis that went away. Policy: a
retriable error fails open (counted in ``metrics.errors``, the fallback served: a
miss for a cache read, the provider called directly for a service) unless the
settings are strict; a non-retriable one (a command the ACL denies) always raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from cachebus.errors import CacheUnavailableError, PermissionDeniedError
from cachebus.query_embeddings import AsyncQueryEmbeddingCache, QueryEmbeddingCache
from cachebus.services import AsyncCachedEmbeddingService, CachedEmbeddingService
from cachebus.settings import Settings
from devtools.scripted import ANY, AsyncScriptedClient, ScriptedClient, Wire

SETTINGS = Settings(prefix="t", metrics_flush_interval=0)
DOWN = RedisConnectionError("Connection refused")


def lookup_fails(error: BaseException, texts: int = 1) -> list[Wire]:
    """The lookup's one MGET (generation, epoch, entries), answered with ``error``."""
    return [Wire([("MGET", "t:gen:{qe.m.1}", "t:epoch:{t:seq}", *[ANY] * texts)], [error])]


class Embedder:
    model, model_version = "m", "1"

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def embed(self, texts: Sequence[str]) -> list[Any]:
        self.calls.append(list(texts))
        return [np.full(2, len(t), dtype=np.float32) for t in texts]


def test_a_cache_read_fails_open_to_a_miss_counted_as_an_error() -> None:
    client = ScriptedClient(lookup_fails(DOWN))
    cache = QueryEmbeddingCache(client, "m", "1", settings=SETTINGS)

    assert cache.get("q") is None
    client.assert_done()
    assert cache.metrics.errors == 1


def test_strict_settings_raise_instead() -> None:
    client = ScriptedClient(lookup_fails(DOWN))
    cache = QueryEmbeddingCache(client, "m", "1", settings=SETTINGS.with_(strict=True))

    with pytest.raises(CacheUnavailableError):
        cache.get("q")
    assert cache.metrics.errors == 0


def test_a_denied_command_raises_even_when_not_strict() -> None:
    client = ScriptedClient(lookup_fails(ResponseError("NOPERM no permissions to run 'mget'")))
    cache = QueryEmbeddingCache(client, "m", "1", settings=SETTINGS)

    with pytest.raises(PermissionDeniedError):
        cache.get("q")


def test_run_without_a_fallback_raises() -> None:
    client = ScriptedClient(lookup_fails(DOWN))
    cache = QueryEmbeddingCache(client, "m", "1", settings=SETTINGS)

    with pytest.raises(CacheUnavailableError):
        cache.run(cache.core.lookup(["q"]))
    assert cache.metrics.errors == 0  # nothing failed open


def test_the_embedding_service_calls_the_embedder_directly_when_redis_fails() -> None:
    client = ScriptedClient(lookup_fails(DOWN, texts=2))
    cache = QueryEmbeddingCache(client, "m", "1", settings=SETTINGS)
    embedder = Embedder()
    service = CachedEmbeddingService(cache, embedder)

    vectors = service.embed_batch(["ab", "abc", "ab"])

    client.assert_done()
    assert [v.tolist() for v in vectors] == [[2, 2], [3, 3], [2, 2]]
    assert embedder.calls == [["ab", "abc"]]  # once, repeated texts once
    assert (cache.metrics.errors, cache.metrics.provider_calls) == (1, 1)


async def test_the_async_service_applies_the_same_policy() -> None:
    client = AsyncScriptedClient(lookup_fails(DOWN))
    cache = AsyncQueryEmbeddingCache(client, "m", "1", settings=SETTINGS)
    embedder = Embedder()

    vectors = await AsyncCachedEmbeddingService(cache, embedder).embed_batch(["xyz"])

    client.assert_done()
    assert [v.tolist() for v in vectors] == [[3, 3]]
    assert (cache.metrics.errors, cache.metrics.provider_calls) == (1, 1)

    strict = AsyncQueryEmbeddingCache(
        AsyncScriptedClient(lookup_fails(DOWN)), "m", "1", settings=SETTINGS.with_(strict=True)
    )
    with pytest.raises(CacheUnavailableError):
        await AsyncCachedEmbeddingService(strict, embedder).embed_batch(["xyz"])
