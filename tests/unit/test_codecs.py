"""Vector codecs and envelopes: round trips and measured fidelity (no services)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from cachebus.codecs import (
    VectorCodec,
    decode_vector,
    pack_chunk,
    pack_tagged,
    unpack_chunk,
    unpack_tagged,
)
from cachebus.errors import CodecError, ConfigError

finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32)
vectors = arrays(np.float32, st.integers(1, 2048), elements=finite)
CODECS = [VectorCodec(d, z) for d in ("float32", "float16", "int8") for z in (False, True)]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(np.dot(a, b) / (na * nb))


class TestRoundTrip:
    @given(vectors)
    @settings(max_examples=200)
    def test_float32_exact(self, vec: np.ndarray) -> None:
        """float32 (with or without zlib) round-trips bit for bit."""
        for codec in (VectorCodec("float32"), VectorCodec("float32", compress=True)):
            out = decode_vector(codec.encode(vec))
            assert out.dtype == np.float32
            assert np.array_equal(out, vec)

    @given(vectors)
    @settings(max_examples=200)
    def test_float16_within_half_precision(self, vec: np.ndarray) -> None:
        """float16 keeps every component within half-precision rounding."""
        out = decode_vector(VectorCodec("float16").encode(vec))
        assert np.allclose(out, vec, rtol=1e-3, atol=1e-3 * max(1.0, float(np.abs(vec).max())))

    @given(vectors)
    @settings(max_examples=200)
    def test_int8_error_bounded_by_half_step(self, vec: np.ndarray) -> None:
        """int8 rounds to nearest: error per component is at most half a step."""
        out = decode_vector(VectorCodec("int8").encode(vec))
        peak = float(np.abs(vec).max())
        step = peak / 127.0 if peak > 0 else 1.0
        assert float(np.abs(out - vec).max()) <= step / 2 * 1.0001 + 1e-12

    @pytest.mark.parametrize("codec", CODECS, ids=lambda c: c.name)
    def test_header_dimension_mismatch_is_codec_error(self, codec: VectorCodec) -> None:
        """A reader expecting another dimension gets CodecError (a miss), not garbage."""
        data = codec.encode(np.ones(8, dtype=np.float32))
        assert decode_vector(data, 8).shape == (8,)
        with pytest.raises(CodecError):
            decode_vector(data, 16)

    @pytest.mark.parametrize(
        "data", [b"", b"\x00" * 3, b"not a vector at all", b"\xcb\x01\x09\x00\x04\x00\x00\x00"]
    )
    def test_garbage_is_codec_error(self, data: bytes) -> None:
        """Corrupt or foreign values raise CodecError."""
        with pytest.raises(CodecError):
            decode_vector(data)

    def test_truncated_body_is_codec_error(self) -> None:
        """A body shorter than the header promises is rejected."""
        data = VectorCodec().encode(np.ones(16, dtype=np.float32))
        with pytest.raises(CodecError):
            decode_vector(data[:-4])

    def test_nan_refused(self) -> None:
        """NaN never gets cached."""
        with pytest.raises(CodecError):
            VectorCodec().encode(np.array([1.0, np.nan], dtype=np.float32))

    def test_parse(self) -> None:
        """The CACHEBUS_CODEC syntax."""
        assert VectorCodec.parse("int8+zlib") == VectorCodec("int8", True)
        with pytest.raises(ConfigError):
            VectorCodec.parse("float64")
        with pytest.raises(ConfigError):
            VectorCodec.parse("float32+lz4")


@pytest.fixture(scope="module")
def embeddings() -> np.ndarray:
    """1000 random 1536-d embedding-like vectors (unit-normalised Gaussian)."""
    rng = np.random.default_rng(7)
    raw = rng.standard_normal((1000, 1536)).astype(np.float32)
    return raw / np.linalg.norm(raw, axis=1, keepdims=True)


class TestFidelity:
    """int8/float16 fidelity against float32, with stated bounds."""

    def test_int8_cosine_at_least_0_999(self, embeddings: np.ndarray) -> None:
        """int8 keeps cosine >= 0.999 to float32 for every vector."""
        codec = VectorCodec("int8")
        worst = min(cosine(v, decode_vector(codec.encode(v))) for v in embeddings)
        assert worst >= 0.999, worst

    def test_float16_cosine_at_least_0_99999(self, embeddings: np.ndarray) -> None:
        """float16 keeps cosine >= 0.99999 for every vector."""
        codec = VectorCodec("float16")
        worst = min(cosine(v, decode_vector(codec.encode(v))) for v in embeddings)
        assert worst >= 0.99999, worst

    def test_sizes(self, embeddings: np.ndarray) -> None:
        """int8 is about a quarter of float32, float16 half."""
        v = embeddings[0]
        f32 = len(VectorCodec("float32").encode(v))
        assert len(VectorCodec("float16").encode(v)) <= 0.51 * f32
        assert len(VectorCodec("int8").encode(v)) <= 0.26 * f32


class TestEnvelopes:
    @given(
        st.integers(0, 2**63 - 1),
        st.lists(st.from_regex(r"[a-z]\.[A-Za-z0-9%._~-]{1,20}", fullmatch=True), max_size=30),
        st.binary(max_size=300),
    )
    def test_tagged_round_trip(self, seq: int, tags: list[str], payload: bytes) -> None:
        """Sequence, epoch, tags and payload survive packing."""
        entry = unpack_tagged(pack_tagged(seq, tags, payload, "Ab3_-xYz"))
        assert (entry.seq, list(entry.tags), entry.payload) == (seq, tags, payload)
        assert entry.epoch == b"Ab3_-xYz"

    @given(st.one_of(st.none(), st.text(min_size=1, max_size=64)), st.binary(max_size=100))
    def test_chunk_round_trip(self, content_hash: str | None, body: bytes) -> None:
        """Content hash, epoch and vector bytes survive packing."""
        assert unpack_chunk(pack_chunk(body, content_hash, "e0000001")) == (
            content_hash,
            b"e0000001",
            body,
        )

    def test_epoch_must_have_its_length(self) -> None:
        """An epoch that is not 8 ASCII characters is refused, not truncated."""
        with pytest.raises(CodecError):
            pack_tagged(1, [], b"x", "short")
        with pytest.raises(CodecError):
            pack_chunk(b"x", None, "much-too-long")

    def test_old_formats_are_foreign(self) -> None:
        """Entries and chunk records written before epochs existed read as foreign
        values (a miss), never as entries of the current epoch."""
        old_tagged = bytes([0xCB, 1]) + (5).to_bytes(8, "little") + (0).to_bytes(2, "little")
        with pytest.raises(CodecError):
            unpack_tagged(old_tagged + b"payload")
        with pytest.raises(CodecError):
            unpack_chunk(bytes([0xCB, 0]) + b"vector-bytes")

    def test_corrupt_tagged(self) -> None:
        """A truncated tag list is CodecError."""
        data = pack_tagged(5, ["d.a", "d.b"], b"x", "epoch-01")
        with pytest.raises(CodecError):
            unpack_tagged(data[:22])


def test_plain_float32_fast_path_checks_like_the_header() -> None:
    """Once a plain float32 header is known, a value with that header decodes without
    parsing it, but a wrong length or another expected dimension still is no vector."""
    from cachebus.codecs import CodecError, VectorCodec, decode_vector

    codec = VectorCodec("float32")
    vec = np.arange(8, dtype=np.float32)
    data = codec.encode(vec)
    assert np.array_equal(decode_vector(data), vec)  # learns the header
    assert np.array_equal(decode_vector(data, 8), vec)  # fast path
    with pytest.raises(CodecError):
        decode_vector(data[:-4], 8)  # truncated body
    with pytest.raises(CodecError):
        decode_vector(data, 9)  # another dimension expected
    zipped = VectorCodec("float32", compress=True).encode(vec)
    assert np.array_equal(decode_vector(zipped), vec)  # zlib never takes the fast path


def test_decode_vectors_matches_decode_vector_and_misses_on_bad_values() -> None:
    """The bulk decoder (the hit path of query-embedding lookups) agrees with
    :func:`decode_vector` for every codec, keeps ``None`` and turns a value that does
    not decode (foreign bytes, wrong dimension) into ``None``."""
    import numpy as np

    from cachebus.codecs import VectorCodec, decode_vector, decode_vectors

    vec = np.linspace(-1, 1, 8, dtype=np.float32)
    values: list[bytes | None] = [
        VectorCodec(dtype, compress).encode(vec)
        for dtype in ("float32", "float16", "int8")
        for compress in (False, True)
    ]
    decoded = decode_vectors([*values, None, b"not a vector"], expect_dim=8)
    for raw, got in zip(values, decoded, strict=False):
        assert raw is not None and got is not None
        np.testing.assert_array_equal(got, decode_vector(raw, 8))
    assert decoded[-2:] == [None, None]
    assert decode_vectors(values[:1], expect_dim=9) == [None]  # dimension mismatch: a miss


def test_memoized_query_digests_are_key_digest_and_bounded() -> None:
    from cachebus import keys

    keys._DIGEST_MEMO.clear()
    texts = [f"q{i}" for i in range(keys._DIGEST_MEMO_MAX + 10)]
    assert [keys._memo_digest(t) for t in texts] == [keys.key_digest(t) for t in texts]
    assert len(keys._DIGEST_MEMO) <= keys._DIGEST_MEMO_MAX
