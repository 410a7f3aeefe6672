"""The answers layer's programs (cachebus/answers.py) without Redis: the scripted
runner states each command and reply. The tag and stamp machinery is the tagged
layers' (tests/unit/test_programs_tagged.py); here: what an answer is tagged with,
that a stamp of any cited document or of the collection retires it, and the codec."""

from __future__ import annotations

from typing import Any

import pytest

from cachebus.answers import Answer, AnswerCore, AnswerRequest
from cachebus.codecs import pack_tagged
from cachebus.commands import Call
from cachebus.errors import CodecError
from cachebus.keys import Tag
from cachebus.settings import Settings
from cachebus.tags import SEQUENCE_SCRIPT
from devtools.scripted import ANY, ScriptedRunner, Send

SETTINGS = Settings(prefix="t", metrics_flush_interval=0)
EPOCH = "EPOCH001"
REQUEST = AnswerRequest.of("q", [("b", 3), ("a", 1)])
TAGS = sorted([Tag.doc("a").token, Tag.doc("b").token, Tag.collection("kb").token])
VALUE = Answer("A", ("a",), {"tokens": 3})


def core() -> AnswerCore:
    return AnswerCore(SETTINGS, "kb", "llm", "v1")


def read(c: AnswerCore, stamps: list[Any]) -> list[Send]:
    stored = pack_tagged(100, TAGS, VALUE.encode(), EPOCH)
    return [
        Send([Call("MGET", (c.key(REQUEST), "t:epoch:{t:seq}"))], [[stored, EPOCH.encode()]]),
        Send([Call("MGET", tuple(c.keys.stamp(Tag(t)) for t in TAGS))], [stamps]),
    ]


def test_tagged_by_every_context_document_and_the_collection_and_served() -> None:
    c = core()
    runner = ScriptedRunner(read(c, [b"10", b"100", b"40"]))
    lookup = runner.run(c.lookup([REQUEST]))
    runner.assert_done()
    assert lookup.values == [VALUE]


@pytest.mark.parametrize("stale", range(len(TAGS)))
def test_any_tag_invalidated_after_the_entry_retires_it(stale: int) -> None:
    """Each of the documents and the collection: one stamp above the entry's sequence
    makes it a miss (and a ticket is taken for the recomputation)."""
    c = core()
    stamps: list[Any] = [b"10", b"20", b"30"]
    stamps[stale] = b"101"
    ticket = SEQUENCE_SCRIPT.call(2, "t:seq", "t:epoch:{t:seq}", "0", ANY)
    runner = ScriptedRunner(
        [*read(c, stamps), Send([ticket], [[b"120", EPOCH.encode(), b"5000000"]])]
    )
    lookup = runner.run(c.lookup([REQUEST]))
    runner.assert_done()
    assert lookup.values == [None] and lookup.ticket is not None and lookup.ticket.seq == 120


def test_codec_round_trip_and_garbage() -> None:
    assert Answer.decode(VALUE.encode()) == VALUE
    assert Answer.decode(Answer("x").encode()) == Answer("x")
    assert Answer("x").encode() == b'{"t":"x"}'
    for bad in (b"\xff", b"[]", b'{"c":[]}', b"{"):
        with pytest.raises(CodecError):
            Answer.decode(bad)
