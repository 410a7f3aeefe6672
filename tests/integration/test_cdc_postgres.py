"""Change data capture end to end on real services: PostgreSQL (logical decoding) ->
Debezium's Postgres connector on Kafka Connect -> Kafka -> the worker (the README's
``debezium-rules`` example, verbatim, as its rules file) -> Redis, checked through the library.

One PostgreSQL and one Kafka Connect worker serve the module; each converter variant (JSON
without and with schemas) gets its own database, connector, replication slot, freshly created
``pg.public.documents`` topic (the example's topic), key prefix and worker.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cachebus import CacheBus, ChunkVector, SearchHit
from devtools.connect_cdc import (
    DOCUMENTS_DDL,
    Record,
    TopicTail,
    debezium_payload,
    delete_topic,
    reset_topic,
)
from devtools.kafka_broker import LocalKafka
from devtools.kafka_connect import KafkaConnect, debezium_postgres_config
from devtools.postgres_server import PostgresServer
from devtools.redis_servers import RedisServer
from devtools.stack import LocalStack, WorkerProcess
from tests.readme_examples import example
from worker.settings import WorkerSettings

pytestmark = [pytest.mark.kafka, pytest.mark.redis]

TOPIC = "pg.public.documents"  # what the README example maps
COLLECTION = "handbook"
MODEL = "m"
V = np.ones(16, dtype=np.float32)


def chunks_json(*pairs: tuple[str, str]) -> str:
    return json.dumps([{"chunk_id": c, "content_hash": h} for c, h in pairs])


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cdc_services(kafka_broker: LocalKafka) -> Iterator[tuple[PostgresServer, KafkaConnect]]:
    """One PostgreSQL (wal_level=logical) and one Kafka Connect worker with Debezium."""
    with PostgresServer() as pg, KafkaConnect(kafka_broker.bootstrap) as connect:
        yield pg, connect


@dataclass
class Pipeline:
    schemas: bool
    pg: PostgresServer
    db: str
    stack: LocalStack
    worker: WorkerProcess
    tail: TopicTail
    bus: CacheBus = field(repr=False)

    def sql(self, script: str) -> str:
        return self.pg.sql(script, database=self.db)

    def audits(self, doc_id: str | None = None) -> list[dict[str, Any]]:
        return [
            r.value
            for r in self.tail.records(self.stack.settings.audit_topic)
            if doc_id is None or r.value.get("doc_id") == doc_id
        ]

    def wait_audit(
        self, doc_id: str, outcome: str, event_type: str | None = None, *, after: int = 0
    ) -> dict[str, Any]:
        """The first audit of ``doc_id`` with ``outcome`` (and ``event_type``) beyond the
        first ``after`` audits of that document."""

        def find(_: list[Record]) -> dict[str, Any] | None:
            for audit in self.audits(doc_id)[after:]:
                if audit["outcome"] == outcome and (
                    event_type is None or audit["event_type"] == event_type
                ):
                    return audit
            return None

        found: dict[str, Any] = self.tail.wait(
            find, timeout=60, what=f"audit {outcome} {event_type or ''} of {doc_id}"
        )
        return found


@pytest.fixture(scope="module", params=[False, True], ids=["json", "json-schemas"])
def pipeline(
    request: pytest.FixtureRequest,
    cdc_services: tuple[PostgresServer, KafkaConnect],
    kafka_broker: LocalKafka,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Pipeline]:
    pg, connect = cdc_services
    schemas: bool = request.param
    variant = "schemas" if schemas else "plain"
    db = f"cdc_{variant}"
    pg.sql(f"CREATE DATABASE {db}", database="postgres")
    pg.sql(DOCUMENTS_DDL, database=db)
    # The example's topic, empty for this variant; 3 partitions so that per-row order is
    # Debezium's keying by primary key at work, not a single partition's order.
    reset_topic(kafka_broker.bootstrap, TOPIC, 3)
    tmp: Path = tmp_path_factory.mktemp(f"cdc-{variant}")
    rules = tmp / "rules.toml"
    rules.write_text(example("debezium-rules"), encoding="utf-8")
    uid = uuid.uuid4().hex[:8]
    settings = WorkerSettings(
        prefix=f"cdc{uid}",
        events_topic=f"events-{uid}",
        audit_topic=f"audit-{uid}",
        dlq_topic=f"dlq-{uid}",
        consumer_group=f"group-{uid}",
        batch_wait_ms=10,
        rules_file=str(rules),
    )
    name = f"documents-{variant}"
    with LocalStack(
        redis=redis_server, kafka=kafka_broker, settings=settings, log_dir=tmp
    ) as stack:
        connect.add_postgres_connector(
            name,
            debezium_postgres_config(
                pg,
                topic_prefix="pg",
                tables=["public.documents"],
                schemas_enable=schemas,
                database=db,
                slot_name=f"cachebus_{variant}",
            ),
        )
        tail = TopicTail(kafka_broker.bootstrap, [TOPIC, settings.audit_topic]).start()
        client = redis_server.client(decode_responses=False)
        try:
            worker = stack.start_worker()
            yield Pipeline(schemas, pg, db, stack, worker, tail, CacheBus(client, settings))
            assert not stack.agent_crashes(), stack.agent_crashes()
            dead = stack.count_records(settings.dlq_topic)
            assert dead == 0, f"{dead} dead letters; worker log:\n{worker.log_tail()}"
        finally:
            for running in stack.workers:  # before their input topic goes away
                running.stop(10)
            tail.stop()
            client.close()
            connect.delete_connector(name)
            _drop_slot(pg, f"cachebus_{variant}")
            delete_topic(kafka_broker.bootstrap, TOPIC)


def _drop_slot(pg: PostgresServer, slot: str) -> None:
    """The deleted connector's slot (it would hold WAL back); it frees up within seconds."""
    deadline = time.monotonic() + 30
    while True:
        active = pg.rows(
            f"SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'",
            database="postgres",
        )
        if not active:
            return
        if active[0][0] == "f":
            pg.sql(f"SELECT pg_drop_replication_slot('{slot}')", database="postgres")
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"replication slot {slot} still active 30s after its connector")
        time.sleep(0.2)


# --------------------------------------------------------------------------- tests


def test_insert_update_delete_reinsert_through_the_library(pipeline: Pipeline) -> None:
    p, bus = pipeline, pipeline.bus
    sr, de = bus.search_results(COLLECTION), bus.document_embeddings(MODEL)

    p.sql(
        "INSERT INTO documents (id, collection, title, body, tags, chunks, content_hash) VALUES "
        f"('vacation', '{COLLECTION}', 'Vacation', '25 days', '{{hr}}', "
        f"'{chunks_json(('c0', 'h0'), ('c1', 'h1'))}', 'v1'), "
        f"('expenses', '{COLLECTION}', 'Expenses', '30 days', '{{finance}}', "
        f"'{chunks_json(('c0', 'e0'))}', 'e1')"
    )
    created = p.wait_audit("vacation", "applied", "created")
    p.wait_audit("expenses", "applied", "created")
    assert created["source"]["topic"] == TOPIC
    # The converter variant is the one under test: {"schema", "payload"} envelopes or not.
    values = [r.value for r in p.tail.records(TOPIC) if r.value is not None]
    assert values and all(("schema" in v and "payload" in v) == p.schemas for v in values)
    lsn_created = created["doc_version"]
    assert isinstance(lsn_created, int) and lsn_created > 0

    # Cached after the inserts were audited: search results tagged with the documents,
    # embeddings of their chunks with content hashes.
    sr.set("vacation days", [SearchHit("vacation", 0.9), SearchHit("expenses", 0.2)])
    sr.set("receipts", [SearchHit("expenses", 0.8)])
    de.set_many("vacation", [ChunkVector("c0", V, "h0"), ChunkVector("c1", V, "h1")])
    de.set_many("expenses", [ChunkVector("c0", V, "e0")])
    assert sr.get("vacation days") is not None and sr.get("receipts") is not None

    # UPDATE: chunk c1 changed. A result computed before it is a miss once it is audited.
    n = len(p.audits("vacation"))
    computing = sr.lookup("vacation policy")  # being computed while the change flows
    new_chunks = chunks_json(("c0", "h0"), ("c1", "h1b"))
    p.sql(f"UPDATE documents SET body = '30 days', chunks = '{new_chunks}' WHERE id = 'vacation'")
    updated = p.wait_audit("vacation", "applied", "updated", after=n)
    assert updated["doc_version"] > lsn_created  # the LSN
    assert {"kind": "tag", "target": "doc:vacation"} in updated["actions"]
    sr.set("vacation policy", [SearchHit("vacation", 0.7)], ticket=computing.ticket)  # late
    assert sr.get("vacation days") is None
    assert sr.get("vacation policy") is None
    assert de.get("vacation", "c0", "h0") is not None  # unchanged chunk kept
    assert de.get("vacation", "c1") is None
    assert de.get("expenses", "c0", "e0") is not None

    # DELETE: retires everything of the row, refuses late writes, and its tombstone record
    # is audited as such.
    sr.set("vacation days", [SearchHit("vacation", 0.9)])
    assert sr.get("vacation days") is not None
    n = len(p.audits("vacation"))
    late_result = sr.lookup("vacation rules")
    late_chunks = de.lookup_chunks([])
    p.sql("DELETE FROM documents WHERE id = 'vacation'")
    deleted = p.wait_audit("vacation", "applied", "deleted", after=n)
    assert deleted["doc_version"] > updated["doc_version"]
    assert deleted["collection"] == COLLECTION  # REPLICA IDENTITY FULL: the whole row
    tombstone = p.wait_audit("vacation", "skipped_tombstone", after=n)
    assert tombstone["source"]["offset"] > deleted["source"]["offset"]
    sr.set("vacation rules", [SearchHit("vacation", 0.5)], ticket=late_result.ticket)
    assert de.set("vacation", "c0", V, "h0", ticket=late_chunks.ticket) == 0
    assert sr.get("vacation days") is None and sr.get("vacation rules") is None
    assert de.get("vacation", "c0") is None
    sr.set("vacation days", [SearchHit("vacation", 0.9)])  # a late write without a ticket
    assert sr.get("vacation days") is None  # the tombstone refuses it
    assert de.get("expenses", "c0", "e0") is not None

    # Re-INSERT: the document is alive again and can be cached again.
    n = len(p.audits("vacation"))
    p.sql(
        "INSERT INTO documents (id, collection, title, body, chunks) VALUES "
        f"('vacation', '{COLLECTION}', 'Vacation', '28 days', '{chunks_json(('c0', 'h2'))}')"
    )
    revived = p.wait_audit("vacation", "applied", "created", after=n)
    assert revived["doc_version"] > deleted["doc_version"]
    sr.set("vacation days", [SearchHit("vacation", 0.9)])
    assert sr.get("vacation days") == [SearchHit("vacation", 0.9)]
    de.set_many("vacation", [ChunkVector("c0", V, "h2")])
    assert de.get("vacation", "c0", "h2") is not None

    outcomes = [a["outcome"] for a in p.audits("vacation")]
    assert outcomes == ["applied", "applied", "applied", "skipped_tombstone", "applied"]


def test_burst_of_1000_updates_no_stale_read_and_per_row_order(pipeline: Pipeline) -> None:
    """1,000 UPDATEs over 5 rows, interleaved, committed one by one while a reader caches
    search results computed from the database and reads them back. Every served value must
    be computed from a revision at least as new as every revision whose invalidation was
    audited before the read; each row's audits must carry strictly increasing LSNs."""
    p, bus = pipeline, pipeline.bus
    sr = bus.search_results(COLLECTION)
    rows = [f"burst-{i}" for i in range(5)]
    p.sql(
        "INSERT INTO documents (id, collection, title, body, chunks) VALUES "
        + ", ".join(f"('{r}', '{COLLECTION}', '{r}', 'rev 1', '[]')" for r in rows)
    )
    for r in rows:
        p.wait_audit(r, "applied", "created")

    # (row, LSN) -> revision, from the Debezium topic; row -> highest audited revision.
    def audited_revisions() -> dict[str, int]:
        rev_of: dict[tuple[str, int], int] = {}
        for rec in p.tail.records(TOPIC):
            env = debezium_payload(rec.value)
            if env and env.get("after") and env["after"]["id"] in rows:
                rev_of[(env["after"]["id"], int(env["source"]["lsn"]))] = int(env["after"]["rev"])
        best = dict.fromkeys(rows, 0)
        for audit in p.audits():
            doc = audit.get("doc_id")
            if doc in best and audit["outcome"] == "applied":
                rev = rev_of.get((doc, audit["doc_version"]))
                if rev is not None:
                    best[doc] = max(best[doc], rev)
        return best

    updates = 1000
    writer_done = threading.Event()
    writer_error: list[BaseException] = []
    write_took: list[float] = []

    def writer() -> None:
        try:
            for start in range(0, updates, 50):  # 20 psql runs of 50 one-row transactions
                script = "".join(
                    f"UPDATE documents SET rev = rev + 1, body = 'rev ' || (rev + 1) "
                    f"WHERE id = '{rows[k % len(rows)]}';\n"
                    for k in range(start, start + 50)
                )
                p.sql(script)
                time.sleep(0.1)  # let the reader interleave with the flow of changes
        except BaseException as exc:
            writer_error.append(exc)
        finally:
            write_took.append(time.monotonic() - started)
            writer_done.set()

    stale: list[str] = []
    reads = hits = misses = 0
    thread = threading.Thread(target=writer, name="burst-writer")
    started = time.monotonic()
    thread.start()

    # The reader: cache-aside with a ticket (value = the revision it was computed from, read
    # from Postgres after the ticket), then read it back and compare with what was audited.
    def audited_all() -> bool:
        n = sum(a["event_type"] == "updated" and a["doc_id"] in rows for a in p.audits())
        return n >= updates

    # Read until every update's invalidation is audited (and at least 100 reads).
    while not (writer_done.is_set() and audited_all()) or reads < 100:
        audited = audited_revisions()  # taken before this round's reads
        for row in rows:
            query = f"what is {row}"
            before = audited[row]
            got = sr.get(query)
            reads += 1
            if got is None:
                misses += 1
                lookup = sr.lookup(query)
                (rev_text,) = p.sql(f"SELECT rev FROM documents WHERE id = '{row}'").split()
                sr.set(query, [SearchHit(row, float(rev_text))], ticket=lookup.ticket)
            else:
                hits += 1
                served = int(got[0].score)
                if served < before:
                    stale.append(f"{row}: served rev {served} after rev {before} was audited")
        if time.monotonic() - started > 120:
            break
    thread.join(60)
    assert not writer_error, writer_error

    final = {r: int(p.sql(f"SELECT rev FROM documents WHERE id = '{r}'")) for r in rows}
    assert sum(v - 1 for v in final.values()) == updates

    # Every update audited, per row in strictly increasing LSN order.
    def all_audited(_: list[Record]) -> bool:
        return all(
            sum(a["event_type"] == "updated" for a in p.audits(r)) >= final[r] - 1 for r in rows
        )

    p.tail.wait(all_audited, timeout=90, what=f"audits of {updates} updates")
    for r in rows:
        mine = [a for a in p.audits(r) if a["event_type"] == "updated"]
        assert all(a["outcome"] == "applied" for a in mine), {a["outcome"] for a in mine}
        versions = [a["doc_version"] for a in mine]
        assert len(versions) == final[r] - 1
        assert all(a < b for a, b in itertools.pairwise(versions)), r
    assert audited_revisions() == final

    # After the last audit, a read is a miss or the newest revision.
    for r in rows:
        got = sr.get(f"what is {r}")
        assert got is None or int(got[0].score) == final[r], (r, got, final[r])

    print(
        f"burst ({'schemas' if p.schemas else 'plain'}): {updates} updates written in "
        f"{write_took[0]:.1f}s, all audited after {time.monotonic() - started:.1f}s; "
        f"reader: {reads} reads, {hits} hits, {misses} misses, {len(stale)} stale"
    )
    assert stale == [], f"{len(stale)} stale reads of {reads}: {stale[:5]}"
    assert hits > 0 and misses > len(rows), (hits, misses)  # the reader did cache and read
