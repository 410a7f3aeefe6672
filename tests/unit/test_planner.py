"""The planner: (event, rules) -> invalidation plan, as the README's rules table says (pure)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from cachebus.errors import ConfigError, KeyEncodingError
from cachebus.keys import KeyScheme, Tag
from cachebus.tags import DocumentInvalidation
from tests.globmatch import redis_glob_match
from tests.hostile_events import GLOB_DOC_IDS, HOSTILE, MAX_BYTES, OK, encode, valid_event
from worker.events import DocumentEvent, parse_event
from worker.planner import Action, Plan, plan
from worker.rules import EventRule, Rules, ScanRule, load_rules, parse_rules

KEYS = KeyScheme("cb")
RULES = load_rules()
LEGACY = "legacy:docembed:{doc_id}:*"
SCAN_RULES = replace(RULES, scans=(ScanRule(("updated", "deleted"), LEGACY),))
ALL_SCAN_RULES = replace(
    RULES, scans=(ScanRule(("created", "updated", "deleted"), "legacy:{collection}:{doc_id}:*"),)
)
OFF = Rules()
UPDATED = RULES.for_type("updated")
OK_CASES = [pytest.param(value, id=name) for name, value, expected in HOSTILE if expected == OK]
CHUNKS = [
    {"chunk_id": "c0", "content_hash": "sha256:00"},
    {"chunk_id": "c1", "content_hash": "sha256:01"},
]


def event(**overrides: Any) -> DocumentEvent:
    return parse_event(encode(valid_event(**overrides)), max_bytes=MAX_BYTES)


class TestCreated:
    def test_bumps_collection_and_revives(self) -> None:
        """created: revive the document and bump its collection's search results; nothing else."""
        result = plan(event(tags=["t1"], chunks=CHUNKS), RULES, KEYS)
        assert result == Plan(
            actions=(Action("revive", "doc:d1"), Action("bump", "search_results:c")),
            tags=(),
            document=DocumentInvalidation("d1", "revive", "none", (), if_below=1),
            bumps=(KEYS.search_namespace("c"),),
            scans=(),
        )

    def test_bump_namespace_is_the_encoded_collection(self) -> None:
        """The bumped namespace is KeyScheme.search_namespace of the raw collection."""
        result = plan(event(collection="news:{eu}*"), RULES, KEYS)
        assert result.bumps == ("sr.news%3A%7Beu%7D%2A",)
        assert result.bumps == (KEYS.search_namespace("news:{eu}*"),)
        assert result.actions[-1] == Action("bump", "search_results:news:{eu}*")


class TestUpdated:
    def test_with_chunks_drops_changed(self) -> None:
        """updated with chunks: tag the doc, drop changed embeddings (keep list = flattened
        (chunk_id, hash) pairs), invalidate user tags, bump the collection."""
        result = plan(event(event_type="updated", tags=["t1", "t2"], chunks=CHUNKS), RULES, KEYS)
        assert result.actions == (
            Action("tag", "doc:d1"),
            Action("drop_embeddings", "doc:d1", {"mode": "changed", "chunks_in_event": 2}),
            Action("tag", "tag:t1"),
            Action("tag", "tag:t2"),
            Action("bump", "search_results:c"),
        )
        assert result.document == DocumentInvalidation(
            "d1", "bump", "changed", ("c0", "sha256:00", "c1", "sha256:01"), if_below=1
        )
        assert result.tags == (Tag.user("t1"), Tag.user("t2"))
        assert result.bumps == ("sr.c",)
        assert result.scans == ()

    def test_without_chunks_drops_all(self) -> None:
        """updated without chunks cannot tell what changed, so it drops all embeddings."""
        result = plan(event(event_type="updated"), RULES, KEYS)
        assert result.document == DocumentInvalidation("d1", "bump", "all", (), if_below=1)
        assert Action("drop_embeddings", "doc:d1", {"mode": "all"}) in result.actions

    def test_chunk_ids_alone_drop_all(self) -> None:
        """chunk_ids without hashes do not allow a selective drop either."""
        result = plan(event(event_type="updated", chunk_ids=["c0", "c1"]), RULES, KEYS)
        assert result.document == DocumentInvalidation("d1", "bump", "all", (), if_below=1)

    def test_empty_chunks_keep_nothing(self) -> None:
        """chunks: [] means the document has no chunks now: changed mode with nothing kept."""
        result = plan(event(event_type="updated", chunks=[]), RULES, KEYS)
        assert result.document == DocumentInvalidation("d1", "bump", "changed", (), if_below=1)
        assert (
            Action("drop_embeddings", "doc:d1", {"mode": "changed", "chunks_in_event": 0})
            in result.actions
        )

    def test_hostile_tags_are_encoded(self) -> None:
        """User tags with glob and brace characters become encoded Tag tokens."""
        tags = ["team:*", "{t}", "a b", "[x]"]
        result = plan(event(event_type="updated", tags=tags), RULES, KEYS)
        assert result.tags == tuple(Tag.user(t) for t in tags)
        assert all(not set(t.token) & set(":{}*?[]\\ ") for t in result.tags)
        assert [a.target for a in result.actions if a.target.startswith("tag:")] == [
            f"tag:{t}" for t in tags
        ]


class TestDeleted:
    def test_tombstones_and_drops_all_without_bump(self) -> None:
        """deleted: tombstone, drop all embeddings, invalidate user tags, no version bump."""
        result = plan(event(event_type="deleted", tags=["t1"], chunks=CHUNKS), RULES, KEYS)
        assert result == Plan(
            actions=(
                Action("tombstone", "doc:d1"),
                Action("drop_embeddings", "doc:d1", {"mode": "all"}),
                Action("tag", "tag:t1"),
            ),
            tags=(Tag.user("t1"),),
            document=DocumentInvalidation("d1", "tomb", "all", (), if_below=1),
            bumps=(),
            scans=(),
        )


class TestScan:
    @pytest.mark.parametrize("doc_id", GLOB_DOC_IDS)
    def test_pattern_is_escaped_under_prefix(self, doc_id: str) -> None:
        """A scan rule's pattern is KeyScheme.pattern of the raw id: under the prefix,
        and matching the document's own legacy keys only."""
        result = plan(event(event_type="deleted", doc_id=doc_id), SCAN_RULES, KEYS)
        pattern = KEYS.pattern(LEGACY, doc_id=doc_id, collection="c")
        assert result.scans == (pattern,)
        assert result.actions[-1] == Action("scan", pattern)
        assert pattern.startswith("cb:legacy:docembed:")
        assert redis_glob_match(pattern, f"cb:legacy:docembed:{doc_id}:chunk0")
        others = [o for o in (*GLOB_DOC_IDS, "a", "ab", "b", "x", "xy", "t") if o != doc_id]
        assert not any(redis_glob_match(pattern, f"cb:legacy:docembed:{o}:chunk0") for o in others)

    @pytest.mark.parametrize(
        ("doc_id", "expected"),
        [
            ("*", "cb:legacy:docembed:\\*:*"),
            ("a*", "cb:legacy:docembed:a\\*:*"),
            ("[ab]", "cb:legacy:docembed:\\[ab\\]:*"),
            ("x\\", "cb:legacy:docembed:x\\\\:*"),
            ("?", "cb:legacy:docembed:\\?:*"),
            ("{t}", "cb:legacy:docembed:{t}:*"),
            ("a:b", "cb:legacy:docembed:a:b:*"),
        ],
    )
    def test_known_escapes(self, doc_id: str, expected: str) -> None:
        """'*' becomes '\\*' (and the other glob specials are escaped the same way)."""
        assert plan(event(event_type="updated", doc_id=doc_id), SCAN_RULES, KEYS).scans == (
            expected,
        )

    def test_only_listed_event_types_scan(self) -> None:
        """A rule for updated/deleted adds no scan to a created event."""
        result = plan(event(doc_id="*"), SCAN_RULES, KEYS)
        assert result.scans == ()
        assert all(a.kind != "scan" for a in result.actions)

    def test_collection_placeholder_and_prefix(self) -> None:
        """{collection} is escaped too, and the scheme's prefix leads the pattern."""
        keys = KeyScheme("tenant-a")
        result = plan(event(collection="c*", doc_id="[d]"), ALL_SCAN_RULES, keys)
        assert result.scans == ("tenant-a:legacy:c\\*:\\[d\\]:*",)
        assert result.bumps == (keys.search_namespace("c*"),)

    def test_placeholder_text_in_values_is_not_expanded(self) -> None:
        """A doc id that looks like a placeholder is inserted literally, not re-expanded."""
        result = plan(event(doc_id="{collection}", collection="x"), ALL_SCAN_RULES, KEYS)
        assert result.scans == ("cb:legacy:x:{collection}:*",)

    def test_rules_run_in_order(self) -> None:
        """Several matching scan rules give several patterns, in rule order."""
        rules = replace(
            RULES, scans=(ScanRule(("deleted",), "a:{doc_id}"), ScanRule(("deleted",), "b:*"))
        )
        result = plan(event(event_type="deleted", doc_id="*"), rules, KEYS)
        assert result.scans == ("cb:a:\\*", "cb:b:*")
        assert [a.target for a in result.actions if a.kind == "scan"] == list(result.scans)

    def test_unknown_placeholder_is_config_error(self) -> None:
        """Today a template naming an unknown part fails when an event is planned."""
        rules = replace(RULES, scans=(ScanRule(("deleted",), "x:{tenant}:*"),))
        with pytest.raises(ConfigError, match="tenant"):
            plan(event(event_type="deleted"), rules, KEYS)


class TestRulesOff:
    @pytest.mark.parametrize("kind", ["created", "updated", "deleted"])
    def test_all_off_is_empty_plan(self, kind: str) -> None:
        """With every rule off an event plans nothing at all."""
        result = plan(event(event_type=kind, tags=["t"], chunks=CHUNKS), OFF, KEYS)
        assert result == Plan(actions=())

    def test_no_collection_bump(self) -> None:
        """bump_collection = false: no bump action and no namespace."""
        rules = parse_rules({"created": {"revive": True}})
        result = plan(event(), rules, KEYS)
        assert result.bumps == ()
        assert [a.kind for a in result.actions] == ["revive"]

    def test_no_user_tags(self) -> None:
        """invalidate_tags = false: event tags are ignored."""
        rules = RULES.with_rule("updated", replace(UPDATED, invalidate_tags=False))
        result = plan(event(event_type="updated", tags=["t1"]), rules, KEYS)
        assert result.tags == ()
        assert Action("tag", "tag:t1") not in result.actions

    def test_keep_embeddings(self) -> None:
        """embeddings = none: the doc is still tagged but no embeddings are dropped."""
        rules = RULES.with_rule("updated", replace(UPDATED, embeddings="none"))
        result = plan(event(event_type="updated", chunks=CHUNKS), rules, KEYS)
        assert result.document == DocumentInvalidation("d1", "bump", "none", (), if_below=1)
        assert all(a.kind != "drop_embeddings" for a in result.actions)
        assert result.actions[0] == Action("tag", "doc:d1")

    def test_no_doc_tag(self) -> None:
        """invalidate_doc = false: no doc tag action (embeddings may still be dropped)."""
        rules = RULES.with_rule("updated", replace(UPDATED, invalidate_doc=False))
        result = plan(event(event_type="updated"), rules, KEYS)
        assert Action("tag", "doc:d1") not in result.actions

    def test_no_tombstone(self) -> None:
        """tombstone = false and embeddings = none on deleted: no document action."""
        rules = RULES.with_rule("deleted", EventRule(invalidate_tags=True))
        result = plan(event(event_type="deleted", tags=["t1"]), rules, KEYS)
        assert result.document is None
        assert result.actions == (Action("tag", "tag:t1"),)


class TestPurity:
    @pytest.mark.parametrize("value", OK_CASES)
    def test_same_input_same_plan(self, value: bytes) -> None:
        """Planning one event twice (even with a new KeyScheme) gives equal plans."""
        ev = parse_event(value, max_bytes=MAX_BYTES)
        assert plan(ev, ALL_SCAN_RULES, KEYS) == plan(ev, ALL_SCAN_RULES, KeyScheme("cb"))

    def test_event_and_rules_untouched(self) -> None:
        """Planning does not change the event or the rules."""
        ev = event(event_type="updated", tags=["t"], chunks=CHUNKS)
        before = (ev, dict(ev.raw), SCAN_RULES)
        plan(ev, SCAN_RULES, KEYS)
        assert (ev, ev.raw, SCAN_RULES) == before


class TestHostileCorpus:
    @pytest.mark.parametrize("value", OK_CASES)
    def test_ok_cases_plan(self, value: bytes) -> None:
        """Every valid hostile event plans under the defaults and under scan rules."""
        ev = parse_event(value, max_bytes=MAX_BYTES)
        for rules in (RULES, ALL_SCAN_RULES):
            result = plan(ev, rules, KEYS)
            assert result.actions
            assert all(s.startswith("cb:legacy:") for s in result.scans)

    @pytest.mark.parametrize("value", OK_CASES)
    def test_ok_cases_have_encodable_keys(self, value: bytes) -> None:
        """The keys the applier builds for a valid event can all be encoded."""
        ev = parse_event(value, max_bytes=MAX_BYTES)
        for key in (
            KEYS.hwm(ev.doc_id),
            KEYS.document_embeddings(ev.doc_id),
            KEYS.stamp(Tag.doc(ev.doc_id)),
            KEYS.generation(KEYS.search_namespace(ev.collection)),
            *(KEYS.stamp(Tag.user(t)) for t in ev.tags),
        ):
            assert key.startswith("cb:")
            key.encode("utf-8")

    @pytest.mark.parametrize("kind", ["created", "updated", "deleted"])
    def test_unencodable_doc_id_fails_at_planning(self, kind: str) -> None:
        """A doc id the key scheme refuses is refused by plan() (-> processing_error)."""
        ev = DocumentEvent(
            event_id="00000000-0000-4000-8000-000000000000",
            event_type=kind,  # type: ignore[arg-type]
            doc_id="\ud800",
            collection="c",
            doc_version=1,
            occurred_at="2026-01-01T00:00:00Z",
        )
        with pytest.raises(KeyEncodingError):
            plan(ev, RULES, KEYS)
