"""Tickets, tag stamps and the three invalidation primitives' programs.

Race-free tag invalidation (closes the stale-set race):

* One monotonic sequence ``<prefix>:seq`` (INCR).
* A caller takes a :class:`Ticket` (reads the sequence, and the generations
  its keys use) *before* computing a value, and writes the value with that
  ticket's sequence number inside it.
* Invalidating tags INCRs the sequence to ``S`` and raises each tag's stamp to
  ``S`` (never lowers it). A read treats an entry as a miss if any of its tags
  has a stamp above the entry's sequence number. A value computed before the
  invalidation therefore never serves, even if it is written after it.
* Deleting a document sets its stamp to :data:`TOMBSTONE`, above every
  sequence number: no entry tagged with it serves until it is revived.

Document embeddings share their document's hash tag with its stamp, so their
writes are refused atomically (Lua) when the stamp is above the ticket, and an
invalidation raises the stamp and drops the embeddings in one script.

Lost control state costs misses, never stale reads (docs/consistency.md): a
missing stamp counts as invalidated and is re-created only at a sequence read
after it was seen missing; a missing
generation is re-created at a random value (a namespace never used before);
every entry is written under the fence epoch, which a lost sequence, a lost
epoch key or a detected data loss replaces.

The Lua scripts are in :mod:`cachebus.tag_scripts` (re-exported here).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from redis.crc import key_slot

from .commands import Call, Program
from .keys import KeyScheme, Tag
from .tag_scripts import CREATE_STAMPS_SCRIPT as CREATE_STAMPS_SCRIPT
from .tag_scripts import GENERATION_SCRIPT as GENERATION_SCRIPT
from .tag_scripts import RAISE_SEQUENCE_SCRIPT as RAISE_SEQUENCE_SCRIPT
from .tag_scripts import SEQUENCE_SCRIPT as SEQUENCE_SCRIPT
from .tag_scripts import STAMPS_SCRIPT as STAMPS_SCRIPT

TOMBSTONE: Final = 10**18
"""Stamp of a deleted document: above any sequence number (exact in Lua doubles)."""


def new_epoch() -> str:
    """A fresh fence epoch: 8 URL-safe characters (48 random bits)."""
    return secrets.token_urlsafe(6)


def new_generation() -> int:
    """A generation for a namespace whose counter is missing: random in [2^52, 2^53)."""
    return (1 << 52) + secrets.randbelow(1 << 52)


def sequence_call(scheme: KeyScheme, *, incr: bool) -> Call:
    return SEQUENCE_SCRIPT.call(2, scheme.seq(), scheme.epoch(), "1" if incr else "0", new_epoch())


def generation_call(scheme: KeyScheme, namespace: str, *, bump: bool) -> Call:
    return GENERATION_SCRIPT.call(
        1, scheme.generation(namespace), "bump" if bump else "get", new_generation()
    )


Mode = Literal["bump", "tomb", "revive"]


@dataclass(frozen=True, slots=True)
class Ticket:
    """Taken before computing a value; the value is written under it.

    ``seq`` is the invalidation sequence at that moment, ``generations`` the
    namespace generations the value's key uses, ``epoch`` the fence epoch, and
    ``server_time_us`` the Redis server's clock (0: not read; the age is then
    measured on this process's monotonic clock).
    """

    seq: int
    generations: Mapping[str, int] = field(default_factory=dict)
    epoch: str = ""
    server_time_us: int = 0
    issued_at: float = field(default_factory=time.monotonic)

    def age(self) -> float:
        return time.monotonic() - self.issued_at


def as_text(reply: Any) -> str | None:
    if reply is None:
        return None
    return reply.decode("ascii", "replace") if isinstance(reply, bytes) else str(reply)


def ticket_calls(scheme: KeyScheme, namespaces: Sequence[str] = ()) -> list[Call]:
    """Sequence, epoch and server time; each namespace's generation (created if missing)."""
    return [sequence_call(scheme, incr=False)] + [
        generation_call(scheme, ns, bump=False) for ns in namespaces
    ]


def ticket_from(replies: Sequence[Any], namespaces: Sequence[str] = ()) -> Ticket:
    seq, epoch, now = replies[0]
    return Ticket(
        seq=int(seq),
        generations={ns: int(r) for ns, r in zip(namespaces, replies[1:], strict=True)},
        epoch=as_text(epoch) or "",
        server_time_us=int(now),
    )


def take_ticket(scheme: KeyScheme, namespaces: Sequence[str] = ()) -> Program[Ticket]:
    replies = yield ticket_calls(scheme, namespaces)
    return ticket_from(replies, namespaces)


def stamps_valid(stamps: Mapping[str, int | None], tokens: Iterable[str], seq: int) -> bool:
    """An entry computed under ``seq`` serves only if every tag's stamp exists and is
    not above it: a missing stamp may have been lost, so it counts as invalidated."""
    for token in tokens:
        stamp = stamps.get(token)
        if stamp is None or stamp > seq:
            return False
    return True


@dataclass(frozen=True, slots=True)
class WriteCheck:
    """What :func:`prepare_write` found: whether values computed under a ticket may be
    written, and which stamps are missing, to re-create at ``create_at``."""

    allowed: bool
    missing: tuple[str, ...] = ()
    create_at: int = 0

    def create_calls(self, scheme: KeyScheme) -> list[Call]:
        """One call per stamp: stamps of different tags live in different slots."""
        return [
            CREATE_STAMPS_SCRIPT.call(1, scheme.stamp(Tag(t)), self.create_at)
            for t in self.missing
        ]


def prepare_write(
    scheme: KeyScheme, ticket: Ticket, tokens: Sequence[str], max_age: float
) -> Program[WriteCheck]:
    """Before writing values computed under ``ticket`` and tagged with ``tokens``:
    refuse a ticket older than ``max_age`` on the server's clock, or from an epoch
    fenced meanwhile; find stamps that are missing and the sequence, read *after*
    they were seen missing, to re-create them at (docs/consistency.md). A ticket
    with sequence 0 (from a lookup that hit, so read no sequence) vouches for
    nothing: its values are refused."""
    if ticket.seq <= 0:
        return WriteCheck(False)
    calls = [sequence_call(scheme, incr=False)]
    if tokens:
        calls.append(Call("MGET", tuple(scheme.stamp(Tag(t)) for t in tokens)))
    replies = yield calls
    _, epoch, now = replies[0]
    age = (int(now) - ticket.server_time_us) / 1e6 if ticket.server_time_us else ticket.age()
    if age > max_age or (ticket.epoch and as_text(epoch) != ticket.epoch):
        return WriteCheck(False)
    stamps = list(replies[1]) if tokens else []
    above = [int(r) for r in stamps if r is not None and ticket.seq < int(r) < TOMBSTONE]
    if above:
        # Dead on arrival: a stamp is above the ticket. Usually an invalidation after
        # the ticket; after a lost sequence restarted below old stamps (a clock that
        # stepped back), also every later ticket until the sequence passes them. Move
        # the sequence past the highest such stamp (always safe: it only moves up).
        yield [RAISE_SEQUENCE_SCRIPT.call(1, scheme.seq(), max(above))]
        return WriteCheck(False)
    missing = [t for t, r in zip(tokens, stamps, strict=True) if r is None]
    if not missing:
        return WriteCheck(True)
    (after,) = yield [sequence_call(scheme, incr=False)]
    return WriteCheck(True, tuple(missing), int(after[0]))


@dataclass(frozen=True, slots=True)
class DocumentInvalidation:
    """What to do to one document's stamp and embeddings.

    ``drop``: ``"all"`` embeddings, ``"none"``, the chunk ids in ``chunks``
    (``"fields"``), or ``"changed"``: every chunk except those listed in
    ``chunks`` as flattened (chunk_id, content_hash) pairs whose stored
    content hash is equal (unchanged chunks survive an update).
    ``mode``: ``"bump"`` (updated), ``"tomb"`` (deleted) or ``"revive"`` (created
    again after a delete).
    """

    doc_id: str
    mode: Mode = "bump"
    drop: Literal["all", "none", "fields", "changed"] = "all"
    chunks: tuple[str, ...] = ()
    if_below: int = 0
    """Apply only while the document's high-water mark is below this version (0: always):
    the worker's guard against another worker applying a newer event meanwhile."""


@dataclass(slots=True)
class InvalidationReport:
    """What one invalidation did: the sequence it used, stamps raised, document
    embedding fields removed, scan keys removed and generations bumped."""

    seq: int = 0
    stamps: dict[str, int] = field(default_factory=dict)
    embeddings_removed: dict[str, int] = field(default_factory=dict)
    skipped: set[str] = field(default_factory=set)
    """Documents whose guard tripped (their high-water mark was already reached)."""
    keys_removed: int = 0
    generations: dict[str, int] = field(default_factory=dict)

    @property
    def removed_total(self) -> int:
        return self.keys_removed + sum(self.embeddings_removed.values())


def invalidate(
    scheme: KeyScheme,
    *,
    tags: Iterable[Tag] = (),
    documents: Iterable[DocumentInvalidation] = (),
    bump: Iterable[str] = (),
    by_slot: bool = False,
) -> Program[InvalidationReport]:
    """Tag stamps, document invalidations and generation bumps in two round trips
    and, per round trip, one script call (per hash slot when ``by_slot``, as a
    Redis Cluster needs).

    Documents' own tags (``doc:<id>``) are handled by ``documents``; ``tags``
    are other tags (collections, user tags), always in ``bump`` mode.
    """
    tag_list = list(dict.fromkeys(tags))
    doc_list = list(documents)
    namespaces = list(dict.fromkeys(bump))
    report = InvalidationReport()
    first = [generation_call(scheme, ns, bump=True) for ns in namespaces]
    need_seq = bool(tag_list or doc_list)
    if need_seq:
        first.insert(0, sequence_call(scheme, incr=True))
    if not first:
        return report
    replies = yield first
    if need_seq:
        report.seq = int(replies[0][0])
        replies = replies[1:]
    report.generations = {ns: int(r) for ns, r in zip(namespaces, replies, strict=True)}
    if not need_seq:
        return report
    # Entries: (label, stamp key, hash key, mark key, guard, mode, drop, args). A tag
    # has no hash or mark: its stamp key stands in (same slot), with nothing to drop.
    entries: list[tuple[str, str, str, str, int, str, str, tuple[str, ...]]] = []
    for tag in tag_list:
        key = scheme.stamp(tag)
        entries.append((str(tag), key, key, key, 0, "bump", "none", ()))
    for doc in doc_list:
        entries.append(
            (
                doc.doc_id,
                scheme.stamp(Tag.doc(doc.doc_id)),
                scheme.document_embeddings(doc.doc_id),
                scheme.hwm(doc.doc_id),
                doc.if_below,
                doc.mode,
                doc.drop,
                doc.chunks,
            )
        )
    groups: dict[int, list[int]] = {}
    for i, entry in enumerate(entries):
        groups.setdefault(key_slot(entry[1].encode()) if by_slot else 0, []).append(i)
    calls: list[Call] = []
    for indexes in groups.values():
        keys: list[str] = []
        args: list[Any] = [report.seq, TOMBSTONE]
        for i in indexes:
            _, stamp_key, hash_key, mark_key, guard, mode, drop, extra = entries[i]
            keys += [stamp_key, hash_key, mark_key]
            args += [guard, mode, drop, len(extra), *extra]
        calls.append(STAMPS_SCRIPT.call(len(keys), *keys, *args))
    results = yield calls
    for indexes, flat in zip(groups.values(), results, strict=True):
        for n, i in enumerate(indexes):
            raw_stamp, removed = flat[2 * n], int(flat[2 * n + 1])
            if raw_stamp == b"skipped":
                report.skipped.add(entries[i][0])
                continue
            stamp = int(raw_stamp)
            if i < len(tag_list):
                report.stamps[entries[i][0]] = stamp
            else:
                doc_id = entries[i][0]
                report.stamps[f"doc:{doc_id}"] = stamp  # str(Tag.doc(doc_id))
                report.embeddings_removed[doc_id] = (
                    report.embeddings_removed.get(doc_id, 0) + removed
                )
    return report
