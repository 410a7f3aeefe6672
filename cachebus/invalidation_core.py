"""The invalidation primitives as programs, with no I/O (:class:`InvalidationCore`): the
programs the sync :class:`~cachebus.invalidation.Invalidator` and the asyncio
:class:`~cachebus.invalidation.AsyncInvalidator` run on their runners.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from .commands import SCAN_COUNT, Call, Program, ScanEachPrimary
from .durability import Durability, FenceMonitor
from .errors import ConfigError
from .keys import KeyScheme, Tag
from .settings import Settings
from .tags import DocumentInvalidation, InvalidationReport, invalidate


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


def bump_namespaces(
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
