"""Lossless entropy coding: bit-identical round trips, independent blocks, tamper checks."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmcompress.codecs import make_codec, pack, packed_size, unpack, unpack_block
from mmcompress.codecs.entropy import read_header
from mmcompress.errors import ArtifactError, CodecError


@st.composite
def code_arrays(draw):
    widths = draw(st.lists(st.integers(1, 12), min_size=1, max_size=12))
    pad = (-sum(widths)) % 8
    if pad:
        widths.append(pad)
    n = draw(st.integers(0, 300))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    skew = draw(st.floats(0.2, 3.0))
    fields = np.stack([np.minimum((rng.exponential(skew, n) * (1 << w) / 8).astype(np.int64), (1 << w) - 1)
                       for w in widths], axis=1) if n else np.zeros((0, len(widths)), dtype=np.int64)
    bits = np.concatenate([(fields[:, [i]] >> np.arange(w - 1, -1, -1)) & 1 for i, w in enumerate(widths)],
                          axis=1) if n else np.zeros((0, sum(widths)), dtype=np.int64)
    return np.packbits(bits.astype(np.uint8), axis=1).reshape(n, sum(widths) // 8), widths


@settings(max_examples=40, deadline=None, derandomize=True)
@given(data=code_arrays(), method=st.sampled_from(["rans", "zstd"]), model=st.sampled_from(["global", "block"]),
       block_rows=st.integers(1, 128), use_fields=st.booleans())
def test_round_trip_is_bit_identical(data, method, model, block_rows, use_fields):
    codes, widths = data
    blob = pack(codes, method, field_bits=widths if use_fields else None, block_rows=block_rows, model=model)
    out = unpack(blob)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, codes)
    h = read_header(blob)
    for i in range(h.n_blocks):
        np.testing.assert_array_equal(unpack_block(blob, i), codes[i * block_rows:(i + 1) * block_rows])


@pytest.fixture(scope="module")
def spectrum() -> np.ndarray:
    """8,000 unit rows with a decaying spectrum in a random basis, like embedding catalogs
    (enough rows that each field's frequency table is a small part of the packed bytes)."""
    rng = np.random.default_rng(0)
    d = 64
    basis = np.linalg.qr(rng.standard_normal((d, d)))[0]
    X = (rng.standard_normal((8000, d)) * np.arange(1, d + 1) ** -0.5) @ basis
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


def test_nuq_codes_shrink_by_at_least_15_percent(spectrum):
    """Entropy-aware NUQ prices each bit of code entropy, so its allocation and levels trade a
    little error for skewed fields; rANS per field turns that into bytes. Plain NUQ barely packs."""
    sizes = {}
    for spec in ("PCA,NUQ16", "PCA,NUQ16_e2"):
        codec = make_codec(spec).fit(spectrum)
        codes = codec.encode(spectrum)
        sizes[spec] = packed_size(codes, "rans", field_bits=codec.field_bits) / codes.nbytes
        assert codec.quantizer.expected_bits_ / 8 <= 16 * (sizes[spec] + 0.01)
        np.testing.assert_array_equal(unpack(pack(codes, field_bits=codec.field_bits)), codes)
    assert sizes["PCA,NUQ16_e2"] <= 0.85
    assert sizes["PCA,NUQ16"] > 0.95


def test_field_models_beat_byte_models_on_nuq(digits):
    codec = make_codec("PCA,NUQ16_e2").fit(digits)
    codes = codec.encode(digits)
    assert packed_size(codes, field_bits=codec.field_bits) < packed_size(codes)


@pytest.fixture
def blob():
    rng = np.random.default_rng(1)
    codes = (rng.zipf(1.6, (1000, 8)) % 256).astype(np.uint8)
    return codes, pack(codes, "rans", block_rows=256)


def test_blocks_decode_independently(blob):
    codes, data = blob
    h = read_header(data)
    assert h.n_blocks == 4
    np.testing.assert_array_equal(unpack_block(data, 2), codes[512:768])
    with pytest.raises(CodecError, match="out of range"):
        unpack_block(data, 4)


def test_tampered_payload_is_refused(blob):
    codes, data = blob
    bad = bytearray(data)
    bad[-5] ^= 0xFF
    with pytest.raises(ArtifactError, match="checksum|CRC"):
        unpack(bytes(bad))
    with pytest.raises(ArtifactError, match="CRC"):
        unpack_block(bytes(bad), 3)
    np.testing.assert_array_equal(unpack_block(bytes(bad), 0), codes[:256])


def test_tampered_header_and_truncation_are_refused(blob):
    _, data = blob
    bad = bytearray(data)
    bad[20] ^= 0x01
    with pytest.raises(ArtifactError, match="header"):
        unpack(bytes(bad))
    with pytest.raises(ArtifactError):
        unpack(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="magic"):
        unpack(b"nope" + data[4:])


def test_bad_arguments():
    codes = np.zeros((4, 2), dtype=np.uint8)
    with pytest.raises(CodecError, match="method"):
        pack(codes, "lzma")
    with pytest.raises(CodecError, match="field_bits"):
        pack(codes, field_bits=[8, 4])
    with pytest.raises(CodecError, match="uint8"):
        pack(codes.astype(np.int32))
