"""``make demo-cdc``: change data capture from PostgreSQL, end to end on this machine.

Starts a private PostgreSQL (``wal_level=logical``), redis-server, a single-node Apache Kafka
(KRaft), a Kafka Connect worker with Debezium's Postgres connector and the invalidation
worker, all on loopback; then plays: rows inserted into a ``documents`` table, search results
cached through the library, an ``UPDATE`` that retires them, a ``DELETE`` (with a late write
the invalidation refuses), and the audit trail of those changes. Everything stops at the end.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cachebus import CacheBus, CachedSearchService, HashingEmbedder, SearchHit
from devtools.connect_cdc import DOCUMENTS_DDL, TopicTail
from devtools.demo import COLLECTION, DOCS, Index, chunk_hash, say, search, step
from devtools.kafka_admin import create_topics
from devtools.kafka_connect import KafkaConnect, debezium_postgres_config
from devtools.postgres_server import PostgresServer
from devtools.stack import LocalStack
from worker.audit_tail import format_audit
from worker.settings import WorkerSettings

RULES = """\
[[debezium]]
topic = "{topic}"
doc_id = "id"
collection = "collection"
version = "lsn"
tags = "tags"
chunks = "chunks"
content_hash = "content_hash"
tombstones = "audit"
"""


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class Database:
    """The documents table, and the search index stand-in fed from the same rows."""

    def __init__(self, pg: PostgresServer, index: Index, embedder: HashingEmbedder) -> None:
        self.pg, self.index, self.embedder = pg, index, embedder

    def upsert(self, doc_id: str, texts: list[str], *, insert: bool) -> str:
        chunks = [{"chunk_id": f"c{i}", "content_hash": chunk_hash(t)} for i, t in enumerate(texts)]
        body = " ".join(texts)
        if insert:
            sql = (
                "INSERT INTO documents (id, collection, title, body, tags, chunks, content_hash) "
                f"VALUES ({_sql_text(doc_id)}, {_sql_text(COLLECTION)}, {_sql_text(doc_id)}, "
                f"{_sql_text(body)}, '{{policy}}', {_sql_text(json.dumps(chunks))}, "
                f"{_sql_text(chunk_hash(body))})"
            )
        else:
            sql = (
                f"UPDATE documents SET body = {_sql_text(body)}, rev = rev + 1, "
                f"chunks = {_sql_text(json.dumps(chunks))}, "
                f"content_hash = {_sql_text(chunk_hash(body))} WHERE id = {_sql_text(doc_id)}"
            )
        self.pg.sql(sql)
        rev = int(self.pg.sql(f"SELECT rev FROM documents WHERE id = {_sql_text(doc_id)}"))
        # The search backend indexes the row (a real one would embed through the caches).
        for key in [k for k in self.index.chunks if k[0] == doc_id]:
            del self.index.chunks[key]
        for i, vector in enumerate(self.embedder.embed(texts)):
            self.index.chunks[(doc_id, f"c{i}")] = vector
        self.index.docs[doc_id] = (rev, texts)
        return sql

    def delete(self, doc_id: str) -> str:
        sql = f"DELETE FROM documents WHERE id = {_sql_text(doc_id)}"
        self.pg.sql(sql)
        self.index.docs.pop(doc_id, None)
        for key in [k for k in self.index.chunks if k[0] == doc_id]:
            del self.index.chunks[key]
        return sql


class Audits:
    """The audit topic, read in the background; waits for the audits of each change."""

    def __init__(self, tail: TopicTail, topic: str) -> None:
        self.tail, self.topic = tail, topic

    def all(self) -> list[dict[str, Any]]:
        """In the order written: each partition's own order (one document's audits share a
        partition), partitions merged by processing time."""
        partitions: dict[int, list[dict[str, Any]]] = {}
        for record in self.tail.records(self.topic):
            partitions.setdefault(record.partition, []).append(record.value)
        return list(heapq.merge(*partitions.values(), key=lambda a: str(a["processed_at"])))

    def seen(self, doc_id: str) -> set[int]:
        """The audits of ``doc_id`` so far (take it before the change)."""
        return {a["source"]["offset"] for a in self.all() if a["doc_id"] == doc_id}

    def wait(self, doc_id: str, outcomes: Sequence[str], since: float, seen: set[int]) -> None:
        """Wait for ``doc_id``'s audits beyond ``seen``, as many as ``outcomes``; show them."""

        def new(_: object) -> list[dict[str, Any]] | None:
            mine = [
                a for a in self.all() if a["doc_id"] == doc_id and a["source"]["offset"] not in seen
            ]
            return mine if len(mine) >= len(outcomes) else None

        found: list[dict[str, Any]] = self.tail.wait(new, timeout=60, what=f"audit of {doc_id}")
        waited = 1000 * (time.monotonic() - since)
        for audit in found:
            what = ", ".join(f"{a['kind']} {a['target']}" for a in audit["actions"])
            event = f"{audit['event_type']} " if audit["event_type"] else ""
            say(
                f"   worker audited {event}{doc_id} within {waited:.0f} ms of the commit: "
                f"{audit['outcome']}, "
                + (f"actions: {what}" if what else f"reason: {audit['reason']}")
            )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``--help`` prints what the demo does and exits before anything starts."""
    parser = argparse.ArgumentParser(
        prog="python -m devtools.demo_cdc",
        description=(
            "make demo-cdc: start PostgreSQL, redis-server, Apache Kafka, Kafka Connect with "
            "Debezium's Postgres connector and the invalidation worker on loopback, then "
            "INSERT, UPDATE and DELETE rows and show the cached search results the worker "
            "retires, with the audit trail. Everything stops at the end. Needs a source "
            "checkout (make setup)."
        ),
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    parse_args(argv)
    say("cachebus CDC demo: PostgreSQL -> Debezium (Kafka Connect) -> Kafka -> worker -> Redis")
    started = time.monotonic()
    step("starting services")
    settings = WorkerSettings(prefix="democdc", topic_partitions=3)
    prefix = "pg"  # Debezium's topic.prefix: topic pg.public.documents, as in the README
    if os.environ.get("CACHEBUS_KAFKA_BOOTSTRAP"):
        # Somebody else's broker: topics of this run only, none of theirs read or written.
        prefix = f"demo_{uuid.uuid4().hex[:6]}"
        settings = settings.with_(
            events_topic=f"{settings.events_topic}.{prefix}",
            audit_topic=f"{settings.audit_topic}.{prefix}",
            dlq_topic=f"{settings.dlq_topic}.{prefix}",
            consumer_group=f"{settings.consumer_group}.{prefix}",
        )
    topic = f"{prefix}.public.documents"
    with (
        PostgresServer() as pg,
        LocalStack(settings=settings) as stack,
        KafkaConnect(stack.kafka.bootstrap) as connect,
    ):
        say(f"   PostgreSQL    {pg.version} on 127.0.0.1:{pg.port} (wal_level=logical)")
        say(f"   redis-server  {stack.redis.url}")
        say(f"   Apache Kafka  {stack.kafka.bootstrap} (KRaft, single node)")
        say(f"   Kafka Connect {connect.url} (standalone, Debezium's Postgres connector)")
        pg.sql(DOCUMENTS_DDL)
        say("   table documents created, REPLICA IDENTITY FULL")
        create_topics(stack.kafka.bootstrap, {topic: 3})
        connect.add_postgres_connector(
            "documents",
            debezium_postgres_config(
                pg, topic_prefix=prefix, tables=["public.documents"], slot_name=prefix
            ),
        )
        say(f"   Debezium      connector 'documents' (pgoutput) streaming to {topic}")
        rules = Path(stack.log_dir) / "rules.toml"
        rules.write_text(RULES.format(topic=topic), encoding="utf-8")
        worker = stack.start_worker("cdc-worker", rules_file=str(rules))
        say(
            f"   worker        ready after {time.monotonic() - started:.1f} s, consuming "
            f"{stack.settings.events_topic} and {topic} (rules: {rules})"
        )
        say(f"                 log {worker.log_path}")

        with TopicTail(stack.kafka.bootstrap, [stack.settings.audit_topic]) as tail:
            audits = Audits(tail, stack.settings.audit_topic)
            try:
                failed = _scenario(pg, stack, audits)
            except (TimeoutError, RuntimeError) as exc:
                print(f"demo-cdc: {exc}", file=sys.stderr)
                print(f"--- worker log (last lines) ---\n{worker.log_tail()}", file=sys.stderr)
                print(connect.log_report(), file=sys.stderr)
                return 1

            step(f"audit trail ({stack.settings.audit_topic}): one audit event per change")
            for audit in audits.all():
                say("   " + format_audit(audit))
        say(f"\ndone in {time.monotonic() - started:.1f} s; everything stops now.")
        return 1 if failed else 0


def _scenario(pg: PostgresServer, stack: LocalStack, audits: Audits) -> bool:
    """The story; True if the late write was served (it must not be)."""
    bus = CacheBus(stack.redis.client(), stack.settings)
    embedder = HashingEmbedder(dim=256)
    index = Index(embedder, {}, {})
    db = Database(pg, index, embedder)
    service = CachedSearchService(bus.search_results, bus.embedding_service(embedder), index)

    step("INSERT three documents into PostgreSQL")
    for doc_id, texts in DOCS.items():
        seen, since = audits.seen(doc_id), time.monotonic()
        say(f"   sql> {db.upsert(doc_id, texts, insert=True)[:110]}...")
        audits.wait(doc_id, ["applied"], since, seen)

    step("the search service answers queries through the caches")
    search(service, bus, index, "how many vacation days do I get")
    search(service, bus, index, "how many vacation days do I get")
    search(service, bus, index, "remote work policy")

    step("UPDATE vacation-policy: 30 days instead of 25 (one chunk changed)")
    layer = bus.search_results(COLLECTION)
    new_texts = ["Employees get 30 vacation days per year.", DOCS["vacation-policy"][1]]
    seen, since = audits.seen("vacation-policy"), time.monotonic()
    sql = db.upsert("vacation-policy", new_texts, insert=False)
    say(f"   sql> {sql[:110]}...")
    audits.wait("vacation-policy", ["applied"], since, seen)
    say("   the cached results for 'how many vacation days do I get' are retired:")
    search(service, bus, index, "how many vacation days do I get")

    step("DELETE remote-work, while a slow search is still computing")
    slow = layer.lookup("remote work home office")  # ticket taken before computing
    vector = embedder.embed(["remote work home office"])[0]
    stale: list[SearchHit] = index.search(COLLECTION, vector, None, 2)
    seen, since = audits.seen("remote-work"), time.monotonic()
    sql = db.delete("remote-work")
    say(f"   sql> {sql}")
    # The delete, then Debezium's tombstone record (null value, for log compaction).
    audits.wait("remote-work", ["applied", "skipped_tombstone"], since, seen)
    layer.set("remote work home office", stale, ticket=slow.ticket)  # the late write
    say("   the slow search wrote its (stale) results after the delete was processed;")
    served = layer.get("remote work home office")
    say(f"   reading them back: {'SERVED (bug!)' if served else 'not served (retired)'}")
    search(service, bus, index, "remote work policy")
    return bool(served)


if __name__ == "__main__":
    sys.exit(main())
