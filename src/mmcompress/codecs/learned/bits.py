"""Packing ``M`` fields of ``nbits`` each into whole bytes, MSB first (the layout
:attr:`Codec.field_bits` describes); a trailing pad field fills the last byte."""

from __future__ import annotations

import numpy as np


def packed_size(M: int, nbits: int) -> int:
    return -(-M * nbits // 8)


def field_bits(M: int, nbits: int) -> list[int]:
    if nbits == 8:
        return [8] * M
    pad = 8 * packed_size(M, nbits) - M * nbits
    return [nbits] * M + ([pad] if pad else [])


def pack_fields(codes: np.ndarray, nbits: int) -> np.ndarray:
    """(n, M) integer codes < 2**nbits -> (n, ceil(M*nbits/8)) uint8."""
    assert codes.ndim == 2, codes.shape
    if nbits == 8:
        return np.ascontiguousarray(codes, dtype=np.uint8)
    n, M = codes.shape
    shifts = np.arange(nbits - 1, -1, -1, dtype=np.int64)
    bits = ((codes.astype(np.int64)[:, :, None] >> shifts) & 1).astype(np.uint8).reshape(n, M * nbits)
    return np.packbits(bits, axis=1)


def unpack_fields(packed: np.ndarray, M: int, nbits: int) -> np.ndarray:
    """Inverse of :func:`pack_fields`: (n, bytes) uint8 -> (n, M) int64."""
    if nbits == 8:
        return packed.astype(np.int64)
    n = len(packed)
    bits = np.unpackbits(packed, axis=1)[:, :M * nbits].reshape(n, M, nbits).astype(np.int64)
    weights = 1 << np.arange(nbits - 1, -1, -1, dtype=np.int64)
    return bits @ weights
