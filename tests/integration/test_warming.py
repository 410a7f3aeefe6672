"""Query log and cache warming on a real redis-server and a real 3-primary
Redis Cluster (``any_redis``), plus the ``cachebus warm`` command."""

from __future__ import annotations

import argparse
import io
import json
import re
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import redis
import redis.cluster

from cachebus import CacheBus, HashingEmbedder, Settings
from cachebus.keys import sha256_hex
from cachebus.querylog import SHARDS, AsyncQueryLog, QueryLog
from cachebus.warming import content_hash, warm_documents, warm_queries
from devtools.redis_servers import RedisServer
from worker import warm as warm_command
from worker.cli import _add_common

S = Settings(prefix="t")
DIM = 32


class CountingEmbedder(HashingEmbedder):
    """A hashing embedder that records the texts of every call."""

    def __init__(self, on_call: object = None) -> None:
        super().__init__(dim=DIM)
        self.batches: list[list[str]] = []
        self.on_call = on_call

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.batches.append(list(texts))
        if callable(self.on_call):
            self.on_call(len(self.batches))
        return super().embed(texts)

    @property
    def texts(self) -> list[str]:
        return [t for batch in self.batches for t in batch]


def today() -> date:
    return datetime.now(UTC).date()


def all_keys(client: redis.Redis | redis.cluster.RedisCluster, pattern: str) -> list[str]:
    if isinstance(client, redis.cluster.RedisCluster):
        found = client.keys(pattern, target_nodes=redis.cluster.RedisCluster.PRIMARIES)
    else:
        found = client.keys(pattern)
    return sorted(k.decode() for k in found)


def expected_vectors(texts: Sequence[str]) -> np.ndarray:
    return HashingEmbedder(dim=DIM).embed(list(texts))


class TestQueryLog:
    def test_record_layout_and_ttl(self, any_redis) -> None:
        """Day keys are <prefix>:ql:{q<shard>}:<YYYYMMDD>, expire in 8 days, hold the
        text only as a member (hostile text never reaches a key)."""
        log = QueryLog(any_redis, S)
        hostile = ["a:b {x} *", "[y]?", "plain", "plain"]
        assert log.record(hostile) == 4
        keys = all_keys(any_redis, "t:ql:*")
        day = f"{today():%Y%m%d}"
        assert keys and all(re.fullmatch(r"t:ql:\{q(\d+)\}:" + day, k) for k in keys)
        shards = {int(k.split("{q", 1)[1].split("}", 1)[0]) for k in keys}
        assert shards <= set(range(SHARDS))
        for text in set(hostile):
            key = log.keys.day(log.keys.shard(text), today())
            assert any_redis.zscore(key, text) == hostile.count(text)
            assert 8 * 86400 - 60 < any_redis.ttl(key) <= 8 * 86400
        # EXPIRE NX: a later record does not push the expiry out.
        key = log.keys.day(log.keys.shard("plain"), today())
        any_redis.expire(key, 1000)
        log.record(["plain"])
        assert any_redis.ttl(key) <= 1000

    def test_top_is_exact_across_shards_and_days(self, any_redis) -> None:
        """top() sums the last 7 days of every shard; an 8th-day count is ignored."""
        log = QueryLog(any_redis, S)
        rng = np.random.default_rng(7)
        texts = [f"query {i}" for i in range(60)]
        assert len({log.keys.shard(t) for t in texts}) >= 12  # spread over the shards
        expected: dict[str, int] = {}
        for text in texts:
            per_day = [int(x) for x in rng.integers(0, 20, size=7)]
            expected[text] = sum(per_day)
            for ago, count in enumerate(per_day):
                if count and ago:  # past days written directly, as other days' processes did
                    key = log.keys.day(log.keys.shard(text), today() - timedelta(days=ago))
                    any_redis.zincrby(key, count, text)
            log.record([text] * per_day[0])  # today through the API
        # Outside the window: a huge count 7 days ago must not count.
        stale = log.keys.day(log.keys.shard("old favourite"), today() - timedelta(days=7))
        any_redis.zincrby(stale, 10_000, "old favourite")
        log.record(["old favourite"])
        expected["old favourite"] = 1
        ranked = sorted(expected.items(), key=lambda kv: (-kv[1], kv[0]))
        assert log.top(10) == ranked[:10]
        assert log.top(1000) == [(t, c) for t, c in ranked if c > 0]
        # A one-day window counts only today.
        today_only = {t: c for t, c in log.top(1000, days=1)}
        assert today_only["old favourite"] == 1
        assert all(c <= 19 for c in today_only.values())

    def test_ties_broken_by_text(self, any_redis) -> None:
        """Equal counts rank by text ascending, even across a shard's cut-off."""
        log = QueryLog(any_redis, S)
        texts = [f"t{i:02d}" for i in range(40)]
        log.record(texts)
        log.record(["t39", "t39"])
        assert log.top(4) == [("t39", 3), ("t00", 1), ("t01", 1), ("t02", 1)]

    def test_top_leaves_no_temp_keys(self, any_redis) -> None:
        """The per-shard unions are deleted (and carry a short PEXPIRE meanwhile)."""
        log = QueryLog(any_redis, S)
        log.record(["a", "b", "c"])
        assert log.top(2)
        assert all_keys(any_redis, "t:ql:*tmp*") == []

    def test_window_limits(self, any_redis) -> None:
        """Windows beyond the 8-day retention are refused; top(0) is empty."""
        log = QueryLog(any_redis, S)
        with pytest.raises(ValueError):
            log.top(5, days=9)
        assert log.top(0) == []
        assert log.record(["", "x" * 5000]) == 0

    async def test_async_twin(self, any_async_redis) -> None:
        """AsyncQueryLog runs the same programs."""
        log = AsyncQueryLog(any_async_redis, S)
        assert await log.record(["b", "a", "b", "c", "b", "a"]) == 6
        assert await log.top(2) == [("b", 3), ("a", 2)]


def _log_queries(log: QueryLog, n: int) -> list[str]:
    """Record q0..q{n-1} with q0 the most frequent; returns them by rank."""
    texts = [f"q{i}" for i in range(n)]
    for i, text in enumerate(texts):
        log.record([text] * (n + 1 - i))
    return texts


class TestWarmQueries:
    def test_warms_top_queries_and_skips_cached(self, any_redis) -> None:
        """Only misses among the top N go to the embedder, in batches, and are then hits."""
        bus = CacheBus(any_redis, S)
        log = QueryLog(any_redis, S)
        texts = _log_queries(log, 20)
        embedder = CountingEmbedder()
        cache = bus.query_embeddings(embedder.model, embedder.model_version)
        cache.set_many({"q1": expected_vectors(["q1"])[0], "q3": expected_vectors(["q3"])[0]})
        seen: list[int] = []
        report = warm_queries(
            cache, embedder, log, 10, batch_size=4, progress=lambda r: seen.append(r.considered)
        )
        assert embedder.batches == [["q0", "q2"], ["q4", "q5", "q6", "q7"], ["q8", "q9"]]
        assert (report.considered, report.already_cached, report.warmed) == (10, 2, 8)
        assert (report.batches, report.provider_calls, report.refused) == (3, 3, 0)
        assert seen == [4, 8, 10]
        got = cache.get_many(texts[:10])
        np.testing.assert_allclose(np.stack(got), expected_vectors(texts[:10]), atol=1e-6)
        assert cache.get_many(texts[10:]) == [None] * 10  # beyond the top N
        again = warm_queries(cache, embedder, log, 10, batch_size=4)
        assert (again.warmed, again.already_cached, again.provider_calls) == (0, 10, 0)
        assert len(embedder.batches) == 3

    def test_batches_of_requested_size(self, any_redis) -> None:
        """Every provider call gets at most batch_size texts."""
        log = QueryLog(any_redis, S)
        _log_queries(log, 10)
        embedder = CountingEmbedder()
        cache = CacheBus(any_redis, S).query_embeddings(embedder.model)
        report = warm_queries(cache, embedder, log, 100, batch_size=3)
        assert [len(b) for b in embedder.batches] == [3, 3, 3, 1]
        assert report.warmed == 10 and report.batches == 4

    def test_rate_limit(self, any_redis) -> None:
        """40 texts at 100 texts/s take at least ~0.4 s."""
        log = QueryLog(any_redis, S)
        _log_queries(log, 40)
        embedder = CountingEmbedder()
        cache = CacheBus(any_redis, S).query_embeddings(embedder.model)
        started = time.monotonic()
        report = warm_queries(cache, embedder, log, 40, batch_size=10, rate_per_s=100)
        elapsed = time.monotonic() - started
        assert report.warmed == 40
        assert elapsed >= 0.35 and report.seconds >= 0.35
        assert report.rate <= 110

    def test_model_bump_while_embedding_retires_the_batch(self, any_redis) -> None:
        """Values are written under the lookup's ticket: a bump during the embedder
        call leaves that batch unreadable, later batches are cached normally."""
        bus = CacheBus(any_redis, S)
        log = QueryLog(any_redis, S)
        texts = _log_queries(log, 6)

        def bump_on_first(call: int) -> None:
            if call == 1:
                bus.invalidator.bump(models=[(embedder.model, embedder.model_version)])

        embedder = CountingEmbedder(on_call=bump_on_first)
        cache = bus.query_embeddings(embedder.model, embedder.model_version)
        warm_queries(cache, embedder, log, 6, batch_size=3)
        assert cache.get_many(texts[:3]) == [None] * 3
        assert all(v is not None for v in cache.get_many(texts[3:]))

    def test_rate_too_slow_for_a_batch_is_refused(self, any_redis) -> None:
        """A batch whose wait would outlive its ticket is a configuration error."""
        log = QueryLog(any_redis, S)
        cache = CacheBus(any_redis, S).query_embeddings("hashing-bow")
        with pytest.raises(ValueError, match="smaller batch"):
            warm_queries(cache, CountingEmbedder(), log, 10, batch_size=1000, rate_per_s=1)


def _doc(doc_id: str, *chunks: tuple[str, str]) -> dict[str, object]:
    return {"doc_id": doc_id, "chunks": [{"chunk_id": c, "text": t} for c, t in chunks]}


class TestWarmDocuments:
    def test_skips_same_hash_and_reembeds_changed(self, any_redis) -> None:
        """Unchanged chunks (same content hash) are skipped; changed and new ones embedded."""
        bus = CacheBus(any_redis, S)
        de = bus.document_embeddings("m")
        embedder = CountingEmbedder()
        first = [
            _doc("d1", ("c0", "alpha"), ("c1", "beta"), ("c2", "gamma")),
            _doc("d:2*", ("c0", "delta"), ("c1", "epsilon")),
            {"doc_id": "d3", "chunks": [{"chunk_id": "x", "text": "zeta", "content_hash": "v7"}]},
        ]
        report = warm_documents(de, embedder, first, batch_size=2)
        assert (report.considered, report.warmed, report.already_cached) == (6, 6, 0)
        assert report.provider_calls == 3 and all(len(b) <= 2 for b in embedder.batches)
        got = de.get("d1", "c1", "sha256:" + sha256_hex("beta"))
        np.testing.assert_allclose(got, expected_vectors(["beta"])[0], atol=1e-6)
        assert de.get("d3", "x", "v7") is not None

        embedder.batches.clear()
        second = [
            _doc("d1", ("c0", "alpha"), ("c1", "beta, revised"), ("c2", "gamma")),
            _doc("d:2*", ("c0", "delta"), ("c1", "epsilon"), ("c2", "eta")),
            {"doc_id": "d3", "chunks": [{"chunk_id": "x", "text": "zeta", "content_hash": "v7"}]},
        ]
        report = warm_documents(de, embedder, iter(second), batch_size=64)
        assert embedder.batches == [["beta, revised", "eta"]]
        assert (report.considered, report.warmed, report.already_cached) == (7, 2, 5)
        assert de.get("d1", "c1", content_hash("beta")) is None
        np.testing.assert_allclose(
            de.get("d1", "c1", content_hash("beta, revised")),
            expected_vectors(["beta, revised"])[0],
            atol=1e-6,
        )

    def test_deleted_document_is_refused(self, any_redis) -> None:
        """A tombstoned document's chunks are embedded but not written (refused)."""
        bus = CacheBus(any_redis, S)
        bus.invalidator.invalidate_documents(["gone"], deleted=True)
        report = warm_documents(
            bus.document_embeddings("m"), CountingEmbedder(), [_doc("gone", ("a", "x"), ("b", "y"))]
        )
        assert (report.warmed, report.refused) == (0, 2)
        assert bus.document_embeddings("m").get("gone", "a") is None

    def test_bad_document_raises(self, any_redis) -> None:
        """A chunk without chunk_id or text is a ValueError naming the document."""
        de = CacheBus(any_redis, S).document_embeddings("m")
        with pytest.raises(ValueError, match="'d9'"):
            warm_documents(de, CountingEmbedder(), [{"doc_id": "d9", "chunks": [{"text": "x"}]}])


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    warm_command.register(sub, _add_common)
    return parser.parse_args(["warm", *argv])


class TestWarmCommand:
    def test_top(self, redis_server: RedisServer, redis_client, capsys) -> None:
        """`cachebus warm --top N` warms the logged queries; progress goes to stderr."""
        settings = Settings(prefix="w", redis_url=redis_server.url)
        texts = _log_queries(QueryLog(redis_client, settings), 12)
        out = io.StringIO()
        argv = ("--top", "8", "--batch", "3", "--model", "m", "--model-version", "2",
                "--demo-embedder")
        assert warm_command.run(settings, _args(*argv), out=out) == 0
        assert out.getvalue().startswith("warmed 8, already cached 0, provider calls 3")
        assert capsys.readouterr().err.count("batch ") == 3
        cache = CacheBus(redis_client, settings).query_embeddings("m", "2")
        assert all(v is not None for v in cache.get_many(texts[:8]))
        assert cache.get_many(texts[8:]) == [None] * 4

    def test_documents(self, redis_server: RedisServer, redis_client, tmp_path: Path) -> None:
        """`cachebus warm --documents FILE.jsonl`; a second run finds everything cached."""
        settings = Settings(prefix="w", redis_url=redis_server.url)
        path = tmp_path / "docs.jsonl"
        docs = [_doc(f"d{i}", ("c0", f"text {i}"), ("c1", f"more {i}")) for i in range(5)]
        path.write_text("\n".join(json.dumps(d) for d in docs) + "\n\n", encoding="utf-8")
        argv = ("--documents", str(path), "--demo-embedder")
        out = io.StringIO()
        assert warm_command.run(settings, _args(*argv), out=out) == 0
        assert out.getvalue().startswith("warmed 10, already cached 0, provider calls 1")
        out = io.StringIO()
        assert warm_command.run(settings, _args(*argv), out=out) == 0
        assert out.getvalue().startswith("warmed 0, already cached 10, provider calls 0")

    def test_bad_line_and_bad_embedder(
        self, redis_server: RedisServer, redis_client, tmp_path: Path, capsys
    ) -> None:
        """A bad JSONL line exits 1 naming the line; a bad --embedder is a config error."""
        from cachebus.errors import ConfigError

        settings = Settings(prefix="w", redis_url=redis_server.url)
        path = tmp_path / "docs.jsonl"
        path.write_text(json.dumps(_doc("a", ("c", "t"))) + "\n{oops\n", encoding="utf-8")
        argv = ("--documents", str(path), "--demo-embedder")
        assert warm_command.run(settings, _args(*argv), out=io.StringIO()) == 1
        assert "line 2" in capsys.readouterr().err
        with pytest.raises(ConfigError, match="module:attr"):
            warm_command.run(settings, _args("--top", "1", "--embedder", "nope"))
        with pytest.raises(ConfigError, match="embed"):
            warm_command.run(settings, _args("--top", "1", "--embedder", "cachebus:Settings"))

    def test_no_embedder_no_silent_demo_vectors(
        self, redis_server: RedisServer, redis_client, tmp_path: Path, monkeypatch
    ) -> None:
        """Without --embedder / CACHEBUS_EMBEDDER the command refuses (it used to write
        HashingEmbedder vectors); --demo-embedder or an explicit setting is needed."""
        from cachebus.errors import ConfigError

        monkeypatch.delenv("CACHEBUS_EMBEDDER", raising=False)
        settings = Settings(prefix="w", redis_url=redis_server.url)
        path = tmp_path / "docs.jsonl"
        path.write_text(json.dumps(_doc("a", ("c", "t"))) + "\n", encoding="utf-8")
        with pytest.raises(ConfigError, match="--embedder module:attr"):
            warm_command.run(settings, _args("--documents", str(path)))
        with pytest.raises(ConfigError, match="--demo-embedder"):
            warm_command.run(settings, _args("--top", "5"))
        assert redis_client.dbsize() == 0

        spec = warm_command.embedder_spec
        assert spec(settings, None, True) == warm_command.DEMO_EMBEDDER
        assert spec(settings.with_(embedder="mine:Embedder"), None, False) == "mine:Embedder"
        assert spec(settings.with_(embedder="mine:Embedder"), "flag:E", False) == "flag:E"
        monkeypatch.setenv("CACHEBUS_EMBEDDER", warm_command.DEMO_EMBEDDER)  # explicit: fine
        explicit = Settings.from_env(prefix="w", redis_url=redis_server.url)
        assert spec(explicit, None, False) == warm_command.DEMO_EMBEDDER
        out = io.StringIO()
        assert warm_command.run(explicit, _args("--documents", str(path)), out=out) == 0
        assert out.getvalue().startswith("warmed 1,")

    def test_embedder_module_in_the_current_directory(
        self, redis_server: RedisServer, redis_client, tmp_path: Path
    ) -> None:
        """`cachebus warm --embedder app:Embedder` run where app.py is, as an installed
        console script runs (the current directory not on sys.path: python -P)."""
        import os
        import subprocess
        import sys

        (tmp_path / "app.py").write_text(
            "import numpy as np\n\n"
            "class Embedder:\n"
            "    model = 'local-model'\n"
            "    model_version = '3'\n\n"
            "    def embed(self, texts):\n"
            "        return np.ones((len(texts), 8), dtype=np.float32)\n",
            encoding="utf-8",
        )
        docs = tmp_path / "docs.jsonl"
        docs.write_text(json.dumps(_doc("d1", ("c0", "x"), ("c1", "y"))) + "\n", encoding="utf-8")
        root = Path(__file__).resolve().parents[2]
        env = {k: v for k, v in os.environ.items() if not k.startswith("CACHEBUS_")}
        env["PYTHONPATH"] = str(root)
        result = subprocess.run(
            [sys.executable, "-P", "-m", "worker.cli", "warm", "--documents", str(docs),
             "--embedder", "app:Embedder", "--redis-url", redis_server.url, "--prefix", "cwd"],
            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("warmed 2, already cached 0, provider calls 1")
        settings = Settings(prefix="cwd")
        cache = CacheBus(redis_client, settings).document_embeddings("local-model", "3")
        assert all(v is not None for v in cache.get_many("d1", ["c0", "c1"]))
