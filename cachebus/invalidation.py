"""The three invalidation primitives, shared by the library and the worker:
tag invalidation (stamps), version bump (INCR of a namespace generation) and
pattern-scan invalidation (SCAN MATCH + UNLINK on every primary).

Every primitive ends with the witness step of :mod:`cachebus.durability` (raise
the witness on every primary, WAIT / WAITAOF if the settings ask, fence if a
primary lost writes). When Redis is full (``noeviction`` at maxmemory) an
invalidation falls back to unlinking the control keys it would have raised (a
missing stamp or generation reads as invalidated) and raises
:class:`~cachebus.errors.RedisFullError`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from . import tracing
from .changes import ChangeReport, aapply_change, apply_change, change_event
from .commands import SCAN_COUNT, Call, Program
from .durability import FenceEvent, FenceMonitor, WitnessReport
from .errors import CacheBusError, RedisFullError
from .events import EventType
from .invalidation_core import InvalidationCore as InvalidationCore
from .invalidation_core import bump_namespaces
from .keys import Tag
from .rules import Rules, load_rules
from .runner import AsyncClient, AsyncRunner, SyncClient, SyncRunner
from .settings import Settings
from .tags import DocumentInvalidation, InvalidationReport, Mode

T = TypeVar("T")
log = logging.getLogger("cachebus.invalidation")


class Invalidator:
    """Invalidation primitives on a sync client. Errors raise (never fail open):
    the worker must retry rather than ack an event whose invalidation failed.

    ``fence``: the :class:`~cachebus.durability.FenceMonitor` that remembers the
    witnesses this invalidator saw (default: its own; pass
    ``FenceMonitor.shared(prefix)`` to share one per process)."""

    def __init__(
        self,
        client: SyncClient,
        *,
        settings: Settings | None = None,
        fence: FenceMonitor | None = None,
        rules: Rules | None = None,
    ) -> None:
        self._runner = SyncRunner(client)
        self.core = InvalidationCore(
            settings or Settings(),
            cluster=self._runner.cluster,
            fence=fence,
            describe=self._runner.primary_address,
        )
        self._rules = rules

    def primary_address(self, node_tag: str) -> str:
        """``host:port`` of the primary that owns ``node_tag``'s slot (see
        :class:`~cachebus.commands.EachPrimary`)."""
        return self._runner.primary_address(node_tag)

    @property
    def rules(self) -> Rules:
        """The worker's rules, for the ``document_*`` calls: as given, else
        ``settings.rules_file`` (``CACHEBUS_RULES_FILE``) over the shipped defaults,
        read at the first call."""
        if self._rules is None:
            self._rules = load_rules(self.core.settings.rules_file or None)
        return self._rules

    def document_created(
        self,
        doc_id: str,
        collection: str,
        *,
        version: int | None = None,
        tags: Iterable[str] = (),
        chunks: Sequence[tuple[str, str]] | None = None,
    ) -> ChangeReport:
        """``doc_id`` was created in ``collection``: apply the worker's plan for a
        ``created`` event (default rules: bump the collection's search results; lift
        the tombstone of an earlier delete). ``version``: the document's version if you
        have one; the document's part is then skipped when the worker already applied
        that or a newer version (no high-water mark is written). ``chunks``:
        (chunk_id, content_hash) pairs. See :mod:`cachebus.changes`."""
        event = change_event(
            EventType.CREATED, doc_id, collection, version=version, tags=tags, chunks=chunks
        )
        return apply_change(self, event)

    def document_updated(
        self,
        doc_id: str,
        collection: str,
        *,
        version: int | None = None,
        tags: Iterable[str] = (),
        chunks: Sequence[tuple[str, str]] | None = None,
    ) -> ChangeReport:
        """``doc_id`` of ``collection`` changed: apply the worker's plan for an
        ``updated`` event (default rules: retire everything computed from it; drop the
        embeddings of chunks whose content hash is not the one in ``chunks``, all of
        them without ``chunks``; invalidate its ``tags``; bump the collection's search
        results, as the new text may now match cached queries)."""
        event = change_event(
            EventType.UPDATED, doc_id, collection, version=version, tags=tags, chunks=chunks
        )
        return apply_change(self, event)

    def document_deleted(
        self,
        doc_id: str,
        collection: str,
        *,
        version: int | None = None,
        tags: Iterable[str] = (),
    ) -> ChangeReport:
        """``doc_id`` was deleted: apply the worker's plan for a ``deleted`` event
        (default rules: tombstone it, which also refuses later writes of values
        computed from it; drop its embeddings; invalidate its ``tags``)."""
        event = change_event(EventType.DELETED, doc_id, collection, version=version, tags=tags)
        return apply_change(self, event)

    @property
    def cluster(self) -> bool:
        return self._runner.cluster

    @property
    def fence(self) -> FenceMonitor:
        return self.core.fence

    def run(self, program: Program[T]) -> T:
        """Run a :mod:`cachebus.commands` program on this invalidator's client."""
        return self._runner.run(program)

    def execute(self, calls: list[Call]) -> list[Any]:
        """Send commands in one round trip (per node); Redis errors raise as cachebus errors."""
        return self._runner.execute(calls)

    def confirm(self) -> WitnessReport:
        """The witness step after invalidations made with ``confirm=False``: raise the
        witness on every primary, WAIT / WAITAOF as the settings ask (a shortfall
        raises DurabilityError), fence if a primary lost writes."""
        try:
            return self._runner.run(self.core.durability.confirm())
        except RedisFullError:
            self._on_full([])
            raise

    def check_fence(self) -> WitnessReport:
        """Read every primary's witness (no write unless a fence is due) and fence if
        one is below what this invalidator saw. Cheap: one GET per primary."""
        try:
            return self._runner.run(self.core.durability.check())
        except RedisFullError:
            self._on_full([])
            raise

    def _on_full(self, keys: Sequence[str]) -> list[FenceEvent]:
        calls = self.core.full_fallback(keys)
        if not calls:
            return []
        try:
            self._runner.execute(calls)
        except CacheBusError as exc:
            log.warning("Redis is full and unlinking the control keys failed too: %s", exc)
            return []
        return self.core.durability.fenced_by_unlink()

    def invalidate(
        self,
        *,
        tags: Iterable[Tag] = (),
        documents: Iterable[DocumentInvalidation] = (),
        bump: Iterable[str] = (),
        confirm: bool = True,
    ) -> InvalidationReport:
        """Everything at once, in two round trips, then the witness step (unless
        ``confirm=False``: the caller runs :meth:`confirm` after a batch).

        Redis full: unlinks the control keys involved, then raises RedisFullError."""
        tag_list, doc_list, ns_list = list(tags), list(documents), list(bump)
        # A span cachebus.invalidator.invalidate while cachebus.tracing.instrument() is on.
        with tracing.layer_span("invalidator", "invalidate"):
            try:
                report = self._runner.run(
                    self.core.apply(tags=tag_list, documents=doc_list, bump=ns_list)
                )
                if confirm:
                    self._runner.run(self.core.durability.confirm())
            except RedisFullError:
                self._on_full(self.core.control_keys(tag_list, doc_list, ns_list))
                raise
        return report

    def invalidate_tags(self, tags: Iterable[Tag]) -> InvalidationReport:
        return self.invalidate(tags=tags)

    def invalidate_documents(
        self, doc_ids: Iterable[str], *, deleted: bool = False
    ) -> InvalidationReport:
        """Retire everything computed from these documents (tombstone if deleted)."""
        mode: Mode = "tomb" if deleted else "bump"
        return self.invalidate(documents=[DocumentInvalidation(d, mode, "all") for d in doc_ids])

    def bump(
        self, *, collections: Sequence[str] = (), models: Sequence[tuple[str, str]] = ()
    ) -> dict[str, int]:
        """Version bump: new generation for collections' search results and/or
        (model, version) query embeddings. Returns the new generations."""
        return self.invalidate(bump=bump_namespaces(self.core, collections, models)).generations

    def scan_delete(self, pattern: str, *, count: int = SCAN_COUNT, confirm: bool = True) -> int:
        """SCAN MATCH + UNLINK on every primary, then the witness step (unless
        ``confirm=False``). Not for the hot path."""
        removed = self._runner.run(self.core.scan_delete(pattern, count))
        if confirm:
            self.confirm()
        return removed


class AsyncInvalidator:
    """Invalidation primitives on an asyncio client (what the worker uses); see
    :class:`Invalidator`."""

    def __init__(
        self,
        client: AsyncClient,
        *,
        settings: Settings | None = None,
        fence: FenceMonitor | None = None,
        rules: Rules | None = None,
    ) -> None:
        self._runner = AsyncRunner(client)
        self.core = InvalidationCore(
            settings or Settings(),
            cluster=self._runner.cluster,
            fence=fence,
            describe=self._runner.primary_address,
        )
        self._rules = rules

    @property
    def rules(self) -> Rules:
        """See :attr:`Invalidator.rules`."""
        if self._rules is None:
            self._rules = load_rules(self.core.settings.rules_file or None)
        return self._rules

    async def document_created(
        self,
        doc_id: str,
        collection: str,
        *,
        version: int | None = None,
        tags: Iterable[str] = (),
        chunks: Sequence[tuple[str, str]] | None = None,
    ) -> ChangeReport:
        """See :meth:`Invalidator.document_created`."""
        event = change_event(
            EventType.CREATED, doc_id, collection, version=version, tags=tags, chunks=chunks
        )
        return await aapply_change(self, event)

    async def document_updated(
        self,
        doc_id: str,
        collection: str,
        *,
        version: int | None = None,
        tags: Iterable[str] = (),
        chunks: Sequence[tuple[str, str]] | None = None,
    ) -> ChangeReport:
        """See :meth:`Invalidator.document_updated`."""
        event = change_event(
            EventType.UPDATED, doc_id, collection, version=version, tags=tags, chunks=chunks
        )
        return await aapply_change(self, event)

    async def document_deleted(
        self,
        doc_id: str,
        collection: str,
        *,
        version: int | None = None,
        tags: Iterable[str] = (),
    ) -> ChangeReport:
        """See :meth:`Invalidator.document_deleted`."""
        event = change_event(EventType.DELETED, doc_id, collection, version=version, tags=tags)
        return await aapply_change(self, event)

    @property
    def cluster(self) -> bool:
        return self._runner.cluster

    @property
    def fence(self) -> FenceMonitor:
        return self.core.fence

    async def run(self, program: Program[T]) -> T:
        """Run a :mod:`cachebus.commands` program on this invalidator's client."""
        return await self._runner.run(program)

    async def execute(self, calls: list[Call]) -> list[Any]:
        """Send commands in one round trip (per node); Redis errors raise as cachebus errors."""
        return await self._runner.execute(calls)

    async def confirm(self) -> WitnessReport:
        """See :meth:`Invalidator.confirm`."""
        try:
            return await self._runner.run(self.core.durability.confirm())
        except RedisFullError:
            await self._on_full([])
            raise

    async def check_fence(self) -> WitnessReport:
        """See :meth:`Invalidator.check_fence`."""
        try:
            return await self._runner.run(self.core.durability.check())
        except RedisFullError:
            await self._on_full([])
            raise

    async def _on_full(self, keys: Sequence[str]) -> list[FenceEvent]:
        calls = self.core.full_fallback(keys)
        if not calls:
            return []
        try:
            await self._runner.execute(calls)
        except CacheBusError as exc:
            log.warning("Redis is full and unlinking the control keys failed too: %s", exc)
            return []
        return self.core.durability.fenced_by_unlink()

    async def invalidate(
        self,
        *,
        tags: Iterable[Tag] = (),
        documents: Iterable[DocumentInvalidation] = (),
        bump: Iterable[str] = (),
        confirm: bool = True,
    ) -> InvalidationReport:
        """See :meth:`Invalidator.invalidate`."""
        tag_list, doc_list, ns_list = list(tags), list(documents), list(bump)
        with tracing.layer_span("invalidator", "invalidate"):
            try:
                report = await self._runner.run(
                    self.core.apply(tags=tag_list, documents=doc_list, bump=ns_list)
                )
                if confirm:
                    await self._runner.run(self.core.durability.confirm())
            except RedisFullError:
                await self._on_full(self.core.control_keys(tag_list, doc_list, ns_list))
                raise
        return report

    async def invalidate_tags(self, tags: Iterable[Tag]) -> InvalidationReport:
        return await self.invalidate(tags=tags)

    async def invalidate_documents(
        self, doc_ids: Iterable[str], *, deleted: bool = False
    ) -> InvalidationReport:
        mode: Mode = "tomb" if deleted else "bump"
        return await self.invalidate(
            documents=[DocumentInvalidation(d, mode, "all") for d in doc_ids]
        )

    async def bump(
        self, *, collections: Sequence[str] = (), models: Sequence[tuple[str, str]] = ()
    ) -> dict[str, int]:
        report = await self.invalidate(bump=bump_namespaces(self.core, collections, models))
        return report.generations

    async def scan_delete(
        self, pattern: str, *, count: int = SCAN_COUNT, confirm: bool = True
    ) -> int:
        removed = await self._runner.run(self.core.scan_delete(pattern, count))
        if confirm:
            await self.confirm()
        return removed
