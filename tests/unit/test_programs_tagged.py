"""Tagged reads and stamp checks (cachebus/tagged.py, cachebus/tags.py) on the rerank
score layer, without Redis: the scripted runner states each command and reply.

The rules under test (docs/consistency.md): an entry serves only if it was written
under the current epoch and every tag's stamp exists and is not above the entry's
sequence; a missing stamp is a miss. A write under a ticket is refused if a stamp is
above the ticket (and the sequence is moved past it), if the ticket is too old on the
server clock or from a fenced epoch; missing stamps are re-created at a sequence read
after they were seen missing.
"""

from __future__ import annotations

from typing import Any

from cachebus.codecs import pack_tagged
from cachebus.commands import Call
from cachebus.keys import Tag
from cachebus.rerank_scores import RerankScoreCore
from cachebus.settings import Settings
from cachebus.tags import (
    CREATE_STAMPS_SCRIPT,
    RAISE_SEQUENCE_SCRIPT,
    SEQUENCE_SCRIPT,
    TOMBSTONE,
    Ticket,
    stamps_valid,
)
from devtools.scripted import ANY, ScriptedRunner, Send

SETTINGS = Settings(prefix="t", metrics_flush_interval=0, rerank_scores_ttl=600)
EPOCH = "EPOCH001"
CANDIDATES = [("a", 1), ("b", 3)]
SCORES = [0.5, 0.25]
A, B = Tag.doc("a"), Tag.doc("b")


def core() -> RerankScoreCore:
    return RerankScoreCore(SETTINGS, "rr-model")


def entry(c: RerankScoreCore, seq: int, epoch: str = EPOCH) -> bytes:
    return pack_tagged(seq, sorted([A.token, B.token]), c.encode_value(SCORES), epoch)


def sequence(incr: bool = False) -> Call:
    return SEQUENCE_SCRIPT.call(2, "t:seq", "t:epoch:{t:seq}", "1" if incr else "0", ANY)


def seq_reply(seq: int, now_us: int = 5_000_000, epoch: str = EPOCH) -> list[Any]:
    return [str(seq).encode(), epoch.encode(), str(now_us).encode()]


def read(c: RerankScoreCore, stored: bytes | None, stamps: list[Any]) -> list[Send]:
    """The two round trips of a tagged read: entry + epoch, then the stamps."""
    key = c.key("q", CANDIDATES)
    return [
        Send([Call("MGET", (key, "t:epoch:{t:seq}"))], [[stored, EPOCH.encode()]]),
        Send([Call("MGET", (c.keys.stamp(A), c.keys.stamp(B)))], [stamps]),
    ]


def test_entry_serves_when_every_stamp_is_at_or_below_its_sequence() -> None:
    c = core()
    runner = ScriptedRunner(read(c, entry(c, 100), [b"40", b"100"]))

    lookup = runner.run(c.lookup("q", CANDIDATES))

    runner.assert_done()
    assert lookup.values == [SCORES]
    assert lookup.ticket == Ticket(0, issued_at=lookup.ticket.issued_at)  # vouches for nothing
    assert (c.metrics.hits, c.metrics.misses) == (1, 0)


def test_a_stamp_above_the_entry_makes_it_a_miss_and_a_ticket_is_taken() -> None:
    c = core()
    runner = ScriptedRunner(
        [
            *read(c, entry(c, 100), [b"40", b"101"]),  # b was invalidated at 101
            Send([sequence()], [seq_reply(120)]),
        ]
    )

    lookup = runner.run(c.lookup("q", CANDIDATES))

    runner.assert_done()
    assert lookup.values == [None]
    assert lookup.ticket is not None and lookup.ticket.seq == 120
    assert lookup.ticket.epoch == EPOCH and lookup.ticket.server_time_us == 5_000_000


def test_a_missing_stamp_is_a_miss() -> None:
    """A stamp may have been evicted or lost with the invalidation it recorded."""
    c = core()
    runner = ScriptedRunner(
        [*read(c, entry(c, 100), [b"40", None]), Send([sequence()], [seq_reply(100)])]
    )

    assert runner.run(c.lookup("q", CANDIDATES)).values == [None]
    runner.assert_done()


def test_an_entry_of_another_epoch_is_a_miss_without_reading_its_stamps() -> None:
    c = core()
    key = c.key("q", CANDIDATES)
    runner = ScriptedRunner(
        [
            Send(
                [Call("MGET", (key, "t:epoch:{t:seq}"))],
                [[entry(c, 100, "OLDEPOCH"), EPOCH.encode()]],
            ),
            Send([sequence()], [seq_reply(130)]),  # only the ticket: no tags to check
        ]
    )

    lookup = runner.run(c.lookup("q", CANDIDATES))

    runner.assert_done()
    assert lookup.values == [None] and lookup.ticket is not None and lookup.ticket.seq == 130


def test_stamps_valid_rules() -> None:
    assert stamps_valid({"x": 5, "y": 7}, ["x", "y"], 7)
    assert not stamps_valid({"x": 5, "y": 8}, ["x", "y"], 7)  # invalidated after
    assert not stamps_valid({"x": 5}, ["x", "y"], 7)  # missing stamp
    assert not stamps_valid({"x": TOMBSTONE}, ["x"], 7)  # deleted document
    assert stamps_valid({}, [], 0)  # no tags, nothing to check


def write(c: RerankScoreCore, ticket: Ticket) -> Any:
    return c.store("q", CANDIDATES, SCORES, ticket)


def test_write_under_a_valid_ticket_sets_the_entry_with_its_sequence_and_tags() -> None:
    c = core()
    ticket = Ticket(100, epoch=EPOCH, server_time_us=4_000_000)
    runner = ScriptedRunner(
        [
            Send(
                [sequence(), Call("MGET", (c.keys.stamp(A), c.keys.stamp(B)))],
                [seq_reply(100), [b"90", b"100"]],
            ),
            Send(
                [Call.of("SET", c.key("q", CANDIDATES), entry(c, 100), "EX", 600)],
                [True],
            ),
        ]
    )

    assert runner.run(write(c, ticket)) == 1
    runner.assert_done()
    assert c.metrics.writes == 1


def test_a_stamp_above_the_ticket_refuses_the_write_and_moves_the_sequence_past_it() -> None:
    """Dead on arrival: the value was computed before an invalidation of one of its
    tags. The sequence is raised to that stamp (it only ever moves up)."""
    c = core()
    ticket = Ticket(100, epoch=EPOCH, server_time_us=4_000_000)
    runner = ScriptedRunner(
        [
            Send(
                [sequence(), Call("MGET", (c.keys.stamp(A), c.keys.stamp(B)))],
                [seq_reply(100), [b"150", b"20"]],
            ),
            Send([RAISE_SEQUENCE_SCRIPT.call(1, "t:seq", 150)], [1]),
        ]
    )

    assert runner.run(write(c, ticket)) == 0
    runner.assert_done()
    assert (c.metrics.writes, c.metrics.writes_refused) == (0, 1)


def test_missing_stamps_are_created_at_a_sequence_read_after_they_were_seen_missing() -> None:
    c = core()
    ticket = Ticket(100, epoch=EPOCH, server_time_us=4_000_000)
    runner = ScriptedRunner(
        [
            Send(
                [sequence(), Call("MGET", (c.keys.stamp(A), c.keys.stamp(B)))],
                [seq_reply(100), [None, b"100"]],
            ),
            Send([sequence()], [seq_reply(104)]),  # read after a was seen missing
            Send(
                [
                    CREATE_STAMPS_SCRIPT.call(1, c.keys.stamp(A), 104),
                    Call.of("SET", c.key("q", CANDIDATES), entry(c, 100), "EX", ANY),
                ],
                [1, True],
            ),
        ]
    )

    assert runner.run(write(c, ticket)) == 1
    runner.assert_done()


def test_a_ticket_too_old_on_the_server_clock_or_from_a_fenced_epoch_is_refused() -> None:
    c = core()
    stamps = Call("MGET", (c.keys.stamp(A), c.keys.stamp(B)))
    old = Ticket(100, epoch=EPOCH, server_time_us=1_000_000)
    too_late = 1_000_000 + int(SETTINGS.max_ticket_age * 1e6) + 1
    runner = ScriptedRunner([Send([sequence(), stamps], [seq_reply(100, too_late), [b"1", b"1"]])])
    assert runner.run(write(c, old)) == 0
    runner.assert_done()

    fenced = Ticket(100, epoch=EPOCH, server_time_us=4_000_000)
    runner = ScriptedRunner(
        [Send([sequence(), stamps], [seq_reply(100, epoch="NEWEPOCH"), [b"1", b"1"]])]
    )
    assert runner.run(write(c, fenced)) == 0
    runner.assert_done()
    assert c.metrics.writes_refused == 2


def test_a_ticket_from_a_hit_vouches_for_nothing() -> None:
    """A lookup that hit read no sequence (ticket 0): its writes are refused without a
    round trip."""
    c = core()
    runner = ScriptedRunner([])
    assert runner.run(write(c, Ticket(0))) == 0
    runner.assert_done()
