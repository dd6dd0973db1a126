"""Tuning the norm weight of inner-product scoring on the training rows.

Quantized reconstructions of unit-norm vectors are shrunk by varying amounts (a centroid is a
mean), so ranking by ``q . x_hat`` favours items that happened to keep more norm. Scoring by
``q . x_hat - w * |x_hat|^2`` removes that bias; the best ``w`` depends on the codec and data,
so it is picked by recall@10 against exact search on a sample of the training rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from mmcompress.codecs.base import Codec

NORM_WEIGHT_GRID = tuple(np.round(np.arange(0.0, 0.65, 0.05), 2))


def is_unit_norm(X: np.ndarray, tol: float = 1e-2) -> bool:
    norms = np.linalg.norm(X, axis=1)
    return bool(np.all(np.abs(norms - 1.0) <= tol))


def tune_norm_weight(codec: Codec, X: np.ndarray, *, n_queries: int = 300, max_base: int = 10000,
                     k: int = 10, random_state: int = 0,
                     grid: tuple[float, ...] = NORM_WEIGHT_GRID) -> float:
    """Best ``w`` on the grid by recall@k of a sample of rows against the others; 0 if not unit-norm."""
    if len(X) < 4 * k or not is_unit_norm(X):
        return 0.0
    rng = np.random.default_rng(random_state + 7919)
    base = X[np.sort(rng.choice(len(X), min(len(X), max_base), replace=False))]
    q_rows = rng.choice(len(base), min(n_queries, len(base) // 2), replace=False)
    xq = base[q_rows]
    X_hat = codec._decode(codec._encode(base)).astype(np.float32)
    true = xq @ base.T
    est = xq @ X_hat.T
    norms = (X_hat * X_hat).sum(axis=1)
    rows = np.arange(len(q_rows))
    true[rows, q_rows] = -np.inf
    est[rows, q_rows] = -np.inf
    truth = np.argpartition(-true, k, axis=1)[:, :k]
    best_w, best_recall = 0.0, -1.0
    for w in grid:
        top = np.argpartition(-(est - w * norms), k, axis=1)[:, :k]
        hits = sum(len(np.intersect1d(a, b, assume_unique=True)) for a, b in zip(top, truth, strict=True))
        recall = hits / truth.size
        if recall > best_recall + 1e-9:
            best_w, best_recall = float(w), recall
    return best_w
