"""The three invalidation primitives, shared by the library and the worker:
tag invalidation (stamps), version bump (INCR of a namespace generation) and
pattern-scan invalidation (SCAN MATCH + UNLINK on every primary)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import Any

from redis.exceptions import RedisError

from .commands import Call, Program
from .errors import ConfigError
from .keys import KeyScheme, Tag
from .runner import AsyncClient, AsyncRunner, SyncClient, SyncRunner, translate
from .settings import Settings
from .tags import DocumentInvalidation, InvalidationReport, Mode, invalidate

SCAN_COUNT = 1000


class InvalidationCore:
    """Programs of the primitives, with no I/O."""

    def __init__(self, settings: Settings, *, cluster: bool = False) -> None:
        self.settings = settings
        self.keys = KeyScheme(settings.prefix)
        self.cluster = cluster

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
            stamp_ttl_ms=self.settings.stamp_ttl * 1000,
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

    def unlink_calls(self, keys: Sequence[bytes]) -> list[Call]:
        return [Call("UNLINK", tuple(keys))] if keys else []


def _namespaces(
    core: InvalidationCore, collections: Sequence[str], models: Sequence[tuple[str, str]]
) -> list[str]:
    return [core.keys.search_namespace(c) for c in collections] + [
        core.keys.query_namespace(m, v) for m, v in models
    ]


def _cursor(reply: Any) -> int:
    """RedisCluster answers a node-targeted SCAN with ``{node: cursor}``."""
    if isinstance(reply, dict):
        (reply,) = reply.values()
    return int(reply)


class Invalidator:
    """Invalidation primitives on a sync client. Errors raise (never fail open):
    the worker must retry rather than ack an event whose invalidation failed."""

    def __init__(self, client: SyncClient, *, settings: Settings | None = None) -> None:
        self._runner = SyncRunner(client)
        self.core = InvalidationCore(settings or Settings(), cluster=self._runner.cluster)

    def invalidate(
        self,
        *,
        tags: Iterable[Tag] = (),
        documents: Iterable[DocumentInvalidation] = (),
        bump: Iterable[str] = (),
    ) -> InvalidationReport:
        """Everything at once, in two round trips (what the worker calls per batch)."""
        return self._runner.run(self.core.apply(tags=tags, documents=documents, bump=bump))

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

    def scan_delete(self, pattern: str, *, count: int = SCAN_COUNT) -> int:
        """SCAN MATCH + UNLINK on every primary. Not for the hot path."""
        self.core.check_pattern(pattern)
        removed = 0
        for batch in self._scan(pattern, count):
            removed += int(self._runner.execute(self.core.unlink_calls(batch))[0])
        return removed

    def _scan(self, pattern: str, count: int) -> Iterator[list[bytes]]:
        client = self._runner.client
        try:
            if self._runner.cluster:
                nodes: list[Any] = client.get_primaries()  # type: ignore[union-attr]
            else:
                nodes = [None]
            for node in nodes:
                cursor: int = 0
                while True:
                    if node is None:
                        cursor, keys = client.scan(cursor, match=pattern, count=count)
                    else:
                        cursor, keys = client.scan(
                            cursor, match=pattern, count=count, target_nodes=node
                        )
                    cursor = _cursor(cursor)
                    if keys:
                        yield [k if isinstance(k, bytes) else k.encode() for k in keys]
                    if cursor == 0:
                        break
        except RedisError as exc:
            raise translate(exc) from exc


class AsyncInvalidator:
    """Invalidation primitives on an asyncio client (what the worker uses)."""

    def __init__(self, client: AsyncClient, *, settings: Settings | None = None) -> None:
        self._runner = AsyncRunner(client)
        self.core = InvalidationCore(settings or Settings(), cluster=self._runner.cluster)

    async def invalidate(
        self,
        *,
        tags: Iterable[Tag] = (),
        documents: Iterable[DocumentInvalidation] = (),
        bump: Iterable[str] = (),
    ) -> InvalidationReport:
        return await self._runner.run(self.core.apply(tags=tags, documents=documents, bump=bump))

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

    async def scan_delete(self, pattern: str, *, count: int = SCAN_COUNT) -> int:
        self.core.check_pattern(pattern)
        removed = 0
        async for batch in self._scan(pattern, count):
            removed += int((await self._runner.execute(self.core.unlink_calls(batch)))[0])
        return removed

    async def _scan(self, pattern: str, count: int) -> AsyncIterator[list[bytes]]:
        client = self._runner.client
        try:
            if self._runner.cluster:
                nodes: list[Any] = client.get_primaries()  # type: ignore[union-attr]
            else:
                nodes = [None]
            for node in nodes:
                cursor: int = 0
                while True:
                    if node is None:
                        cursor, keys = await client.scan(cursor, match=pattern, count=count)
                    else:
                        cursor, keys = await client.scan(
                            cursor, match=pattern, count=count, target_nodes=node
                        )
                    cursor = _cursor(cursor)
                    if keys:
                        yield [k if isinstance(k, bytes) else k.encode() for k in keys]
                    if cursor == 0:
                        break
        except RedisError as exc:
            raise translate(exc) from exc
