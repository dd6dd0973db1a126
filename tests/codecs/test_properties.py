"""Property tests: shapes, byte counts, determinism and exact save/load round trips."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmcompress.codecs import load_codec, make_codec

# Fast specs whose code size is known from the spec and the input dimension d.
SPECS = {
    "SQ8": lambda d: d,
    "SQ4": lambda d: (d + 1) // 2,
    "FP16": lambda d: 2 * d,
    "PQ4x4": lambda d: 2,
    "PCA,NUQ3": lambda d: 3,
    "NUQ5_e1": lambda d: 5,
    "BIN16": lambda d: 2,
    "BIN24_rr": lambda d: 3,
    "RR,SQ8": lambda d: d,
    "C,PCA8,PQ2x8": lambda d: 2,
}

SETTINGS = settings(max_examples=6, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@st.composite
def datasets(draw):
    n = draw(st.integers(300, 520))
    d = draw(st.sampled_from([16, 24, 32]))
    seed = draw(st.integers(0, 2**16))
    unit = draw(st.booleans())
    rng = np.random.default_rng(seed)
    X = (rng.standard_normal((n, d)) * rng.uniform(0.2, 2.0, d)).astype(np.float32)
    if unit:
        X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X


@SETTINGS
@given(X=datasets(), spec=st.sampled_from(sorted(SPECS)), metric=st.sampled_from(["ip", "l2"]))
def test_shapes_sizes_and_determinism(X, spec, metric):
    d = X.shape[1]
    codec = make_codec(spec, metric=metric, random_state=3).fit(X)
    codes = codec.encode(X)
    assert codes.dtype == np.uint8
    assert codes.shape == (len(X), codec.code_size) == (len(X), SPECS[spec](d))
    assert sum(codec.field_bits) == 8 * codec.code_size
    X_hat = codec.decode(codes)
    assert X_hat.dtype == np.float32 and X_hat.shape == X.shape and np.isfinite(X_hat).all()
    again = make_codec(spec, metric=metric, random_state=3).fit(X)
    np.testing.assert_array_equal(again.encode(X), codes)
    k = 7
    scores, ids = codec.search(codes, X[:11], k)
    assert scores.shape == ids.shape == (11, k)
    assert np.all(np.diff(scores, axis=1) <= 1e-5), "scores sorted best first"
    assert ids.min() >= 0 and ids.max() < len(X)


@SETTINGS
@given(X=datasets(), spec=st.sampled_from(sorted(SPECS)))
def test_save_load_gives_identical_codes_and_results(tmp_path_factory, X, spec):
    codec = make_codec(spec).fit(X)
    path = tmp_path_factory.mktemp("codec") / "codec.json"
    codec.save(path)
    loaded = load_codec(path)
    assert loaded.spec == codec.spec and loaded.code_size == codec.code_size
    assert loaded.norm_weight_ == codec.norm_weight_
    codes = codec.encode(X)
    np.testing.assert_array_equal(loaded.encode(X), codes)
    np.testing.assert_array_equal(loaded.decode(codes), codec.decode(codes))
    s1, i1 = codec.search(codes, X[:9], 5)
    s2, i2 = loaded.search(codes, X[:9], 5)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(s1, s2)


@SETTINGS
@given(X=datasets(), k=st.integers(1, 40))
def test_k_larger_than_database_is_clipped(X, k):
    codec = make_codec("SQ8").fit(X)
    codes = codec.encode(X[:k // 2 + 1])
    scores, ids = codec.search(codes, X[:3], k)
    assert ids.shape == (3, min(k, len(codes)))
    assert sorted(ids[0].tolist()) == sorted(set(ids[0].tolist()))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(M=st.integers(1, 12), nbits=st.integers(1, 16), seed=st.integers(0, 2**16))
def test_unpacked_codes_follow_faiss_bit_order(M, nbits, seed):
    """unpack_codes reads M fields of nbits bits, least significant bit first from bit 0 of
    byte 0 (faiss's BitstringWriter), for any field width; checked against a bit-by-bit packer."""
    from hypothesis import assume

    from mmcompress.codecs.faiss_quantizers import unpack_codes

    assume(M * nbits % 8 == 0)
    values = np.random.default_rng(seed).integers(0, 1 << nbits, (7, M))
    packed = np.zeros((7, M * nbits // 8), dtype=np.uint8)
    for i in range(7):
        for m in range(M):
            for b in range(nbits):
                if values[i, m] >> b & 1:
                    at = m * nbits + b
                    packed[i, at // 8] |= 1 << (at % 8)
    np.testing.assert_array_equal(unpack_codes(packed, M, nbits), values)
