"""A cheap log of search queries, for cache warming (the lesson's precomputed layer).

The search service calls :meth:`QueryLog.record` with the queries it served;
one pipelined round trip does a ``ZINCRBY`` per distinct text into a per-day
sorted set and an ``EXPIRE .. NX`` of each touched day key. The set is sharded
by ``sha256(text)`` into :data:`SHARDS` keys per day so no cluster slot is hot::

    <prefix>:ql:{q<shard>}:<YYYYMMDD>        sorted set: query text -> count (UTC day)
    <prefix>:ql:{q<shard>}:tmp:<uuid>        short-lived union used by top()

All days of one shard share the hash tag ``{q<shard>}``, so :meth:`QueryLog.top`
can ``ZUNIONSTORE`` a week of one shard on Redis Cluster. The query text is a
sorted-set member (user data is fine there) and never part of a key.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

from .commands import Call, Program
from .keys import KeyScheme, sha256_hex
from .layer import AsyncShell, LayerCore, SyncShell
from .runner import AsyncClient, SyncClient
from .settings import DAY, Settings

SHARDS: Final = 16
RETENTION_DAYS: Final = 8
"""Each day key expires this long after its first write; ``top(days=...)`` may not exceed it."""
MAX_QUERY_CHARS: Final = 4096
"""Longer texts are not recorded: a warming candidate, not a document."""
TEMP_TTL_MS: Final = 30_000


def _today() -> date:
    return datetime.now(UTC).date()


class QueryLogKeys:
    """The query log's keys, built by the key scheme (:meth:`KeyScheme.query_log_day`,
    :meth:`KeyScheme.query_log_temp`)."""

    __slots__ = ("keys",)

    def __init__(self, keys: KeyScheme) -> None:
        self.keys = keys

    @staticmethod
    def shard(text: str) -> int:
        """The shard of a text: stable across processes (sha256, not ``hash()``)."""
        return int(sha256_hex(text)[:8], 16) % SHARDS

    def day(self, shard: int, day: date) -> str:
        """``<prefix>:ql:{q<shard>}:<YYYYMMDD>``."""
        return self.keys.query_log_day(shard, f"{day:%Y%m%d}")

    def temp(self, shard: int) -> str:
        """A unique scratch key in the shard's slot."""
        return self.keys.query_log_temp(shard, uuid.uuid4().hex)


def _member(text: str) -> bytes:
    # surrogatepass: a lone surrogate in a query must not make recording raise.
    return text.encode("utf-8", "surrogatepass")


def _text(member: bytes) -> str:
    return member.decode("utf-8", "surrogatepass")


class QueryLogCore(LayerCore):
    """The query log's programs (no I/O)."""

    layer_name = "query_log"

    def __init__(self, settings: Settings, *, max_chars: int = MAX_QUERY_CHARS) -> None:
        super().__init__(settings)
        self.log_keys = QueryLogKeys(self.keys)
        self.max_chars = max_chars

    def record(self, texts: Iterable[str], day: date | None = None) -> Program[int]:
        """One round trip: ZINCRBY per distinct text, EXPIRE NX per day key touched.
        Returns how many texts were counted (empty and over-long ones are not)."""
        if isinstance(texts, str):
            raise TypeError("record() takes a sequence of texts, not one str")
        counts = Counter(t for t in texts if t and len(t) <= self.max_chars)
        if not counts:
            return 0
        day = day or _today()
        calls: list[Call] = []
        touched: dict[str, None] = {}
        for text, n in counts.items():
            key = self.log_keys.day(self.log_keys.shard(text), day)
            calls.append(Call.of("ZINCRBY", key, n, _member(text)))
            touched[key] = None
        calls += [Call.of("EXPIRE", key, RETENTION_DAYS * DAY, "NX") for key in touched]
        yield calls
        return sum(counts.values())

    def top(
        self, n: int, days: int = 7, today: date | None = None
    ) -> Program[list[tuple[str, int]]]:
        """The ``n`` most frequent texts of the last ``days`` days (today included),
        exact, ordered by count (descending) then text.

        Round trip 1, per shard: ZUNIONSTORE the day keys into a temp key,
        PEXPIRE it, ZREVRANGE its top ``n``. Every text lives in one shard, so
        the merged per-shard tops hold the global top. Round trip 2 settles ties
        at a shard's cut-off (ZREVRANGE orders equal counts by text descending,
        we want ascending) and deletes the temp keys.
        """
        if n <= 0:
            return []
        if not 1 <= days <= RETENTION_DAYS:
            raise ValueError(f"days must be between 1 and {RETENTION_DAYS}, got {days}")
        today = today or _today()
        window = [today - timedelta(days=d) for d in range(days)]
        temps = [self.log_keys.temp(s) for s in range(SHARDS)]
        calls: list[Call] = []
        for shard, temp in enumerate(temps):
            sources = [self.log_keys.day(shard, d) for d in window]
            calls += [
                Call.of("ZUNIONSTORE", temp, len(sources), *sources),
                Call.of("PEXPIRE", temp, TEMP_TTL_MS),
                Call.of("ZREVRANGE", temp, 0, n - 1, "WITHSCORES"),
            ]
        replies = yield calls
        heads: list[list[tuple[str, int]]] = [_pairs(replies[3 * s + 2]) for s in range(SHARDS)]
        # A shard that filled its n places may have more members at its lowest count.
        cut = {s: head[-1][1] for s, head in enumerate(heads) if len(head) == n}
        second = [
            Call.of("ZRANGE", temps[s], score, score, "BYSCORE", "LIMIT", 0, n)
            for s, score in cut.items()
        ]
        second += [Call.of("DEL", temp) for temp in temps]
        tied = yield second
        merged: dict[str, int] = {}
        for head in heads:
            merged.update(head)
        for (_, score), members in zip(cut.items(), tied[: len(cut)], strict=True):
            merged.update((_text(m), score) for m in members)
        ranked = sorted(merged.items(), key=lambda item: (-item[1], item[0]))
        return ranked[:n]


def _pairs(reply: Any) -> list[tuple[str, int]]:
    """ZREVRANGE .. WITHSCORES sent raw: a flat member, score list (RESP2) or
    [member, score] pairs (RESP3)."""
    items = list(reply or [])
    if items and isinstance(items[0], list | tuple):
        return [(_text(m), int(float(sc))) for m, sc in items]
    return [(_text(m), int(float(sc))) for m, sc in zip(items[::2], items[1::2], strict=True)]


class QueryLog(SyncShell[QueryLogCore]):
    """Query log on a sync ``redis.Redis`` or ``RedisCluster``.

    >>> log = QueryLog(redis.Redis(), settings)
    >>> log.record(["vacation days", "reset password"])   # in the search service
    >>> log.top(1000)                                     # in the warming job
    [('vacation days', 412), ...]
    """

    def __init__(
        self,
        client: SyncClient,
        settings: Settings | None = None,
        *,
        max_chars: int = MAX_QUERY_CHARS,
    ) -> None:
        super().__init__(client, QueryLogCore(settings or Settings(), max_chars=max_chars))

    @property
    def keys(self) -> QueryLogKeys:
        return self.core.log_keys

    def record(self, texts: Sequence[str]) -> int:
        """Count the texts for today (UTC). Fails open like the cache layers:
        a Redis error is logged and counted, never raised (unless strict)."""
        return self._soft(self.core.record(texts), 0, "record")

    def top(self, n: int, days: int = 7) -> list[tuple[str, int]]:
        """``[(text, count), ...]``: the ``n`` most frequent texts of the last
        ``days`` days. Raises :class:`~cachebus.errors.CacheUnavailableError`."""
        return self._run(self.core.top(n, days))


class AsyncQueryLog(AsyncShell[QueryLogCore]):
    """The asyncio twin of :class:`QueryLog` (same programs)."""

    def __init__(
        self,
        client: AsyncClient,
        settings: Settings | None = None,
        *,
        max_chars: int = MAX_QUERY_CHARS,
    ) -> None:
        super().__init__(client, QueryLogCore(settings or Settings(), max_chars=max_chars))

    @property
    def keys(self) -> QueryLogKeys:
        return self.core.log_keys

    async def record(self, texts: Sequence[str]) -> int:
        """Count the texts for today (UTC); fails open like the cache layers."""
        return await self._soft(self.core.record(texts), 0, "record")

    async def top(self, n: int, days: int = 7) -> list[tuple[str, int]]:
        """The ``n`` most frequent texts of the last ``days`` days."""
        return await self._run(self.core.top(n, days))
