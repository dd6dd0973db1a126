"""Products of float32 queries with float16 matrices, without widening the whole matrix per call.

A ``_f16`` sign codec keeps its (d, bits) projection in float16, and IVF centroids kept in its
subspace are float16 too: half their bytes. ``Q @ W`` with such a ``W`` makes numpy widen all
of ``W`` first, and its float16 casts run one value at a time (about 3 ns a value on the
benchmark machine): 300 µs for a 384 x 256 projection, most of a single warm query's time.
numba has no float16 type on the CPU and faiss exposes no float16 product, so the kernels here
read the float16 bit patterns as integers and widen them with the exponent shift that compilers
emit for the conversion (``(h & 0x7fff) << 13`` scaled by ``2^112``, sign bit moved to bit 31),
a row at a time, fused with the product. For a batch of queries widening once is cheaper, and
numpy does that.

    matmul_half(Q, W)       # Q (nq, d) float32 @ W (d, r) float16, int8 or float32 -> (nq, r) float32
    matmul_half_t(Q, C)     # Q (nq, r) @ C.T for C (n, r): scores against rows (centroids)
"""

from __future__ import annotations

import numpy as np

try:
    import numba

    AVAILABLE = True
except ImportError:  # pragma: no cover - numba is a project dependency
    AVAILABLE = False

FEW_QUERIES = 16  # up to this many queries the fused kernels beat widening the matrix once


def matmul_half(Q: np.ndarray, W: np.ndarray) -> np.ndarray:
    """``Q @ W`` in float32 for a float16, int8 or float32 ``W`` (d, r)."""
    Q = np.asarray(Q, dtype=np.float32)
    if W.dtype == np.int8:
        if not AVAILABLE or Q.ndim != 2 or len(Q) > FEW_QUERIES:
            return Q @ W.astype(np.float32)
        out = np.empty((len(Q), W.shape[1]), dtype=np.float32)
        _matmul_int8(np.ascontiguousarray(Q), np.ascontiguousarray(W), out)
        return out
    if W.dtype != np.float16:
        return Q @ W
    if not AVAILABLE or Q.ndim != 2 or len(Q) > FEW_QUERIES:
        return Q @ W.astype(np.float32)
    out = np.empty((len(Q), W.shape[1]), dtype=np.float32)
    _matmul_half(np.ascontiguousarray(Q), np.ascontiguousarray(W).view(np.uint16), out)
    return out


def matmul_half_t(Q: np.ndarray, C: np.ndarray) -> np.ndarray:
    """``Q @ C.T`` in float32 for a float16 or float32 ``C`` (n, r)."""
    Q = np.asarray(Q, dtype=np.float32)
    if C.dtype != np.float16:
        return Q @ C.T
    if not AVAILABLE or Q.ndim != 2 or len(Q) > FEW_QUERIES:
        return Q @ C.astype(np.float32).T
    out = np.empty((len(Q), C.shape[0]), dtype=np.float32)
    _matmul_half_t(np.ascontiguousarray(Q), np.ascontiguousarray(C).view(np.uint16), out)
    return out


def _half_bits(src: np.ndarray, bits: np.ndarray) -> None:
    """float16 bit patterns ``src`` -> the float32 patterns of the same values times 2^-112 in
    ``bits``: the sign moved to bit 31, exponent and mantissa shifted up 13 bits (subnormal
    halves become subnormal floats, still exact). One integer pass; a product by 2^112 makes
    the values (:func:`_widen_row`), or a factor of 2^112 on the other operand stands in for it."""
    for j in range(src.shape[0]):
        h = np.uint32(src[j])
        bits[j] = ((h & np.uint32(0x7FFF)) << np.uint32(13)) | ((h & np.uint32(0x8000)) << np.uint32(16))


def _widen_row(src: np.ndarray, bits: np.ndarray) -> None:
    """float16 bit patterns ``src`` -> float32 values in ``bits.view(float32)``: exact for every
    finite float16, subnormals included (the ``2^112`` product renormalises them)."""
    _half_bits(src, bits)
    f = bits.view(np.float32)
    big = np.float32(2.0 ** 112)
    for j in range(src.shape[0]):
        f[j] = f[j] * big


def _matmul_half_py(Q: np.ndarray, Wb: np.ndarray, out: np.ndarray) -> None:
    nq, d = Q.shape
    r = Wb.shape[1]
    bits = np.empty(r, np.uint32)
    row = bits.view(np.float32)
    out[:] = 0.0
    for k in range(d):
        _widen_row(Wb[k], bits)
        for i in range(nq):
            qk = Q[i, k]
            for j in range(r):
                out[i, j] += qk * row[j]


def _matmul_int8_py(Q: np.ndarray, W: np.ndarray, out: np.ndarray) -> None:
    """``Q @ W`` for an int8 ``W``: numpy would widen all of ``W`` to float32 first (a copy of
    four times its bytes per call)."""
    nq, d = Q.shape
    r = W.shape[1]
    row = np.empty(r, np.float32)
    out[:] = 0.0
    for k in range(d):
        for j in range(r):
            row[j] = np.float32(W[k, j])
        for i in range(nq):
            qk = Q[i, k]
            for j in range(r):
                out[i, j] += qk * row[j]


def _matmul_half_t_py(Q: np.ndarray, Cb: np.ndarray, out: np.ndarray) -> None:
    nq, r = Q.shape
    bits = np.empty(r, np.uint32)
    row = bits.view(np.float32)
    for c in range(Cb.shape[0]):
        _widen_row(Cb[c], bits)
        for i in range(nq):
            acc = np.float32(0.0)
            for j in range(r):
                acc += Q[i, j] * row[j]
            out[i, c] = acc


if AVAILABLE:
    _half_bits = numba.njit(nogil=True, cache=True, inline="always")(_half_bits)
    _widen_row = numba.njit(nogil=True, cache=True)(_widen_row)
    _matmul_half = numba.njit(nogil=True, cache=True, fastmath=True)(_matmul_half_py)
    _matmul_half_t = numba.njit(nogil=True, cache=True, fastmath=True)(_matmul_half_t_py)
    _matmul_int8 = numba.njit(nogil=True, cache=True, fastmath=True)(_matmul_int8_py)
else:  # pragma: no cover - numba is a project dependency
    _matmul_half, _matmul_half_t, _matmul_int8 = _matmul_half_py, _matmul_half_t_py, _matmul_int8_py

#: float16 bit patterns (uint16) -> float32 values written into a uint32 buffer's bits; compiled
#: where numba is, so other kernels (the row store's float16 rows) can call it
widen_half_row = _widen_row
#: float16 bit patterns -> float32 patterns of the values times 2^-112 (see ``_half_bits``)
half_bits_scaled_down = _half_bits
