"""How much each modality shapes the fused space, and how much the modalities overlap.

- :func:`modality_contribution`: for each modality, the mean overlap of an item's top-k
  neighbours in that modality with its top-k in the fused space (over items having the
  modality). One modality near 1 and the others near chance means the fusion collapsed
  onto it.
- :func:`modality_redundancy`: per modality pair, canonical correlations (after PCA to a few
  components, with the same statistic on shuffled pairs as a chance level) and the overlap
  of their top-k neighbour sets.
"""

from __future__ import annotations

import itertools

import numpy as np
from threadpoolctl import threadpool_limits

from mmcompress.data.catalog import ItemCatalog
from mmcompress.fusion.normalization import ModalityNormalizer


def topk_neighbors(xq: np.ndarray, xb: np.ndarray, k: int, *, self_rows: np.ndarray | None = None,
                   chunk: int = 1024) -> np.ndarray:
    """Indices (nq, k) of the k largest inner products of each query in ``xb``.

    ``self_rows[i]`` (the query's own row in ``xb``) is excluded when given.
    """
    assert xq.ndim == 2 and xb.ndim == 2 and xq.shape[1] == xb.shape[1], (xq.shape, xb.shape)
    k = min(k, len(xb) - (1 if self_rows is not None else 0))
    out = np.empty((len(xq), k), dtype=np.int64)
    for s in range(0, len(xq), chunk):
        S = xq[s:s + chunk] @ xb.T
        if self_rows is not None:
            S[np.arange(len(S)), self_rows[s:s + chunk]] = -np.inf
        part = np.argpartition(-S, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(S, part, axis=1), axis=1, kind="stable")
        out[s:s + chunk] = np.take_along_axis(part, order, axis=1)
    return out


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    k = a.shape[1]
    return float(np.mean([len(np.intersect1d(x, y, assume_unique=True)) / k for x, y in zip(a, b, strict=True)]))


def _sample(rows: np.ndarray, max_queries: int | None, rng: np.random.Generator) -> np.ndarray:
    if max_queries is None or len(rows) <= max_queries:
        return np.arange(len(rows))
    return np.sort(rng.choice(len(rows), size=max_queries, replace=False))


def modality_contribution(catalog: ItemCatalog, fused: np.ndarray, k: int = 10, *,
                          max_queries: int | None = 2000, seed: int = 0) -> dict[str, float]:
    """Per modality: mean |top-k(modality) ∩ top-k(fused)| / k over items having it.

    Neighbours are searched among the items having the modality (cosine after centring),
    so the figure compares like with like. ``max_queries`` samples query items.
    """
    fused = np.asarray(fused, dtype=np.float32)
    assert fused.shape[0] == len(catalog), (fused.shape, len(catalog))
    rng = np.random.default_rng(seed)
    out: dict[str, float] = {}
    for m in catalog.modality_names:
        rows = np.flatnonzero(catalog.masks[m])
        if len(rows) <= k:
            continue
        Z = ModalityNormalizer().fit_transform(catalog.modalities[m][rows])
        F = fused[rows]
        q = _sample(rows, max_queries, rng)
        a = topk_neighbors(Z[q], Z, k, self_rows=q)
        b = topk_neighbors(F[q], F, k, self_rows=q)
        out[m] = _overlap(a, b)
    return out


def canonical_correlations(A: np.ndarray, B: np.ndarray, n_components: int = 16) -> np.ndarray:
    """Canonical correlations of two row-aligned matrices after PCA to ``n_components`` each."""
    def basis(X: np.ndarray) -> np.ndarray:
        Xc = X - X.mean(axis=0)
        with threadpool_limits(limits=1, user_api="blas"):
            w, V = np.linalg.eigh(Xc.T @ Xc)
        w, V = w[::-1], V[:, ::-1]
        if len(w) == 0 or w[0] <= 0:
            return np.zeros((len(X), 0))
        r = min(n_components, int((w > w[0] * 1e-10).sum()))
        return Xc @ V[:, :r] / np.sqrt(w[:r])

    Qa, Qb = basis(np.asarray(A, np.float64)), basis(np.asarray(B, np.float64))
    if Qa.shape[1] == 0 or Qb.shape[1] == 0:
        return np.zeros(0)
    return np.clip(np.linalg.svd(Qa.T @ Qb, compute_uv=False), 0.0, 1.0)


def modality_redundancy(catalog: ItemCatalog, k: int = 10, *, n_components: int = 16,
                        max_items: int | None = 5000, max_queries: int | None = 2000,
                        seed: int = 0) -> dict[str, dict[str, float]]:
    """Per pair "a|b": CCA correlations (top, mean, chance) and top-k neighbour overlap."""
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, float]] = {}
    for a, b in itertools.combinations(catalog.modality_names, 2):
        rows = np.flatnonzero(catalog.masks[a] & catalog.masks[b])
        if len(rows) <= max(k, n_components) + 1:
            continue
        if max_items is not None and len(rows) > max_items:
            rows = np.sort(rng.choice(rows, size=max_items, replace=False))
        Za = ModalityNormalizer().fit_transform(catalog.modalities[a][rows])
        Zb = ModalityNormalizer().fit_transform(catalog.modalities[b][rows])
        cc = canonical_correlations(Za, Zb, n_components)
        chance = canonical_correlations(Za, Zb[rng.permutation(len(rows))], n_components)
        q = _sample(rows, max_queries, rng)
        overlap = _overlap(topk_neighbors(Za[q], Za, k, self_rows=q),
                           topk_neighbors(Zb[q], Zb, k, self_rows=q))
        out[f"{a}|{b}"] = {
            "cca_top": float(cc[0]) if len(cc) else 0.0,
            "cca_mean": float(cc.mean()) if len(cc) else 0.0,
            "cca_chance_mean": float(chance.mean()) if len(chance) else 0.0,
            "knn_overlap": overlap,
            "knn_overlap_chance": k / (len(rows) - 1),
            "n_items": int(len(rows)),
        }
    return out


def cross_modal_retrieval(model, catalog: ItemCatalog, a: str, b: str, *,
                          max_items: int | None = 2000, seed: int = 0) -> float:
    """Recall@1 of finding an item's modality-``b`` vector from its modality-``a`` vector.

    Uses the projection heads of a contrastive fusion model; a measure of how well the
    modalities agree in the joint space (chance is 1 / n_items).
    """
    if model.config.method != "contrastive":
        raise ValueError(f"cross_modal_retrieval needs a contrastive fusion, found {model.config.method!r}")
    import torch

    rows = np.flatnonzero(catalog.masks[a] & catalog.masks[b])
    rng = np.random.default_rng(seed)
    if max_items is not None and len(rows) > max_items:
        rows = np.sort(rng.choice(rows, size=max_items, replace=False))
    Z, _ = model.normalized(catalog.subset(rows))
    from mmcompress.encoders.threads import torch_threads

    with torch.no_grad(), torch_threads(model.config.num_threads):
        za = model.network.project(a, torch.from_numpy(Z[a])).numpy()
        zb = model.network.project(b, torch.from_numpy(Z[b])).numpy()
    nn_idx = topk_neighbors(za, zb, 1)[:, 0]
    return float(np.mean(nn_idx == np.arange(len(rows))))
