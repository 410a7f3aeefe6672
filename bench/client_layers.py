"""The cache layers under test: the lesson's JSON baseline and cachebus with each codec.

Each layer is wrapped in a :class:`Subject` exposing "set batch i" / "get batch i" over
pre-built inputs, so the timed region holds only the layer's own work (key hashing,
encoding, the Redis round trips, decoding).  Per layer and dimension the steps are:

1. after ``FLUSHALL``, every layer writes the whole working set once, each into its own
   Redis database (the cachebus codecs share one key scheme);
2. sanity: read everything back and compare with the source vectors (float32 must come
   back bit-identical, lossy codecs within a cosine bound); a failure aborts the run;
3. time ``set_many`` and ``get_many`` in rounds: one run of every layer per round, so
   background noise is shared out evenly; the median run is reported;
4. check nothing failed open or missed while timing, and that exactly the working set
   is in each database;
5. ``MEMORY USAGE`` (``SAMPLES 0``) and ``STRLEN`` of every key: the medians are reported.

The peer library, RedisVL's ``EmbeddingsCache`` (``mset`` / ``mget``, its batch API), runs
twice: with a TTL (like every cachebus and lesson entry; RedisVL then refreshes the TTL of
every hit with one ``EXPIRE`` round trip each, its documented sliding expiry) and without.

A "redis-py raw" subject (MSET / MGET of the float32 payloads, no cache layer, bytes left
undecoded) runs in the same rounds as context for the redis-benchmark ceiling.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import redis

import cachebus

from .lesson_baseline import LessonEmbeddingCache
from .timing import BatchOp, Throughput, calibrate, timed_run

BATCH = 100
BASELINE = "json (lesson)"
RAW = "redis-py raw"
REDISVL = "redisvl (ttl)"
REDISVL_NO_TTL = "redisvl (no ttl)"
PEER_TTL = 48 * 3600  # the TTL of cachebus query embeddings
CODECS: tuple[tuple[str, bool], ...] = (
    ("float32", False),
    ("float16", False),
    ("int8", False),
    ("float32", True),
    ("int8", True),
)
# Cosine similarity a lossy codec must keep on unit vectors (int8 gives ~0.9999).
LOSSY_MIN_COSINE = 0.999

Matrix = npt.NDArray[np.float32]
Vector = npt.NDArray[np.float32]
Progress = Callable[[str], None]


class BenchError(RuntimeError):
    """The run is broken (wrong data back, errors while timing): nothing is reported."""


@dataclass(frozen=True)
class Dataset:
    """The working set at one dimension: texts and unit-norm float32 vectors, in batches."""

    dim: int
    texts: list[str]
    vectors: Matrix

    @classmethod
    def make(cls, dim: int, size: int, seed: int = 1536) -> Dataset:
        rng = np.random.default_rng(seed + dim)
        vectors = rng.standard_normal((size, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        texts = [
            f"benchmark query #{i} at dim {dim}: how do I cache embeddings?" for i in range(size)
        ]
        return cls(dim, texts, vectors)

    @property
    def batches(self) -> int:
        return len(self.texts) // BATCH

    def batch_texts(self, i: int) -> list[str]:
        return self.texts[i * BATCH : (i + 1) * BATCH]

    def batch_vectors(self, i: int) -> Matrix:
        return self.vectors[i * BATCH : (i + 1) * BATCH]


class Subject(Protocol):
    name: str
    lossy: bool
    client: redis.Redis
    key_pattern: str
    """MATCH pattern of the subject's entries (the library also keeps metrics keys)."""

    def set_batch(self, i: int) -> None: ...

    def get_batch(self, i: int) -> Sequence[Any]: ...

    def check_clean(self) -> None:
        """Raise :class:`BenchError` if anything failed open or missed so far."""


class JsonSubject:
    """The lesson's cache; inputs converted with ``.tolist()`` outside the timed region."""

    lossy = False

    def __init__(self, client: redis.Redis, data: Dataset) -> None:
        self.name = BASELINE
        self.client = client
        self.cache = LessonEmbeddingCache(client)
        self.key_pattern = f"{self.cache.prefix}:*"
        self._texts = [data.batch_texts(i) for i in range(data.batches)]
        self._items = [
            list(zip(data.batch_texts(i), data.batch_vectors(i).tolist(), strict=True))
            for i in range(data.batches)
        ]

    def set_batch(self, i: int) -> None:
        self.cache.set_many(self._items[i])

    def get_batch(self, i: int) -> Sequence[Any]:
        return self.cache.get_many(self._texts[i])

    def check_clean(self) -> None:
        for i in range(len(self._texts)):  # errors raise; a miss would be None
            if any(v is None for v in self.get_batch(i)):
                raise BenchError(f"{self.name}: a key went missing during the benchmark")


class CachebusSubject:
    """``cachebus.QueryEmbeddingCache`` with one codec; inputs are (text, ndarray) pairs."""

    def __init__(self, client: redis.Redis, data: Dataset, dtype: str, compress: bool) -> None:
        codec = cachebus.VectorCodec(dtype, compress)
        self.name = codec.name
        self.client = client
        self.lossy = dtype != "float32"
        self.key_pattern = "bench:qe:*"
        self.cache = cachebus.QueryEmbeddingCache(
            client, model="bench", settings=cachebus.Settings(prefix="bench"), codec=codec
        )
        self._texts = [data.batch_texts(i) for i in range(data.batches)]
        self._pairs = [
            list(zip(data.batch_texts(i), data.batch_vectors(i), strict=True))
            for i in range(data.batches)
        ]

    def set_batch(self, i: int) -> None:
        self.cache.set_many(self._pairs[i])

    def get_batch(self, i: int) -> Sequence[Any]:
        return self.cache.get_many(self._texts[i])

    def check_clean(self) -> None:
        m = self.cache.metrics
        if m.errors or m.misses or m.writes_refused:
            raise BenchError(
                f"{self.name}: errors={m.errors} misses={m.misses} "
                f"writes_refused={m.writes_refused} while benchmarking (failed open?)"
            )


class RedisVLSubject:
    """RedisVL's ``EmbeddingsCache``: a hash per entry, the vector as JSON text in it.

    Inputs are converted with ``.tolist()`` outside the timed region (its ``embedding`` is
    ``list[float]``); ``get_batch`` returns what ``mget`` returns (dicts with the vector).
    """

    lossy = False

    def __init__(self, client: redis.Redis, data: Dataset, *, ttl: int | None) -> None:
        from redisvl.extensions.cache.embeddings import EmbeddingsCache

        self.name = REDISVL if ttl else REDISVL_NO_TTL
        self.client = client
        self.cache = EmbeddingsCache(name="rvl", ttl=ttl, redis_client=client)
        self.key_pattern = "rvl:*"
        self._texts = [data.batch_texts(i) for i in range(data.batches)]
        self._items = [
            [
                {"content": t, "model_name": "bench", "embedding": v}
                for t, v in zip(data.batch_texts(i), data.batch_vectors(i).tolist(), strict=True)
            ]
            for i in range(data.batches)
        ]

    def set_batch(self, i: int) -> None:
        self.cache.mset(self._items[i])

    def get_batch(self, i: int) -> Sequence[Any]:
        got: list[Any] = self.cache.mget(self._texts[i], "bench")
        return got

    def decoded_batch(self, i: int) -> list[Any]:
        return [None if e is None else e["embedding"] for e in self.get_batch(i)]

    def check_clean(self) -> None:
        for i in range(len(self._texts)):
            if any(v is None for v in self.get_batch(i)):
                raise BenchError(f"{self.name}: a key went missing during the benchmark")


def redisvl_available() -> bool:
    try:
        import redisvl.extensions.cache.embeddings  # noqa: F401
    except ImportError:
        return False
    return True


class RawSubject:
    """No cache layer: MSET / MGET of pre-encoded float32 payloads under plain keys."""

    lossy = False

    def __init__(self, client: redis.Redis, data: Dataset) -> None:
        self.name = RAW
        self.client = client
        self.key_pattern = "raw:*"
        payloads = cachebus.VectorCodec("float32").encode_many(data.vectors)
        keys = [f"raw:{i}" for i in range(len(payloads))]
        self._keys = [keys[i * BATCH : (i + 1) * BATCH] for i in range(data.batches)]
        self._maps = [
            dict(zip(ks, payloads[i * BATCH : (i + 1) * BATCH], strict=True))
            for i, ks in enumerate(self._keys)
        ]

    def set_batch(self, i: int) -> None:
        self.client.mset(self._maps[i])

    def get_batch(self, i: int) -> Sequence[Any]:
        values: list[Any] = self.client.mget(self._keys[i])
        return values

    def decoded_batch(self, i: int) -> list[Vector | None]:
        return [None if v is None else cachebus.decode_vector(v) for v in self.get_batch(i)]

    def check_clean(self) -> None:
        for i in range(len(self._keys)):
            if any(v is None for v in self.get_batch(i)):
                raise BenchError(f"{self.name}: a key went missing during the benchmark")


def make_subjects(
    connect: Callable[[int], redis.Redis], data: Dataset, *, peer: bool = True
) -> list[Subject]:
    """Baseline first, then one per codec, then RedisVL, then the raw reference; one
    database each."""
    made: list[Subject] = [JsonSubject(connect(0), data)]
    made.extend(
        CachebusSubject(connect(db), data, d, c) for db, (d, c) in enumerate(CODECS, start=1)
    )
    db = len(CODECS) + 1
    if peer:
        made.append(RedisVLSubject(connect(db), data, ttl=PEER_TTL))
        made.append(RedisVLSubject(connect(db + 1), data, ttl=None))
        db += 2
    made.append(RawSubject(connect(db), data))
    return made


@dataclass
class Fidelity:
    """How the read-back vectors compare with what was written."""

    exact: bool
    min_cosine: float
    max_abs_error: float

    def as_dict(self) -> dict[str, object]:
        return {
            "exact": self.exact,
            "min_cosine": round(self.min_cosine, 6),
            "max_abs_error": float(f"{self.max_abs_error:.3g}"),
        }


def check_round_trip(subject: Subject, data: Dataset) -> Fidelity:
    """Read back the whole working set; raise :class:`BenchError` unless it is right."""
    exact = True
    min_cos = 1.0
    max_err = 0.0
    for i in range(data.batches):
        decoded = getattr(subject, "decoded_batch", None)
        got = decoded(i) if decoded is not None else subject.get_batch(i)
        want = data.batch_vectors(i)
        if len(got) != len(want) or any(v is None for v in got):
            raise BenchError(f"{subject.name}: batch {i} came back with misses")
        if isinstance(subject, CachebusSubject):
            for v in got:
                if not isinstance(v, np.ndarray) or v.dtype != np.float32 or v.shape != (data.dim,):
                    raise BenchError(f"{subject.name}: get_many did not return float32 arrays")
        back = np.asarray(got, dtype=np.float64)
        ref = want.astype(np.float64)
        if back.shape != ref.shape:
            raise BenchError(f"{subject.name}: shape {back.shape}, expected {ref.shape}")
        exact = exact and bool(np.array_equal(back, ref))
        cos = np.sum(back * ref, axis=1) / (
            np.linalg.norm(back, axis=1) * np.linalg.norm(ref, axis=1)
        )
        min_cos = min(min_cos, float(np.min(cos)))
        max_err = max(max_err, float(np.max(np.abs(back - ref))))
    if not subject.lossy and not exact:
        raise BenchError(f"{subject.name}: lossless round trip changed values ({max_err:g})")
    if subject.lossy and min_cos < LOSSY_MIN_COSINE:
        raise BenchError(f"{subject.name}: cosine {min_cos:.6f} < {LOSSY_MIN_COSINE}")
    return Fidelity(exact, min_cos, max_err)


@dataclass
class LayerResult:
    dim: int
    name: str
    get: Throughput
    set: Throughput
    fidelity: Fidelity
    value_bytes: float
    memory_usage: float
    memory_usage_range: tuple[int, int]
    keys: int
    ratios: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {
            "dim": self.dim,
            "layer": self.name,
            "get_many": self.get.as_dict(),
            "set_many": self.set.as_dict(),
            "round_trip": self.fidelity.as_dict(),
            "value_bytes_median": self.value_bytes,
            "memory_usage_bytes_median": self.memory_usage,
            "memory_usage_bytes_min_max": list(self.memory_usage_range),
            "keys": self.keys,
            "ratios_vs_baseline": {k: round(v, 4) for k, v in self.ratios.items()},
        }


# Bytes of a hash's fields and values (what STRLEN is for a string).
_HASH_BYTES = """
local n = 0
for _, part in ipairs(redis.call('HGETALL', KEYS[1])) do n = n + #part end
return n
"""


def _memory(client: redis.Redis, pattern: str) -> tuple[list[int], list[int]]:
    """``MEMORY USAGE key SAMPLES 0`` and the stored bytes (``STRLEN``, or a hash's fields and
    values) of every key matching ``pattern`` in the client's database."""
    keys = list(client.scan_iter(match=pattern, count=1000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.type(key)
    types = pipe.execute()
    for key, kind in zip(keys, types, strict=True):
        pipe.memory_usage(key, samples=0)
        if kind in (b"hash", "hash"):
            pipe.eval(_HASH_BYTES, 1, key)
        else:
            pipe.strlen(key)
    replies = pipe.execute()
    return [int(r) for r in replies[0::2]], [int(r) for r in replies[1::2]]


def prepare(subject: Subject, data: Dataset, progress: Progress) -> Fidelity:
    """Write the working set once and check it reads back right."""
    for i in range(data.batches):
        subject.set_batch(i)
    fidelity = check_round_trip(subject, data)
    progress(
        f"dim {data.dim} {subject.name}: round trip ok "
        f"(exact={fidelity.exact}, min cos={fidelity.min_cosine:.6f})"
    )
    return fidelity


def measure_layers(
    subjects: Sequence[Subject],
    data: Dataset,
    *,
    runs: int,
    min_run_seconds: float,
    progress: Progress,
    between_rounds: Callable[[], None] | None = None,
) -> list[LayerResult]:
    """Prepare every subject, then time them in interleaved rounds (``between_rounds`` runs
    after each round: the ceiling is measured in the same rounds, under the same noise)."""
    fidelity = [prepare(s, data, progress) for s in subjects]
    ops: list[tuple[str, Subject, BatchOp]] = []
    for s in subjects:
        ops += [("set", s, s.set_batch), ("get", s, s.get_batch)]
    calls = [
        calibrate(op, batches=data.batches, min_run_seconds=min_run_seconds) for _, _, op in ops
    ]
    rates: list[list[float]] = [[] for _ in ops]
    for round_no in range(runs):
        for k, (_, _, op) in enumerate(ops):
            rates[k].append(timed_run(op, calls=calls[k], batches=data.batches, batch=BATCH))
        if between_rounds is not None:
            between_rounds()
        progress(f"dim {data.dim}: round {round_no + 1}/{runs} done")
    out: list[LayerResult] = []
    for n, s in enumerate(subjects):
        s.check_clean()
        usage, lengths = _memory(s.client, s.key_pattern)
        if len(usage) != len(data.texts):
            raise BenchError(f"{s.name}: {len(usage)} keys in Redis, expected {len(data.texts)}")
        set_k, get_k = 2 * n, 2 * n + 1
        result = LayerResult(
            dim=data.dim,
            name=s.name,
            get=Throughput.of(rates[get_k], calls[get_k], BATCH),
            set=Throughput.of(rates[set_k], calls[set_k], BATCH),
            fidelity=fidelity[n],
            value_bytes=statistics.median(lengths),
            memory_usage=statistics.median(usage),
            memory_usage_range=(min(usage), max(usage)),
            keys=len(usage),
        )
        progress(
            f"dim {data.dim} {s.name}: get_many {result.get.median:,.0f} vec/s, "
            f"set_many {result.set.median:,.0f} vec/s, {result.memory_usage:,.0f} B/key"
        )
        out.append(result)
    return out


def add_ratios(results: list[LayerResult]) -> None:
    """Ratios of every layer against the baseline of the same dimension (ours / baseline),
    against RedisVL (both configurations) and, for memory, against float32."""
    base = {r.dim: r for r in results if r.name == BASELINE}
    peers = {(r.dim, r.name): r for r in results if r.name in (REDISVL, REDISVL_NO_TTL)}
    f32 = {r.dim: r for r in results if r.name == "float32"}
    for r in results:
        b = base[r.dim]
        r.ratios = {
            "get_speed": r.get.median / b.get.median,
            "set_speed": r.set.median / b.set.median,
            "memory": r.memory_usage / b.memory_usage,
            "value_bytes": r.value_bytes / b.value_bytes,
        }
        for peer, tag in ((REDISVL, "redisvl"), (REDISVL_NO_TTL, "redisvl_no_ttl")):
            pr = peers.get((r.dim, peer))
            if pr is not None:
                r.ratios[f"get_speed_vs_{tag}"] = r.get.median / pr.get.median
                r.ratios[f"set_speed_vs_{tag}"] = r.set.median / pr.set.median
                r.ratios[f"memory_vs_{tag}"] = r.memory_usage / pr.memory_usage
        if r.dim in f32:
            r.ratios["memory_vs_float32"] = r.memory_usage / f32[r.dim].memory_usage
