"""An :class:`~cachebus.Embedder` on a local ``sentence-transformers`` model.

``pip install 'cachebus[sentence-transformers]'`` (brings torch). Loading never downloads
if you give a local path, or set ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import ConfigError
from .integrations import require

require("sentence_transformers", "sentence-transformers", "cachebus.embedders_st")

import torch  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402


def fingerprint(model: SentenceTransformer, **options: Any) -> str:
    """A digest of what determines a model's vectors: its module stack and configuration
    (transformer, pooling, normalisation, ``max_seq_length``), every weight (name, dtype,
    shape, bytes) and the encode ``options``. A fine-tuned or re-quantised model under
    the same name gets another digest, so its vectors get other cache keys."""
    h = hashlib.sha256()
    h.update(repr(model).encode())
    h.update(f"max_seq_length={model.max_seq_length}".encode())
    for key, value in sorted(options.items()):
        h.update(f"\0{key}={value!r}".encode())
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"\0{name}:{t.dtype}:{tuple(t.shape)}\0".encode())
        h.update(t.view(-1).view(dtype=torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _name_of(model: SentenceTransformer, given: str | os.PathLike[str] | None) -> str:
    base = getattr(model.model_card_data, "base_model", None)
    if isinstance(base, str) and base:
        return base
    if given is not None:
        text = os.fspath(given)
        path = Path(text)
        return path.name if path.exists() else text
    return "sentence-transformer"


class SentenceTransformerEmbedder:
    """Vectors from a ``SentenceTransformer`` (an instance, a local path or a Hub name).

    >>> embedder = SentenceTransformerEmbedder("/models/all-MiniLM-L6-v2", device="cpu")
    >>> service = bus.embedding_service(embedder)      # the cache in front of it

    ``batch_size``: texts per forward pass. ``normalize``: unit-length vectors (cosine ==
    dot product). ``prompt_name`` / ``prompt``: the model's query or document prompt (an
    embedder per role: they get different versions). ``truncate_dim``: Matryoshka
    truncation. ``model`` (the cache's name) defaults to the model card's base model, or
    the path's last part; ``model_version`` to ``st-<16 hex>``, a :func:`fingerprint` of
    the weights, configuration and these options (computed once, about 0.1 s for a
    small model): retraining, quantising or changing an option is a new version.
    """

    def __init__(
        self,
        model: SentenceTransformer | str | os.PathLike[str],
        *,
        model_name: str | None = None,
        model_version: str | None = None,
        batch_size: int = 32,
        normalize: bool = True,
        prompt_name: str | None = None,
        prompt: str | None = None,
        truncate_dim: int | None = None,
        device: str | None = None,
        local_files_only: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be positive, got {batch_size}")
        given: str | os.PathLike[str] | None = None
        if isinstance(model, SentenceTransformer):
            st = model
        else:
            given = model
            st = SentenceTransformer(
                os.fspath(model), device=device, local_files_only=local_files_only
            )
        self.st = st
        self.batch_size = batch_size
        self.normalize = normalize
        self.prompt_name = prompt_name
        self.prompt = prompt
        self.truncate_dim = truncate_dim
        self.model = model_name or _name_of(st, given)
        if model_version is None:
            digest = fingerprint(
                st,
                normalize=normalize,
                prompt_name=prompt_name,
                prompt=prompt,
                truncate_dim=truncate_dim,
            )
            model_version = f"st-{digest[:16]}"
        self.model_version = model_version
        self.dim = truncate_dim or st.get_embedding_dimension()
        self.calls = 0
        """Calls of :meth:`embed` (batches of texts sent to the model)."""

    def __repr__(self) -> str:
        return (
            f"SentenceTransformerEmbedder(model={self.model!r}, "
            f"model_version={self.model_version!r}, dim={self.dim})"
        )

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """One vector per text, in order (float32)."""
        self.calls += 1
        items = list(texts)
        if not items:
            return np.zeros((0, self.dim or 0), dtype=np.float32)
        vectors = self.st.encode(
            items,
            batch_size=self.batch_size,
            normalize_embeddings=self.normalize,
            prompt_name=self.prompt_name,
            prompt=self.prompt,
            truncate_dim=self.truncate_dim,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    async def aembed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """:meth:`embed` in a worker thread (the event loop keeps running)."""
        return await asyncio.to_thread(self.embed, texts)


__all__ = ["SentenceTransformerEmbedder", "fingerprint"]
