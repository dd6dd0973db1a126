"""IVF routing for the coarse tier: k-means cells over full-precision vectors.

Items are stored sorted by cell, so a cell is a contiguous slice of the code arrays and the
partition costs no bytes per item: only the centroids and the cell offsets. Given a projection
(the coarse sign codec's own orthonormal ``W``, shared, not copied), the centroids are kept and
scored in its subspace: ``q . (W W^T c)`` ranks cells as ``q . c`` does up to the part of each
centroid outside the code's subspace, for ``r/d`` of the bytes and of the probing work.
Centroids may be held in float16 (half the bytes; the cascade does so in the subspace of a
``_f16`` codec's projection); scores are computed in float32 either way.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mmcompress.codecs.base import check_vectors
from mmcompress.codecs.halfmath import matmul_half, matmul_half_t
from mmcompress.errors import CodecError
from mmcompress.index.kernels import best_cells


class CoarsePartition:
    """``nlist`` k-means cells; ``probe`` returns the ``nprobe`` closest cells of each query."""

    def __init__(self, nlist: int, metric: str = "ip", *, niter: int = 20,
                 max_train_rows: int = 100_000, random_state: int = 0, dtype: str = "float32") -> None:
        self.nlist = nlist
        self.dtype = dtype
        self.metric = metric
        self.niter = niter
        self.max_train_rows = max_train_rows
        self.random_state = random_state

    projection_: np.ndarray | None = None

    def fit(self, X: np.ndarray, projection: np.ndarray | None = None) -> CoarsePartition:
        """k-means cells of ``X``; with ``projection`` (d, r) orthonormal columns the centroids are
        kept as their coordinates in that subspace and every score is computed there."""
        import faiss

        X = check_vectors(X)
        if not 1 <= self.nlist <= len(X):
            raise CodecError(f"nlist must be in [1, n_train={len(X)}]; found {self.nlist}")
        rng = np.random.default_rng(self.random_state)
        if len(X) > self.max_train_rows:
            X = X[np.sort(rng.choice(len(X), self.max_train_rows, replace=False))]
        km = faiss.Kmeans(X.shape[1], self.nlist, niter=self.niter, seed=self.random_state,
                          spherical=self.metric == "ip", verbose=False,
                          max_points_per_centroid=max(256, len(X) // self.nlist + 1))
        km.train(X)
        C = km.centroids
        if projection is not None:
            if projection.shape[0] != X.shape[1]:
                raise CodecError(f"routing projection has {projection.shape[0]} rows; vectors have d={X.shape[1]}")
            self.projection_ = projection
            C = C @ projection
        self.centroids_ = np.ascontiguousarray(C, dtype=self.dtype)
        return self

    @property
    def d(self) -> int:
        return self.centroids_.shape[1] if self.projection_ is None else self.projection_.shape[0]

    def scores(self, X: np.ndarray, projected: bool = False) -> np.ndarray:
        """Routing score of every cell per row (nq, nlist), higher = closer: ``x . c`` (``ip``) or
        ``2 x . c - |c|^2`` (``l2``, the squared distance up to a per-row constant). ``projected``:
        ``X`` is already ``X @ projection_``."""
        if self.projection_ is not None and not projected:
            X = matmul_half(X, self.projection_)
        S = matmul_half_t(X, self.centroids_)
        if self.metric == "l2":
            C = self.centroids_.astype(np.float32)
            S = 2 * S - (C * C).sum(axis=1)[None, :]
        return S

    def assign(self, X: np.ndarray, chunk: int = 65536) -> np.ndarray:
        """Closest cell of each row (int32)."""
        out = np.empty(len(X), dtype=np.int32)
        for s in range(0, len(X), chunk):
            out[s:s + chunk] = self.scores(np.asarray(X[s:s + chunk], dtype=np.float32)).argmax(axis=1)
        return out

    def probe(self, Q: np.ndarray, nprobe: int, *, projected: bool = False,
              with_scores: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """The ``nprobe`` best cells of each query, best first (equal scores: lower cell first):
        int64 (nq, nprobe); with ``with_scores`` also every cell's score (:meth:`scores`).
        ``projected``: ``Q`` is already ``Q @ projection_``."""
        S = self.scores(Q, projected)
        cells = best_cells(S, min(nprobe, self.nlist))
        return (cells, S) if with_scores else cells

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return ({"nlist": self.nlist, "metric": self.metric, "niter": self.niter,
                 "random_state": self.random_state, "space": "full" if self.projection_ is None else "code"},
                {"centroids": self.centroids_})

    @classmethod
    def from_state(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray],
                   projection: np.ndarray | None = None) -> CoarsePartition:
        """Rebuild from saved state; a partition routed in code space needs the coarse codec's
        projection back (it was shared, not saved)."""
        p = cls(int(meta["nlist"]), meta["metric"], niter=int(meta["niter"]),
                random_state=int(meta["random_state"]))
        p.centroids_ = np.ascontiguousarray(arrays["centroids"])
        if meta.get("space", "full") == "code":
            if projection is None or projection.shape[1] != p.centroids_.shape[1]:
                raise CodecError(f"partition routes in a {p.centroids_.shape[1]}-dim code space; the coarse codec "
                                 f"offers {'no projection' if projection is None else projection.shape}")
            p.projection_ = projection
        p.dtype = str(p.centroids_.dtype)
        if p.dtype not in ("float32", "float16"):
            raise CodecError(f"partition centroids must be float32 or float16; found {p.dtype}")
        if p.centroids_.shape[0] != p.nlist:
            raise CodecError(f"partition has {p.centroids_.shape[0]} centroids; header says {p.nlist}")
        return p
