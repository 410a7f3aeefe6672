"""What happened to one input record, as facts: the applier returns these (never JSON),
the processor turns them into an :class:`~worker.audit_event.AuditEvent`.

* :class:`Applied`: the plan ran; one :class:`ActionResult` per planned action with
  what applying it found (embeddings removed, the generation a bump reached, keys a
  scan unlinked). A dry run reports the plan with nothing found.
* :class:`Skipped`: at or below the document's high-water mark (``skipped_stale``),
  or that mark's own event (``skipped_duplicate``).
* :class:`DeadLettered`: the record was refused (a dead-letter reason and detail).
* :class:`SkippedTombstone`: a Debezium tombstone (null value after a delete): nothing
  to do (``skipped_tombstone``).

Base dependencies only (``cachebus audit tail`` renders audits without the worker extra).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, NamedTuple

from cachebus.planning import Action, ActionKind

AuditOutcome = Literal[
    "applied", "skipped_stale", "skipped_duplicate", "dead_lettered", "skipped_tombstone"
]
"""``outcome`` of ``schemas/audit-event.schema.json``."""
Outcome = Literal["applied", "skipped_stale", "skipped_duplicate"]
"""What the applier decides for an event it was given."""
SkipOutcome = Literal["skipped_stale", "skipped_duplicate"]


class ActionResult(NamedTuple):
    """One planned action and what applying it found (None: not known, e.g. a dry run,
    or nothing to find for this kind). Immutable; a NamedTuple rather than a frozen
    dataclass because there is one per action of every event (built ~4x faster)."""

    action: Action
    embeddings_removed: int | None = None
    """``drop_embeddings``: chunk embeddings removed."""
    generation: int | None = None
    """``bump``: the namespace's generation after the INCR."""
    keys_removed: int | None = None
    """``scan``: keys unlinked."""

    @property
    def kind(self) -> ActionKind:
        return self.action.kind

    @property
    def target(self) -> str:
        return self.action.target

    def detail(self) -> dict[str, Any]:
        """The plan's detail, then what applying found (audit field names)."""
        detail = dict(self.action.detail)
        if self.embeddings_removed is not None:
            detail["removed"] = self.embeddings_removed
        if self.generation is not None:
            detail["generation"] = self.generation
        if self.keys_removed is not None:
            detail["keys_removed"] = self.keys_removed
        return detail

    def to_json(self) -> dict[str, Any]:
        """An item of the audit's ``actions``: ``kind``, ``target``, ``detail`` if any."""
        action = self.action
        out: dict[str, Any] = {"kind": action.kind, "target": action.target}
        if (
            not action.detail
            and self.embeddings_removed is None
            and self.generation is None
            and self.keys_removed is None
        ):
            return out  # the common tag / tombstone / revive
        detail = self.detail()
        if detail:
            out["detail"] = detail
        return out


@dataclass(frozen=True, slots=True)
class Applied:
    """The event's plan ran (or, in a dry run, would run)."""

    actions: tuple[ActionResult, ...] = ()
    keys_removed: int = 0
    """Redis keys removed in total (embeddings dropped plus keys scanned)."""
    generations: Mapping[str, int] = field(default_factory=dict)
    """Bumped namespace (as the audit names it, ``search_results:<collection>``) ->
    its generation after the bump."""
    outcome: ClassVar[Literal["applied"]] = "applied"
    reason: ClassVar[None] = None

    @classmethod
    def planned(cls, actions: tuple[Action, ...]) -> Applied:
        """The plan as is, nothing found (dry runs)."""
        return cls(tuple(ActionResult(a) for a in actions))


@dataclass(frozen=True, slots=True)
class Skipped:
    """Nothing was done: a newer or the same version of the document was applied."""

    outcome: SkipOutcome
    reason: str

    @classmethod
    def duplicate(cls) -> Skipped:
        return cls("skipped_duplicate", "event already applied")

    @classmethod
    def below_mark(cls, version: int, mark: int) -> Skipped:
        return cls(
            "skipped_stale",
            f"doc_version {version} is not above the document's high-water mark {mark}",
        )

    @classmethod
    def overtaken(cls) -> Skipped:
        """The apply script's guard: another worker applied a newer version meanwhile."""
        return cls(
            "skipped_stale", "another worker applied a newer version of the document meanwhile"
        )


@dataclass(frozen=True, slots=True)
class DeadLettered:
    """The record was refused and sent to the dead-letter topic."""

    dlq_reason: str
    """The dead-letter ``reason`` (``schema_violation``, ``key_mismatch``, ...)."""
    detail: str
    outcome: ClassVar[Literal["dead_lettered"]] = "dead_lettered"

    @property
    def reason(self) -> str:
        """The audit's ``reason``: the dead-letter reason and (the start of) its detail."""
        return f"{self.dlq_reason}: {self.detail[:300]}"


@dataclass(frozen=True, slots=True)
class SkippedTombstone:
    """A Debezium tombstone: the null-value record Debezium writes after a delete
    (for log compaction). Nothing to invalidate; never dead-lettered."""

    reason: str
    outcome: ClassVar[Literal["skipped_tombstone"]] = "skipped_tombstone"


ApplyResult = Applied | Skipped
"""What the applier returns per event."""
Result = Applied | Skipped | DeadLettered | SkippedTombstone
"""What an audit event reports."""
