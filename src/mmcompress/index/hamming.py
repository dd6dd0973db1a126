"""Hamming distances between packed binary codes (uint8 rows), the coarse tier's scan kernel.

The fast path is faiss's popcount kernel (SIMD, releases the GIL); the fallback is numpy's
``bitwise_count`` on the XOR of the codes, or a 256-entry popcount table on numpy < 2.
"""

from __future__ import annotations

import numpy as np

try:  # faiss ships a vectorised popcount over arbitrary code sizes
    import faiss

    _HAS_FAISS = hasattr(faiss, "hammings")
except ImportError:  # pragma: no cover - faiss is a project dependency
    _HAS_FAISS = False

POPCOUNT_LUT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def hamming_distances(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None, *,
                      use_faiss: bool = True) -> np.ndarray:
    """All-pairs Hamming distances: ``a`` (na, nbytes) x ``b`` (nb, nbytes) -> int32 (na, nb)."""
    assert a.dtype == np.uint8 and b.dtype == np.uint8 and a.ndim == b.ndim == 2, (a.dtype, b.dtype)
    assert a.shape[1] == b.shape[1], (a.shape, b.shape)
    na, nb = len(a), len(b)
    if out is None:
        out = np.empty((na, nb), dtype=np.int32)
    assert out.dtype == np.int32 and out.shape == (na, nb) and out.flags.c_contiguous
    if na == 0 or nb == 0:
        return out
    if use_faiss and _HAS_FAISS:
        a = np.ascontiguousarray(a)
        b = np.ascontiguousarray(b)
        faiss.hammings(faiss.swig_ptr(a), faiss.swig_ptr(b), na, nb, a.shape[1], faiss.swig_ptr(out))
        return out
    for i in range(na):
        out[i] = popcount_rows(np.bitwise_xor(b, a[i]))
    return out


def popcount_rows(x: np.ndarray) -> np.ndarray:
    """Number of set bits in each row of a uint8 matrix, as int32."""
    assert x.dtype == np.uint8 and x.ndim == 2, (x.dtype, x.shape)
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x).sum(axis=1, dtype=np.int32)
    return POPCOUNT_LUT[x].sum(axis=1, dtype=np.int32)
