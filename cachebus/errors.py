"""One error hierarchy for the library and the worker, rooted at :class:`CacheBusError`.

Callers decide by attribute (``retriable``), not by long lists of types. The library's
errors are here; the worker's (an invalid event, a refused replay) derive from the same
root in :mod:`worker.errors`.
"""

from __future__ import annotations


class CacheBusError(Exception):
    """Base of every error cachebus raises on purpose."""

    retriable: bool = False


_USER_CODE = "_cachebus_from_user_code"


def mark_user_code(exc: BaseException) -> None:
    """Note that ``exc`` came out of user code a cache call ran (an embedder, a search
    pipeline): the cache's fail-open policy is for its own Redis errors, so such an
    error, even a retriable :class:`CacheBusError` (an embedding provider's), reaches
    the caller as itself instead of being taken for a Redis failure and answered by
    calling the provider again."""
    setattr(exc, _USER_CODE, True)


def from_user_code(exc: BaseException) -> bool:
    """Whether :func:`mark_user_code` marked ``exc``."""
    return getattr(exc, _USER_CODE, False) is True


class ConfigError(CacheBusError):
    """A setting or argument is invalid (bad prefix, TTL out of range, wrong client)."""


class KeyEncodingError(CacheBusError, ValueError):
    """A user-supplied key part cannot be encoded (empty, too long, not text)."""


class CodecError(CacheBusError):
    """A stored value cannot be decoded (wrong header, codec, dtype or dimension)."""


class CacheUnavailableError(CacheBusError):
    """Redis could not be reached or timed out. Raised only in strict mode or by
    invalidation primitives; cache reads fail open by default."""

    retriable = True


class DurabilityError(CacheUnavailableError):
    """An invalidation reached fewer replicas (WAIT) or fsyncs (WAITAOF) than the
    settings require before its timeout. It may exist only in one server's memory:
    the caller must retry it (the worker does, and acks nothing meanwhile)."""


class RedisFullError(CacheUnavailableError):
    """Redis refused a write because it is at ``maxmemory`` under ``noeviction``.
    Invalidations still took effect by deleting the control keys involved (a miss,
    never a stale read); the full invalidation is retried."""


class PermissionDeniedError(CacheBusError):
    """Redis refused a command for this user (ACL NOPERM): a deployment problem."""


class EmbeddingProviderError(CacheBusError):
    """An embedding provider (an OpenAI-compatible API) refused a request or kept failing.

    ``status`` is the HTTP status (``None``: no response, e.g. a connection error or a
    timeout), ``retriable`` whether the same request may succeed later (429, 5xx, network;
    raised after the embedder's own retries ran out), ``attempts`` how many requests were
    sent. The message names the endpoint and the provider's error text, never the API key.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retriable: bool = False,
        attempts: int = 1,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retriable = retriable
        self.attempts = attempts
