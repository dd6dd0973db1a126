"""Search-quality metrics over result arrays (faiss ``contrib.evaluation`` style).

Conventions: ``xb`` base vectors (nb, d), ``xq`` queries (nq, d), ``D`` scores and ``I`` row ids
(nq, k), best first; higher score = closer (negative squared L2 for ``metric="l2"``), the same
convention as ``Codec.search``. Ids of ``-1`` mark empty result slots and never match.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from mmcompress.errors import CodecError

METRICS = ("ip", "l2")


def exact_topk(xb: np.ndarray, xq: np.ndarray, k: int, metric: str = "ip") -> tuple[np.ndarray, np.ndarray]:
    """Exhaustive top-``k`` of ``xb`` for each query: (D scores, I row ids), best first."""
    import faiss

    assert xb.ndim == 2 and xq.ndim == 2 and xb.shape[1] == xq.shape[1], (xb.shape, xq.shape)
    assert k >= 1 and metric in METRICS, (k, metric)
    k = min(k, len(xb))
    d = xb.shape[1]
    index = faiss.IndexFlatIP(d) if metric == "ip" else faiss.IndexFlatL2(d)
    index.add(np.ascontiguousarray(xb, dtype=np.float32))
    D, ids = index.search(np.ascontiguousarray(xq, dtype=np.float32), k)
    return (D if metric == "ip" else -D), ids.astype(np.int64, copy=False)


def match_positions(I_true: np.ndarray, I_pred: np.ndarray) -> np.ndarray:
    """For each predicted id, its column in the same row of ``I_true``, or -1 when absent.

    Rows of ``I_true`` must hold distinct ids (a top-k list does).
    """
    assert I_true.ndim == 2 and I_pred.ndim == 2 and len(I_true) == len(I_pred), (I_true.shape, I_pred.shape)
    nq, kt = I_true.shape
    if I_true.size == 0 or I_pred.size == 0:
        return np.full(I_pred.shape, -1, dtype=np.int64)
    I_true = I_true.astype(np.int64, copy=False)
    I_pred = I_pred.astype(np.int64, copy=False)
    span = int(max(I_true.max(), I_pred.max())) + 2
    rows = np.arange(nq, dtype=np.int64)[:, None]
    keys_true = (rows * span + I_true + 1).ravel()
    keys_pred = (rows * span + I_pred + 1).ravel()
    order = np.argsort(keys_true, kind="stable")
    sorted_keys = keys_true[order]
    at = np.searchsorted(sorted_keys, keys_pred).clip(max=len(sorted_keys) - 1)
    found = (sorted_keys[at] == keys_pred) & (I_pred.ravel() >= 0)
    pos = np.where(found, order[at] % kt, -1)
    valid_true = (I_true.ravel() >= 0)[order[at]]
    return np.where(found & valid_true, pos, -1).reshape(I_pred.shape)


def recall_at_k(I_true: np.ndarray, I_pred: np.ndarray, k: int) -> float:
    """Mean fraction of the true top-``k`` found in the predicted top-``k`` ("k-recall@k")."""
    assert I_true.shape[0] == I_pred.shape[0] and I_true.shape[1] >= k and I_pred.shape[1] >= k, (
        I_true.shape, I_pred.shape, k)
    hits = match_positions(I_true[:, :k], I_pred[:, :k]) >= 0
    n_true = (I_true[:, :k] >= 0).sum(1)
    return float(np.mean(hits.sum(1) / np.maximum(n_true, 1)))


def one_recall_at_1(I_true: np.ndarray, I_pred: np.ndarray, r: int = 1) -> float:
    """Fraction of queries whose true nearest neighbour is in the predicted top-``r`` (faiss "1-recall@R")."""
    assert I_true.shape[0] == I_pred.shape[0] and I_true.shape[1] >= 1 and I_pred.shape[1] >= r, (
        I_true.shape, I_pred.shape, r)
    nn = I_true[:, :1]
    return float(np.mean(((I_pred[:, :r] == nn) & (nn >= 0)).any(1)))


def ndcg_at_k(I_true: np.ndarray, rel: np.ndarray | None, I_pred: np.ndarray, k: int) -> float:
    """Mean nDCG@``k`` of ``I_pred`` against the graded relevance ``rel`` of the ids in ``I_true``.

    ``rel`` (nq, k_true), non-negative and aligned with ``I_true``; ``None`` gives every id of
    ``I_true`` relevance 1. Ids absent from ``I_true`` have relevance 0. The ideal ranking is
    ``rel`` sorted in descending order.
    """
    assert I_true.ndim == 2 and I_pred.ndim == 2 and I_true.shape[0] == I_pred.shape[0], (
        I_true.shape, I_pred.shape)
    assert I_pred.shape[1] >= k >= 1, (I_pred.shape, k)
    if rel is None:
        rel = (I_true >= 0).astype(np.float64)
    rel = np.asarray(rel, dtype=np.float64)
    assert rel.shape == I_true.shape, (rel.shape, I_true.shape)
    assert np.isfinite(rel).all() and (rel >= 0).all(), "relevance must be finite and non-negative"
    rel = np.where(I_true >= 0, rel, 0.0)
    discount = 1.0 / np.log2(np.arange(k) + 2.0)
    pos = match_positions(I_true, I_pred[:, :k])
    gains = np.where(pos >= 0, np.take_along_axis(rel, pos.clip(min=0), axis=1), 0.0)
    dcg = gains @ discount
    ideal = -np.sort(-rel, axis=1)[:, :k]
    idcg = ideal @ discount[: ideal.shape[1]]
    ndcg = np.divide(dcg, idcg, out=np.zeros_like(dcg), where=idcg > 0)
    return float(np.mean(ndcg))


def rank_stability(I_true: np.ndarray, I_pred: np.ndarray, k: int = 50) -> float:
    """Mean Kendall tau between the true and predicted orders of the items both top-``k`` lists share.

    1 = shared items keep their relative order, -1 = reversed. Queries sharing fewer than two
    items are left out; NaN when no query qualifies.
    """
    assert I_true.shape[0] == I_pred.shape[0] and I_true.shape[1] >= k and I_pred.shape[1] >= k, (
        I_true.shape, I_pred.shape, k)
    pos = match_positions(I_true[:, :k], I_pred[:, :k]).astype(np.float64)
    upper = np.triu(np.ones((k, k), dtype=bool), 1)
    taus = []
    for start in range(0, len(pos), 1024):
        p = pos[start:start + 1024]
        valid = p >= 0
        # pairs (j < l) in predicted order; +1 when the true order agrees, -1 when it does not
        pairs = valid[:, :, None] & valid[:, None, :] & upper
        n_pairs = pairs.sum((1, 2))
        s = np.where(pairs, np.sign(p[:, None, :] - p[:, :, None]), 0.0).sum((1, 2))
        taus.append(s[n_pairs > 0] / n_pairs[n_pairs > 0])
    taus = np.concatenate(taus)
    return float(np.mean(taus)) if len(taus) else float("nan")


def reconstruction_mse(X: np.ndarray, X_hat: np.ndarray, *, relative: bool = False) -> float:
    """Mean squared reconstruction error per vector, ``mean_i ||x_i - x̂_i||²`` (faiss convention).

    ``relative=True`` divides by ``mean_i ||x_i||²`` so codecs of differently scaled data compare.
    """
    assert X.shape == X_hat.shape and X.ndim == 2, (X.shape, X_hat.shape)
    X = np.asarray(X, dtype=np.float64)
    err = float(((X - np.asarray(X_hat, dtype=np.float64)) ** 2).sum(1).mean())
    if relative:
        energy = float((X**2).sum(1).mean())
        return err / energy if energy > 0 else float("nan")
    return err


def bytes_per_item(code_size: int, *, n_items: int | None = None, shared_bytes: int = 0,
                   id_bytes: int = 0) -> float:
    """Storage per item: the code, a stored id, and the shared state (codebooks) amortised."""
    assert code_size >= 0 and shared_bytes >= 0 and id_bytes >= 0
    amortised = 0.0
    if shared_bytes:
        assert n_items and n_items > 0, "n_items is needed to amortise shared bytes"
        amortised = shared_bytes / n_items
    return float(code_size + id_bytes + amortised)


def compression_ratio(d: int, code_size: float, dtype_bytes: int = 4) -> float:
    """Size of a raw ``d``-dim vector of ``dtype_bytes`` floats over the code size."""
    assert d >= 1 and code_size > 0, (d, code_size)
    return d * dtype_bytes / code_size


@dataclass(frozen=True)
class Timing:
    """Wall-clock timings of repeated calls; ``median_s`` is what reports quote."""

    median_s: float
    min_s: float
    max_s: float
    repeats: int
    n_items: int

    @property
    def per_item_ms(self) -> float:
        return 1e3 * self.median_s / max(self.n_items, 1)

    @property
    def items_per_s(self) -> float:
        return self.n_items / self.median_s if self.median_s > 0 else float("inf")

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "per_item_ms": self.per_item_ms, "items_per_s": self.items_per_s}


def time_call(fn: Callable[[], Any], *, n_items: int = 1, repeats: int = 5, warmup: int = 1) -> Timing:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` untimed runs.

    For benchmarks and the evaluate stage; unit tests never assert on it.
    """
    assert repeats >= 1 and warmup >= 0
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return Timing(float(np.median(times)), float(min(times)), float(max(times)), repeats, n_items)


def evaluate_codec(codec: Any, X_base: np.ndarray, X_query: np.ndarray, codes: np.ndarray | None = None,
                   ks: tuple[int, ...] = (1, 10, 50), *, metric: str | None = None,
                   ground_truth: tuple[np.ndarray, np.ndarray] | None = None,
                   timing: bool = False, repeats: int = 3) -> dict[str, Any]:
    """Search quality, reconstruction error and size of a fitted codec on ``X_base`` / ``X_query``.

    Works with any object offering ``encode``, ``decode`` (may raise), ``search(codes, xq, k)``,
    ``code_size`` and ``spec``. The reference is exact float search of ``X_base``
    (``ground_truth=(D, I)`` reuses a precomputed one). Keys use ``_at_`` (``recall_at_10``) so they
    are valid MLflow metric names; every value is a number except ``spec``. ``timing=True`` adds
    median encode / search times (seconds) and search throughput (queries/s).
    """
    assert X_base.ndim == 2 and X_query.ndim == 2 and X_base.shape[1] == X_query.shape[1], (
        X_base.shape, X_query.shape)
    assert len(ks) >= 1 and min(ks) >= 1, ks
    metric = metric or getattr(codec, "metric", "ip")
    nb, d = X_base.shape
    ks = tuple(sorted({min(int(k), nb) for k in ks}))
    kmax = ks[-1]
    out: dict[str, Any] = {"spec": str(codec.spec), "n_base": nb, "n_query": len(X_query), "d": d}
    if codes is None:
        codes = codec.encode(X_base)
    assert len(codes) == nb, (codes.shape, nb)
    code_size = int(codec.code_size)
    if ground_truth is None:
        D_true, I_true = exact_topk(X_base, X_query, kmax, metric)
    else:
        D_true, I_true = ground_truth
        assert I_true.shape == (len(X_query), I_true.shape[1]) and I_true.shape[1] >= kmax, I_true.shape
    _, I_pred = codec.search(codes, X_query, kmax)
    I_pred = np.asarray(I_pred, dtype=np.int64)
    for k in ks:
        out[f"recall_at_{k}"] = recall_at_k(I_true, I_pred, k)
        out[f"one_recall_at_{k}"] = one_recall_at_1(I_true, I_pred, k)
    k_ndcg = 10 if 10 in ks else kmax
    out[f"ndcg_at_{k_ndcg}"] = ndcg_at_k(I_true[:, :k_ndcg], None, I_pred, k_ndcg)
    out[f"rank_stability_at_{kmax}"] = rank_stability(I_true, I_pred, kmax)
    try:
        X_hat = codec.decode(codes)
    except (CodecError, NotImplementedError):
        X_hat = None
    if X_hat is not None:
        out["mse"] = reconstruction_mse(X_base, X_hat)
        out["relative_mse"] = reconstruction_mse(X_base, X_hat, relative=True)
    out["code_size"] = code_size
    out["bytes_per_item"] = bytes_per_item(code_size)
    out["compression_ratio"] = compression_ratio(d, code_size) if code_size > 0 else float("inf")
    if timing:
        enc = time_call(lambda: codec.encode(X_base), n_items=nb, repeats=repeats)
        srch = time_call(lambda: codec.search(codes, X_query, kmax), n_items=len(X_query), repeats=repeats)
        flat = time_call(lambda: exact_topk(X_base, X_query, kmax, metric), n_items=len(X_query),
                         repeats=repeats)
        out.update(encode_s=enc.median_s, search_s=srch.median_s, search_qps=srch.items_per_s,
                   exact_search_qps=flat.items_per_s)
    return out


def flatten_metrics(metrics: Mapping[str, Any], sep: str = "/", prefix: str = "") -> dict[str, float]:
    """Nested metric dicts → flat ``{"by_activity/light/hr_at_10": 0.1}``, numbers only."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, sep, name))
        elif isinstance(value, (bool, np.bool_)):
            flat[name] = float(value)
        elif isinstance(value, (int, float, np.integer, np.floating)) and not (
                isinstance(value, float) and math.isnan(value)):
            flat[name] = float(value)
    return flat
