"""Debezium change events shaped like the Postgres connector's (2.x) output through
Kafka Connect's JSON converter, with (``schemas.enable=true``, the default) and
without schemas, for the unit and integration tests.

Table::

    CREATE TABLE public.documents (
      id bigint PRIMARY KEY, collection text NOT NULL, title text,
      tags text[], chunks jsonb, content_hash text, revision bigint
    );
"""

from __future__ import annotations

import json
from typing import Any

TOPIC = "pg.public.documents"
RULES = """
[[debezium]]
topic = "pg.public.documents"
doc_id = "id"
collection = "collection"
tags = "tags"
chunks = "chunks"
content_hash = "content_hash"
"""

_ROW_FIELDS: list[dict[str, Any]] = [
    {"type": "int64", "optional": False, "field": "id"},
    {"type": "string", "optional": False, "field": "collection"},
    {"type": "string", "optional": True, "field": "title"},
    {
        "type": "array",
        "items": {"type": "string", "optional": True},
        "optional": True,
        "field": "tags",
    },
    {
        "type": "string",
        "optional": True,
        "name": "io.debezium.data.Json",
        "version": 1,
        "field": "chunks",
    },
    {"type": "string", "optional": True, "field": "content_hash"},
    {"type": "int64", "optional": True, "field": "revision"},
]
_SOURCE_FIELDS: list[dict[str, Any]] = [
    {"type": "string", "optional": False, "field": "version"},
    {"type": "string", "optional": False, "field": "connector"},
    {"type": "string", "optional": False, "field": "name"},
    {"type": "int64", "optional": False, "field": "ts_ms"},
    {"type": "string", "optional": True, "field": "snapshot", "name": "io.debezium.data.Enum"},
    {"type": "string", "optional": False, "field": "db"},
    {"type": "string", "optional": True, "field": "sequence"},
    {"type": "string", "optional": False, "field": "schema"},
    {"type": "string", "optional": False, "field": "table"},
    {"type": "int64", "optional": True, "field": "txId"},
    {"type": "int64", "optional": True, "field": "lsn"},
    {"type": "int64", "optional": True, "field": "xmin"},
]


def row(
    doc_id: int,
    collection: str = "handbook",
    *,
    tags: list[str] | None = None,
    chunks: list[dict[str, str]] | None = None,
    content_hash: str | None = "sha256:0a1b",
    revision: int | None = 1,
) -> dict[str, Any]:
    """A row of public.documents as Debezium writes it (jsonb as a JSON string)."""
    return {
        "id": doc_id,
        "collection": collection,
        "title": f"Document {doc_id}",
        "tags": tags,
        "chunks": None if chunks is None else json.dumps(chunks),
        "content_hash": content_hash,
        "revision": revision,
    }


def envelope(
    op: str,
    *,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    lsn: int = 24023928,
    ts_ms: int = 1732600000123,
    name: str = "pg",
    snapshot: str = "false",
) -> dict[str, Any]:
    """A change event (the envelope, as without schemas)."""
    return {
        "before": before,
        "after": after,
        "source": {
            "version": "2.7.3.Final",
            "connector": "postgresql",
            "name": name,
            "ts_ms": ts_ms,
            "snapshot": snapshot,
            "db": "app",
            "sequence": json.dumps([str(lsn - 64), str(lsn)]),
            "schema": "public",
            "table": "documents",
            "txId": 742,
            "lsn": lsn,
            "xmin": None,
        },
        "op": op,
        "ts_ms": ts_ms + 250,
        "transaction": None,
    }


def with_schema(payload: dict[str, Any]) -> dict[str, Any]:
    """The JSON converter's ``{"schema", "payload"}`` (``schemas.enable=true``)."""
    row_schema = {
        "type": "struct",
        "fields": _ROW_FIELDS,
        "optional": True,
        "name": "pg.public.documents.Value",
    }
    return {
        "schema": {
            "type": "struct",
            "fields": [
                {**row_schema, "field": "before"},
                {**row_schema, "field": "after"},
                {
                    "type": "struct",
                    "fields": _SOURCE_FIELDS,
                    "optional": False,
                    "name": "io.debezium.connector.postgresql.Source",
                    "field": "source",
                },
                {"type": "string", "optional": False, "field": "op"},
                {"type": "int64", "optional": True, "field": "ts_ms"},
            ],
            "optional": False,
            "name": "pg.public.documents.Envelope",
            "version": 2,
        },
        "payload": payload,
    }


def key(doc_id: int, *, schemas: bool = True) -> bytes:
    """The record key: the primary key as JSON."""
    if not schemas:
        return json.dumps({"id": doc_id}).encode()
    return json.dumps(
        {
            "schema": {
                "type": "struct",
                "fields": [{"type": "int64", "optional": False, "field": "id"}],
                "optional": False,
                "name": "pg.public.documents.Key",
            },
            "payload": {"id": doc_id},
        }
    ).encode()


def encode(value: dict[str, Any] | None) -> bytes | None:
    return None if value is None else json.dumps(value).encode()
