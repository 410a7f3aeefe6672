"""The library's settings, read from the environment (``CACHEBUS_*``); the worker's
own (Kafka, topics, batching) extend them in :mod:`worker.settings`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar, Self

from .errors import ConfigError
from .registry import default_ttl, stamped_ttl_settings, ttl_settings

HOUR = 3600
DAY = 24 * HOUR


@dataclass(frozen=True, slots=True, repr=False)
class Settings:
    """Everything the cachebus library reads from the environment, with sane defaults.

    Each field maps to ``CACHEBUS_<FIELD_NAME_UPPER>``; see the README's
    configuration table. The worker's own settings (Kafka, topics, batching, its web
    port) are in :class:`worker.settings.WorkerSettings`, a subclass: every library API
    accepts one (as arq keeps ``RedisSettings`` apart from the worker's settings).
    """

    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis URL (``redis://``, ``rediss://`` for TLS, user:password for ACL/AUTH)."""
    redis_cluster: bool = False
    """Connect with RedisCluster (the URL names any one node)."""
    redis_timeout: float = 2.0
    """Socket timeout for every Redis call, seconds: of clients ``connect()`` builds, and
    of a client given to ``CacheBus`` / ``AsyncCacheBus`` (bounded in place, one attempt
    per call; see :mod:`cachebus.timeouts`)."""
    prefix: str = "cb"
    """Prefix of every key; lets one Redis host several deployments and fences ACLs."""
    codec: str = "float32"
    """Vector codec: float32, float16 or int8; append +zlib to compress."""
    # Entry TTLs, one per layer of cachebus.registry.LAYERS (its ttl_setting; the
    # default comes from the registry entry).
    query_embedding_ttl: int = default_ttl("query_embeddings")
    document_embedding_ttl: int = default_ttl("document_embeddings")
    search_results_ttl: int = default_ttl("search_results")
    rerank_scores_ttl: int = default_ttl("rerank_scores")
    answers_ttl: int = default_ttl("answers")
    stamp_ttl: int = 31 * DAY
    """How long a tag's invalidation stamp is kept at least (stamps carry no TTL, so no
    eviction policy but ``allkeys-*`` can pick them; ``cachebus gc`` removes older ones).
    Every entry TTL plus ``max_ticket_age`` must fit in it."""
    max_ticket_age: float = 600.0
    """A value computed from a ticket older than this (on the Redis server's clock) is
    not written (seconds)."""
    durability_replicas: int = 0
    """Replicas that must hold an invalidation (WAIT) before it counts as done."""
    durability_fsync: bool = False
    """Also require the invalidation fsynced to the AOF (WAITAOF; Redis >= 7.2)."""
    durability_timeout_ms: int = 1000
    """How long an invalidation waits for its replicas / fsync before it is retried."""
    fence_check_interval: float = 1.0
    """Seconds between the worker's checks that no primary lost writes (0: off)."""
    lease_ms: int = 5000
    """Herd control: how long a computing caller holds the lease."""
    lease_wait_ms: int = 3000
    """Herd control: how long other callers wait for the leaseholder before computing."""
    embedder: str = "cachebus.embedders:HashingEmbedder"
    """``module:attr`` of the Embedder (class or factory) the CLI uses for warming."""
    metrics_flush_interval: float = 10.0
    """Seconds between publishing layer counters to Redis for ``cachebus stats`` (0: off)."""
    strict: bool = False
    """Raise on Redis errors during reads instead of failing open (counted miss)."""
    rules_file: str = ""
    """TOML file with invalidation rules; empty means the shipped defaults (read by
    ``Invalidator.document_*`` and by the worker)."""

    secret_fields: ClassVar[frozenset[str]] = frozenset()
    """Fields shown as ``***`` in ``repr`` (the Redis URL's password is always hidden);
    subclasses with secrets of their own (the worker's SASL password) extend it."""

    def __repr__(self) -> str:
        """Every field, with secrets (the Redis URL's password, :attr:`secret_fields`)
        replaced by ``***``: settings get logged and printed in tracebacks."""
        parts = []
        for f in fields(self):
            value: Any = getattr(self, f.name)
            if f.name in self.secret_fields and value:
                value = "***"
            elif f.name == "redis_url":
                value = redact_url(value)
            parts.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Self:
        """Build settings from ``CACHEBUS_*`` variables; keyword overrides win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"CACHEBUS_{f.name.upper()}")
            if raw is None:
                continue
            values[f.name] = _parse(f.name, raw, type(getattr(cls(), f.name)))
        values.update(overrides)
        return cls(**values).validated()

    def with_(self, **changes: Any) -> Self:
        """A copy with some fields changed (validated)."""
        return replace(self, **changes).validated()

    def validated(self) -> Self:
        from .keys import validate_prefix

        validate_prefix(self.prefix)
        for name in (*ttl_settings(), "stamp_ttl"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be a positive number of seconds")
        if self.max_ticket_age <= 0:
            raise ConfigError("max_ticket_age must be a positive number of seconds")
        for name in STAMPED_TTLS:
            ttl = getattr(self, name)
            if ttl + self.max_ticket_age > self.stamp_ttl:
                raise ConfigError(
                    f"{name} ({ttl} s) + max_ticket_age ({self.max_ticket_age:g} s) exceeds "
                    f"stamp_ttl ({self.stamp_ttl} s): an entry could outlive the stamps that "
                    "guard it; raise stamp_ttl or lower the entry TTL"
                )
        if self.durability_replicas < 0:
            raise ConfigError("durability_replicas must be 0 or more")
        if self.durability_timeout_ms <= 0:
            raise ConfigError("durability_timeout_ms must be positive")
        if self.fence_check_interval < 0:
            raise ConfigError("fence_check_interval must be 0 (off) or positive")
        return self


def redact_url(url: str) -> str:
    """``redis://user:secret@host`` -> ``redis://user:***@host`` (also a password-only
    ``redis://:secret@host``); URLs without a password are returned as they are."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    userinfo, _, host = rest.rpartition("@")
    user, colon, _password = userinfo.partition(":")
    return f"{scheme}://{user}:***@{host}" if colon else url


STAMPED_TTLS = stamped_ttl_settings()
"""Entry TTLs of the layers whose reads check tag stamps (``tagged`` in the registry)."""


def _parse(name: str, raw: str, kind: type) -> Any:
    try:
        if kind is bool:
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
    except ValueError:
        raise ConfigError(
            f"CACHEBUS_{name.upper()}={raw!r} is not a valid {kind.__name__}"
        ) from None
    return raw
