"""The rules file's input tables: the library keeps ``[[debezium]]`` and
``[cloudevents]`` as written; the worker reads them with one-line ConfigErrors (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cachebus.errors import ConfigError
from cachebus.events import EventType
from cachebus.rules import load_rules, parse_rules
from worker.app import check_config, input_topics
from worker.settings import WorkerSettings
from worker.sources import CloudEventsConfig, DebeziumSource, parse_sources, sources_of

CONTRACT = """
[updated]
bump_collection = false

[[debezium]]
topic = "pg.public.documents"   # Kafka topic Debezium writes this table to (required)
doc_id = "id"                   # column giving doc_id
collection = "collection"       # column giving the collection ...
version = "lsn"
tags = "tags"
chunks = "chunks"
content_hash = "content_hash"
tombstones = "audit"

[[debezium]]
topic = "pg.public.faq"
doc_id = "slug"
collection_value = "handbook"
version = "revision"
tombstones = "ignore"

[cloudevents]
types = { "com.example.document.published" = "created" }
"""


def test_the_contract_file_loads_for_the_library_and_the_worker(tmp_path: Path) -> None:
    """The library reads its own tables and keeps the input tables; the worker maps them."""
    path = tmp_path / "rules.toml"
    path.write_text(CONTRACT)
    rules = load_rules(path)
    assert rules.for_type("updated").bump_collection is False  # the library's part
    assert set(rules.inputs) == {"debezium", "cloudevents"}
    sources = sources_of(rules)
    assert sources is sources_of(rules)  # parsed once
    assert sources.topics == ("pg.public.documents", "pg.public.faq")
    assert sources.debezium["pg.public.documents"] == DebeziumSource(
        topic="pg.public.documents",
        doc_id="id",
        collection="collection",
        tags="tags",
        chunks="chunks",
        content_hash="content_hash",
    )
    faq = sources.debezium["pg.public.faq"]
    assert (faq.collection, faq.collection_value, faq.version) == (None, "handbook", "revision")
    assert faq.tombstones == "ignore"
    ce = sources.cloudevents
    assert ce.event_type("com.example.document.published") is EventType.CREATED
    assert ce.event_type("com.example.doc.deleted") is EventType.DELETED
    assert ce.event_type("com.example.doc.archived") is None
    assert ce.event_type("deleted") is None  # a suffix needs its dot
    assert rules.with_rule("created", rules.for_type("created")).inputs == rules.inputs


def test_no_input_tables_means_native_events_only() -> None:
    sources = sources_of(load_rules())
    assert sources.topics == () and sources.cloudevents == CloudEventsConfig()


def test_the_library_still_refuses_unknown_tables() -> None:
    with pytest.raises(ConfigError, match="unknown tables"):
        parse_rules({"debezium_topics": []})


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"debezium": {"topic": "t"}}, r"written as \[\[debezium\]\] tables"),
        ({"debezium": ["t"]}, r"#1: must be a table"),
        ({"debezium": [{"doc_id": "id", "collection": "c"}]}, "topic is required"),
        ({"debezium": [{"topic": "t", "collection": "c"}]}, "'t': doc_id is required"),
        ({"debezium": [{"topic": "t", "doc_id": "id"}]}, "exactly one of collection"),
        (
            {
                "debezium": [
                    {"topic": "t", "doc_id": "id", "collection": "c", "collection_value": "x"}
                ]
            },
            "exactly one of collection",
        ),
        (
            {"debezium": [{"topic": "t", "doc_id": 1, "collection": "c"}]},
            "doc_id must be a non-empty string",
        ),
        (
            {"debezium": [{"topic": "t", "doc_id": "id", "collection": "c", "tombstones": "drop"}]},
            "tombstones must be",
        ),
        (
            {"debezium": [{"topic": "t", "doc_id": "id", "collection": "c", "colection": "x"}]},
            r"unknown keys \['colection'\]",
        ),
        (
            {"debezium": [{"topic": "t", "doc_id": "id", "collection": "c", "version": ""}]},
            "version must be a non-empty",
        ),
        (
            {"debezium": [{"topic": "t", "doc_id": "a", "collection": "c"}] * 2},
            "topic 't' is mapped twice",
        ),
        ({"cloudevents": {"types": {"x.y": "archived"}}}, "created, updated, deleted"),
        ({"cloudevents": {"types": ["x"]}}, "types must be a table"),
        ({"cloudevents": {"type": {}}}, r"unknown keys \['type'\]"),
        ({"cloudevents": 3}, r"\[cloudevents\] must be a table"),
    ],
)
def test_mistakes_are_one_line_config_errors(inputs: dict[str, object], message: str) -> None:
    rules = parse_rules(dict(inputs))  # the library accepts (does not read) these tables
    with pytest.raises(ConfigError, match=message) as info:
        parse_sources(rules.inputs)
    assert "\n" not in str(info.value)


def test_the_worker_refuses_to_start_on_a_bad_table(tmp_path: Path) -> None:
    """check_config (exit 2 before anything connects) reads the input tables, and a
    Debezium topic may not be one of the worker's own."""
    path = tmp_path / "rules.toml"
    path.write_text('[[debezium]]\ntopic = "t"\ndoc_id = "id"\n')
    with pytest.raises(ConfigError, match="exactly one of collection"):
        check_config(WorkerSettings(rules_file=str(path)))
    settings = WorkerSettings()
    own = parse_rules(
        {"debezium": [{"topic": settings.events_topic, "doc_id": "i", "collection": "c"}]}
    )
    with pytest.raises(ConfigError, match="events topic"):
        input_topics(settings, own)
    fine = parse_rules({"debezium": [{"topic": "pg.x", "doc_id": "i", "collection": "c"}]})
    assert input_topics(settings, fine) == (settings.events_topic, "pg.x")
