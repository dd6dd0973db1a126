"""Products with float16 matrices: the same values as widening the matrix first, for every
finite float16 (subnormals, signed zeros), on the fused path (few queries) and the batch path."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mmcompress.codecs.halfmath import FEW_QUERIES, matmul_half, matmul_half_t


def _reference(Q: np.ndarray, W: np.ndarray) -> np.ndarray:
    return Q.astype(np.float64) @ W.astype(np.float64)


def test_every_finite_float16_is_widened_exactly():
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    finite = bits[np.isfinite(bits.view(np.float16))]
    W = finite[: len(finite) // 64 * 64].view(np.float16).reshape(-1, 64)
    # one-hot queries: the product is a widened row (matmul_half) or column (matmul_half_t)
    for start in range(0, len(W), 97):
        Q = np.zeros((1, len(W)), np.float32)
        Q[0, start] = 1.0
        got, want = matmul_half(Q, W)[0], W[start].astype(np.float32)
        np.testing.assert_array_equal(got, want)
    for j in range(64):
        Q = np.zeros((1, 64), np.float32)
        Q[0, j] = 1.0
        got, want = matmul_half_t(Q, W)[0], W[:, j].astype(np.float32)
        np.testing.assert_array_equal(got, want)


@settings(max_examples=40, deadline=None)
@given(nq=st.integers(1, 2 * FEW_QUERIES), d=st.integers(1, 70), r=st.integers(1, 40),
       seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([1e-6, 1e-2, 1.0, 300.0]))
def test_products_match_widening_first(nq, d, r, seed, scale):
    rng = np.random.default_rng(seed)
    Q = rng.standard_normal((nq, d)).astype(np.float32)
    W = (rng.standard_normal((d, r)) * scale).astype(np.float16)
    C = (rng.standard_normal((r, d)) * scale).astype(np.float16)
    for got, want, a, b in ((matmul_half(Q, W), _reference(Q, W), np.abs(Q), np.abs(W.astype(np.float64))),
                            (matmul_half_t(Q, C), _reference(Q, C.T), np.abs(Q), np.abs(C.T.astype(np.float64)))):
        assert got.dtype == np.float32 and got.shape == want.shape
        # float32 accumulation: within a few ulps of the sum of magnitudes
        np.testing.assert_array_less(np.abs(got - want), 1e-5 * (a @ b) + 1e-30)


def test_float32_matrices_and_views_pass_through():
    rng = np.random.default_rng(0)
    Q = rng.standard_normal((3, 40)).astype(np.float32)
    W = rng.standard_normal((80, 24)).astype(np.float32)
    np.testing.assert_array_equal(matmul_half(Q, W[::2]), Q @ W[::2])
    W16 = W.astype(np.float16)
    np.testing.assert_allclose(matmul_half(Q[:, ::1], W16[::2]), Q @ W16[::2].astype(np.float32), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(matmul_half_t(Q[:, :24], W16[:5]), Q[:, :24] @ W16[:5].astype(np.float32).T,
                               rtol=1e-5, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(nq=st.integers(1, 2 * FEW_QUERIES), d=st.integers(1, 70), r=st.integers(1, 40),
       seed=st.integers(0, 2**31 - 1))
def test_int8_products_match_widening_first(nq, d, r, seed):
    """An int8 matrix (a ``_i8`` projection): the fused path for few queries and the widened one
    for a batch give the float64 product within float32 accumulation error."""
    rng = np.random.default_rng(seed)
    Q = rng.standard_normal((nq, d)).astype(np.float32)
    W = rng.integers(-127, 128, (d, r)).astype(np.int8)
    got, want = matmul_half(Q, W), _reference(Q, W)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_array_less(np.abs(got - want), 1e-5 * (np.abs(Q) @ np.abs(W.astype(np.float64))) + 1e-30)
