"""Asymmetric scan of sign codes with per-byte look-up tables, in numpy.

A binary codec reconstructs ``x_hat = m + sum_b s_b * A_b`` with ``s_b = +-1`` the code's bits.
Then ``q . x_hat = q . m + sum_b s_b (q . A_b)``: a 256-entry table per code byte (the 8 signs of
each byte value times the query's projections) makes the score of a code ``cs`` table look-ups,
as in product-quantizer ADC. The affine map is read from the codec's own ``decode`` (the zero
code and the ``bits`` one-bit codes), and checked on random codes, so any binary codec whose
reconstruction is affine in its signs qualifies without knowing its internals.
"""

from __future__ import annotations

import numpy as np

from mmcompress.codecs.base import Codec
from mmcompress.codecs.halfmath import matmul_half


class SignLUTScorer:
    """Scores ``q . decode(code)`` (``ip``) or ``-|q - decode(code)|^2`` (``l2``) from sign codes.

    The sign directions are ``A = (W * scale).T``; ``W`` (d, bits) is either the codec's own
    projection (``shared``: it costs no bytes here) or a copy read off its decode."""

    def __init__(self, mean: np.ndarray, W: np.ndarray, scale: np.ndarray, metric: str = "ip", *,
                 shared: bool = False) -> None:
        assert W.ndim == 2 and W.shape[1] % 8 == 0 and mean.shape == (W.shape[0],), (W.shape, mean.shape)
        self.mean = mean.astype(np.float32)
        self.W = W
        self.scale = np.asarray(scale, dtype=np.float32)
        self.metric = metric
        self.shared = shared
        self.code_size = W.shape[1] // 8
        self._mean_w = matmul_half(self.mean[None], W)[0]  # (bits,): the l2 tables' offset
        if metric == "l2":
            W32 = self.W.astype(np.float64)
            self._norm_const = float(self.mean @ self.mean + ((W32 * W32).sum(axis=0) * self.scale ** 2).sum())

    @property
    def W32(self) -> np.ndarray:
        """The sign projection in float32 (a float16 copy is widened per call)."""
        return self.W if self.W.dtype == np.float32 else self.W.astype(np.float32)

    @property
    def nbytes(self) -> int:
        return self.mean.nbytes + self.scale.nbytes + (0 if self.shared else self.W.nbytes)

    @classmethod
    def from_codec(cls, codec: Codec, *, rtol: float = 1e-3, seed: int = 0,
                   dtype: type = np.float32) -> SignLUTScorer | None:
        """The codec's own sign projection where it offers one (``sign_projection``), else the
        affine sign map read off ``codec.decode`` (stored in ``dtype``); None if the codec is not
        binary, its decode is not affine in the signs, or (``l2``) its sign directions are not
        orthogonal."""
        if not getattr(codec, "is_binary", False) or not codec.is_fitted:
            return None
        bits = 8 * codec.code_size
        try:
            zero = codec.decode(np.zeros((1, codec.code_size), np.uint8))[0].astype(np.float64)
            ones = codec.decode(np.packbits(np.eye(bits, dtype=bool), axis=1)).astype(np.float64)
        except Exception:
            return None
        A = (ones - zero) / 2
        mean = zero + A.sum(axis=0)
        rng = np.random.default_rng(seed)
        probe = rng.integers(0, 256, (16, codec.code_size), dtype=np.uint8)
        signs = np.unpackbits(probe, axis=1).astype(np.float64) * 2 - 1
        want = codec.decode(probe).astype(np.float64)
        scale = max(float(np.abs(want).max()), 1e-12)
        if np.abs(mean + signs @ A - want).max() > rtol * scale:
            return None
        if codec.metric == "l2":
            G = A @ A.T
            if np.abs(G - np.diag(np.diag(G))).max() > rtol * max(float(np.abs(G).max()), 1e-12):
                return None
        own = getattr(codec, "sign_projection", lambda: None)()
        if own is not None:
            m, W, s = own
            if np.abs((W * s).T - A).max() <= rtol * max(float(np.abs(A).max()), 1e-12):
                return cls(m, W, s, codec.metric, shared=True)
        return cls(mean, np.ascontiguousarray(A.T, dtype=dtype), np.ones(bits, np.float32), codec.metric)

    def projections(self, Q: np.ndarray, QW: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per query: the projection on each sign direction (nq, bits) and the constant term;
        ``sign_tables`` expands the projections into look-up tables. ``QW``: ``Q @ W`` where the
        caller has it already."""
        Q = np.asarray(Q, dtype=np.float32)
        if QW is None:
            QW = matmul_half(Q, self.W)
        if self.metric == "ip":
            return QW * self.scale, Q @ self.mean
        proj = 2 * (QW - self._mean_w) * self.scale
        return proj, 2 * (Q @ self.mean) - self._norm_const - (Q * Q).sum(axis=1)

    def item_factors(self, X: np.ndarray, codes: np.ndarray, gamma: float) -> np.ndarray:
        """Per item (``ip``): ``(|P(x - m)|^2 + gamma |(I - P)(x - m)|^2) / <x - m, x_hat - m>``
        with ``P`` the projection on the sign directions. Scaling the code's estimate by it,
        ``q . m + f * (q . (x_hat - m))``, corrects for how far the item points along its own
        reconstruction (RaBitQ's unbiased estimator when ``gamma = 1`` and the directions span
        the space; ``gamma`` weighs the energy the code cannot see)."""
        Xc = np.asarray(X, dtype=np.float32) - self.mean
        W = self.W32
        P = Xc @ W
        signs = np.unpackbits(codes, axis=1).astype(np.float32) * 2 - 1
        along = (P * self.scale * signs).sum(axis=1)
        inside = (P * P).sum(axis=1) / np.maximum((W * W).sum(axis=0).mean(), 1e-12)
        outside = np.maximum((Xc * Xc).sum(axis=1) - inside, 0)
        return ((inside + gamma * outside) / np.maximum(along, 1e-12)).astype(np.float32)

    def tables(self, Q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per query: (code_size * 256) look-up table and the constant term."""
        proj, const = self.projections(Q)
        return sign_tables(proj), const

    def scores(self, Q: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """``codes`` (nq, s, code_size) uint8, one shortlist per query -> scores (nq, s)."""
        nq, s, cs = codes.shape
        assert cs == self.code_size and len(Q) == nq, (codes.shape, self.code_size, len(Q))
        lut, const = self.tables(Q)
        return table_scores(lut, codes) + const[:, None]


def table_scores(lut: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """``sum_j lut[q, 256 j + codes[q, r, j]]``: (nq, s) float32 from per-query tables (nq, cs * 256)
    and one shortlist of byte codes per query (nq, s, cs)."""
    nq, s, cs = codes.shape
    off = np.arange(cs, dtype=np.intp) * 256
    out = np.empty((nq, s), dtype=np.float32)
    for i in range(nq):  # row by row: 1-D gathers are several times faster than a 2-D one
        out[i] = lut[i][codes[i].astype(np.intp) + off].sum(axis=1)
    return out


def sign_tables(proj: np.ndarray) -> np.ndarray:
    """Look-up tables (nq, bits * 32) from projections (nq, bits): entry ``256 j + v`` is the sum
    over byte ``j``'s 8 projections signed by the bits of ``v`` (most significant first).

    Built by doubling: all signs negative for ``v = 0``, then setting bit ``t`` adds twice the
    projection it flips, so ``[2^t, 2^(t+1))`` is ``[0, 2^t)`` shifted. The compiled kernel builds
    its tables with the same additions in the same order, so both paths score bit-identically.
    """
    nq, bits = proj.shape
    p = np.asarray(proj, dtype=np.float32).reshape(nq, bits // 8, 8)
    lut = np.empty((nq, bits // 8, 256), dtype=np.float32)
    acc = -p[:, :, 0]
    for b in range(1, 8):
        acc = acc - p[:, :, b]
    lut[:, :, 0] = acc
    for t in range(8):
        lut[:, :, 1 << t:2 << t] = lut[:, :, :1 << t] + np.float32(2) * p[:, :, 7 - t, None]
    return lut.reshape(nq, bits * 32)
