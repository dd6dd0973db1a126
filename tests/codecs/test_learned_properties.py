"""Property tests for the learned codecs: code shapes, byte counts, packing, round trips."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmcompress.codecs import load_codec, make_codec
from mmcompress.codecs.learned.bits import field_bits, pack_fields, packed_size, unpack_fields

SETTINGS = settings(max_examples=5, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
TINY = {"epochs": 1, "batch_size": 128}

# spec -> expected bytes per item (for input dimension d)
SPECS = {
    "QINCO2x8": lambda d: 2,
    "QINCO3x6": lambda d: 3,
    "QINCO5x4": lambda d: 3,
    "HASH16": lambda d: 2,
    "HASH24": lambda d: 3,
    "NSQ6x4": lambda d: 3,
    "NSQ5x3": lambda d: 2,
    "MRL8,SQ8": lambda d: 8,
}


@given(M=st.integers(1, 40), nbits=st.integers(1, 16), n=st.integers(0, 30), seed=st.integers(0, 99))
@settings(max_examples=60, deadline=None, derandomize=True)
def test_pack_unpack_round_trip(M, nbits, n, seed):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 1 << nbits, size=(n, M))
    packed = pack_fields(codes, nbits)
    assert packed.dtype == np.uint8 and packed.shape == (n, packed_size(M, nbits))
    assert sum(field_bits(M, nbits)) == 8 * packed.shape[1]
    np.testing.assert_array_equal(unpack_fields(packed, M, nbits), codes)


@st.composite
def datasets(draw):
    n = draw(st.integers(260, 400))
    d = draw(st.sampled_from([16, 24]))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    X = (rng.standard_normal((n, d)) * rng.uniform(0.2, 2.0, d)).astype(np.float32)
    if draw(st.booleans()):
        X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X


def _make(spec: str, metric: str):
    return make_codec(spec, metric=metric, random_state=2, train=TINY, qinco_hidden=8)


@SETTINGS
@given(X=datasets(), spec=st.sampled_from(sorted(SPECS)), metric=st.sampled_from(["ip", "l2"]))
def test_shapes_bytes_and_determinism(X, spec, metric):
    codec = _make(spec, metric).fit(X)
    codes = codec.encode(X)
    assert codes.dtype == np.uint8
    assert codes.shape == (len(X), codec.code_size) == (len(X), SPECS[spec](X.shape[1]))
    assert sum(codec.field_bits) == 8 * codec.code_size
    X_hat = codec.decode(codes)
    assert X_hat.dtype == np.float32 and X_hat.shape == X.shape and np.isfinite(X_hat).all()
    np.testing.assert_array_equal(_make(spec, metric).fit(X).encode(X), codes)
    scores, ids = codec.search(codes, X[:9], 5)
    assert scores.shape == ids.shape == (9, 5)
    assert np.all(np.diff(scores, axis=1) <= 1e-5)
    assert ids.min() >= 0 and ids.max() < len(X)


@SETTINGS
@given(X=datasets(), spec=st.sampled_from(sorted(SPECS)))
def test_save_load_round_trip(X, spec, tmp_path_factory):
    codec = _make(spec, "ip").fit(X)
    path = tmp_path_factory.mktemp("learned") / "codec.json"
    codec.save(path)
    again = load_codec(path)
    assert again.spec == codec.spec and again.code_size == codec.code_size
    codes = codec.encode(X)
    np.testing.assert_array_equal(again.encode(X), codes)
    np.testing.assert_array_equal(again.decode(codes), codec.decode(codes))
