"""The applier of ``cachebus replay --dry-run``: it decides every outcome exactly as
:class:`~worker.applier.Applier` does (the same code: the high-water marks are read from
Redis with one MGET per batch, and events earlier in the replay count as applied for the
ones behind them), but writes nothing: no invalidation, no witness, no mark.

So a dry run predicts the real replay's outcomes (``applied``, ``skipped_duplicate``,
``skipped_stale``) and the actions of the events it would apply. What it cannot know
is what those actions would find (keys removed, generations reached): they show as
planned, without details.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cachebus.durability import WitnessReport
from cachebus.errors import CacheBusError
from cachebus.invalidation import AsyncInvalidator
from cachebus.runner import AsyncClient
from cachebus.settings import Settings

from .applier import Applier
from .events import DocumentEvent
from .planner import Plan
from .results import Applied, ApplyResult


class _ReadOnlyInvalidator(AsyncInvalidator):
    """Reads (``execute`` of the marks' MGET) pass; every write step is refused."""

    async def confirm(self) -> WitnessReport:
        return WitnessReport()

    async def check_fence(self) -> WitnessReport:
        return WitnessReport()

    async def invalidate(self, **kwargs: Any) -> Any:
        raise CacheBusError("dry run: invalidate() must not be called")

    async def scan_delete(self, *args: Any, **kwargs: Any) -> int:
        raise CacheBusError("dry run: scan_delete() must not be called")


class DryRunApplier(Applier):
    """:class:`Applier` that predicts instead of applying."""

    def __init__(self, client: AsyncClient, settings: Settings) -> None:
        super().__init__(client, settings)
        self.invalidator = _ReadOnlyInvalidator(client, settings=settings)

    async def _apply_round(
        self,
        items: Sequence[tuple[DocumentEvent, Plan]],
        indexes: list[int],
        results: list[ApplyResult | None],
    ) -> None:
        for i in indexes:
            results[i] = Applied.planned(items[i][1].actions)

    async def commit_marks(self, events: Sequence[DocumentEvent]) -> None:
        """Nothing is written: the marks stay pending in memory, where :meth:`apply`
        counts them as raised for the rest of the replay."""
