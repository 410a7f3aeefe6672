"""The Embedder protocol and a deterministic hashing embedder for demos and tests.

Real embedders, each behind its extra: :mod:`cachebus.embedders_openai`
(``OpenAICompatibleEmbedder``, ``pip install 'cachebus[openai]'``) and
:mod:`cachebus.embedders_st` (``SentenceTransformerEmbedder``,
``pip install 'cachebus[sentence-transformers]'``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

_TOKEN = re.compile(r"\w+", re.UNICODE)


@runtime_checkable
class Embedder(Protocol):
    """What the embedding service calls on cache misses (an API client, a model)."""

    model: str
    model_version: str

    def embed(self, texts: Sequence[str]) -> Sequence[npt.ArrayLike] | npt.NDArray[np.float32]:
        """One vector per text, in order."""
        ...


class AsyncEmbedder(Protocol):
    model: str
    model_version: str

    def embed(self, texts: Sequence[str]) -> Awaitable[Sequence[npt.ArrayLike]]: ...


class HashingEmbedder:
    """Feature-hashing bag of words: deterministic, fast, dependency-free.

    It is *not* semantic (synonyms do not land near each other); use it for
    demos and tests where a reproducible vector per text is what matters.
    """

    def __init__(self, dim: int = 384, model: str = "hashing-bow", model_version: str = "1"):
        self.dim = dim
        self.model = model
        self.model_version = model_version
        self.calls = 0

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.calls += 1
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            tokens = _TOKEN.findall(text.lower()) or [text]
            for token in tokens:
                h = hashlib.blake2b(token.encode("utf-8", "surrogatepass"), digest_size=8).digest()
                value = int.from_bytes(h, "little")
                sign = 1.0 if value & 1 else -1.0
                out[row, (value >> 1) % self.dim] += sign
            norm = float(np.linalg.norm(out[row]))
            if norm > 0:
                out[row] /= norm
        return out
