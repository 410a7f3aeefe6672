"""More hostile ``documents.events`` records, beyond ``tests/hostile_events.py``.

``HOSTILE_MORE`` holds :class:`Case` entries: a name, the raw record value
(``None`` is a Kafka tombstone: a record without a value), the expected
outcome, and optionally a document whose cached embedding the event must drop
(``drops``) or keep (``keeps``). The expected outcome is one of

* ``applied`` / ``skipped_duplicate`` / ``skipped_stale``: a valid event, audited so;
* a dead-letter reason of :func:`worker.events.parse_event` (``oversize``,
  ``invalid_encoding``, ``invalid_json``, ``unsupported_schema_version``,
  ``unknown_event_type``, ``schema_violation``): dead-lettered with that reason.

The records are published in order to one partition (one key), so the
duplicate-id cases see each other in order. Every valid case uses its own
document id (``hm-<case name>`` unless the case is about the id) so its
outcome is exact. No case targets a canary document, collection or tag: the
near-miss ids (``canary-*``, ``canary-1\\u0000``, a Cyrillic ``а``, ...) must
touch only their own keys. Build the worker with ``max_event_bytes=MAX_BYTES``.
Every record stays below Kafka's default 1 MB message limit.

Decisions recorded here:

* UTF-16/32 *without* a BOM, of ASCII-only JSON, is valid UTF-8 (NUL bytes are
  UTF-8) that is not JSON: ``invalid_json``. With a BOM, or with non-ASCII text,
  the bytes are not UTF-8: ``invalid_encoding``.
* A raw (unescaped) NUL byte is a control character JSON strings may not
  contain: ``invalid_json``. An escaped ``\\u0000`` is ordinary text: ids,
  collections, tags and chunk ids may contain it (they are percent-encoded).
* A lone surrogate escape anywhere (metadata, unknown fields, object keys) is
  not text: ``invalid_encoding``, like in the id fields.
* Numbers as strings are wrong types (``schema_violation``); integral JSON
  numbers (``1e2``, ``-0.0``) are integers (JSON Schema 2020-12).
* ``schema_version`` above 1 is ``unsupported_schema_version`` whatever the rest
  of the event looks like (a future event may have another shape); that
  includes ``2.0``, the integer 2 for JSON Schema (``1.0`` is accepted as 1). A
  string ``"2"`` or a fraction is not a version: ``schema_violation``.
* Duplicate event ids: the high-water mark of the *document* decides. The same
  id on another document, or on the same document with a higher version, is
  applied (invalidating is the safe side); at or below the mark it is skipped,
  as ``skipped_duplicate`` when the mark carries the same id, else
  ``skipped_stale``. Ids compare as strings (an upper-case copy is another id).
* ``occurred_at`` is only used for lag metrics; its pattern does not check
  calendar days, so ``2026-02-30`` is accepted.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, Final

from tests.hostile_events import valid_event

MAX_BYTES: Final = 700_000
"""The ``max_event_bytes`` the corpus is built for (below Kafka's 1 MB limit)."""

VALID_OUTCOMES: Final = ("applied", "skipped_duplicate", "skipped_stale")
DEAD_LETTER_REASONS: Final = (
    "oversize",
    "invalid_encoding",
    "invalid_json",
    "unsupported_schema_version",
    "unknown_event_type",
    "schema_violation",
)

CANARY_DOCS: Final = ("canary-1", "canary-10", "canary-", "canary")
"""Documents whose embeddings (chunk ``c``) and search results must survive."""
CANARY_COLLECTION: Final = "canary"
CANARY_TAG: Final = "canary-tag"
CANARY_MODEL: Final = "m"
CANARY_QUERY: Final = "canary"

DUP_ID: Final = "5d1c1a1e-0000-4000-8000-00000000d0b1"
"""The event id the duplicate-id cases share."""


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    value: bytes | None
    expected: str
    drops: str | None = None
    """A document whose cached embedding of chunk ``c`` the event must remove."""
    keeps: str | None = None
    """A document whose cached embedding of chunk ``c`` (hash ``h``) must survive."""


def _event(name: str, **overrides: Any) -> dict[str, Any]:
    overrides.setdefault("doc_id", f"hm-{name}")
    return valid_event(**overrides)


def _ascii(event: Any) -> bytes:
    return json.dumps(event).encode("utf-8")


def _utf8(event: Any) -> bytes:
    return json.dumps(event, ensure_ascii=False).encode("utf-8")


def _raw(event: dict[str, Any], marker: str, raw: bytes) -> bytes:
    """``event`` as JSON with the string ``marker`` (inside a value) replaced by raw bytes."""
    value = _ascii(event)
    assert value.count(marker.encode()) == 1, marker
    return value.replace(marker.encode(), raw)


def _chunks(n: int, *, first: tuple[str, str] | None = None) -> list[dict[str, str]]:
    out = [{"chunk_id": f"k{i}", "content_hash": f"sha256:{i:x}"} for i in range(n)]
    if first is not None:
        out[0] = {"chunk_id": first[0], "content_hash": first[1]}
    return out


def _build() -> list[Case]:
    cases: list[Case] = []

    def add(name: str, value: bytes | None, expected: str, **kw: str) -> None:
        cases.append(Case(name, value, expected, **kw))

    # -- a record without a value ----------------------------------------------------
    add("kafka_tombstone_null_value", None, "invalid_json")

    # -- encodings ----------------------------------------------------------------------
    text = json.dumps(_event("utf16"))
    add("utf16_le_without_bom", text.encode("utf-16-le"), "invalid_json")
    add("utf16_be_without_bom", text.encode("utf-16-be"), "invalid_json")
    add("utf16_be_with_bom", "\ufeff".encode("utf-16-be") + text.encode("utf-16-be"),
        "invalid_encoding")
    add("utf32_le_with_bom", text.encode("utf-32"), "invalid_encoding")
    add("utf32_be_without_bom", text.encode("utf-32-be"), "invalid_json")
    add(
        "utf16_le_without_bom_non_ascii",
        json.dumps(_event("u16na", doc_id="é文書"), ensure_ascii=False).encode("utf-16-le"),
        "invalid_encoding",
    )
    add("latin1_collection", _raw(_event("l1c", collection="MARK"), "MARK", "café".encode(
        "latin-1")), "invalid_encoding")
    add("latin1_tag", _raw(_event("l1t", event_type="updated", tags=["MARK"]), "MARK",
                           "naïve".encode("latin-1")), "invalid_encoding")
    add("cp1252_smart_quotes", _ascii(_event("cp")).replace(b'"doc_id"', b'\x93doc_id\x94'),
        "invalid_encoding")
    add("overlong_nul_c0_80", _raw(_event("ovn", doc_id="x-MARK"), "MARK", b"\xc0\x80"),
        "invalid_encoding")
    add("overlong_3_byte_slash", _raw(_event("ov3", doc_id="x-MARK"), "MARK", b"\xe0\x80\xaf"),
        "invalid_encoding")
    add("cesu8_surrogate_pair", _raw(_event("cesu", doc_id="x-MARK"), "MARK",
                                     b"\xed\xa0\xbd\xed\xb8\x80"), "invalid_encoding")
    add("raw_utf8_lone_surrogate_in_collection",
        _raw(_event("rls", collection="c-MARK"), "MARK", b"\xed\xb0\x80"), "invalid_encoding")
    add("five_byte_sequence", _raw(_event("five", doc_id="x-MARK"), "MARK",
                                   b"\xf8\x88\x80\x80\x80"), "invalid_encoding")
    add("above_u10ffff", _raw(_event("max", doc_id="x-MARK"), "MARK", b"\xf4\x90\x80\x80"),
        "invalid_encoding")
    add("truncated_multibyte", _raw(_event("trunc", doc_id="x-MARK"), "MARK", b"\xe6\x97"),
        "invalid_encoding")
    add("utf8_then_latin1",
        _raw(_event("mix", doc_id="ü-MARK"), "MARK", "ü".encode("latin-1")), "invalid_encoding")
    add("escaped_reversed_surrogate_pair", _ascii(_event("rev", doc_id="\udc00\ud800")),
        "invalid_encoding")
    add("escaped_lone_surrogate_in_metadata",
        _ascii(_event("lsm", metadata={"title": "t\ud800"})), "invalid_encoding")
    add("escaped_lone_surrogate_in_metadata_key",
        _ascii(_event("lsk", metadata={"\udfff": 1})), "invalid_encoding")
    add("escaped_lone_surrogate_in_unknown_field",
        _ascii(_event("lsu", trace="\ud800")), "invalid_encoding")
    add("bom_character_inside_doc_id", _utf8(_event("bomin", doc_id="\ufeffhm-bom")), "applied")
    add("noncharacters_in_doc_id", _utf8(_event("nonch", doc_id="hm-\ufffe\uffff")), "applied")

    # -- NUL in every string field -----------------------------------------------------
    add("nul_in_event_id", _ascii(_event("nid", event_id=str(uuid.uuid4())[:-1] + "\u0000")),
        "schema_violation")
    add("nul_in_event_type", _ascii(_event("nty", event_type="deleted\u0000")),
        "unknown_event_type")
    add("nul_in_collection", _ascii(_event("ncol", collection="canary\u0000")), "applied")
    add("nul_only_collection", _ascii(_event("ncol0", collection="\u0000")), "applied")
    add("nul_in_occurred_at", _ascii(_event("nocc", occurred_at="2026-01-01T00:00:00Z\u0000")),
        "schema_violation")
    add("nul_in_tags", _ascii(_event("ntag", event_type="updated",
                                     tags=[f"{CANARY_TAG}\u0000", "\u0000"])), "applied")
    add("nul_in_chunk_id", _ascii(_event("nchk", event_type="updated",
                                         chunks=[{"chunk_id": "c\u0000", "content_hash": "h"}])),
        "applied")
    add("nul_in_chunk_content_hash",
        _ascii(_event("nchh", event_type="updated", doc_id="hm-nul-hash",
                      chunks=[{"chunk_id": "c", "content_hash": "h\u0000"}])),
        "applied", drops="hm-nul-hash")
    add("nul_in_chunk_ids", _ascii(_event("nids", event_type="deleted", chunk_ids=["\u0000"])),
        "applied")
    add("nul_in_content_hash", _ascii(_event("nch", event_type="updated",
                                             content_hash="sha256:\u0000")), "applied")
    add("nul_in_source", _ascii(_event("nsrc", source="cms\u0000")), "applied")
    add("nul_in_nested_metadata", _ascii(_event("nmeta", metadata={"a": {"\u0000": ["\u0000"]}})),
        "applied")
    add("raw_nul_byte_in_string", _raw(_event("rawnul", doc_id="x-MARK"), "MARK", b"\x00"),
        "invalid_json")
    add("raw_nul_between_tokens", _ascii(_event("rawtok")).replace(b", ", b",\x00", 1),
        "invalid_json")
    add("nul_after_object", _ascii(_event("after")) + b"\x00", "invalid_json")

    # -- enormous tag lists ------------------------------------------------------------
    globby = [f"{i:03d}*?[]{{}}\\: " + "t" * 244 for i in range(256)]
    assert all(len(t) == 256 for t in globby)
    add("tags_256_of_256_chars_with_globs",
        _ascii(_event("tmax", event_type="updated", tags=globby)), "applied")
    add("tags_256_of_256_emoji_raw_utf8",
        _utf8(_event("temo", event_type="deleted", tags=[f"{i:03d}" + "😀" * 253
                                                         for i in range(256)])), "applied")
    add("tags_257_of_256_chars",
        _ascii(_event("t257", event_type="updated", tags=[*globby, "x" * 256])),
        "schema_violation")
    add("tags_50000", _ascii(_event("t50k", event_type="updated",
                                    tags=[f"t{i}" for i in range(50_000)])), "schema_violation")
    add("tags_80000_over_max_bytes",
        _ascii(_event("t80k", event_type="updated", tags=[f"t{i:05d}" for i in range(80_000)])),
        "oversize")
    add("tags_unique_only_by_nul_and_space",
        _ascii(_event("tnul", event_type="updated",
                      tags=[CANARY_TAG + s for s in ("\u0000", " ", "\t", "\u00a0", "\u200b")])),
        "applied")
    add("tags_nfc_and_nfd", _utf8(_event("tnfd", event_type="updated", tags=["é", "e\u0301"])),
        "applied")

    # -- deeply nested metadata ----------------------------------------------------------
    add("metadata_objects_500_deep",
        _ascii(_event("deep500", metadata={"m": "DEEP"})).replace(
            b'"DEEP"', b'{"a": ' * 500 + b"1" + b"}" * 500), "applied")
    add("metadata_arrays_500_deep_with_escapes",
        _ascii(_event("deeparr", metadata={"m": "DEEP"})).replace(
            b'"DEEP"', b"[" * 500 + b'"\\u00e9\\u0000"' + b"]" * 500), "applied")
    add("metadata_100000_deep",
        _ascii(_event("deep100k", metadata={"m": "DEEP"})).replace(
            b'"DEEP"', b"[" * 100_000 + b"]" * 100_000), "invalid_json")
    add("metadata_5000_deep_future_version",
        _ascii(_event("deepfv", schema_version=2, metadata={"m": "DEEP"})).replace(
            b'"DEEP"', b'{"a":' * 5000 + b"0" + b"}" * 5000), "invalid_json")
    add("metadata_20000_keys",
        _ascii(_event("wide", metadata={f"k{i}": [i, None, "*"] for i in range(20_000)})),
        "applied")

    # -- numbers as strings, and numbers at the edges ------------------------------------
    for name, value in [
        ("doc_version_string_one_deleted", "1"),
        ("doc_version_string_exponent", "1e3"),
        ("doc_version_string_hex", "0x10"),
        ("doc_version_string_padded", " 2"),
        ("doc_version_string_arabic_indic", "٣"),
        ("doc_version_string_empty", ""),
    ]:
        add(name, _ascii(_event(name, event_type="deleted", doc_version=value)),
            "schema_violation")
    add("schema_version_string_one_deleted",
        _ascii(_event("svs1", event_type="deleted", schema_version="1")), "schema_violation")
    add("doc_version_1e2_number", _ascii(_event("v1e2")).replace(
        b'"doc_version": 1', b'"doc_version": 1e2'), "applied")
    add("doc_version_negative_zero_float", _ascii(_event("vnz")).replace(
        b'"doc_version": 1', b'"doc_version": -0.0'), "applied")
    add("doc_version_1e400_overflows", _ascii(_event("v1e400")).replace(
        b'"doc_version": 1', b'"doc_version": 1e400'), "schema_violation")
    add("doc_version_2_pow_53_plus_1", _ascii(_event("v2p53", doc_version=2**53 + 1)),
        "schema_violation")
    add("doc_version_10_pow_30", _ascii(_event("v1e30", doc_version=10**30)), "schema_violation")

    # -- future schema versions ----------------------------------------------------------
    add("schema_version_2_deleted", _ascii(_event("sv2", event_type="deleted", schema_version=2)),
        "unsupported_schema_version")
    add("schema_version_99", _ascii(_event("sv99", schema_version=99)),
        "unsupported_schema_version")
    add("schema_version_2_pow_64", _ascii(_event("sv64", schema_version=2**64)),
        "unsupported_schema_version")
    add("schema_version_99_other_shape",
        _ascii({"schema_version": 99, "kind": "doc.moved", "ids": ["*"], "when": 1}),
        "unsupported_schema_version")
    add("schema_version_99_event_type_number",
        _ascii(_event("sv99t", schema_version=99, event_type=7)), "unsupported_schema_version")
    add("schema_version_string_2", _ascii(_event("svs2", schema_version="2")), "schema_violation")
    add("schema_version_1_5", _ascii(_event("sv15", schema_version=1.5)), "schema_violation")
    add("schema_version_2_0", _ascii(_event("sv20", schema_version=2.0)),
        "unsupported_schema_version")
    add("schema_version_1_0", _ascii(_event("sv10", schema_version=1.0)), "applied")
    add("schema_version_negative", _ascii(_event("svneg", schema_version=-1)), "schema_violation")
    add("schema_version_null", _ascii(_event("svnul", schema_version=None)), "schema_violation")

    # -- other fields at the edges -------------------------------------------------------
    add("event_type_trailing_space", _ascii(_event("ets", event_type="created ")),
        "unknown_event_type")
    add("event_type_fullwidth", _utf8(_event("etfw", event_type="ｄｅｌｅｔｅｄ")),
        "unknown_event_type")
    add("occurred_at_february_30", _ascii(_event("feb30", occurred_at="2026-02-30T00:00:00Z")),
        "applied")
    add("occurred_at_leap_second", _ascii(_event("leap", occurred_at="2016-12-31T23:59:60Z")),
        "schema_violation")

    # -- duplicate event ids with different content (in this order) -----------------------
    add("dup_id_first_created", _ascii(valid_event(event_id=DUP_ID, doc_id="hm-dup-a")),
        "applied")
    add("dup_id_same_doc_higher_version_deleted",
        _ascii(valid_event(event_id=DUP_ID, doc_id="hm-dup-a", event_type="deleted",
                           doc_version=2)), "applied", drops="hm-dup-a")
    add("dup_id_same_doc_same_version_updated",
        _ascii(valid_event(event_id=DUP_ID, doc_id="hm-dup-a", event_type="updated",
                           doc_version=2)), "skipped_duplicate")
    add("dup_id_same_doc_lower_version",
        _ascii(valid_event(event_id=DUP_ID, doc_id="hm-dup-a", doc_version=1)),
        "skipped_duplicate")
    add("dup_id_same_doc_higher_version_other_collection",
        _ascii(valid_event(event_id=DUP_ID, doc_id="hm-dup-a", event_type="updated",
                           collection="other", doc_version=3)), "applied")
    add("dup_id_other_doc", _ascii(valid_event(event_id=DUP_ID, doc_id="hm-dup-b",
                                               event_type="deleted")), "applied",
        drops="hm-dup-b")
    add("dup_id_upper_case_copy",
        _ascii(valid_event(event_id=DUP_ID.upper(), doc_id="hm-dup-b", event_type="updated")),
        "skipped_stale")

    # -- glob, brace, whitespace and confusable ids near the canaries ----------------------
    near = [
        ("glob_star", "canary-*"),
        ("glob_question", "canary-?"),
        ("glob_class", "canary-[0-9]"),
        ("glob_star_only_suffix", "canary*"),
        ("hash_tag_braces", "{canary-1}"),
        ("open_brace", "canary-{1"),
        ("trailing_space", "canary-1 "),
        ("leading_space", " canary-1"),
        ("trailing_tab_newline", "canary-1\t\n"),
        ("trailing_nul", "canary-1\u0000"),
        ("trailing_backslash", "canary-1\\"),
        ("percent_encoded_hyphen", "canary%2D1"),
        ("percent_encoded_nul", "canary-1%00"),
        ("upper_case", "CANARY-1"),
        ("cyrillic_a", "cаnary-1"),
        ("fullwidth", "ｃａｎａｒｙ-1"),
        ("non_breaking_hyphen", "canary\u20111"),
        ("zero_width_space", "canary-1\u200b"),
        ("combining_acute", "canary-1\u0301"),
        ("rtl_override", "\u202ecanary-1"),
        ("colon_separator", "canary:1"),
    ]
    for name, doc_id in near:
        add(f"near_canary_id_{name}", _utf8(_event(name, event_type="deleted", doc_id=doc_id)),
            "applied", drops=doc_id)
    for name, collection in [
        ("trailing_space", "canary "),
        ("glob", "canar*"),
        ("upper_case", "Canary"),
        ("cyrillic_a", "cаnary"),
        ("braces", "{canary}"),
    ]:
        add(f"near_canary_collection_{name}",
            _utf8(_event(f"nc-{name}", collection=collection)), "applied")
    add("near_canary_tags",
        _utf8(_event("ntags", event_type="updated",
                     tags=[f"{CANARY_TAG}*", "canary-ta?", "CANARY-TAG", "canary\u2010tag",
                           "{canary-tag}", f"{CANARY_TAG}%00"])), "applied")

    # -- huge chunk lists -------------------------------------------------------------------
    add("chunks_10000_changed",
        _ascii(_event("ch10k", event_type="updated", doc_id="hm-ch10k",
                      chunks=_chunks(10_000, first=("c", "h-new")))),
        "applied", drops="hm-ch10k")
    add("chunks_10000_unchanged_kept",
        _ascii(_event("ch10kk", event_type="updated", doc_id="hm-ch10kk",
                      chunks=_chunks(10_000, first=("c", "h")))),
        "applied", keeps="hm-ch10kk")
    add("chunks_10001", _ascii(_event("ch10001", event_type="updated", chunks=_chunks(10_001))),
        "schema_violation")
    add("chunk_ids_10000_deleted",
        _ascii(_event("cid10k", event_type="deleted", doc_id="hm-cid10k",
                      chunk_ids=[f"k{i}" for i in range(10_000)])),
        "applied", drops="hm-cid10k")
    add("chunk_ids_10001", _ascii(_event("cid10001", chunk_ids=[f"k{i}" for i in range(10_001)])),
        "schema_violation")
    add("chunks_glob_ids_10000",
        _ascii(_event("chglob", event_type="updated",
                      chunks=[{"chunk_id": f"*{i}?[", "content_hash": "h"}
                              for i in range(10_000)])), "applied")
    add("chunks_duplicate_ids_conflicting_hashes",
        _ascii(_event("chdup", event_type="updated",
                      chunks=[{"chunk_id": "c", "content_hash": "h"},
                              {"chunk_id": "c", "content_hash": "x"}])), "applied")
    add("chunk_content_hash_129_chars",
        _ascii(_event("chh129", event_type="updated",
                      chunks=[{"chunk_id": "c", "content_hash": "h" * 129}])), "schema_violation")
    add("chunks_8000_long_ids_over_max_bytes",
        _ascii(_event("chbig", event_type="updated",
                      chunks=[{"chunk_id": f"{i:05d}" + "c" * 55, "content_hash": "h"}
                              for i in range(8000)])), "oversize")
    return cases


HOSTILE_MORE: list[Case] = _build()

KNOWN_BUGS: dict[str, str] = {}
"""Cases where the code under test disagrees with the expected outcome today."""
