"""One batch of consumed records in, one audit event per record (and dead
letters) out. Used by the live faust agent and by replay alike."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog

from cachebus.durability import FenceEvent
from cachebus.errors import (
    CacheBusError,
    CacheUnavailableError,
    DurabilityError,
    PermissionDeniedError,
    RedisFullError,
)
from cachebus.keys import KeyScheme

from . import metrics
from .applier import Applier
from .audit import SourceRecord, audit_event, dead_letter, now_rfc3339, to_bytes
from .audit_event import AuditEvent
from .errors import InvalidEventError
from .events import DocumentEvent, event_fields
from .inputs import Tombstone, decode, tombstone_audit
from .planner import Plan, plan
from .results import Applied, ApplyResult, DeadLettered
from .rules import Rules
from .settings import WorkerSettings
from .tracing import BatchTrace
from .web import HealthState

log = structlog.get_logger("cachebus.worker")
T = TypeVar("T")

BACKOFF_START = 0.05
BACKOFF_MAX = 5.0
FULL_LOG_INTERVAL = 60.0
"""While Redis is full (or not durable), one log line per this many seconds, not per retry."""


@dataclass(slots=True)
class Outbound:
    """Messages to produce before the batch's offsets may be committed."""

    audits: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    dead_letters: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)
    applied: list[DocumentEvent] = field(default_factory=list)
    """Events whose high-water marks :meth:`Processor.commit` raises."""
    audit_events: list[AuditEvent] = field(default_factory=list)
    """The audit events, in record order (for reports)."""
    audit_docs: list[tuple[bytes | None, dict[str, Any]]] = field(default_factory=list)
    """The audit events as encoded (key, JSON), for readers of the wire form."""


class Processor:
    """Parse, plan, apply (retrying Redis until it answers), audit."""

    def __init__(
        self,
        applier: Applier | None,
        settings: WorkerSettings,
        rules: Rules,
        *,
        worker_id: str,
        replay: bool = False,
        dry_run: bool = False,
        health: HealthState | None = None,
    ) -> None:
        self.applier = applier
        self.settings = settings
        self.rules = rules
        self.keys = KeyScheme(settings.prefix)
        self.worker_id = worker_id
        self.replay = replay
        self.dry_run = dry_run
        self.health = health
        self._debug = settings.log_level.lower() == "debug"
        self._logged_at: dict[str, float] = {}
        """Last rate-limited log line per condition (monotonic)."""
        if applier is not None:
            applier.invalidator.fence.listeners.append(self._on_fence)

    def _on_fence(self, event: FenceEvent) -> None:
        metrics.FENCES.inc()
        if self.health is not None:
            self.health.last_fence = event.as_dict()
        log.error(
            "redis primary lost writes; fenced (every cached entry is now a miss)",
            primary=event.primary,
            witness_key=event.witness_key,
            remembered=event.remembered,
            found=event.found,
            epoch_written=event.epoch_written,
            replay_command=event.replay_command,
        )

    async def check_fence(self) -> None:
        """The periodic witness check (every ``fence_check_interval`` s): fences if a
        primary lost writes. Never raises (Redis trouble shows on the batch path)."""
        applier = self.applier
        if applier is None or self.dry_run:
            return
        try:
            report = await applier.invalidator.check_fence()
        except RedisFullError as exc:  # the fence's SET was refused; the epoch was unlinked
            metrics.FENCE_CHECKS.labels("redis_full").inc()
            self._rate_limited("fence_full", log.error, "redis is full", error=str(exc))
            return
        except CacheBusError as exc:
            metrics.FENCE_CHECKS.labels("error").inc()
            log.debug("fence check failed", error=str(exc))
            return
        metrics.FENCE_CHECKS.labels("fenced" if report.fences else "ok").inc()

    def _rate_limited(self, what: str, emit: Callable[..., Any], message: str, **kw: Any) -> None:
        now = time.monotonic()
        last = self._logged_at.get(what)
        if last is None or now - last >= FULL_LOG_INTERVAL:
            self._logged_at[what] = now
            emit(message, **kw)

    async def process(self, records: Sequence[SourceRecord]) -> Outbound:
        out = Outbound()
        trace = BatchTrace.begin()
        good: list[tuple[int, DocumentEvent, Plan]] = []
        tombstones: list[tuple[int, Tombstone]] = []
        audits: list[AuditEvent | None] = [None] * len(records)
        for i, record in enumerate(records):
            event: DocumentEvent | Tombstone | None = None
            try:
                event = decode(record, self.rules, max_bytes=self.settings.max_event_bytes)
                if isinstance(event, Tombstone):  # Debezium's, after a delete: nothing to do
                    if event.audit:
                        tombstones.append((i, event))
                    continue
                good.append((i, event, plan(event, self.rules, self.keys)))
            except InvalidEventError as exc:
                self._dead_letter(out, audits, i, record, exc.reason, exc.detail, exc.fields)
            except CacheBusError as exc:  # e.g. an id the key scheme refuses
                fields = event_fields(event) if isinstance(event, DocumentEvent) else None
                self._dead_letter(out, audits, i, record, "processing_error", str(exc), fields)

        trace.mark_planned()
        applied = await self._apply([(e, p) for _, e, p in good])
        trace.mark_applied()
        now = now_rfc3339()
        for i, tombstone in tombstones:  # audited with the batch: after the delete before it
            audits[i] = tombstone_audit(
                records[i],
                tombstone,
                worker_id=self.worker_id,
                replay=self.replay,
                processed_at=now,
            )
        if tombstones:
            skipped = out.outcomes.get("skipped_tombstone", 0)
            out.outcomes["skipped_tombstone"] = skipped + len(tombstones)
        for (i, event, _), result in zip(good, applied, strict=True):
            record = records[i]
            audits[i] = audit_event(
                record,
                result,
                worker_id=self.worker_id,
                replay=self.replay,
                event=event,
                processed_at=now,
            )
            out.outcomes[result.outcome] = out.outcomes.get(result.outcome, 0) + 1
            if result.outcome == "applied":
                out.applied.append(event)
            if self._debug:
                log.debug(
                    "event processed",
                    outcome=result.outcome,
                    event_id=event.event_id,
                    doc_id=event.doc_id,
                    partition=record.partition,
                    offset=record.offset,
                )
        for i, audit in enumerate(audits):
            if audit is not None:
                context = trace.audit_context(records[i], audit)  # W3C trace context, if any
                if context is not None:
                    audit = dataclasses.replace(audit, trace=context)
                key = audit.key()
                doc = audit.to_json()
                out.audits.append((key, to_bytes(doc)))
                out.audit_docs.append((key, doc))
                out.audit_events.append(audit)
        trace.end(len(records), out.outcomes)
        return out

    def _dead_letter(
        self,
        out: Outbound,
        audits: list[AuditEvent | None],
        i: int,
        record: SourceRecord,
        reason: str,
        detail: str,
        fields: dict[str, str] | None = None,
    ) -> None:
        """``fields``: what the record says about itself (:func:`worker.inputs.decode`);
        None: peeked from its bytes as a native event."""
        log.warning(
            "event dead-lettered",
            reason=reason,
            detail=detail[:200],
            partition=record.partition,
            offset=record.offset,
        )
        letter = dead_letter(record, reason, detail, worker_id=self.worker_id, fields=fields)
        out.dead_letters.append((record.key, to_bytes(letter)))
        audits[i] = audit_event(
            record,
            DeadLettered(reason, detail),
            worker_id=self.worker_id,
            replay=self.replay,
            fields=fields,
        )
        out.outcomes["dead_lettered"] = out.outcomes.get("dead_lettered", 0) + 1

    async def commit(self, out: Outbound) -> None:
        """Raise the applied events' high-water marks: call after the audit and
        dead-letter messages are delivered, before acknowledging the batch."""
        applier = self.applier
        if out.applied and applier is not None and not self.dry_run:
            await self._retrying(lambda: applier.commit_marks(out.applied), len(out.applied))

    async def _apply(self, items: list[tuple[DocumentEvent, Plan]]) -> list[ApplyResult]:
        if not items:
            return []
        applier = self.applier
        if self.dry_run or applier is None:
            return [Applied.planned(p.actions) for _, p in items]
        started = time.perf_counter()
        result = await self._retrying(lambda: applier.apply(items), len(items))
        metrics.APPLY_SECONDS.observe(time.perf_counter() - started)
        return result

    async def _retrying(self, step: Callable[[], Awaitable[T]], batch: int) -> T:
        """Redis trouble: back off and retry; nothing is acked meanwhile."""
        delay = BACKOFF_START
        attempt = 0
        while True:
            try:
                result = await step()
                if attempt:
                    log.info("redis is back; batch applied", attempts=attempt + 1)
                self._recovered()
                return result
            except (CacheUnavailableError, PermissionDeniedError) as exc:
                # Transient (Redis down, timeouts, full, replicas behind) or a deployment
                # error an operator fixes (ACL): either way wait, ack nothing, lose nothing.
                attempt += 1
                metrics.REDIS_RETRIES.inc()
                if isinstance(exc, RedisFullError):
                    metrics.REDIS_FULL.inc()
                    if self.health is not None:
                        self.health.redis_full = True
                    self._rate_limited(
                        "full",
                        log.error,
                        "redis is full (maxmemory, noeviction): batch waits unacked; its "
                        "control keys were unlinked (misses, never stale reads); free memory "
                        "or raise maxmemory",
                        error=str(exc),
                        attempt=attempt,
                        batch=batch,
                    )
                elif isinstance(exc, DurabilityError):
                    metrics.DURABILITY_SHORTFALLS.inc()
                    if self.health is not None:
                        self.health.durability_shortfall = str(exc)
                    self._rate_limited(
                        "durability",
                        log.warning,
                        "invalidations not durable in time; retrying batch",
                        error=str(exc),
                        attempt=attempt,
                        batch=batch,
                    )
                else:
                    log.warning(
                        "redis unavailable; retrying batch",
                        error=str(exc),
                        attempt=attempt,
                        retry_in_s=round(delay, 2),
                        batch=batch,
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)

    def _recovered(self) -> None:
        health = self.health
        if health is not None and (health.redis_full or health.durability_shortfall):
            log.info(
                "redis accepts the batches again",
                was_full=health.redis_full,
                was_not_durable=health.durability_shortfall is not None,
            )
            health.redis_full = False
            health.durability_shortfall = None
        self._logged_at.pop("full", None)
        self._logged_at.pop("durability", None)
