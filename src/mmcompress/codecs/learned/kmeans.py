"""Seeded k-means and greedy residual k-means in torch: the codebook initialisation of the
neural residual quantizer, deterministic for a seed (no faiss threading in the loop)."""

from __future__ import annotations

import torch


def assign(X: torch.Tensor, C: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """Index of the nearest row of ``C`` (squared L2) for each row of ``X``."""
    assert X.ndim == 2 and C.ndim == 2 and X.shape[1] == C.shape[1], (X.shape, C.shape)
    cn = C.pow(2).sum(1)
    out = torch.empty(len(X), dtype=torch.long)
    for lo in range(0, len(X), chunk):
        out[lo:lo + chunk] = (cn - 2 * X[lo:lo + chunk] @ C.T).argmin(1)
    return out


def kmeans(X: torch.Tensor, k: int, n_iter: int = 20, seed: int = 0) -> torch.Tensor:
    """Lloyd's k-means from ``k`` distinct random rows; empty clusters take the farthest points."""
    assert X.ndim == 2 and len(X) >= 1, X.shape
    g = torch.Generator().manual_seed(seed)
    n = len(X)
    if n <= k:
        C = X[torch.randint(0, n, (k,), generator=g)].clone()
        C[:n] = X
        return C + 1e-6 * torch.randn(C.shape, generator=g)
    C = X[torch.randperm(n, generator=g)[:k]].clone()
    for _ in range(n_iter):
        a = assign(X, C)
        counts = torch.bincount(a, minlength=k)
        sums = torch.zeros_like(C).index_add_(0, a, X)
        nonempty = counts > 0
        C[nonempty] = sums[nonempty] / counts[nonempty, None]
        empty = torch.nonzero(~nonempty).flatten()
        if len(empty):
            err = (X - C[a]).pow(2).sum(1)
            C[empty] = X[err.topk(len(empty)).indices]
    return C


def residual_kmeans(X: torch.Tensor, M: int, k: int, n_iter: int = 20, seed: int = 0) -> torch.Tensor:
    """Greedy residual quantizer codebooks (M, k, d): k-means on what earlier steps left."""
    R = X.clone()
    books = []
    for m in range(M):
        C = kmeans(R, k, n_iter=n_iter, seed=seed + m)
        R -= C[assign(R, C)]
        books.append(C)
    return torch.stack(books)
