"""Canary entries of the consistency monitor: sampling events and arming a canary for
their document (:class:`CanarySampler`); see :mod:`worker.monitor`.
"""

from __future__ import annotations

import asyncio
import random
import secrets
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cachebus.errors import CacheBusError
from cachebus.keys import encode_part
from cachebus.rerank_scores import AsyncRerankScoreCache

from .audit import SourceRecord
from .inputs import Tombstone, decode
from .monitor_config import MAX_ARM_PER_BATCH, MonitorConfig
from .monitor_stats import CANARIES, MonitorStats
from .rules import Rules
from .settings import WorkerSettings


@dataclass(slots=True, eq=False)
class Canary:
    """One canary entry, tagged ``doc:<doc_id>``."""

    doc_id: str
    query: str
    candidates: tuple[tuple[str, int], ...]
    key: str
    first_batch: int
    """Only events of this batch and later ones may be checked against it: its
    ticket was taken before they were applied."""
    expires_at: float
    """Monotonic time by which its TTL may have run out."""
    settled_batch: int = 0
    """Batches up to this one were applied before its ticket: their events do not
    concern it. Between this and ``first_batch``: unknown (the canary is dropped)."""
    event_id: str = ""
    event_type: str = ""
    retired_at: float = 0.0
    violations: int = 0


@dataclass(frozen=True, slots=True)
class BatchSample:
    """What :meth:`Monitor.before` hands to :meth:`Monitor.after` for one batch."""

    batch: int


class CanarySampler(MonitorStats):
    """Sampling events and arming their canaries (written, then read back serving).
    A base of :class:`~worker.monitor.Monitor`."""

    config: MonitorConfig
    settings: WorkerSettings
    rules: Rules
    """The worker's rules: their input tables say how a record is decoded."""
    cache: AsyncRerankScoreCache
    worker_id: str
    ttl: int
    prepare_timeout: float
    _rng: random.Random
    _batch: int
    _rearm: OrderedDict[str, int]
    _unlink: list[str]

    async def _arm_before(self, picked: list[tuple[str, int]], batch: int) -> None:
        tasks = [asyncio.ensure_future(self._arm(d, v, batch)) for d, v in picked]
        done, pending = await asyncio.wait(tasks, timeout=self.prepare_timeout)
        # Cancelled without waiting for them: a cancelled arm never reaches _keep (its
        # next step raises), so no canary written after the apply began is kept.
        for task in pending:
            task.cancel()
        for task in done:
            exc = task.exception()
            if exc is not None:
                self._error("arming a canary", exc)
        if pending:
            self._error("arming canaries", TimeoutError(f"{len(pending)} canaries not armed"))

    def _pick(self, records: Sequence[SourceRecord]) -> list[tuple[str, int]]:
        """Sampled events whose document has no live canary: (doc_id, version). A
        record is read by the processor's decode step (:func:`worker.inputs.decode`):
        native events, CloudEvents and Debezium change events alike."""
        picked: dict[str, int] = {}
        for record in records:
            if len(picked) >= MAX_ARM_PER_BATCH:
                break
            if not self._sampled():
                continue
            try:
                event = decode(record, self.rules, max_bytes=self.settings.max_event_bytes)
                if isinstance(event, Tombstone):
                    continue  # Debezium's, after a delete: nothing is applied
                encode_part(event.doc_id)
            except CacheBusError:
                continue  # dead-lettered by the processor
            doc = event.doc_id
            if doc in picked:
                continue
            # Armed now (before the apply) rather than by a re-arm after it.
            self._rearm.pop(doc, None)
            canary = self.live.get(doc)
            if canary is not None:
                if canary.expires_at > self._clock() + self.schedule.offsets[-1]:
                    self.live.move_to_end(doc)
                    continue
                del self.live[doc]  # too old to outlive its checks: replace it
                self._unlink.append(canary.key)
            picked[doc] = event.doc_version
        return list(picked.items())

    def _sampled(self) -> bool:
        rate = self.config.sample_rate
        return rate >= 1.0 or self._rng.random() < rate

    def _queue_rearm(self, doc: str, version: Any) -> None:
        if doc in self._rearm:
            return
        if len(self._rearm) >= self.config.max_canaries:
            self._rearm.popitem(last=False)
        self._rearm[doc] = version if isinstance(version, int) else 0

    async def _arm(self, doc: str, version: int, first_batch: int | None) -> Canary | None:
        """Write a canary for ``doc`` (its ticket taken by ``set``) and read it
        back; keep it if it serves. ``first_batch`` None: the next batch to begin
        after the ticket (a re-arm); else the batch about to be applied (``before``)."""
        candidates = ((doc, int(version)),)
        for _ in range(2):
            query = f"{self.worker_id}/{secrets.token_hex(8)}"
            key = self.cache.core.key(query, candidates)
            started = self._clock()
            # before(k) runs once batch k - 1 is applied: batches below the current
            # number were applied before the ticket set() is about to take.
            settled = self._batch - 1 if first_batch is None else first_batch - 1
            # set() takes its ticket itself (the README's way for values computed from
            # immutable input): one round trip less than lookup() -> ticket -> set().
            written = await self.cache.set(query, candidates, [float(version)], ttl=self.ttl)
            # Read once set() returned, so after its ticket: the batches numbered above
            # begin after it (a conservative bound; no clock involved).
            batch = self._batch + 1 if first_batch is None else first_batch
            if not written:
                continue  # refused (an epoch fenced meanwhile, an old ticket): try again
            if await self.cache.get(query, candidates) is not None:
                expires = started + self.ttl - 1.0
                canary = Canary(doc, query, candidates, key, batch, expires, settled)
                self._keep(canary)
                return canary
            # Not serving: a stamp created above the ticket (first canary of a document
            # under load: the next ticket is above it), or a tombstoned document.
            self._unlink.append(key)
        self.counts.not_serving += 1
        CANARIES.labels("not_serving").inc()
        return None

    def _keep(self, canary: Canary) -> None:
        old = self.live.pop(canary.doc_id, None)
        if old is not None:
            # Another canary of the document was armed meanwhile (before() while a
            # re-arm was on its way): keep the one that can be checked soonest.
            if old.first_batch <= canary.first_batch:
                self.live[old.doc_id] = old
                self._unlink.append(canary.key)
                return
            self._unlink.append(old.key)
        self.live[canary.doc_id] = canary
        while len(self.live) > self.config.max_canaries:
            _, evicted = self.live.popitem(last=False)
            self._unlink.append(evicted.key)
        self.counts.armed += 1
        CANARIES.labels("armed").inc()
        self._gauges()
