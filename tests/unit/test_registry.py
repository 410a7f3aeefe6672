"""The layer registry (cachebus.registry) is the one list of layers: settings, keys,
both buses, ``cachebus stats`` and the planner derive from it and agree with it."""

from __future__ import annotations

from dataclasses import fields

import pytest

from cachebus import registry
from cachebus.answers import AnswerRequest
from cachebus.bus import CacheBus
from cachebus.errors import ConfigError
from cachebus.keys import KeyScheme
from cachebus.layer import AsyncShell, LayerCore, SyncShell
from cachebus.planning import DocumentEvent, plan
from cachebus.rules import load_rules
from cachebus.settings import STAMPED_TTLS, Settings
from worker import stats as stats_command

NAMES = [s.name for s in registry.LAYERS]


def test_fixed_order_and_unique_names_and_segments() -> None:
    assert NAMES == [
        "query_embeddings",
        "document_embeddings",
        "search_results",
        "rerank_scores",
        "answers",
    ]
    segments = [s.key_segment for s in registry.LAYERS]
    assert len(set(NAMES)) == len(NAMES) and len(set(segments)) == len(segments)
    assert not set(segments) & registry.CONTROL_SEGMENTS


@pytest.mark.parametrize("spec", registry.LAYERS, ids=NAMES)
def test_every_ttl_setting_is_a_settings_field_with_the_registry_default(spec) -> None:
    by_name = {f.name: f for f in fields(Settings)}
    assert spec.ttl_setting in by_name
    assert by_name[spec.ttl_setting].default == spec.default_ttl
    assert by_name[spec.ttl_setting].type in (int, "int")


@pytest.mark.parametrize("spec", registry.LAYERS, ids=NAMES)
def test_classes_resolve_and_name_their_layer(spec) -> None:
    core, sync_shell, async_shell = (
        spec.resolve("core"),
        spec.resolve("sync_shell"),
        spec.resolve("async_shell"),
    )
    assert issubclass(core, LayerCore) and core.layer_name == spec.name
    assert issubclass(sync_shell, SyncShell) and issubclass(async_shell, AsyncShell)


@pytest.mark.parametrize("spec", registry.LAYERS, ids=NAMES)
def test_every_ttl_is_validated(spec) -> None:
    with pytest.raises(ConfigError, match=spec.ttl_setting):
        Settings().with_(**{spec.ttl_setting: 0})
    if spec.tagged:
        with pytest.raises(ConfigError, match="stamp_ttl"):
            Settings().with_(**{spec.ttl_setting: Settings().stamp_ttl})


def test_stamped_ttls_are_the_tagged_layers() -> None:
    assert set(STAMPED_TTLS) == {s.ttl_setting for s in registry.LAYERS if s.tagged}
    assert "query_embedding_ttl" not in STAMPED_TTLS


def test_keys_use_the_registry_segments() -> None:
    keys = KeyScheme("p")
    seg = registry.SEGMENTS
    assert keys.query_embedding("m", "1", 0, "t", "e").startswith(f"p:{seg['query_embeddings']}:")
    assert keys.document_embeddings("d").startswith(f"p:{seg['document_embeddings']}:")
    assert keys.search_results("c", 0, "x").startswith(f"p:{seg['search_results']}:")
    assert keys.rerank_scores("m", "x").startswith(f"p:{seg['rerank_scores']}:")
    assert keys.entry("answers", ["c", "m:1"], "x") == f"p:{seg['answers']}:c:m%3A1:{{x}}"
    assert keys.search_namespace("c*") == keys.namespace("sr", "c*") == "sr.c%2A"
    assert keys.query_namespace("m", "1") == "qe.m.1"


def test_bus_stats_and_cachebus_stats_list_every_layer() -> None:
    assert [seg for seg, _ in stats_command.LAYERS] == [s.key_segment for s in registry.LAYERS]
    assert set(stats_command.LABELS.values()) == {s.stats_label for s in registry.LAYERS}
    from cachebus.bus import _stats

    assert list(_stats([], None)["layers"]) == NAMES


def test_bus_builds_only_registered_layers() -> None:
    class NotALayer(SyncShell[LayerCore]):
        pass

    import redis

    bus = CacheBus(redis.Redis(), Settings())
    with pytest.raises(TypeError, match="not the sync shell"):
        bus.layer(NotALayer, "x")
    assert bus.search_results("c") is bus.layer(
        registry.spec("search_results").resolve("sync_shell"), "c"
    )


def test_planner_bumps_the_collection_bumped_layers() -> None:
    bumped = registry.collection_bumped()
    assert [s.name for s in bumped] == ["search_results"]
    event = DocumentEvent("e1", "created", "d", "news", 1, "2024-01-01T00:00:00Z")
    result = plan(event, load_rules(), KeyScheme("p"))
    assert result.bumps == (KeyScheme.search_namespace("news"),)
    assert [a.target for a in result.actions if a.kind == "bump"] == ["search_results:news"]


def test_answer_context_order_and_repeats_map_to_one_key() -> None:
    """(doc_id, doc_version) context: a set, hashed; user data never in the key."""
    from cachebus.answers import AnswerCore

    core = AnswerCore(Settings(prefix="p"), "kb", "gpt-4o", "v3")
    a = [("doc-42", 3), ("doc-7", 1), ("secret", 2)]
    keys = {
        core.key(AnswerRequest.of("the question", ctx))
        for ctx in (a, list(reversed(a)), [a[1], a[2], a[0], a[1]])
    }
    assert len(keys) == 1
    (key,) = keys
    assert key.startswith("p:ga:kb:gpt-4o:v3:{") and "secret" not in key
    assert "question" not in key
    other = core.key(AnswerRequest.of("the question", [("doc-42", 4), ("doc-7", 1)]))
    assert other != key
