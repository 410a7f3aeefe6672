"""Document changes applied by the library with the worker's plan.

``Invalidator.document_created/updated/deleted`` (and their asyncio and ``CacheBus``
twins) build the document event the worker would receive for the change, plan it
with the worker's planner (:func:`cachebus.planning.plan`) and rules
(``CACHEBUS_RULES_FILE`` over the shipped defaults), and apply the plan through the
invalidation primitives: a library-only deployment retires exactly what the worker
would (the updated document's entries *and* its collection's search results, which
``invalidate_documents`` alone does not).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from .planning import Action, DocumentEvent, EventType, Plan, plan
from .tags import InvalidationReport

if TYPE_CHECKING:
    from .invalidation import AsyncInvalidator, Invalidator


@dataclass(frozen=True, slots=True)
class ChangeReport:
    """What a ``document_created/updated/deleted`` call did: the worker's plan for the
    change and the invalidation that ran."""

    event: DocumentEvent
    """The change, as the worker would have received it (a fresh ``event_id``)."""
    plan: Plan
    report: InvalidationReport
    scanned: dict[str, int] = field(default_factory=dict)
    """Keys removed per ``[[scan]]`` pattern of the rules."""

    @property
    def actions(self) -> tuple[Action, ...]:
        """The plan's actions, as the worker's audit events list them."""
        return self.plan.actions

    @property
    def applied(self) -> bool:
        """False when a ``version`` was given and the document's high-water mark (the
        worker's) was already at or above it: nothing of the document itself was
        touched, a newer change was applied already."""
        return self.event.doc_id not in self.report.skipped

    @property
    def generations(self) -> dict[str, int]:
        """Bumped namespace -> its new generation."""
        return dict(self.report.generations)

    @property
    def keys_removed(self) -> int:
        return self.report.removed_total + sum(self.scanned.values())


def change_event(
    event_type: EventType | str,
    doc_id: str,
    collection: str,
    *,
    version: int | None = None,
    tags: Iterable[str] = (),
    chunks: Sequence[tuple[str, str]] | None = None,
) -> DocumentEvent:
    """A library call as the document event the worker would plan it from.
    Raises ValueError for arguments the event schema refuses."""
    kind = EventType(event_type)  # ValueError for a name that is not a type
    for name, value in (("doc_id", doc_id), ("collection", collection)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty string, not {value!r}")
    if version is not None and (
        not isinstance(version, int) or isinstance(version, bool) or version < 0
    ):
        raise ValueError(f"version must be an integer >= 0 or None, not {version!r}")
    tag_list = tuple(dict.fromkeys(tags))
    if not all(isinstance(t, str) and t for t in tag_list):
        raise ValueError(f"tags must be non-empty strings, not {tag_list!r}")
    pairs: tuple[tuple[str, str], ...] | None = None
    if chunks is not None:
        pairs = tuple((chunk_id, content_hash) for chunk_id, content_hash in chunks)
        if not all(isinstance(part, str) and part for pair in pairs for part in pair):
            raise ValueError("chunks must be (chunk_id, content_hash) pairs of strings")
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return DocumentEvent(
        event_id=str(uuid.uuid4()),
        event_type=kind,
        doc_id=doc_id,
        collection=collection,
        doc_version=version or 0,  # 0: no version guard
        occurred_at=now,
        tags=tag_list,
        chunks=pairs,
    )


def apply_change(inv: Invalidator, event: DocumentEvent) -> ChangeReport:
    """Plan ``event`` as the worker does and apply the plan on ``inv``: tags, document
    and bumps in one invalidation, then the ``[[scan]]`` patterns, then the witness
    step. Errors raise (invalidations never fail open)."""
    planned = plan(event, inv.rules, inv.core.keys)
    report = inv.invalidate(
        tags=planned.tags,
        documents=[planned.document] if planned.document is not None else [],
        bump=planned.bumps,
        confirm=False,
    )
    scanned = {p: inv.scan_delete(p, confirm=False) for p in dict.fromkeys(planned.scans)}
    inv.confirm()
    return ChangeReport(event, planned, report, scanned)


async def aapply_change(inv: AsyncInvalidator, event: DocumentEvent) -> ChangeReport:
    """The asyncio twin of :func:`apply_change`."""
    planned = plan(event, inv.rules, inv.core.keys)
    report = await inv.invalidate(
        tags=planned.tags,
        documents=[planned.document] if planned.document is not None else [],
        bump=planned.bumps,
        confirm=False,
    )
    scanned = {}
    for pattern in dict.fromkeys(planned.scans):
        scanned[pattern] = await inv.scan_delete(pattern, confirm=False)
    await inv.confirm()
    return ChangeReport(event, planned, report, scanned)
