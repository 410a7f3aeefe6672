"""The key scheme: encoding, hash tags and glob escaping (no services)."""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cachebus.errors import ConfigError, KeyEncodingError
from cachebus.keys import KeyScheme, Tag, decode_part, encode_part, escape_glob, key_digest
from tests.globmatch import redis_glob_match

HOSTILE = ["*", "a*", "[ab]", "x\\", "{t}", "a:b", "a b", "?", "\t\n", "ü/é", "%2A", "}{"]
SAFE = re.compile(r"^[A-Za-z0-9_.~%-]+$")


def hash_tag(key: str) -> str:
    """The part Redis Cluster hashes (first {...} with non-empty content)."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


class TestEncodePart:
    @given(st.text(min_size=1, max_size=200))
    def test_round_trips_and_is_safe(self, value: str) -> None:
        """Any text encodes to the safe alphabet and decodes back unchanged."""
        try:
            encoded = encode_part(value)
        except KeyEncodingError:
            # Only lone surrogates (not valid Unicode) may be refused.
            assert any(0xD800 <= ord(c) <= 0xDFFF for c in value)
            return
        assert SAFE.match(encoded)
        assert decode_part(encoded) == value

    @pytest.mark.parametrize("value", HOSTILE)
    def test_hostile_ids_never_reach_a_key_raw(self, value: str) -> None:
        """Glob, hash-tag and separator characters are always encoded."""
        encoded = encode_part(value)
        assert not set(encoded) & set(":{}*?[]\\ \t\n")

    def test_distinct_values_distinct_encodings(self) -> None:
        """Encoding is injective, so ids cannot collide through it."""
        encoded = {encode_part(v) for v in HOSTILE}
        assert len(encoded) == len(HOSTILE)

    @pytest.mark.parametrize("bad", ["", "x" * 2000])
    def test_rejects_empty_and_huge(self, bad: str) -> None:
        """Empty and oversized parts are clear errors."""
        with pytest.raises(KeyEncodingError):
            encode_part(bad)

    def test_rejects_non_text(self) -> None:
        """Only str is accepted."""
        with pytest.raises(KeyEncodingError):
            encode_part(123)  # type: ignore[arg-type]


class TestKeyScheme:
    @pytest.mark.parametrize("prefix", ["", "a:b", "c*", "{x}", "a b", "x" * 65])
    def test_rejects_bad_prefix(self, prefix: str) -> None:
        """Prefixes cannot carry separators, globs or hash tags."""
        with pytest.raises(ConfigError):
            KeyScheme(prefix)

    def test_document_keys_share_one_slot(self) -> None:
        """A document's stamp, embeddings and high-water mark share a hash tag."""
        keys = KeyScheme("cb")
        doc = "{weird}:*id"
        tags = {
            hash_tag(keys.stamp(Tag.doc(doc))),
            hash_tag(keys.document_embeddings(doc)),
            hash_tag(keys.hwm(doc)),
        }
        assert len(tags) == 1

    def test_query_embeddings_spread_over_slots(self) -> None:
        """Different texts of one model get different hash tags (no hot slot)."""
        keys = KeyScheme("cb")
        tags = {hash_tag(keys.query_embedding("m", "1", 0, f"q{i}", "epoch-01")) for i in range(50)}
        assert len(tags) == 50

    def test_query_embedding_key_layout(self) -> None:
        """The text's SHA-256 as unpadded base64url (43 characters) is the hash tag."""
        keys = KeyScheme("cb")
        digest = base64.urlsafe_b64encode(hashlib.sha256("héllo".encode()).digest())
        assert digest.endswith(b"=")
        expected = digest.rstrip(b"=").decode()
        assert len(expected) == 43
        assert keys.query_embedding("m", "1", 2, "héllo", "Ab3_-xYz") == (
            f"cb:qe:m:1:g2:eAb3_-xYz:{{{expected}}}"
        )

    @given(st.binary(max_size=64) | st.text(max_size=64))
    def test_key_digest_alphabet(self, data: bytes | str) -> None:
        """Nothing a glob, a hash tag or a key separator reads; fixed length."""
        digest = key_digest(data)
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", digest)

    def test_lease_shares_entry_slot(self) -> None:
        """A lease lives in the same slot as the entry it guards."""
        keys = KeyScheme("cb")
        entry = keys.search_results("news", 3, "abc")
        assert hash_tag(keys.lease(entry)) == hash_tag(entry)

    def test_generation_in_key(self) -> None:
        """A version bump changes the key."""
        keys = KeyScheme("cb")
        one = keys.query_embedding("m", "1", 1, "t", "e")
        assert one != keys.query_embedding("m", "1", 2, "t", "e")
        assert keys.query_embedding("m", "1", 1, "t", "e") != keys.query_embedding(
            "m", "1", 1, "t", "f"
        )

    def test_prefix_first(self) -> None:
        """Every key starts with the prefix (ACL fencing)."""
        keys = KeyScheme("tenant-a")
        for key in (
            keys.seq(),
            keys.stamp(Tag.user("x")),
            keys.generation("ns"),
            keys.document_embeddings("d"),
            keys.rerank_scores("m", "h"),
        ):
            assert key.startswith("tenant-a:")


class TestPatterns:
    @pytest.mark.parametrize("doc_id", HOSTILE)
    def test_pattern_matches_only_own_keys(self, doc_id: str) -> None:
        """A doc id full of glob characters matches its own legacy keys only."""
        keys = KeyScheme("cb")
        pattern = keys.pattern("legacy:{doc_id}:*", doc_id=doc_id)
        own = f"cb:legacy:{doc_id}:chunk1"
        others = [f"cb:legacy:{o}:chunk1" for o in [*HOSTILE, "b", "ab", "a", "x"] if o != doc_id]
        assert redis_glob_match(pattern, own)
        assert not any(redis_glob_match(pattern, other) for other in others)

    def test_missing_part_is_config_error(self) -> None:
        """A template naming an unknown part fails clearly."""
        with pytest.raises(ConfigError):
            KeyScheme("cb").pattern("legacy:{doc_id}:*")

    def test_escape_glob(self) -> None:
        """All five glob specials are escaped."""
        assert escape_glob("a*b?[c]\\") == "a\\*b\\?\\[c\\]\\\\"


def test_glob_helper_agrees_with_fnmatch_on_plain_patterns() -> None:
    """Sanity check of the test's own matcher."""
    for pattern, key in [("a*", "abc"), ("a?c", "abc"), ("[ab]x", "bx")]:
        assert redis_glob_match(pattern, key) == fnmatch.fnmatchcase(key, pattern)


def test_query_embedding_keys_in_bulk_match_the_single_key_digest() -> None:
    """``query_embeddings`` inlines ``key_digest`` for speed: same keys, any text."""
    from cachebus.keys import KeyScheme, key_digest

    keys = KeyScheme("cb")
    texts = ["", "a", "what is a vector?", "ünïcödé ✓", "\ud800 lone surrogate", "{tag}*?[]"]
    bulk = keys.query_embeddings("m", "1", 3, texts, "e")
    head = "cb:" + bulk[0].split(":", 1)[1].rsplit(":", 1)[0] + ":"
    assert head.endswith(":g3:ee:")
    assert bulk == [f"{head}{{{key_digest(t)}}}" for t in texts]
