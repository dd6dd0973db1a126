"""Collaborative item factors from explicit ratings.

Two methods:

- ``svd``: truncated SVD of the user-centred rating matrix (a missing rating counts as the
  user's mean). Item factors are ``V_k · sqrt(s_k)``, each shrunk by ``n_i / (n_i + reg)``
  so that items seen by few users sit nearer the origin (their direction is noisy).
- ``als``: implicit-feedback ALS (Hu, Koren & Volinsky 2008) with confidence ``1 + alpha·r``
  and ridge ``reg``, solved in closed form for all items (users) at once.

Items with fewer than ``min_ratings`` ratings get a zero row and ``mask`` False.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.linalg
import scipy.sparse as sp
from sklearn.utils.extmath import randomized_svd
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from mmcompress.errors import CatalogError

METHODS = ("svd", "als")


@dataclass
class CollaborativeConfig:
    """Knobs of the collaborative encoder (``encoders.collaborative`` in params.yaml)."""

    enabled: bool = True
    dim: int = 64
    method: str = "svd"
    reg: float = 5.0
    min_ratings: int = 1
    als_iterations: int = 15
    als_alpha: float = 10.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"collaborative.method must be one of {METHODS}, found {self.method!r}")
        if self.dim < 1:
            raise ValueError(f"collaborative.dim must be >= 1, found {self.dim}")
        if self.reg < 0:
            raise ValueError(f"collaborative.reg must be >= 0, found {self.reg}")
        if self.min_ratings < 1:
            raise ValueError(f"collaborative.min_ratings must be >= 1, found {self.min_ratings}")


@dataclass
class CollaborativeFactors:
    """Item factors aligned to the requested item ids, with a presence mask."""

    item_ids: np.ndarray
    vectors: np.ndarray
    mask: np.ndarray
    n_ratings: np.ndarray
    explained_variance_ratio: float | None = None


def rating_matrix(ratings: pd.DataFrame, item_ids: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray]:
    """Users × items CSR matrix of ratings over ``item_ids`` (ratings of other items dropped)."""
    for c in ("userId", "movieId", "rating"):
        if c not in ratings.columns:
            raise CatalogError("missing column in ratings", column=c,
                               expected=["userId", "movieId", "rating"], found=list(ratings.columns))
    item_ids = np.asarray(item_ids, dtype=np.int64)
    col_of = pd.Index(item_ids)
    cols = col_of.get_indexer(ratings["movieId"].to_numpy())
    keep = cols >= 0
    users, rows = np.unique(ratings["userId"].to_numpy()[keep], return_inverse=True)
    R = sp.csr_matrix(
        (ratings["rating"].to_numpy(dtype=np.float64)[keep], (rows, cols[keep])),
        shape=(len(users), len(item_ids)),
    )
    R.sum_duplicates()
    return R, users


def collaborative_factors(ratings: pd.DataFrame, item_ids: np.ndarray,
                          config: CollaborativeConfig | None = None, *,
                          progress: bool = False) -> CollaborativeFactors:
    """Item factors (n_items, dim) float32 from a ratings table (userId, movieId, rating)."""
    config = config or CollaborativeConfig()
    item_ids = np.asarray(item_ids, dtype=np.int64)
    R, _ = rating_matrix(ratings, item_ids)
    n_users, n_items = R.shape
    counts = np.diff(R.tocsc().indptr)
    mask = counts >= config.min_ratings
    X = np.zeros((n_items, config.dim), dtype=np.float32)
    evr = None
    k = min(config.dim, n_users - 1, int(mask.sum()) - 1)
    if k >= 1:
        Rm = R[:, np.flatnonzero(mask)].tocsr()
        if config.method == "svd":
            F, evr = _svd_factors(Rm, k, config)
        else:
            F = _als_factors(Rm, k, config, progress=progress)
        X[mask, :k] = F
    else:
        mask = np.zeros(n_items, dtype=bool)
    return CollaborativeFactors(item_ids, X, mask, counts.astype(np.int64), evr)


def _svd_factors(R: sp.csr_matrix, k: int, config: CollaborativeConfig) -> tuple[np.ndarray, float]:
    n_per_user = np.diff(R.indptr)
    user_mean = np.asarray(R.sum(axis=1)).ravel() / np.maximum(n_per_user, 1)
    C = R.copy().astype(np.float64)
    C.data -= np.repeat(user_mean, n_per_user)
    s, Vt = truncated_svd(C, k, seed=config.seed)
    counts = np.diff(R.tocsc().indptr).astype(np.float64)
    shrink = counts / (counts + config.reg)
    F = Vt.T * np.sqrt(s)[None, :] * shrink[:, None]
    total = float(C.multiply(C).sum())
    evr = float((s**2).sum() / total) if total > 0 else 0.0
    return F.astype(np.float32), evr


def truncated_svd(C: sp.csr_matrix, k: int, *, seed: int = 0,
                  gram_limit: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    """Top-k singular values and right singular vectors (k, n_cols) of a sparse matrix.

    When one side is small (≤ ``gram_limit``) the SVD is exact, from the top eigenpairs of
    the small Gram matrix (one BLAS thread: a small dense solve gains nothing from more and
    can be slowed tenfold on a busy machine); otherwise randomized SVD. Signs are fixed so that each right
    singular vector's largest-magnitude entry is positive (deterministic output).
    """
    n_rows, n_cols = C.shape
    if min(n_rows, n_cols) <= gram_limit:
        small = n_rows <= n_cols
        G = (C @ C.T if small else C.T @ C).toarray()
        m = len(G)
        with threadpool_limits(limits=1, user_api="blas"):
            w, E = scipy.linalg.eigh(G, subset_by_index=[max(m - k, 0), m - 1])
        top = np.argsort(w)[::-1]
        s = np.sqrt(np.maximum(w[top], 0.0))
        Vt = (C.T @ E[:, top]).T / np.maximum(s, 1e-12)[:, None] if small else E[:, top].T
    else:
        _, s, Vt = randomized_svd(C, n_components=k, n_iter=5, power_iteration_normalizer="QR",
                                  random_state=seed)
    Vt = np.asarray(Vt)
    sign = np.sign(Vt[np.arange(len(Vt)), np.argmax(np.abs(Vt), axis=1)])
    return s, Vt * np.where(sign == 0, 1.0, sign)[:, None]


def _als_factors(R: sp.csr_matrix, k: int, config: CollaborativeConfig, *,
                 progress: bool) -> np.ndarray:
    rng = np.random.default_rng(config.seed)
    n_users, n_items = R.shape
    Cu = R.copy().astype(np.float64)
    Cu.data = config.als_alpha * Cu.data
    Ci = Cu.T.tocsr()
    P = rng.normal(scale=0.01, size=(n_users, k))
    Q = rng.normal(scale=0.01, size=(n_items, k))
    for _ in tqdm(range(config.als_iterations), desc="collaborative ALS", disable=not progress):
        P = _als_half_step(Cu, Q, config.reg)
        Q = _als_half_step(Ci, P, config.reg)
    return Q.astype(np.float32)


def _als_half_step(C: sp.csr_matrix, Y: np.ndarray, reg: float) -> np.ndarray:
    """Solve (YᵀY + Yᵀ(Cᵤ−I)Y + reg·I) xᵤ = YᵀCᵤp(u) for every row u of C at once."""
    k = Y.shape[1]
    YtY = Y.T @ Y
    outer = np.einsum("ij,ik->ijk", Y, Y).reshape(len(Y), k * k)
    A = (C @ outer).reshape(-1, k, k) + YtY[None] + reg * np.eye(k)[None]
    Cp = C.copy()
    Cp.data = Cp.data + 1.0
    b = Cp @ Y
    return np.linalg.solve(A, b[..., None])[..., 0]
