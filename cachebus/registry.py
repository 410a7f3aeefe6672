"""The layer registry: the one place that lists the cache layers.

Every concern that differs per layer derives from :data:`LAYERS`:

- keys: each layer's entries live under ``<prefix>:<key_segment>:`` (:mod:`cachebus.keys`);
- settings: the TTL fields (``CACHEBUS_<TTL_SETTING>``, default :attr:`LayerSpec.default_ttl`),
  their validation, and for ``tagged`` layers the rule ``ttl + max_ticket_age <= stamp_ttl``
  (:mod:`cachebus.settings`);
- both buses: ``bus.layer(ShellClass, ...)`` builds and keeps any registered layer, and
  ``bus.stats()`` reports every registered layer (:mod:`cachebus.bus`);
- ``cachebus stats``: keys counted by segment, labelled with :attr:`LayerSpec.stats_label`;
- the worker's planner and applier: a layer with ``bumped_by="collection"`` gets its
  namespace generation bumped by the collection events whose rules ask for it.

This module imports nothing from cachebus (keys and settings import it), so the
classes are named as ``"module:attribute"`` and resolved on first use.

Adding a layer: write its module (a core, a sync and an async shell), add one
:class:`LayerSpec` here, and a ``<ttl_setting>`` field to :class:`cachebus.Settings`
whose default is ``default_ttl(<name>)`` (users set ``CACHEBUS_<TTL_SETTING>``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Literal

HOUR = 3600
DAY = 24 * HOUR


@dataclass(frozen=True, slots=True)
class LayerSpec:
    """One cache layer."""

    name: str
    """Layer name: the core's ``layer_name``, the metrics key, ``bus.stats()``'s key."""
    key_segment: str
    """Entry keys start with ``<prefix>:<key_segment>:``."""
    ttl_setting: str
    """The :class:`cachebus.Settings` field with the default entry TTL (seconds)."""
    default_ttl: int
    core: str
    """``module:Class`` of the sans-IO core (a :class:`cachebus.layer.LayerCore`)."""
    sync_shell: str
    """``module:Class`` of the shell on a sync client."""
    async_shell: str
    """``module:Class`` of the shell on an asyncio client."""
    stats_label: str
    """How ``cachebus stats`` names the layer."""
    tagged: bool
    """Reads check tag stamps: the TTL plus ``max_ticket_age`` must fit in ``stamp_ttl``."""
    bump_namespace: str | None = None
    """Head of the layer's generation namespaces (``<head>.<encoded parts>``), or None."""
    bumped_by: Literal["collection", "model"] | None = None
    """Which events bump it: ``"collection"`` (the planner's ``bump_collection``
    rule) or ``"model"`` (``Invalidator.bump(models=...)``)."""

    def resolve(self, which: Literal["core", "sync_shell", "async_shell"]) -> type[Any]:
        """The class named by ``which``, imported on first use."""
        module, _, attr = str(getattr(self, which)).partition(":")
        cls: type[Any] = getattr(importlib.import_module(module), attr)
        return cls


LAYERS: tuple[LayerSpec, ...] = (
    LayerSpec(
        name="query_embeddings",
        key_segment="qe",
        ttl_setting="query_embedding_ttl",
        default_ttl=48 * HOUR,
        core="cachebus.query_embeddings:QueryEmbeddingCore",
        sync_shell="cachebus.query_embeddings:QueryEmbeddingCache",
        async_shell="cachebus.query_embeddings:AsyncQueryEmbeddingCache",
        stats_label="query embeddings",
        tagged=False,
        bump_namespace="qe",
        bumped_by="model",
    ),
    LayerSpec(
        name="document_embeddings",
        key_segment="de",
        ttl_setting="document_embedding_ttl",
        default_ttl=30 * DAY,
        core="cachebus.document_embeddings:DocumentEmbeddingCore",
        sync_shell="cachebus.document_embeddings:DocumentEmbeddingCache",
        async_shell="cachebus.document_embeddings:AsyncDocumentEmbeddingCache",
        stats_label="document embeddings",
        tagged=True,  # the document's stamp guards its embeddings (Lua)
    ),
    LayerSpec(
        name="search_results",
        key_segment="sr",
        ttl_setting="search_results_ttl",
        default_ttl=10 * 60,
        core="cachebus.search_results:SearchResultsCore",
        sync_shell="cachebus.search_results:SearchResultsCache",
        async_shell="cachebus.search_results:AsyncSearchResultsCache",
        stats_label="search results",
        tagged=True,
        bump_namespace="sr",
        bumped_by="collection",
    ),
    LayerSpec(
        name="rerank_scores",
        key_segment="rr",
        ttl_setting="rerank_scores_ttl",
        default_ttl=10 * 60,
        core="cachebus.rerank_scores:RerankScoreCore",
        sync_shell="cachebus.rerank_scores:RerankScoreCache",
        async_shell="cachebus.rerank_scores:AsyncRerankScoreCache",
        stats_label="rerank scores",
        tagged=True,
    ),
    LayerSpec(
        name="answers",
        key_segment="ga",
        ttl_setting="answers_ttl",
        default_ttl=24 * HOUR,
        core="cachebus.answers:AnswerCore",
        sync_shell="cachebus.answers:AnswerCache",
        async_shell="cachebus.answers:AsyncAnswerCache",
        stats_label="generated answers",
        tagged=True,
    ),
)
"""Every cache layer, in a fixed order (the order of ``bus.stats()`` and ``cachebus stats``)."""

BY_NAME: dict[str, LayerSpec] = {spec.name: spec for spec in LAYERS}
SEGMENTS: dict[str, str] = {spec.name: spec.key_segment for spec in LAYERS}
"""Layer name -> key segment."""
CONTROL_SEGMENTS = frozenset(
    {"seq", "epoch", "witness", "gen", "stamp", "hwm", "lease", "metrics", "ql"}
)
"""Key segments of the control state: no layer may use them."""


def spec(name: str) -> LayerSpec:
    """The layer called ``name``."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"no cache layer {name!r}; registered: {', '.join(BY_NAME)}") from None


def default_ttl(name: str) -> int:
    """The default entry TTL of layer ``name`` (what its Settings field defaults to)."""
    return spec(name).default_ttl


def ttl_settings() -> tuple[str, ...]:
    """Every layer's TTL setting, in registry order."""
    return tuple(s.ttl_setting for s in LAYERS)


def stamped_ttl_settings() -> tuple[str, ...]:
    """TTL settings of the layers whose reads check tag stamps."""
    return tuple(s.ttl_setting for s in LAYERS if s.tagged)


def collection_bumped() -> tuple[LayerSpec, ...]:
    """Layers whose generation the collection events bump (the planner's ``bump_collection``)."""
    return tuple(s for s in LAYERS if s.bumped_by == "collection" and s.bump_namespace)
