"""Namespace generations (version bumps) in the search results and query embedding
programs, without Redis: the scripted runner states each command and reply.

A lookup reads the generation in the round trip it already makes. A missing
generation (lost, evicted) or epoch makes every entry a miss, even one still stored
under the generation seen before; the ticket's script re-creates it at a value never
used, and new values are written under that. A bumped generation costs one more read.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cachebus.codecs import pack_tagged
from cachebus.commands import Call
from cachebus.keys import Tag
from cachebus.query_embeddings import QueryEmbeddingCore
from cachebus.search_results import SearchHit, SearchRequest, SearchResultsCore
from cachebus.settings import Settings
from cachebus.tags import GENERATION_SCRIPT, SEQUENCE_SCRIPT, Ticket
from devtools.scripted import ANY, ScriptedRunner, Send

SETTINGS = Settings(prefix="t", metrics_flush_interval=0, search_results_ttl=300)
EPOCH = "EPOCH001"
EPOCH_KEY = "t:epoch:{t:seq}"
REQUEST = SearchRequest("what is rag", {"lang": "en"}, 5)
HITS = [SearchHit("d1", 0.9), SearchHit("d2", 0.7)]
TAGS = sorted([Tag.collection("kb").token, Tag.doc("d1").token, Tag.doc("d2").token])


def seq_reply(seq: int) -> list[bytes]:
    return [str(seq).encode(), EPOCH.encode(), b"5000000"]


def ticket_calls(gen_key: str) -> list[Call]:
    return [
        SEQUENCE_SCRIPT.call(2, "t:seq", EPOCH_KEY, "0", ANY),
        GENERATION_SCRIPT.call(1, gen_key, "get", ANY),
    ]


def sr_key(c: SearchResultsCore, generation: int) -> str:
    return c.keys.search_results("kb", generation, REQUEST.digest())


def stored(c: SearchResultsCore, seq: int) -> bytes:
    return pack_tagged(seq, TAGS, c.encode_value(HITS), EPOCH)


def stamps_call(c: SearchResultsCore) -> Call:
    return Call("MGET", tuple(c.keys.stamp(Tag(t)) for t in TAGS))


def test_search_results_first_lookup_learns_a_bumped_generation_in_one_more_read() -> None:
    c = SearchResultsCore(SETTINGS, "kb")
    gen_key = c.keys.generation(c.namespace)
    runner = ScriptedRunner(
        [
            # The generation and the entry under the generation seen last (0).
            Send(
                [Call.of("GET", gen_key), Call("MGET", (sr_key(c, 0), EPOCH_KEY))],
                [b"5", [None, EPOCH.encode()]],
            ),
            Send(ticket_calls(gen_key), [seq_reply(100), b"5"]),  # a miss takes a ticket
            # Generation 5 is not 0: read again under it (a hit).
            Send([Call("MGET", (sr_key(c, 5), EPOCH_KEY))], [[stored(c, 90), EPOCH.encode()]]),
            Send([stamps_call(c)], [[b"1", b"2", b"3"]]),
        ]
    )

    lookup = runner.run(c.lookup([REQUEST]))

    runner.assert_done()
    assert lookup.values == [HITS]
    assert lookup.ticket is not None and lookup.ticket.seq == 0  # a hit vouches for nothing
    assert lookup.ticket.generations == {c.namespace: 5}


def test_search_results_missing_generation_is_a_miss_and_the_write_uses_the_new_one() -> None:
    c = SearchResultsCore(SETTINGS, "kb")
    gen_key = c.keys.generation(c.namespace)
    learn = ScriptedRunner(
        [
            Send(
                [Call.of("GET", gen_key), Call("MGET", (sr_key(c, 0), EPOCH_KEY))],
                [b"5", [None, EPOCH.encode()]],
            ),
            Send(ticket_calls(gen_key), [seq_reply(100), b"5"]),
            Send([Call("MGET", (sr_key(c, 5), EPOCH_KEY))], [[stored(c, 90), EPOCH.encode()]]),
            Send([stamps_call(c)], [[b"1", b"2", b"3"]]),
        ]
    )
    assert learn.run(c.lookup([REQUEST])).values == [HITS]  # the core now expects g5

    new_gen = 2**52 + 77
    runner = ScriptedRunner(
        [
            # The generation key is gone; the g5 entry is still there, stamps fine...
            Send(
                [Call.of("GET", gen_key), Call("MGET", (sr_key(c, 5), EPOCH_KEY))],
                [None, [stored(c, 90), EPOCH.encode()]],
            ),
            Send([stamps_call(c)], [[b"1", b"2", b"3"]]),
            # ...but it must not serve: the ticket re-creates the generation.
            Send(ticket_calls(gen_key), [seq_reply(120), str(new_gen).encode()]),
        ]
    )

    lookup = runner.run(c.lookup([REQUEST]))

    runner.assert_done()
    assert lookup.values == [None]
    assert lookup.ticket is not None and lookup.ticket.seq == 120
    assert lookup.ticket.generations == {c.namespace: new_gen}

    # The value computed now is written under the new generation's key.
    write = ScriptedRunner(
        [
            Send(
                [SEQUENCE_SCRIPT.call(2, "t:seq", EPOCH_KEY, "0", ANY), stamps_call(c)],
                [seq_reply(120), [b"1", b"2", b"3"]],
            ),
            Send([Call.of("SET", sr_key(c, new_gen), ANY, "EX", 300)], [True]),
        ]
    )
    assert write.run(c.store([REQUEST], [HITS], lookup.ticket)) == 1
    write.assert_done()


def vector(*values: float) -> Any:
    return np.asarray(values, dtype=np.float32)


def test_query_embeddings_missing_epoch_is_a_miss_even_with_the_entry_present() -> None:
    c = QueryEmbeddingCore(SETTINGS, "m", "1")
    gen_key = c.keys.generation(c.namespace)
    key = c.keys.query_embeddings("m", "1", 3, ["q"], EPOCH)[0]
    guess = c.keys.query_embeddings("m", "1", 0, ["q"], "-")[0]
    payload = c.codec.encode_many([vector(1, 2)])[0]
    learn = ScriptedRunner(
        [
            Send(
                [Call("MGET", (gen_key, EPOCH_KEY, guess))],
                [[b"3", EPOCH.encode(), None]],
            ),
            Send([Call("MGET", (key,))], [[payload]]),
        ]
    )
    assert [v.tolist() for v in learn.run(c.lookup(["q"])).values] == [[1, 2]]
    learn.assert_done()

    runner = ScriptedRunner(
        [
            Send([Call("MGET", (gen_key, EPOCH_KEY, key))], [[b"3", None, payload]]),
            Send(ticket_calls(gen_key), [[b"200", b"FRESHEPO", b"1"], b"3"]),
        ]
    )

    lookup = runner.run(c.lookup(["q"]))

    runner.assert_done()
    assert lookup.values == [None]
    assert lookup.ticket is not None and lookup.ticket.epoch == "FRESHEPO"
    # The next lookup reads under the new epoch in one round trip.
    fresh_key = c.keys.query_embeddings("m", "1", 3, ["q"], "FRESHEPO")[0]
    again = ScriptedRunner(
        [
            Send(
                [Call("MGET", (gen_key, EPOCH_KEY, fresh_key))],
                [[b"3", b"FRESHEPO", None]],
            )
        ]
    )
    assert again.run(c.lookup(["q"])).values == [None]
    again.assert_done()


def test_query_embeddings_write_under_a_ticket_older_than_max_age_is_refused() -> None:
    c = QueryEmbeddingCore(SETTINGS, "m", "1")
    old = Ticket(0, {c.namespace: 3}, EPOCH, issued_at=-1e9)  # monotonic clock, long ago
    runner = ScriptedRunner([])
    assert runner.run(c.store(["q"], [vector(1)], old)) == 0
    runner.assert_done()
    assert c.metrics.writes_refused == 1
