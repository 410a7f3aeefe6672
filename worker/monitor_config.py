"""The consistency monitor's configuration: ``CACHEBUS_MONITOR_*`` variables, defaults
and bounds, :class:`MonitorConfig`.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from cachebus.errors import ConfigError
from cachebus.settings import Settings

from .verify import BUCKET_SECONDS, ENV_SAMPLE_RATE, RETENTION_MINUTES

# -- settings (read here until they move into worker.settings.WorkerSettings) ------

ENV_CHECK_AFTER: Final = "CACHEBUS_MONITOR_CHECK_AFTER"
ENV_MAX_PENDING: Final = "CACHEBUS_MONITOR_MAX_PENDING"
ENV_MAX_CANARIES: Final = "CACHEBUS_MONITOR_MAX_CANARIES"

DEFAULT_SAMPLE_RATE: Final = 0.01
DEFAULT_CHECK_AFTER: Final = (0.0, 5.0, 60.0, 300.0)
DEFAULT_MAX_PENDING: Final = 10_000
DEFAULT_MAX_CANARIES: Final = 10_000

CANARY_MODEL: Final = "__cachebus_canary__"
"""The reranker model name of canary entries: ``<prefix>:rr:__cachebus_canary__:{...}``."""
CANARY_TTL_MARGIN: Final = 60
"""A canary lives at least this long past its last check."""
MAX_ARM_PER_BATCH: Final = 64
"""Canaries written before one batch is applied, at most (bounds the agent's wait)."""
PREPARE_TIMEOUT_MAX: Final = 1.0
"""The agent waits at most min(redis_timeout, this) seconds for a batch's canaries."""
CHECKS_PER_ROUND: Final = 256
CONCURRENCY: Final = 32
UNLINK_BATCH: Final = 500
ERROR_LOG_INTERVAL: Final = 60.0


def _env_float(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a valid float") from None
    if not math.isfinite(value):
        raise ConfigError(f"{name}={raw!r} is not a valid float")
    return value


def _env_int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a valid int") from None


def parse_offsets(raw: str, name: str = ENV_CHECK_AFTER) -> tuple[float, ...]:
    """``"0,5,60,300"`` -> (0.0, 5.0, 60.0, 300.0): seconds after the audit, at least
    one, each >= 0, strictly increasing."""
    parts = [p.strip() for p in raw.split(",")]
    try:
        offsets = tuple(float(p) for p in parts)
    except ValueError:
        raise ConfigError(
            f"{name}={raw!r} must be comma-separated seconds, e.g. 0,5,60,300"
        ) from None
    if not offsets or not all(math.isfinite(o) and o >= 0 for o in offsets):
        raise ConfigError(f"{name}={raw!r}: every offset must be a number of seconds >= 0")
    if any(b <= a for a, b in itertools.pairwise(offsets)):
        raise ConfigError(f"{name}={raw!r}: offsets must be strictly increasing")
    if offsets[-1] > RETENTION_MINUTES * BUCKET_SECONDS:
        raise ConfigError(f"{name}={raw!r}: the last check must come within a day")
    return offsets


@dataclass(frozen=True, slots=True)
class MonitorConfig:
    """The monitor's settings (``CACHEBUS_MONITOR_*``; they belong in
    :class:`worker.settings.WorkerSettings` once the lead moves them there)."""

    sample_rate: float = DEFAULT_SAMPLE_RATE
    """Share of events whose document gets a canary (0: the monitor is off)."""
    check_after: tuple[float, ...] = DEFAULT_CHECK_AFTER
    """Seconds after an invalidation's audit at which its canary is read."""
    max_pending: int = DEFAULT_MAX_PENDING
    """Canaries under check at most (the oldest is dropped beyond)."""
    max_canaries: int = DEFAULT_MAX_CANARIES
    """Live canaries (one per monitored document) at most (least recently used dropped)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.sample_rate <= 1.0:
            raise ConfigError(
                f"{ENV_SAMPLE_RATE}={self.sample_rate!r} must be between 0 (off) and 1"
            )
        if self.max_pending < 1:
            raise ConfigError(f"{ENV_MAX_PENDING}={self.max_pending!r} must be 1 or more")
        if self.max_canaries < 1:
            raise ConfigError(f"{ENV_MAX_CANARIES}={self.max_canaries!r} must be 1 or more")
        parse_offsets(",".join(repr(o) for o in self.check_after))

    @property
    def enabled(self) -> bool:
        return self.sample_rate > 0

    def canary_ttl(self, settings: Settings) -> int:
        """The canaries' TTL: the rerank-scores TTL, or longer if the last check
        needs it. Raises :class:`ConfigError` if the stamps could not cover it."""
        from cachebus.rerank_scores import RerankScoreCore

        wanted = max(
            settings.rerank_scores_ttl, math.ceil(self.check_after[-1]) + CANARY_TTL_MARGIN
        )
        try:
            return RerankScoreCore(settings, CANARY_MODEL).check_ttl(wanted)
        except ConfigError as exc:
            raise ConfigError(
                f"{ENV_CHECK_AFTER}: canaries cannot live long enough: {exc}"
            ) from None

    def checked(self, settings: Settings) -> MonitorConfig:
        """This config, after checking it fits ``settings`` (at startup)."""
        if self.enabled:
            self.canary_ttl(settings)
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> MonitorConfig:
        env = os.environ if environ is None else environ
        raw_offsets = env.get(ENV_CHECK_AFTER)
        return cls(
            sample_rate=_env_float(env, ENV_SAMPLE_RATE, DEFAULT_SAMPLE_RATE),
            check_after=DEFAULT_CHECK_AFTER if raw_offsets is None else parse_offsets(raw_offsets),
            max_pending=_env_int(env, ENV_MAX_PENDING, DEFAULT_MAX_PENDING),
            max_canaries=_env_int(env, ENV_MAX_CANARIES, DEFAULT_MAX_CANARIES),
        )
