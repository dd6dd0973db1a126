"""Item scales for sign codes: one byte per item that rescales its look-up-table estimate.

A sign code estimates ``q . x`` as ``q . m + q . (x_hat - m)``. Scaling the second term by how
far the item's own vector points along its reconstruction (RaBitQ's correction, see
:meth:`~mmcompress.index.signscan.SignLUTScorer.item_factors`) can rank a shortlist closer to
the exact order. Whether it does depends on the data, so the weight is chosen on a sample at
build, and no byte is spent where the plain estimate ranks as well.
"""

from __future__ import annotations

import numpy as np

from mmcompress.index.signscan import SignLUTScorer

WEIGHTS = (0.0, 0.5, 1.0)


def choose_scale_weight(scorer: SignLUTScorer, X: np.ndarray, codes: np.ndarray, *, seed: int = 0,
                        n_base: int = 20_000, n_queries: int = 300, depth: int = 40,
                        min_gain: float = 0.002) -> float | None:
    """The weight in :data:`WEIGHTS` whose scaled estimate best ranks a sample of items (as
    queries, themselves left out) against a sample of the others, by recall of the exact top 10
    within the estimate's top ``depth``; None when none beats the plain estimate by ``min_gain``."""
    rng = np.random.default_rng(seed)
    base = np.sort(rng.choice(len(X), min(len(X), n_base), replace=False))
    if len(base) < 4 * depth:
        return None
    qpos = rng.choice(len(base), min(n_queries, len(base) // 4), replace=False)
    Xb, Cb, Q = X[base], codes[base], X[base[qpos]]
    exact = Q @ Xb.T
    exact[np.arange(len(qpos)), qpos] = -np.inf
    truth = np.argpartition(-exact, 10, axis=1)[:, :10]
    proj, const = scorer.projections(Q)
    code_scores = proj @ (np.unpackbits(Cb, axis=1).astype(np.float32) * 2 - 1).T

    def recall(factors: np.ndarray) -> float:
        est = const[:, None] + factors[None, :] * code_scores
        est[np.arange(len(qpos)), qpos] = -np.inf
        top = np.argpartition(-est, depth, axis=1)[:, :depth]
        return float(np.mean([len(np.intersect1d(a, b)) for a, b in zip(top, truth, strict=True)])) / 10

    best, best_recall = None, recall(np.ones(len(base), np.float32)) + min_gain
    for weight in WEIGHTS:
        r = recall(scorer.item_factors(Xb, Cb, weight))
        if r > best_recall:
            best, best_recall = weight, r
    return best


def quantize_scales(factors: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """One byte per factor over ``[lo, hi]`` (clipped)."""
    return np.clip(np.rint((factors - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def scale_map(lo: float, hi: float) -> tuple[np.float32, np.float32]:
    """``(lo, step)``: a stored byte ``u`` stands for ``lo + step * u``."""
    return np.float32(lo), np.float32((hi - lo) / 255.0)
