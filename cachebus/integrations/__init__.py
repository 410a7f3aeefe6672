"""Optional integrations: each needs its extra, none is imported by ``import cachebus``.

* :mod:`cachebus.integrations.langchain` (``pip install 'cachebus[langchain]'``):
  ``CachedEmbeddings``, a LangChain ``Embeddings``.
* :mod:`cachebus.integrations.llamaindex` (``pip install 'cachebus[llamaindex]'``):
  ``CachedEmbedding``, a LlamaIndex ``BaseEmbedding``.

Both put the query-embedding cache (herd control, model-version keys) in front of
any embedder, and offer the document-embedding cache for chunks whose ids and
content hashes are known, so the worker's invalidations retire them. The shared,
framework-free part is :class:`cachebus.integrations.core.EmbeddingFront`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import ConfigError


class MissingExtraError(ConfigError, ImportError):
    """An optional integration was imported without its extra installed."""


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import ``module`` or raise one clear error naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{what} needs the {module.split('.')[0]!r} package: "
            f"pip install 'cachebus[{extra}]' ({exc})"
        ) from exc


__all__ = ["MissingExtraError", "require"]
