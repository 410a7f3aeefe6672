"""The planner: a pure function from (document event, rules) to an invalidation plan.

One planner for the worker (events from Kafka) and for the library's
``Invalidator.document_created/updated/deleted`` calls, so both do the same
thing to the caches for the same change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .events import EventType
from .keys import KeyScheme, Tag, encode_part
from .registry import collection_bumped
from .rules import Rules
from .tags import DocumentInvalidation
from .tags import Mode as DocumentMode

__all__ = ["Action", "ActionKind", "DocumentEvent", "EventType", "Plan", "plan"]

ActionKind = Literal["tag", "scan", "bump", "drop_embeddings", "tombstone", "revive"]


@dataclass(frozen=True, slots=True)
class DocumentEvent:
    """A validated document event (see ``schemas/document-event.schema.json``)."""

    event_id: str
    event_type: EventType
    doc_id: str
    collection: str
    doc_version: int
    """0 only for library calls without a version: then no version guard applies."""
    occurred_at: str
    tags: tuple[str, ...] = ()
    chunks: tuple[tuple[str, str], ...] | None = None
    """(chunk_id, content_hash) pairs, when the pipeline sent them."""
    chunk_ids: tuple[str, ...] = ()
    content_hash: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Action:
    """One step of a plan, as the audit trail shows it."""

    kind: ActionKind
    target: str
    detail: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "target": self.target}
        if self.detail:
            out["detail"] = self.detail
        return out


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do for one event, in the shape the applier executes."""

    actions: tuple[Action, ...]
    tags: tuple[Tag, ...] = ()
    document: DocumentInvalidation | None = None
    bumps: tuple[str, ...] = ()
    """Namespaces to version-bump."""
    scans: tuple[str, ...] = ()
    """Fully built, escaped SCAN MATCH patterns."""


def plan(event: DocumentEvent, rules: Rules, keys: KeyScheme) -> Plan:
    """Map one event to tag, pattern-scan and version-bump actions. Pure.
    Raises :class:`KeyEncodingError` for ids the key scheme refuses."""
    encode_part(event.doc_id)
    encode_part(event.collection)
    rule = rules.for_type(event.event_type)
    actions: list[Action] = []
    tags: list[Tag] = []
    bumps: list[str] = []
    scans: list[str] = []
    document: DocumentInvalidation | None = None

    mode: DocumentMode | None = None
    if rule.tombstone:
        mode = "tomb"
        actions.append(Action("tombstone", f"doc:{event.doc_id}"))
    elif rule.invalidate_doc:
        mode = "bump"
        actions.append(Action("tag", f"doc:{event.doc_id}"))
    elif rule.revive:
        mode = "revive"
        actions.append(Action("revive", f"doc:{event.doc_id}"))
    elif rule.embeddings != "none":
        # Dropping embeddings raises the document's stamp too (that is what refuses
        # late writes of the dropped chunks), which retires entries tagged with it.
        mode = "bump"
        actions.append(Action("tag", f"doc:{event.doc_id}", {"why": "race-free drop"}))
    if mode is not None:
        drop = _drop(rule.embeddings, event)
        # Guarded by the event's version inside the script: a worker that lost the
        # partition while paused cannot apply it over a newer one applied meanwhile.
        document = DocumentInvalidation(
            event.doc_id, mode, drop, _keep(drop, event), if_below=event.doc_version
        )
        if drop != "none":
            detail: dict[str, Any] = {"mode": drop}
            if drop == "changed":
                detail["chunks_in_event"] = len(event.chunks or ())
            actions.append(Action("drop_embeddings", f"doc:{event.doc_id}", detail))

    if rule.invalidate_tags:
        for name in event.tags:
            tags.append(Tag.user(name))
            actions.append(Action("tag", f"tag:{name}"))

    if rule.bump_collection:
        for layer in collection_bumped():  # the registry's layers bumped by collection
            bumps.append(keys.namespace(str(layer.bump_namespace), event.collection))
            actions.append(Action("bump", f"{layer.name}:{event.collection}"))

    for scan in rules.scans:
        if event.event_type in scan.events:
            pattern = keys.pattern(scan.pattern, doc_id=event.doc_id, collection=event.collection)
            scans.append(pattern)
            actions.append(Action("scan", pattern))

    return Plan(tuple(actions), tuple(tags), document, tuple(bumps), tuple(scans))


def _drop(mode: str, event: DocumentEvent) -> Literal["all", "none", "changed"]:
    if mode == "none":
        return "none"
    if mode == "changed" and event.chunks is not None:
        return "changed"
    return "all"  # without per-chunk hashes we cannot tell what changed


def _keep(drop: str, event: DocumentEvent) -> tuple[str, ...]:
    """For "changed": flattened (chunk_id, content_hash) pairs to keep if equal."""
    if drop != "changed" or event.chunks is None:
        return ()
    return tuple(part for pair in event.chunks for part in pair)
