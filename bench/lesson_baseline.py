"""The baselines: the lesson "Caching at Scale"'s JSON embedding cache, search results cache
and document-event invalidation.

Each class is DELIBERATELY the lesson's design, reproduced as faithfully as possible, bugs
included.  It is the yardstick every cachebus figure is divided by, so do not "fix" it:
an improved baseline would flatter nothing and measure nothing.  The embedding cache, on
purpose:

* key ``f"{prefix}:{model_version}:{sha256(text).hexdigest()[:16]}"``: the digest is cut
  to 64 bits (collisions become plausible at scale) and the model name is not in the key;
* values are ``json.dumps`` of a Python list of floats: about 20 bytes of text per float32
  component (``float32 -> float`` gives 17 significant digits), parsed back with
  ``json.loads`` into Python lists on every read;
* ``get_many`` / ``set_many`` use ``redis.pipeline()`` with redis-py's default
  ``transaction=True``, i.e. each batch is wrapped in MULTI/EXEC;
* a miss and an empty value are both ``None`` (``if r`` test); no dimension or model check;
* no error handling: a Redis error propagates to the caller.

The search results cache and the invalidator (:class:`LessonSearchResultsCache`,
:class:`LessonCacheInvalidator`) are reproduced the same way, for the invalidation cost
benchmark: per document event a full ``SCAN MATCH search:*`` + ``DEL`` of every search result.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import redis


class LessonEmbeddingCache:
    """The lesson's embedding cache (JSON values, pipelined GET / SETEX).  Baseline only."""

    def __init__(
        self,
        redis_client: redis.Redis,
        prefix: str = "emb",
        ttl: int = 86400 * 7,
        model_version: str = "v1",
    ) -> None:
        self.redis = redis_client
        self.prefix = prefix
        self.ttl = ttl
        self.model_version = model_version

    def _key(self, text: str) -> str:
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        return f"{self.prefix}:{self.model_version}:{digest}"

    def get_many(self, texts: Sequence[str]) -> list[list[float] | None]:
        pipe = self.redis.pipeline()
        for text in texts:
            pipe.get(self._key(text))
        results = pipe.execute()
        return [json.loads(r) if r else None for r in results]

    def set_many(self, items: Sequence[tuple[str, list[float]]]) -> None:
        pipe = self.redis.pipeline()
        for text, embedding in items:
            pipe.setex(self._key(text), self.ttl, json.dumps(embedding))
        pipe.execute()


class LessonSearchResultsCache:
    """The lesson's search results cache: JSON under ``search:<sha256[:24]>``.  Baseline only."""

    def __init__(self, redis_client: redis.Redis, ttl_minutes: int = 10) -> None:
        self.redis = redis_client
        self.ttl = ttl_minutes * 60

    @staticmethod
    def make_key(query: str, top_k: int, filters: dict[str, object] | None) -> str:
        key_parts = [query, str(top_k), json.dumps(filters, sort_keys=True) if filters else ""]
        key_string = "|".join(key_parts)
        return f"search:{hashlib.sha256(key_string.encode()).hexdigest()[:24]}"

    @staticmethod
    def encode(hits: Sequence[tuple[str, float]]) -> str:
        """The lesson's value: ``[{"id", "score", "content", "metadata"}]`` as JSON text."""
        return json.dumps(
            [{"id": doc, "score": score, "content": "", "metadata": {}} for doc, score in hits]
        )

    def get(self, query: str, top_k: int, filters: dict[str, object] | None = None) -> object:
        cached = self.redis.get(self.make_key(query, top_k, filters))
        return None if cached is None else json.loads(cached)


class LessonCacheInvalidator:
    """The lesson's ``CacheInvalidator``: the two methods a document event calls.

    ``handle_updated`` is what the lesson's ``EventDrivenCacheManager`` ends up doing per
    event when combined with ``CacheInvalidator.invalidate_document``: the literal
    ``DEL docembed:<id>:*`` (deletes nothing: DEL takes keys, not patterns), a full
    ``SCAN MATCH search:* COUNT 100`` loop deleting every search result, and
    ``_invalidate_search_cache`` option 1 (``increment_version``: INCR + SET).
    """

    def __init__(self, redis_client: redis.Redis) -> None:
        self.redis = redis_client

    def invalidate_document(self, doc_id: str) -> None:
        self.redis.delete(f"docembed:{doc_id}:*")
        pattern = "search:*"
        cursor = 0
        while True:
            cursor, keys = self.redis.scan(cursor, match=pattern, count=100)
            if keys:
                self.redis.delete(*keys)
            if cursor == 0:
                break

    def increment_version(self, namespace: str) -> str:
        new_version = f"v{int(self.redis.incr(f'version_counter:{namespace}'))}"
        self.redis.set(f"version:{namespace}", new_version)
        return new_version

    def handle_updated(self, doc_id: str) -> None:
        self.invalidate_document(doc_id)
        self.increment_version("search_results")
