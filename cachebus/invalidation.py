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
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from .changes import ChangeReport, aapply_change, apply_change, change_event
from .commands import SCAN_COUNT, Call, Program, ScanEachPrimary
from .durability import Durability, FenceEvent, FenceMonitor, WitnessReport
from .errors import CacheBusError, ConfigError, RedisFullError
from .keys import KeyScheme, Tag
from .rules import Rules, load_rules
from .runner import AsyncClient, AsyncRunner, SyncClient, SyncRunner
from .settings import Settings
from .tags import DocumentInvalidation, InvalidationReport, Mode, invalidate

T = TypeVar("T")
log = logging.getLogger("cachebus.invalidation")


class InvalidationCore:
    """Programs of the primitives, with no I/O."""

    def __init__(
        self,
        settings: Settings,
        *,
        cluster: bool = False,
        fence: FenceMonitor | None = None,
        describe: Callable[[str], str] | None = None,
    ) -> None:
        self.settings = settings
        self.keys = KeyScheme(settings.prefix)
        self.cluster = cluster
        self.fence = fence or FenceMonitor(settings.prefix)
        """Witnesses seen by this invalidator (pass a shared one to pool detection)."""
        if self.fence.keys.prefix != self.keys.prefix:
            raise ConfigError(
                f"FenceMonitor of prefix {self.fence.keys.prefix!r} given to an invalidator "
                f"of prefix {self.keys.prefix!r}"
            )
        self.durability = Durability(settings, self.fence, describe=describe)

    def apply(
        self,
        *,
        tags: Iterable[Tag] = (),
        documents: Iterable[DocumentInvalidation] = (),
        bump: Iterable[str] = (),
    ) -> Program[InvalidationReport]:
        return invalidate(
            self.keys,
            tags=tags,
            documents=documents,
            bump=bump,
            by_slot=self.cluster,
        )

    def check_pattern(self, pattern: str) -> str:
        """Scans stay inside the prefix: that is what the ACL fences, too."""
        if not pattern.startswith(f"{self.keys.prefix}:") or pattern == f"{self.keys.prefix}:*":
            raise ConfigError(
                f"scan pattern {pattern!r} must start with '{self.keys.prefix}:' and not match "
                "the whole prefix; build it with KeyScheme.pattern()"
            )
        return pattern

    def unlink_calls(self, keys: Sequence[bytes | str]) -> list[Call]:
        return [Call("UNLINK", tuple(keys))] if keys else []

    def scan_delete(self, pattern: str, count: int = SCAN_COUNT) -> Program[int]:
        """Pattern invalidation: SCAN MATCH ``pattern`` COUNT ``count`` on every
        primary (:class:`~cachebus.commands.ScanEachPrimary`, never KEYS), each
        round's keys unlinked in one step (split per key on a cluster). Returns the
        keys removed. The pattern must stay inside the prefix (:meth:`check_pattern`)."""
        return _scan_delete(self, self.check_pattern(pattern), count)

    def control_keys(
        self,
        tags: Sequence[Tag] = (),
        documents: Sequence[DocumentInvalidation] = (),
        bump: Sequence[str] = (),
    ) -> list[str]:
        """The control keys an invalidation raises: tag stamps, the documents' stamps
        and chunk-embedding hashes, the bumped namespaces' generations. Unlinking
        them is the invalidation's fallback when Redis is full: a missing stamp or
        generation reads as invalidated (and UNLINK is allowed under OOM).

        With stamps, the sequence goes too. A stamp is re-created at the sequence read
        after it was seen missing, which is safe only because every invalidation
        raises the sequence before its stamps; this one could not. A missing sequence
        is re-created together with a new epoch before any ticket or stamp can use it
        (the sequence script), so every entry computed before becomes a miss once
        memory frees, before a stamp could be re-created below them."""
        keys = [self.keys.stamp(t) for t in tags]
        if tags or documents:
            keys.append(self.keys.seq())
        for doc in documents:
            keys += [
                self.keys.stamp(Tag.doc(doc.doc_id)),
                self.keys.document_embeddings(doc.doc_id),
            ]
        keys += [self.keys.generation(ns) for ns in bump]
        return list(dict.fromkeys(keys))

    def full_fallback(self, keys: Sequence[str]) -> list[Call]:
        """UNLINK of ``keys`` plus the epoch if a fence's write was refused."""
        return self.unlink_calls([*keys, *self.durability.pending_fence_keys()])


def _namespaces(
    core: InvalidationCore, collections: Sequence[str], models: Sequence[tuple[str, str]]
) -> list[str]:
    return [core.keys.search_namespace(c) for c in collections] + [
        core.keys.query_namespace(m, v) for m, v in models
    ]


def _scan_delete(core: InvalidationCore, pattern: str, count: int) -> Program[int]:
    scan = ScanEachPrimary(pattern, count)
    removed = 0
    while not scan.done:
        batches = yield from scan.round()
        keys = [key for batch in batches.values() for key in batch]
        if keys:
            (unlinked,) = yield core.unlink_calls(keys)
            removed += int(unlinked)
    return removed


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
            "created", doc_id, collection, version=version, tags=tags, chunks=chunks
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
            "updated", doc_id, collection, version=version, tags=tags, chunks=chunks
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
        event = change_event("deleted", doc_id, collection, version=version, tags=tags)
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
        return self.invalidate(bump=_namespaces(self.core, collections, models)).generations

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
            "created", doc_id, collection, version=version, tags=tags, chunks=chunks
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
            "updated", doc_id, collection, version=version, tags=tags, chunks=chunks
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
        event = change_event("deleted", doc_id, collection, version=version, tags=tags)
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
        report = await self.invalidate(bump=_namespaces(self.core, collections, models))
        return report.generations

    async def scan_delete(
        self, pattern: str, *, count: int = SCAN_COUNT, confirm: bool = True
    ) -> int:
        removed = await self._runner.run(self.core.scan_delete(pattern, count))
        if confirm:
            await self.confirm()
        return removed
