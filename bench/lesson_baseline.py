"""The baseline: the JSON embedding cache of the lesson "Caching at Scale".

This class is DELIBERATELY the lesson's design, reproduced as faithfully as possible, bugs
included.  It is the yardstick every cachebus figure is divided by, so do not "fix" it:
an improved baseline would flatter nothing and measure nothing.  What it does, on purpose:

* key ``f"{prefix}:{model_version}:{sha256(text).hexdigest()[:16]}"``: the digest is cut
  to 64 bits (collisions become plausible at scale) and the model name is not in the key;
* values are ``json.dumps`` of a Python list of floats: about 20 bytes of text per float32
  component (``float32 -> float`` gives 17 significant digits), parsed back with
  ``json.loads`` into Python lists on every read;
* ``get_many`` / ``set_many`` use ``redis.pipeline()`` with redis-py's default
  ``transaction=True``, i.e. each batch is wrapped in MULTI/EXEC;
* a miss and an empty value are both ``None`` (``if r`` test); no dimension or model check;
* no error handling: a Redis error propagates to the caller.
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
