"""The applier: the only part of the worker that talks to Redis. It executes
plans through the library's invalidation primitives, batched, and keeps the
per-document high-water marks that make re-delivery harmless."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from redis.crc import key_slot

from cachebus.commands import Call, Script
from cachebus.invalidation import AsyncInvalidator
from cachebus.keys import KeyScheme
from cachebus.runner import AsyncClient
from cachebus.settings import Settings

from .events import DocumentEvent
from .planner import Plan
from .results import ActionResult, Applied, ApplyResult, Skipped

# KEYS: high-water marks; ARGV: version, event_id per key. Raise each mark only
# (a replayed or re-delivered older event never lowers it). One call per batch
# (per hash slot on a cluster).
HWM_SCRIPT: Final = Script("""
local raised = 0
for i = 1, #KEYS do
  local v = ARGV[2 * i - 1]
  local cur = redis.call('GET', KEYS[i])
  local c = cur and tonumber(string.match(cur, '^(%d+):'))
  if not (c and c >= tonumber(v)) then
    redis.call('SET', KEYS[i], v .. ':' .. ARGV[2 * i])
    raised = raised + 1
  end
end
return raised
""")


def _parse_hwm(raw: bytes | None) -> tuple[int, str] | None:
    if raw is None:
        return None
    version, _, event_id = raw.decode("utf-8", "replace").partition(":")
    return int(version), event_id


class Applier:
    """Applies batches of planned events to Redis in a few round trips:
    one MGET of high-water marks, two for all invalidations, and (after the
    audits are out) one for the marks."""

    def __init__(self, client: AsyncClient, settings: Settings) -> None:
        self.settings = settings
        self.keys = KeyScheme(settings.prefix)
        self.invalidator = AsyncInvalidator(client, settings=settings)
        self._uncommitted: dict[str, tuple[int, str]] = {}
        """Marks of applied events not yet in Redis (their batch's audits are still
        in flight): later batches treat them as raised, so a duplicate or older
        event right behind one is skipped, not applied again."""

    async def commit_marks(self, events: Sequence[DocumentEvent]) -> None:
        """Raise the high-water marks of applied events. Called after their audit
        events are delivered, so a crash in between re-applies and re-audits
        them as applied rather than skipping them unaudited."""
        by_slot: dict[int, tuple[list[str], list[str | int]]] = {}
        cluster = self.invalidator.cluster
        for e in events:
            key = self.keys.hwm(e.doc_id)
            keys, args = by_slot.setdefault(key_slot(key.encode()) if cluster else 0, ([], []))
            keys.append(key)
            args += (e.doc_version, e.event_id)
        await self.invalidator.execute(
            [HWM_SCRIPT.call(len(keys), *keys, *args) for keys, args in by_slot.values()]
        )
        for e in events:
            if self._uncommitted.get(e.doc_id) == (e.doc_version, e.event_id):
                del self._uncommitted[e.doc_id]

    async def apply(self, items: Sequence[tuple[DocumentEvent, Plan]]) -> list[ApplyResult]:
        """Apply in order (marks are raised later by :meth:`commit_marks`), then run
        the witness step once for the batch (WAIT / WAITAOF if the settings ask;
        fence if a primary lost writes).
        Raises CacheUnavailableError on Redis trouble (DurabilityError: not on enough
        replicas in time; RedisFullError: Redis at maxmemory, the control keys were
        unlinked instead); the caller retries the whole batch (every step is
        idempotent)."""
        results: list[ApplyResult | None] = [None] * len(items)
        docs = list(dict.fromkeys(ev.doc_id for ev, _ in items))
        marks: dict[str, tuple[int, str] | None] = {}
        if docs:
            (raw,) = await self.invalidator.execute(
                [Call("MGET", tuple(self.keys.hwm(d) for d in docs))]
            )
            marks = {d: _parse_hwm(r) for d, r in zip(docs, raw, strict=True)}
            for d in docs:
                pending = self._uncommitted.get(d)
                mark = marks[d]
                if pending is not None and (mark is None or pending[0] > mark[0]):
                    marks[d] = pending

        # Decide skips in order; later events of one document see earlier ones.
        rounds: list[list[int]] = []
        seen_in_batch: dict[str, int] = {}
        for i, (event, _) in enumerate(items):
            mark = marks.get(event.doc_id)
            if mark is not None and event.doc_version <= mark[0]:
                if event.event_id == mark[1]:
                    results[i] = Skipped.duplicate()
                else:
                    results[i] = Skipped.below_mark(event.doc_version, mark[0])
                continue
            marks[event.doc_id] = (event.doc_version, event.event_id)
            # Each document at most once per round, so one round's actions never conflict.
            r = seen_in_batch.get(event.doc_id, 0)
            seen_in_batch[event.doc_id] = r + 1
            if r == len(rounds):
                rounds.append([])
            rounds[r].append(i)

        for indexes in rounds:
            await self._apply_round(items, indexes, results)
        if rounds:
            # Before the in-flight marks below: a batch that is not durable is retried
            # whole, and its retry must not skip its own events.
            await self.invalidator.confirm()
        for (event, _), result in zip(items, results, strict=True):
            if result is not None and result.outcome == "applied":
                # In order, so a document's latest applied event wins.
                self._uncommitted[event.doc_id] = (event.doc_version, event.event_id)
        return [r for r in results if r is not None]

    async def _apply_round(
        self,
        items: Sequence[tuple[DocumentEvent, Plan]],
        indexes: list[int],
        results: list[ApplyResult | None],
    ) -> None:
        plans = [items[i][1] for i in indexes]
        # Each document's actions are guarded by its high-water mark inside the same
        # script (the planner sets ``if_below`` to the event's version): a worker that
        # lost its partitions while paused cannot apply an old event over a newer one
        # the new owner already applied.
        documents = [p.document for p in plans if p.document is not None]
        report = await self.invalidator.invalidate(
            tags=[t for p in plans for t in p.tags],
            documents=documents,
            bump=[ns for p in plans for ns in p.bumps],
            confirm=False,  # once per batch, in apply()
        )
        scanned: dict[str, int] = {}
        for p in plans:
            for pattern in p.scans:
                if pattern not in scanned:
                    scanned[pattern] = await self.invalidator.scan_delete(pattern, confirm=False)
        for i in indexes:
            event, p = items[i]
            if event.doc_id in report.skipped:
                results[i] = Skipped.overtaken()
                continue
            removed = report.embeddings_removed.get(event.doc_id, 0) if p.document else 0
            # The planner emits one bump action per bumped namespace, in order.
            bumped = [a.target for a in p.actions if a.kind == "bump"]
            generations = {
                target: report.generations[ns] for target, ns in zip(bumped, p.bumps, strict=True)
            }
            actions = []
            for action in p.actions:
                if action.kind == "drop_embeddings":
                    actions.append(ActionResult(action, embeddings_removed=removed))
                elif action.kind == "bump":
                    actions.append(ActionResult(action, generation=generations[action.target]))
                elif action.kind == "scan":
                    actions.append(ActionResult(action, keys_removed=scanned[action.target]))
                else:
                    actions.append(ActionResult(action))
            results[i] = Applied(
                tuple(actions),
                keys_removed=removed + sum(scanned[s] for s in p.scans),
                generations=generations,
            )
