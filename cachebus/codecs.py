"""Binary codecs: vectors behind a small self-describing header, and the
envelope of tagged entries.

Vector layout (little endian)::

    0xCB | format 1 | dtype (1 f32, 2 f16, 3 int8) | flags (1 = zlib) | dim u32
    [int8 only: scale f64]  body (raw dtype bytes, zlib-compressed if flagged)

A reader that finds a bad magic, an unknown dtype or an unexpected dimension
raises :class:`CodecError`; the cache layers turn that into a miss.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from .errors import CodecError, ConfigError

MAGIC: Final = 0xCB
FORMAT: Final = 1
_HEADER = struct.Struct("<BBBBI")
_SCALE = struct.Struct("<d")  # float64: a float32 scale underflows for tiny vectors
_DTYPES: Final[dict[str, tuple[int, type[np.generic]]]] = {
    "float32": (1, np.float32),
    "float16": (2, np.float16),
    "int8": (3, np.int8),
}
_BY_CODE: Final = {code: (name, np_type) for name, (code, np_type) in _DTYPES.items()}
_ZLIB: Final = 1

Vector = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class VectorCodec:
    """Encodes float vectors as bytes. ``dtype`` is float32, float16 or int8
    (symmetric per-vector scale, rounded to nearest); ``compress`` adds zlib."""

    dtype: str = "float32"
    compress: bool = False
    zlib_level: int = 6

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ConfigError(f"unknown vector dtype {self.dtype!r}; use one of {list(_DTYPES)}")

    @classmethod
    def parse(cls, spec: str) -> VectorCodec:
        """``"float32"``, ``"int8+zlib"`` and so on (the CACHEBUS_CODEC syntax)."""
        name, _, extra = spec.partition("+")
        if extra not in ("", "zlib"):
            raise ConfigError(f"unknown codec option {extra!r} in {spec!r}")
        return cls(dtype=name, compress=extra == "zlib")

    @property
    def name(self) -> str:
        return self.dtype + ("+zlib" if self.compress else "")

    def encode(self, vector: npt.ArrayLike) -> bytes:
        arr = np.asarray(vector, dtype=np.float32)
        if arr.ndim != 1 or arr.size == 0:
            raise CodecError(f"expected a non-empty 1-d vector, got shape {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise CodecError("vector contains NaN or infinity")
        code, np_type = _DTYPES[self.dtype]
        extra = b""
        body: bytes
        if np_type is np.int8:
            peak = float(np.max(np.abs(arr)))
            scale = peak / 127.0 if peak > 0 else 1.0
            scaled = arr.astype(np.float64) / scale
            body = np.clip(np.rint(scaled), -127, 127).astype(np.int8).tobytes()
            extra = _SCALE.pack(scale)
        elif np_type is np.float16:
            if float(np.max(np.abs(arr))) > 65504.0:
                raise CodecError("vector values exceed the float16 range")
            body = arr.astype(np.float16).tobytes()
        else:
            body = arr.tobytes()
        flags = 0
        if self.compress:
            body = zlib.compress(body, self.zlib_level)
            flags |= _ZLIB
        header: bytes = _HEADER.pack(MAGIC, FORMAT, code, flags, arr.size)
        return header + extra + body

    def encode_many(
        self, vectors: Sequence[npt.ArrayLike] | npt.NDArray[np.float32]
    ) -> list[bytes]:
        return [self.encode(v) for v in vectors]


_PLAIN_FLOAT32: dict[bytes, int] = {}
"""Headers of plain float32 vectors seen (header -> dimension): such a value decodes
without parsing its header again (the hot path of every float32 cache hit)."""


def decode_vectors(
    values: Sequence[bytes | None], expect_dim: int | None = None
) -> list[Vector | None]:
    """:func:`decode_vector` of many replies (``None`` stays ``None``; a value that does
    not decode is ``None``, a miss). Plain float32 values take an inlined fast path: this
    runs once per value of every cache hit."""
    out: list[Vector | None] = []
    append = out.append
    size, plain, frombuffer, f32 = _HEADER.size, _PLAIN_FLOAT32, np.frombuffer, np.float32
    for data in values:
        if data is None:
            append(None)
            continue
        dim = plain.get(data[:size])
        if dim is not None and len(data) == size + 4 * dim and expect_dim in (None, dim):
            append(frombuffer(data, dtype=f32, offset=size))
            continue
        try:
            append(decode_vector(data, expect_dim))
        except CodecError:
            append(None)
    return out


def decode_vector(data: bytes, expect_dim: int | None = None) -> Vector:
    """Decode any vector this module wrote (the header says how). Returns float32."""
    dim = _PLAIN_FLOAT32.get(data[: _HEADER.size])
    if dim is not None and len(data) == _HEADER.size + 4 * dim and expect_dim in (None, dim):
        return np.frombuffer(data, dtype=np.float32, offset=_HEADER.size)
    if len(data) < _HEADER.size:
        raise CodecError("value too short for a vector header")
    magic, fmt, code, flags, dim = _HEADER.unpack_from(data)
    if magic != MAGIC or fmt != FORMAT:
        raise CodecError("not a cachebus vector (bad magic or format)")
    if code not in _BY_CODE:
        raise CodecError(f"unknown vector dtype code {code}")
    if expect_dim is not None and dim != expect_dim:
        raise CodecError(f"dimension mismatch: stored {dim}, expected {expect_dim}")
    _, np_type = _BY_CODE[code]
    offset = _HEADER.size
    scale = 1.0
    if np_type is np.int8:
        (scale,) = _SCALE.unpack_from(data, offset)
        offset += _SCALE.size
    body: bytes | memoryview = memoryview(data)[offset:]
    if flags & _ZLIB:
        try:
            body = zlib.decompress(body)
        except zlib.error as exc:
            raise CodecError(f"corrupt zlib body: {exc}") from None
    itemsize = np.dtype(np_type).itemsize
    if len(body) != dim * itemsize:
        raise CodecError(f"body is {len(body)} bytes, header promises {dim * itemsize}")
    raw = np.frombuffer(body, dtype=np_type)
    if np_type is np.float32:
        if not flags and len(_PLAIN_FLOAT32) < 64:
            _PLAIN_FLOAT32[bytes(data[: _HEADER.size])] = dim
        return raw
    if np_type is np.int8:
        return (raw * scale).astype(np.float32)
    return raw.astype(np.float32)


# -- document chunk records -------------------------------------------------

_CHUNK = struct.Struct("<BB")  # magic, content-hash length


EPOCH_BYTES: Final = 8
"""Fence epochs are 8 ASCII characters (see :func:`cachebus.tags.new_epoch`)."""
CHUNK_MAGIC: Final = 0xCC
"""Chunk records carry the epoch since format 2 (older records read as misses)."""


def _epoch_bytes(epoch: str) -> bytes:
    raw = epoch.encode("ascii")
    if len(raw) != EPOCH_BYTES:
        raise CodecError(f"epoch must be {EPOCH_BYTES} ASCII characters")
    return raw


def pack_chunk(vector_bytes: bytes, content_hash: str | None, epoch: str) -> bytes:
    """A document chunk's record: its content hash, the fence epoch it was written
    under, then its encoded vector. (The worker's scripts read the content hash at
    bytes 3.. after its length byte: keep it first.)"""
    digest = (content_hash or "").encode("utf-8")
    if len(digest) > 255:
        raise CodecError("content hash longer than 255 bytes")
    return _CHUNK.pack(CHUNK_MAGIC, len(digest)) + digest + _epoch_bytes(epoch) + vector_bytes


def unpack_chunk(data: bytes) -> tuple[str | None, bytes, bytes]:
    """-> (content hash, epoch, vector bytes)."""
    if len(data) < _CHUNK.size:
        raise CodecError("chunk record too short")
    magic, size = _CHUNK.unpack_from(data)
    if magic != CHUNK_MAGIC:
        raise CodecError("not a cachebus chunk record")
    start = _CHUNK.size + size
    if len(data) < start + EPOCH_BYTES:
        raise CodecError("chunk record too short")
    digest = data[_CHUNK.size : start].decode("utf-8", "replace")
    return (digest or None), data[start : start + EPOCH_BYTES], data[start + EPOCH_BYTES :]


# -- tagged entries ---------------------------------------------------------

_TAGGED = struct.Struct("<BBQ8sH")  # magic, format, ticket sequence, epoch, tag count
TAGGED_FORMAT: Final = 2
"""Tagged entries carry the fence epoch since format 2 (older ones read as misses)."""
_TAG_LEN = struct.Struct("<H")


@dataclass(frozen=True, slots=True)
class TaggedEntry:
    """A cached value with the tags it depends on and the sequence number of
    the ticket it was computed under (see :mod:`cachebus.tags`)."""

    seq: int
    tags: tuple[str, ...]
    payload: bytes
    epoch: bytes = b""


def pack_tagged(seq: int, tags: Sequence[str], payload: bytes, epoch: str) -> bytes:
    if len(tags) > 0xFFFF:
        raise CodecError("too many tags on one entry")
    parts = [_TAGGED.pack(MAGIC, TAGGED_FORMAT, seq, _epoch_bytes(epoch), len(tags))]
    for tag in tags:
        raw = tag.encode("ascii")
        parts.append(_TAG_LEN.pack(len(raw)))
        parts.append(raw)
    parts.append(payload)
    return b"".join(parts)


def unpack_tagged(data: bytes) -> TaggedEntry:
    if len(data) < _TAGGED.size:
        raise CodecError("tagged entry too short")
    magic, fmt, seq, epoch, count = _TAGGED.unpack_from(data)
    if magic != MAGIC or fmt != TAGGED_FORMAT:
        raise CodecError("not a cachebus tagged entry")
    offset = _TAGGED.size
    tags = []
    try:
        for _ in range(count):
            (size,) = _TAG_LEN.unpack_from(data, offset)
            offset += _TAG_LEN.size
            tags.append(data[offset : offset + size].decode("ascii"))
            offset += size
    except (struct.error, UnicodeDecodeError) as exc:
        raise CodecError(f"corrupt tag list: {exc}") from None
    return TaggedEntry(seq, tuple(tags), data[offset:], epoch)
