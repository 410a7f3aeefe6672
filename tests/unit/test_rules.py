"""Invalidation rules: shipped defaults, TOML overrides and config errors (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cachebus.errors import ConfigError
from cachebus.events import EventType
from worker.rules import EventRule, Rules, ScanRule, load_rules, merge_tables, parse_rules


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(text, "utf-8")
    return path


class TestDefaults:
    def test_defaults_match_design(self) -> None:
        """created bumps + revives; updated tags the doc, drops changed embeddings, bumps;
        deleted tombstones and drops all without a bump; no scans."""
        rules = load_rules()
        assert rules.for_type("created") == EventRule(bump_collection=True, revive=True)
        assert rules.for_type("updated") == EventRule(
            bump_collection=True, invalidate_doc=True, invalidate_tags=True, embeddings="changed"
        )
        assert rules.for_type("deleted") == EventRule(
            tombstone=True, embeddings="all", invalidate_tags=True
        )
        assert rules.scans == ()

    @pytest.mark.parametrize("path", [None, ""])
    def test_no_path_means_defaults(self, path: str | None) -> None:
        """None and an empty path (unset CACHEBUS_RULES_FILE) give the defaults."""
        assert load_rules(path) == load_rules()

    @pytest.mark.parametrize("kind", list(EventType))
    def test_for_type(self, kind: EventType) -> None:
        """for_type returns the rule of that event type, by member or by name."""
        rules = load_rules()
        assert rules.for_type(kind) is rules.by_type[kind] is rules.for_type(kind.value)

    def test_unknown_type_is_refused(self) -> None:
        """for_type and with_rule name the known types for an unknown one."""
        with pytest.raises(ValueError, match="created, updated, deleted"):
            load_rules().for_type("archived")
        with pytest.raises(ValueError, match="not an event type"):
            Rules({"archived": EventRule()})

    def test_empty_override_file_keeps_defaults(self, tmp_path: Path) -> None:
        """An empty override file changes nothing."""
        assert load_rules(write(tmp_path, "")) == load_rules()


class TestOverride:
    def test_merges_per_table(self, tmp_path: Path) -> None:
        """Keys left out of an override table keep their default values."""
        path = write(tmp_path, '[updated]\nembeddings = "all"\n\n[created]\nrevive = false\n')
        rules = load_rules(path)
        defaults = load_rules()
        assert rules.for_type("updated") == EventRule(
            bump_collection=True, invalidate_doc=True, invalidate_tags=True, embeddings="all"
        )
        assert rules.for_type("created") == EventRule(bump_collection=True, revive=False)
        assert rules.for_type("deleted") == defaults.for_type("deleted")

    def test_accepts_str_and_path(self, tmp_path: Path) -> None:
        """The path may be a str or a Path."""
        path = write(tmp_path, "[deleted]\ninvalidate_tags = false\n")
        assert load_rules(str(path)) == load_rules(path)
        assert load_rules(path).for_type("deleted").invalidate_tags is False

    def test_scan_rules_are_read(self, tmp_path: Path) -> None:
        """[[scan]] entries become ScanRules in file order."""
        path = write(
            tmp_path,
            '[[scan]]\nevents = ["updated", "deleted"]\npattern = "legacy:docembed:{doc_id}:*"\n'
            '[[scan]]\nevents = ["created"]\npattern = "legacy:sr:{collection}:*"\n',
        )
        assert load_rules(path).scans == (
            ScanRule(("updated", "deleted"), "legacy:docembed:{doc_id}:*"),
            ScanRule(("created",), "legacy:sr:{collection}:*"),
        )

    def test_merge_replaces_scan_list(self) -> None:
        """An override's scan list replaces the base list instead of extending it."""
        base = {
            "updated": {"invalidate_doc": True, "embeddings": "changed"},
            "scan": [{"events": ["deleted"], "pattern": "old:*"}],
        }
        override = {
            "updated": {"embeddings": "none"},
            "scan": [{"events": ["created"], "pattern": "new:*"}],
        }
        merged = merge_tables(base, override)
        assert merged["scan"] == [{"events": ["created"], "pattern": "new:*"}]
        assert merged["updated"] == {"invalidate_doc": True, "embeddings": "none"}
        assert base["scan"] == [{"events": ["deleted"], "pattern": "old:*"}]  # not mutated

    def test_empty_scan_list_turns_scans_off(self) -> None:
        """scan = [] in an override leaves no scan rules."""
        merged = merge_tables({"scan": [{"events": ["deleted"], "pattern": "old:*"}]}, {"scan": []})
        assert parse_rules(merged).scans == ()

    def test_parse_rules_of_nothing(self) -> None:
        """parse_rules({}) is all off: every flag false, embeddings none, no scans."""
        off = EventRule()
        assert parse_rules({}) == Rules({"created": off, "updated": off, "deleted": off})
        assert off == EventRule(False, False, False, "none", False, False)


class TestConfigErrors:
    @pytest.mark.parametrize(
        ("text", "message"),
        [
            pytest.param(
                "[updated]\nbump = true\n",
                r"rules \[updated\]: unknown keys \['bump'\]",
                id="unknown_key",
            ),
            pytest.param(
                "[deleted]\ntombstone = true\nrevive_it = 1\n",
                r"rules \[deleted\]: unknown keys \['revive_it'\]",
                id="unknown_key_beside_known",
            ),
            pytest.param(
                "[archived]\nbump_collection = true\n",
                r"rules: unknown tables \['archived'\]",
                id="unknown_table",
            ),
            pytest.param(
                '[updated]\nembeddings = "some"\n',
                r"rules \[updated\]\.embeddings must be changed, all or none",
                id="embeddings_unknown_word",
            ),
            pytest.param(
                '[updated]\nembeddings = "ALL"\n',
                r"rules \[updated\]\.embeddings must be changed, all or none",
                id="embeddings_upper_case",
            ),
            pytest.param(
                "[updated]\nembeddings = true\n",
                r"rules \[updated\]\.embeddings must be changed, all or none",
                id="embeddings_bool",
            ),
            pytest.param(
                "[deleted]\nembeddings = 1\n",
                r"rules \[deleted\]\.embeddings must be changed, all or none",
                id="embeddings_int",
            ),
            pytest.param(
                "[created]\nbump_collection = 1\n",
                r"rules \[created\]\.bump_collection must be true or false",
                id="flag_int",
            ),
            pytest.param(
                '[created]\nrevive = "true"\n',
                r"rules \[created\]\.revive must be true or false",
                id="flag_str",
            ),
            pytest.param(
                "[deleted]\ntombstone = 0\n",
                r"rules \[deleted\]\.tombstone must be true or false",
                id="flag_zero",
            ),
            pytest.param(
                '[[scan]]\nevents = ["deleted"]\n',
                r"rules \[\[scan\]\] #1: pattern must be a non-empty string",
                id="scan_without_pattern",
            ),
            pytest.param(
                '[[scan]]\nevents = ["deleted"]\npattern = ""\n',
                r"rules \[\[scan\]\] #1: pattern must be a non-empty string",
                id="scan_empty_pattern",
            ),
            pytest.param(
                '[[scan]]\nevents = ["deleted"]\npattern = 5\n',
                r"rules \[\[scan\]\] #1: pattern must be a non-empty string",
                id="scan_pattern_int",
            ),
            pytest.param(
                '[[scan]]\npattern = "x:*"\n',
                r"rules \[\[scan\]\] #1: events must list some of created, updated, deleted",
                id="scan_without_events",
            ),
            pytest.param(
                '[[scan]]\nevents = "deleted"\npattern = "x:*"\n',
                r"rules \[\[scan\]\] #1: events must list some of created, updated, deleted",
                id="scan_events_str",
            ),
            pytest.param(
                '[[scan]]\nevents = ["archived"]\npattern = "x:*"\n',
                r"rules \[\[scan\]\] #1: events must list some of created, updated, deleted",
                id="scan_unknown_event",
            ),
            pytest.param(
                '[[scan]]\nevents = ["deleted"]\npattern = "a:*"\n'
                '[[scan]]\nevents = ["removed"]\npattern = "b:*"\n',
                r"rules \[\[scan\]\] #2: events must list",
                id="second_scan_numbered",
            ),
        ],
    )
    def test_bad_override_is_config_error(self, tmp_path: Path, text: str, message: str) -> None:
        """Unknown keys or tables, bad embeddings, non-bool flags and bad scans fail clearly."""
        with pytest.raises(ConfigError, match=message):
            load_rules(write(tmp_path, text))

    def test_missing_file(self, tmp_path: Path) -> None:
        """A path that does not exist is a ConfigError naming the path."""
        path = tmp_path / "nope.toml"
        with pytest.raises(ConfigError, match=r"cannot read rules file .*nope\.toml"):
            load_rules(path)

    def test_directory(self, tmp_path: Path) -> None:
        """A directory instead of a file is a ConfigError."""
        with pytest.raises(ConfigError, match="cannot read rules file"):
            load_rules(tmp_path)

    def test_invalid_toml(self, tmp_path: Path) -> None:
        """A TOML syntax error is a ConfigError with the parser's message."""
        with pytest.raises(ConfigError, match=r"cannot read rules file .*line 1"):
            load_rules(write(tmp_path, "[updated\n"))

    def test_non_utf8_file(self, tmp_path: Path) -> None:
        """A file that is not UTF-8 is a ConfigError, not a UnicodeDecodeError."""
        path = tmp_path / "rules.toml"
        path.write_bytes(b"\xff\xfe[updated]\n")
        with pytest.raises(ConfigError, match="cannot read rules file"):
            load_rules(path)

    @pytest.mark.parametrize(
        "text",
        [
            "created = 5\n",
            'scan = "x"\n',
            "scan = 5\n",
            'scan = ["x"]\n',
            '[scan]\nevents = ["created"]\npattern = "x:*"\n',
            '[[scan]]\nevents = [["created"]]\npattern = "x:*"\n',
        ],
        ids=[
            "table_is_int",
            "scan_is_str",
            "scan_is_int",
            "scan_of_str",
            "scan_is_table",
            "events_nested",
        ],
    )
    def test_wrong_shapes(self, tmp_path: Path, text: str) -> None:
        """A table or scan entry of the wrong TOML type is a ConfigError."""
        with pytest.raises(ConfigError):
            load_rules(write(tmp_path, text))

    def test_unknown_placeholder(self, tmp_path: Path) -> None:
        """A scan pattern naming a part other than {doc_id}/{collection} fails at load time."""
        text = '[[scan]]\nevents = ["deleted"]\npattern = "legacy:{tenant}:{doc_id}:*"\n'
        with pytest.raises(ConfigError, match="tenant"):
            load_rules(write(tmp_path, text))
