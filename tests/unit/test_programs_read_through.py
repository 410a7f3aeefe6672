"""The read-through program with leases (cachebus/lookup.py), on the query embedding
layer, without Redis: a scripted runner states every command the program sends and
the replies it gets (devtools.scripted), and the tests check what it sends and returns.

Herd control as implemented: a miss takes a lease (SET NX PX) per key; the leaseholder
calls the provider once and writes under the ticket of its lookup, then releases its
leases with a compare-and-delete script; a caller that found the lease taken polls the
cache until ``lease_wait_ms`` and only then computes itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from cachebus.commands import Call
from cachebus.errors import CacheUnavailableError
from cachebus.lookup import RELEASE_SCRIPT
from cachebus.query_embeddings import QueryEmbeddingCore
from cachebus.settings import Settings
from cachebus.tags import GENERATION_SCRIPT, SEQUENCE_SCRIPT
from devtools.scripted import ANY, Invoked, ScriptedRunner, Send, Slept

SETTINGS = Settings(prefix="t", metrics_flush_interval=0)
GEN, EPOCH = 7, "EPOCH001"


def core(settings: Settings = SETTINGS) -> QueryEmbeddingCore:
    return QueryEmbeddingCore(settings, "m", "1")


def entry_key(c: QueryEmbeddingCore, text: str, gen: int = GEN, epoch: str = EPOCH) -> str:
    return c.keys.query_embeddings("m", "1", gen, [text], epoch)[0]


def first_lookup(c: QueryEmbeddingCore, texts: list[str], replies: list[Any]) -> list[Send]:
    """A fresh core guesses generation 0 and no epoch: one MGET tells it generation
    ``GEN`` and epoch ``EPOCH``, a second reads the entries under them."""
    return [
        Send(
            [
                Call(
                    "MGET",
                    (
                        c.keys.generation(c.namespace),
                        c.keys.epoch(),
                        *c.keys.query_embeddings("m", "1", 0, texts, "-"),
                    ),
                )
            ],
            [[str(GEN).encode(), EPOCH.encode(), *([None] * len(texts))]],
        ),
        Send([Call("MGET", tuple(entry_key(c, t) for t in texts))], [replies]),
    ]


def vector(*values: float) -> Any:
    return np.asarray(values, dtype=np.float32)


def test_all_hits_send_no_lease_and_call_no_provider() -> None:
    c = core()
    stored = c.codec.encode_many([vector(1, 2), vector(3, 4)])
    runner = ScriptedRunner(first_lookup(c, ["a", "b"], list(stored)))

    def provider(texts: list[str]) -> Any:
        raise AssertionError("not called on hits")

    values = runner.run(c.read_through(["a", "b"], provider))

    runner.assert_done()
    assert [v.tolist() for v in values] == [[1, 2], [3, 4]]
    assert (c.metrics.hits, c.metrics.misses) == (2, 0)
    assert (c.metrics.provider_calls, c.metrics.provider_calls_avoided) == (0, 2)


def test_miss_takes_a_lease_computes_once_writes_and_releases() -> None:
    c = core()
    key = entry_key(c, "q")
    lease = c.keys.lease(key)
    calls: list[list[str]] = []

    def provider(texts: list[str]) -> Any:
        calls.append(texts)
        return [vector(0.5, 0.25)]

    payload = c.codec.encode_many([vector(0.5, 0.25)])[0]
    runner = ScriptedRunner(
        [
            *first_lookup(c, ["q"], [None]),
            Send([Call.of("SET", lease, ANY, "NX", "PX", SETTINGS.lease_ms)], [True]),
            Invoked((["q"],)),
            Send([Call.of("SET", key, payload, "EX", SETTINGS.query_embedding_ttl)], [True]),
            Send([RELEASE_SCRIPT.call(1, lease, ANY)], [1]),
        ]
    )

    values = runner.run(c.read_through(["q"], provider))

    runner.assert_done()
    assert calls == [["q"]]
    assert [v.tolist() for v in values] == [[0.5, 0.25]]
    # The lease is released with the token it was taken with (compare-and-delete).
    taken, released = runner.transcript[2][0], runner.transcript[-1][0]
    assert taken.args[1] == released.args[3]
    assert (c.metrics.provider_calls, c.metrics.writes) == (1, 1)


def test_lease_held_elsewhere_polls_and_serves_the_leaseholders_value() -> None:
    c = core()
    key = entry_key(c, "q")
    payload = c.codec.encode_many([vector(9, 9)])[0]
    runner = ScriptedRunner(
        [
            *first_lookup(c, ["q"], [None]),
            Send([Call.of("SET", c.keys.lease(key), ANY, "NX", "PX", SETTINGS.lease_ms)], [None]),
            Slept(0.005),
            # The generation and epoch are as seen last: one MGET, no second.
            Send(
                [Call("MGET", (c.keys.generation(c.namespace), c.keys.epoch(), key))],
                [[str(GEN).encode(), EPOCH.encode(), payload]],
            ),
        ]
    )

    def provider(texts: list[str]) -> Any:
        raise AssertionError("the leaseholder computes, not us")

    values = runner.run(c.read_through(["q"], provider))

    runner.assert_done()
    assert [v.tolist() for v in values] == [[9, 9]]
    assert (c.metrics.provider_calls, c.metrics.provider_calls_avoided) == (0, 1)


def test_lease_held_elsewhere_and_no_wait_computes_without_a_lease() -> None:
    settings = SETTINGS.with_(lease_wait_ms=0)
    c = core(settings)
    key = entry_key(c, "q")
    payload = c.codec.encode_many([vector(1)])[0]
    runner = ScriptedRunner(
        [
            *first_lookup(c, ["q"], [None]),
            Send([Call.of("SET", c.keys.lease(key), ANY, "NX", "PX", settings.lease_ms)], [None]),
            Invoked((["q"],)),
            Send([Call.of("SET", key, payload, "EX", settings.query_embedding_ttl)], [True]),
            # no release: we hold no lease
        ]
    )

    values = runner.run(c.read_through(["q"], lambda texts: [vector(1)]))

    runner.assert_done()
    assert [v.tolist() for v in values] == [[1]]


def test_provider_error_caches_nothing_and_releases_the_lease() -> None:
    c = core()
    lease = c.keys.lease(entry_key(c, "q"))
    runner = ScriptedRunner(
        [
            *first_lookup(c, ["q"], [None]),
            Send([Call.of("SET", lease, ANY, "NX", "PX", SETTINGS.lease_ms)], [True]),
            Invoked(),
            Send([RELEASE_SCRIPT.call(1, lease, ANY)], [1]),
        ]
    )

    class ProviderDown(Exception):
        pass

    def provider(texts: list[str]) -> Any:
        raise ProviderDown("503")

    with pytest.raises(ProviderDown):
        runner.run(c.read_through(["q"], provider))
    runner.assert_done()
    assert c.metrics.writes == 0


def test_provider_returning_the_wrong_count_is_refused_and_releases() -> None:
    c = core()
    lease = c.keys.lease(entry_key(c, "q"))
    runner = ScriptedRunner(
        [
            *first_lookup(c, ["q"], [None]),
            Send([Call.of("SET", lease, ANY, "NX", "PX", SETTINGS.lease_ms)], [True]),
            Invoked(),
            Send([RELEASE_SCRIPT.call(1, lease, ANY)], [1]),
        ]
    )

    with pytest.raises(ValueError, match="provider returned 2 values for 1 inputs"):
        runner.run(c.read_through(["q"], lambda texts: [vector(1), vector(2)]))
    runner.assert_done()
    assert c.metrics.writes == 0


def test_redis_error_on_the_write_releases_the_lease_and_raises_the_cachebus_error() -> None:
    """A Redis error after the provider returned, while a lease is held: the program's
    ``finally`` still sends the release, and the caller gets the cachebus error (which
    the shells and services fail open on). Closing the program instead, as the run
    loop once did, raised ``RuntimeError: generator ignored GeneratorExit``."""
    c = core()
    key = entry_key(c, "q")
    lease = c.keys.lease(key)
    runner = ScriptedRunner(
        [
            *first_lookup(c, ["q"], [None]),
            Send([Call.of("SET", lease, ANY, "NX", "PX", SETTINGS.lease_ms)], [True]),
            Invoked(),
            Send([Call.of("SET", key, ANY, "EX", ANY)], RedisConnectionError("reset by peer")),
            Send([RELEASE_SCRIPT.call(1, lease, ANY)], [1]),
        ]
    )

    with pytest.raises(CacheUnavailableError, match="reset by peer"):
        runner.run(c.read_through(["q"], lambda texts: [vector(1)]))
    runner.assert_done()


def test_missing_generation_or_epoch_is_a_miss_and_the_ticket_recreates_them() -> None:
    """A lost generation (or epoch) makes every entry a miss, whatever the MGET found;
    the ticket's scripts re-create them (random values, never used before) and the
    value is written under the new ones."""
    c = core()
    gen_key = c.keys.generation(c.namespace)
    old_keys = c.keys.query_embeddings("m", "1", 0, ["q"], "-")
    new_gen, new_epoch = 2**52 + 5, "NEWEPOCH"
    key = entry_key(c, "q", new_gen, new_epoch)
    payload = c.codec.encode_many([vector(3)])[0]
    runner = ScriptedRunner(
        [
            Send(
                [Call("MGET", (gen_key, c.keys.epoch(), *old_keys))],
                [[None, EPOCH.encode(), b"an entry that must not serve"]],
            ),
            Send(
                [
                    SEQUENCE_SCRIPT.call(2, c.keys.seq(), c.keys.epoch(), "0", ANY),
                    GENERATION_SCRIPT.call(1, gen_key, "get", ANY),
                ],
                [[b"1000", new_epoch.encode(), b"1000"], str(new_gen).encode()],
            ),
            Send([Call.of("SET", c.keys.lease(key), ANY, "NX", "PX", ANY)], [True]),
            Invoked(),
            Send([Call.of("SET", key, payload, "EX", ANY)], [True]),
            Send([RELEASE_SCRIPT.call(1, c.keys.lease(key), ANY)], [1]),
        ]
    )

    values = runner.run(c.read_through(["q"], lambda texts: [vector(3)]))

    runner.assert_done()
    assert [v.tolist() for v in values] == [[3]]
    assert c.metrics.misses == 1
