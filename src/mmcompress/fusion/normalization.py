"""Per-modality normalisation fitted on the items that have the modality."""

from __future__ import annotations

import numpy as np

SCALES = ("none", "dim")


def l2_normalize(X: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    n = np.linalg.norm(X, axis=1, keepdims=True)
    return (X / np.maximum(n, eps)).astype(np.float32, copy=False)


class ModalityNormalizer:
    """Centre (mean of present rows), optionally scale each dimension, then L2-normalise rows.

    Centring removes the direction every item shares (large for sentence embeddings), so
    cosine similarity reflects what distinguishes items. Rows whose mask is False map to zeros.
    """

    def __init__(self, *, center: bool = True, scale: str = "none") -> None:
        self.center = center
        self.scale = scale

    def fit(self, X: np.ndarray, mask: np.ndarray | None = None) -> ModalityNormalizer:
        if self.scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, found {self.scale!r}")
        X = np.asarray(X, dtype=np.float32)
        assert X.ndim == 2, X.shape
        P = X if mask is None else X[np.asarray(mask, dtype=bool)]
        d = X.shape[1]
        self.mean_ = P.mean(axis=0).astype(np.float32) if (self.center and len(P)) else np.zeros(d, np.float32)
        if self.scale == "dim" and len(P) > 1:
            std = P.std(axis=0)
            self.scale_ = np.where(std > 1e-8, 1.0 / np.maximum(std, 1e-8), 1.0).astype(np.float32)
        else:
            self.scale_ = np.ones(d, dtype=np.float32)
        return self

    def transform(self, X: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        if not hasattr(self, "mean_"):
            raise RuntimeError("ModalityNormalizer is not fitted; call fit() first")
        X = np.asarray(X, dtype=np.float32)
        assert X.ndim == 2 and X.shape[1] == len(self.mean_), (X.shape, len(self.mean_))
        Z = l2_normalize((X - self.mean_) * self.scale_)
        if mask is not None:
            Z[~np.asarray(mask, dtype=bool)] = 0.0
        return Z

    def fit_transform(self, X: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        return self.fit(X, mask).transform(X, mask)
