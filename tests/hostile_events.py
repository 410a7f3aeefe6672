"""A shared corpus of hostile ``documents.events`` record values.

``HOSTILE`` holds ``(case name, raw record value bytes, expected outcome)``. The
expected outcome is either a dead-letter reason of
:func:`worker.events.parse_event` (``oversize``, ``invalid_encoding``,
``invalid_json``, ``unsupported_schema_version``, ``unknown_event_type``,
``schema_violation``) or ``"ok"``: a valid event that is hostile all the same
(glob characters, hash-tag braces, NUL, limits exactly reached) and must be
planned, applied and audited safely.

Pass ``max_bytes=MAX_BYTES`` to ``parse_event``; the size cases are built
relative to it.

Decisions recorded here (see ``KNOWN_BUGS`` for where the code disagrees today):

* A lone UTF-16 surrogate escape (``"\\ud800"``) is valid JSON syntax and
  ``json.loads`` accepts it, but the result is not Unicode text: it cannot be
  encoded as UTF-8, so it can reach neither a Redis key (the key scheme refuses
  it) nor the UTF-8 audit and dead-letter messages. Such a record is rejected at
  the edge with ``invalid_encoding``. (A *paired* surrogate escape, e.g. an
  emoji, is ordinary text and ``ok``.)
* A UTF-8 byte order mark makes the value invalid JSON (RFC 8259 8.1: senders
  must not add one); UTF-16 input is ``invalid_encoding``.
* ``doc_version`` ``1.0`` is an integer for JSON Schema (2020-12, 6.1.1), so it
  is ``ok``; the parsed event must then carry the int ``1``.
* Duplicate object keys: the last one wins (Python's ``json``), ``ok``.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Final

MAX_BYTES: Final = 64_000
"""The ``max_bytes`` the corpus is built for."""

OK: Final = "ok"
DEAD_LETTER_REASONS: Final = (
    "oversize",
    "invalid_encoding",
    "invalid_json",
    "unsupported_schema_version",
    "unknown_event_type",
    "schema_violation",
)
REQUIRED_FIELDS: Final = (
    "event_id",
    "event_type",
    "doc_id",
    "collection",
    "doc_version",
    "occurred_at",
    "schema_version",
)
GLOB_DOC_IDS: Final = ("*", "a*", "[ab]", "x\\", "{t}", "a:b", "}{", "?", "a b\t\n", "%2A")
"""Doc ids full of Redis glob, hash-tag and separator characters (all valid)."""


def valid_event(**overrides: Any) -> dict[str, Any]:
    """A valid ``created`` event of document ``d1`` in collection ``c``."""
    event: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "event_type": "created",
        "doc_id": "d1",
        "collection": "c",
        "doc_version": 1,
        "occurred_at": "2026-01-01T00:00:00Z",
        "schema_version": 1,
    }
    event.update(overrides)
    return event


def encode(event: Any) -> bytes:
    """What a well-behaved producer sends (ASCII-escaped JSON)."""
    return json.dumps(event).encode("utf-8")


def without(name: str) -> dict[str, Any]:
    """A valid event lacking one field."""
    return {k: v for k, v in valid_event(event_type="updated").items() if k != name}


def with_raw(marker: str, raw: str, **overrides: Any) -> bytes:
    """A valid event whose string value ``marker`` is replaced by raw JSON text."""
    text = json.dumps(valid_event(**overrides))
    quoted = json.dumps(marker)
    assert text.count(quoted) == 1
    return text.replace(quoted, raw).encode("utf-8")


def padded_to(size: int, **overrides: Any) -> bytes:
    """A valid event padded (inside ``metadata``) to exactly ``size`` bytes."""
    base = encode(valid_event(metadata={"pad": ""}, **overrides))
    value = encode(valid_event(metadata={"pad": "x" * (size - len(base))}, **overrides))
    # event_id has a fixed length, so the size is exact
    assert len(value) == size, (len(value), size)
    return value


def _chunks(*ids: str) -> list[dict[str, str]]:
    return [{"chunk_id": c, "content_hash": f"sha256:{i:02x}"} for i, c in enumerate(ids)]


def _build() -> list[tuple[str, bytes, str]]:
    cases: list[tuple[str, bytes, str]] = []

    def add(name: str, value: bytes, expected: str) -> None:
        cases.append((name, value, expected))

    # -- not JSON at all ---------------------------------------------------------------
    add("empty_bytes", b"", "invalid_json")
    add("whitespace_only", b" \n\t ", "invalid_json")
    add("broken_json_truncated", encode(valid_event())[:-7], "invalid_json")
    add("broken_json_trailing_comma", b'{"event_id": "x",}', "invalid_json")
    add("broken_json_single_quotes", b"{'event_id': 'x'}", "invalid_json")
    add("two_json_documents", encode(valid_event()) * 2, "invalid_json")
    add("utf8_bom", b"\xef\xbb\xbf" + encode(valid_event()), "invalid_json")
    add(
        "nested_10000_levels",
        with_raw("DEEP", "[" * 10_000 + "]" * 10_000, metadata={"x": "DEEP"}),
        "invalid_json",
    )
    add("root_nested_10000_levels", b"[" * 10_000 + b"]" * 10_000, "invalid_json")
    add("integer_5000_digits", with_raw("NUM", "9" * 5000, doc_version="NUM"), "invalid_json")

    # -- not UTF-8 ---------------------------------------------------------------------
    add(
        "invalid_utf8_in_doc_id",
        encode(valid_event(doc_id="d-MARK")).replace(b"MARK", b"\xc3\x28\xff"),
        "invalid_encoding",
    )
    add(
        "latin1_doc_id",
        encode(valid_event(doc_id="MARK")).replace(b"MARK", "é".encode("latin-1")),
        "invalid_encoding",
    )
    add("utf16_le_with_bom", json.dumps(valid_event()).encode("utf-16"), "invalid_encoding")
    add(
        "overlong_utf8_slash",
        encode(valid_event(doc_id="a-MARK")).replace(b"MARK", b"\xc0\xaf"),
        "invalid_encoding",
    )
    add("lone_surrogate_doc_id", encode(valid_event(doc_id="\ud800")), "invalid_encoding")
    add("lone_surrogate_event_id", encode(valid_event(event_id="\ud800")), "invalid_encoding")
    add(
        "lone_surrogate_collection",
        encode(valid_event(event_type="deleted", collection="c\udc00")),
        "invalid_encoding",
    )
    add(
        "lone_surrogate_tag",
        encode(valid_event(event_type="updated", tags=["t\ud800"])),
        "invalid_encoding",
    )

    # -- JSON, but not an object ---------------------------------------------------------
    add("json_array", encode([valid_event()]), "schema_violation")
    add("json_bare_string", b'"created"', "schema_violation")
    add("json_null", b"null", "schema_violation")
    add("json_number", b"42", "schema_violation")
    add("json_true", b"true", "schema_violation")

    # -- missing or wrongly typed fields ---------------------------------------------------
    for name in REQUIRED_FIELDS:
        add(f"missing_{name}", encode(without(name)), "schema_violation")
    add("doc_version_string", encode(valid_event(doc_version="3")), "schema_violation")
    add("doc_version_fraction", encode(valid_event(doc_version=1.5)), "schema_violation")
    add("doc_version_true", encode(valid_event(doc_version=True)), "schema_violation")
    add("doc_version_negative", encode(valid_event(doc_version=-1)), "schema_violation")
    add("doc_version_2_pow_63", encode(valid_event(doc_version=2**63)), "schema_violation")
    add("doc_version_2_pow_53", encode(valid_event(doc_version=2**53)), "schema_violation")
    add("doc_version_null", encode(valid_event(doc_version=None)), "schema_violation")
    add("doc_version_nan", encode(valid_event(doc_version=float("nan"))), "schema_violation")
    add("doc_version_infinity", encode(valid_event(doc_version=float("inf"))), "schema_violation")
    add("doc_id_number", encode(valid_event(doc_id=7)), "schema_violation")
    add("doc_id_null", encode(valid_event(doc_id=None)), "schema_violation")
    add("doc_id_empty", encode(valid_event(doc_id="")), "schema_violation")
    add("doc_id_513_chars", encode(valid_event(doc_id="d" * 513)), "schema_violation")
    add("collection_empty", encode(valid_event(collection="")), "schema_violation")
    add("collection_list", encode(valid_event(collection=["c"])), "schema_violation")
    add("event_id_not_uuid", encode(valid_event(event_id="not-a-uuid")), "schema_violation")
    add(
        "event_id_uuid_without_hyphens",
        encode(valid_event(event_id=uuid.uuid4().hex)),
        "schema_violation",
    )
    add(
        "event_id_uuid_trailing_newline",
        encode(valid_event(event_id=f"{uuid.uuid4()}\n")),
        "schema_violation",
    )
    add("event_id_number", encode(valid_event(event_id=12345)), "schema_violation")
    add(
        "occurred_at_space_separator",
        encode(valid_event(occurred_at="2026-01-01 00:00:00Z")),
        "schema_violation",
    )
    add(
        "occurred_at_without_offset",
        encode(valid_event(occurred_at="2026-01-01T00:00:00")),
        "schema_violation",
    )
    add(
        "occurred_at_lowercase_t",
        encode(valid_event(occurred_at="2026-01-01t00:00:00z")),
        "schema_violation",
    )
    add("occurred_at_words", encode(valid_event(occurred_at="yesterday")), "schema_violation")
    add("occurred_at_epoch_number", encode(valid_event(occurred_at=1767225600)), "schema_violation")
    add("schema_version_string", encode(valid_event(schema_version="1")), "schema_violation")
    add("schema_version_zero", encode(valid_event(schema_version=0)), "schema_violation")
    add("schema_version_true", encode(valid_event(schema_version=True)), "schema_violation")
    add("event_type_number", encode(valid_event(event_type=1)), "schema_violation")
    add("event_type_null", encode(valid_event(event_type=None)), "schema_violation")
    add("tags_string", encode(valid_event(tags="a,b")), "schema_violation")
    add(
        "tags_257_items",
        encode(valid_event(tags=[f"t{i}" for i in range(257)])),
        "schema_violation",
    )
    add("tag_300_chars", encode(valid_event(tags=["t" * 300])), "schema_violation")
    add("tag_empty", encode(valid_event(tags=[""])), "schema_violation")
    add("tag_number", encode(valid_event(tags=[1])), "schema_violation")
    add("tags_duplicate", encode(valid_event(tags=["a", "a"])), "schema_violation")
    add(
        "chunk_without_content_hash",
        encode(valid_event(event_type="updated", chunks=[{"chunk_id": "c0"}])),
        "schema_violation",
    )
    add(
        "chunk_id_empty",
        encode(valid_event(event_type="updated", chunks=_chunks(""))),
        "schema_violation",
    )
    add(
        "chunks_object",
        encode(valid_event(event_type="updated", chunks={"c0": "h"})),
        "schema_violation",
    )
    add("chunk_ids_numbers", encode(valid_event(chunk_ids=[1, 2])), "schema_violation")
    add("metadata_array", encode(valid_event(metadata=["x"])), "schema_violation")
    add("content_hash_empty", encode(valid_event(content_hash="")), "schema_violation")

    # -- unknown kinds and versions --------------------------------------------------------
    add("event_type_archived", encode(valid_event(event_type="archived")), "unknown_event_type")
    add("event_type_capitalised", encode(valid_event(event_type="Created")), "unknown_event_type")
    add("event_type_empty", encode(valid_event(event_type="")), "unknown_event_type")
    add(
        "event_type_10000_chars", encode(valid_event(event_type="x" * 10_000)), "unknown_event_type"
    )
    add("schema_version_2", encode(valid_event(schema_version=2)), "unsupported_schema_version")
    add(
        "schema_version_2_new_shape",
        encode({"schema_version": 2, "event_type": "moved", "id": "d1"}),
        "unsupported_schema_version",
    )

    # -- size ------------------------------------------------------------------------------
    add("oversize_valid_event", padded_to(MAX_BYTES + 1), "oversize")
    add("oversize_garbage", b"\xff" * (MAX_BYTES + 1), "oversize")
    add("exactly_max_bytes", padded_to(MAX_BYTES), OK)

    # -- valid but hostile -----------------------------------------------------------------
    for i, doc_id in enumerate(GLOB_DOC_IDS):
        kind = ("created", "updated", "deleted")[i % 3]
        add(f"glob_doc_id_{i}_{kind}", encode(valid_event(event_type=kind, doc_id=doc_id)), OK)
    add("nul_in_doc_id", encode(valid_event(event_type="updated", doc_id="a\u0000b")), OK)
    add("only_nul_doc_id", encode(valid_event(event_type="deleted", doc_id="\u0000")), OK)
    add(
        "emoji_surrogate_pair_doc_id",
        b'{"event_id": "%s", "event_type": "updated", '
        b'"doc_id": "\\ud83d\\ude00", "collection": "c", "doc_version": 1, '
        b'"occurred_at": "2026-01-01T00:00:00Z", "schema_version": 1}' % str(uuid.uuid4()).encode(),
        OK,
    )
    add(
        "raw_utf8_doc_id",
        json.dumps(valid_event(doc_id="ü/é 文書"), ensure_ascii=False).encode("utf-8"),
        OK,
    )
    add("glob_collection", encode(valid_event(collection="c:{weird}*[x]?\\")), OK)
    add(
        "glob_tags",
        encode(valid_event(event_type="updated", tags=["team:*", "{t}", "a b", "[x]"])),
        OK,
    )
    add(
        "glob_chunk_ids",
        encode(valid_event(event_type="updated", chunks=_chunks("*", "[c]", "x\\", "{d1}"))),
        OK,
    )
    add("glob_chunk_ids_list", encode(valid_event(event_type="deleted", chunk_ids=["*", "?"])), OK)
    add(
        "tags_256_items",
        encode(valid_event(event_type="updated", tags=[f"t{i}" for i in range(256)])),
        OK,
    )
    add("tag_256_chars", encode(valid_event(event_type="deleted", tags=["t" * 256])), OK)
    add("doc_id_512_chars", encode(valid_event(event_type="updated", doc_id="*" * 512)), OK)
    add("collection_256_chars", encode(valid_event(collection="{" * 256)), OK)
    add("doc_version_zero", encode(valid_event(doc_version=0)), OK)
    add("doc_version_2_pow_53_minus_1", encode(valid_event(doc_version=2**53 - 1)), OK)
    add("doc_version_integral_float", encode(valid_event(doc_version=1.0)), OK)
    add("event_id_uppercase", encode(valid_event(event_id=str(uuid.uuid4()).upper())), OK)
    add(
        "occurred_at_offset_and_nanos",
        encode(valid_event(occurred_at="1999-12-31T23:59:59.123456789-05:30")),
        OK,
    )
    add(
        "extra_unknown_fields",
        encode(valid_event(trace_id="t", priority=["high"], x={"y": None}, keys="*")),
        OK,
    )
    add("nested_100_levels", with_raw("DEEP", "[" * 100 + "]" * 100, metadata={"x": "DEEP"}), OK)
    add("duplicate_key_last_wins", with_raw("DUP", '"ignored", "doc_id": "*"', doc_id="DUP"), OK)
    add(
        "metadata_with_nul_and_globs",
        encode(valid_event(metadata={"\u0000": "*", "{": [None]})),
        OK,
    )
    add(
        "empty_optional_lists",
        encode(valid_event(event_type="updated", tags=[], chunks=[], chunk_ids=[])),
        OK,
    )
    add("updated_without_chunks", encode(valid_event(event_type="updated", doc_id="*")), OK)
    return cases


HOSTILE: list[tuple[str, bytes, str]] = _build()

KNOWN_BUGS: dict[str, str] = {}
"""Cases where the code under test disagrees with the expected outcome today."""
