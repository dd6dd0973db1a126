"""Shared pieces of the benchmarks: data loading, splits, ground truth, metrics, timing."""

from __future__ import annotations

import os

# Spinning OpenMP waits starve other threads on small shared CPUs; set before faiss loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks.machine import cpu_model  # noqa: E402

DEFAULT_FUSED = Path("artifacts/fused/vectors.npy")
DEFAULT_CATALOG = Path("data/catalog")


@dataclass
class Dataset:
    """Base vectors, held-out queries and their exact neighbours under ``metric``: unit-norm
    rows and inner product (``"ip"``), or the rows as given and squared L2 (``"l2"``)."""

    name: str
    xb: np.ndarray
    xq: np.ndarray
    gt: np.ndarray  # (nq, 10) exact top-10 ids into xb
    metric: str = "ip"

    @property
    def d(self) -> int:
        return self.xb.shape[1]


def l2_normalise(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    keep = norms[:, 0] > 0
    return (X[keep] / norms[keep]).astype(np.float32)


def split_queries(name: str, X: np.ndarray, n_queries: int, seed: int = 0,
                  max_items: int | None = None, metric: str = "ip") -> Dataset:
    """Hold out ``n_queries`` rows as queries; the rest (capped) is the database. Truth is the
    exact top-10 under ``metric``: inner product over L2-normalised rows, or L2 distance over
    the rows as given (an L2 catalog is not normalised: its norms carry meaning)."""
    from mmcompress.codecs import exact_search

    if metric not in ("ip", "l2"):
        raise ValueError(f"metric must be 'ip' or 'l2'; found {metric!r}")
    X = l2_normalise(X) if metric == "ip" else np.asarray(X, dtype=np.float32)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(X))
    nq = min(n_queries, len(X) // 5)
    xq = X[perm[:nq]]
    rest = np.sort(perm[nq:])
    if max_items is not None and len(rest) > max_items:
        rest = np.sort(rng.choice(rest, max_items, replace=False))
    xb = np.ascontiguousarray(X[rest])
    _, gt = exact_search(xb, xq, 10, metric)
    return Dataset(name, xb, np.ascontiguousarray(xq), gt, metric)


def digits_384(seed: int = 0) -> np.ndarray:
    """A 384-d stand-in built from real data: digits lifted by a random map, plus noise."""
    from sklearn.datasets import load_digits

    X = load_digits().data.astype(np.float32)
    rng = np.random.default_rng(seed)
    lifted = X @ rng.standard_normal((X.shape[1], 384)).astype(np.float32)
    lifted += 0.15 * lifted.std() * rng.standard_normal(lifted.shape).astype(np.float32)
    return l2_normalise(lifted)


def digits_l2() -> np.ndarray:
    """scikit-learn digits as they ship (1,797 x 64 pixel intensities 0-16): a small real L2
    catalog, searched by L2 distance without normalising."""
    from sklearn.datasets import load_digits

    return load_digits().data.astype(np.float32)


def default_inputs() -> dict[str, np.ndarray]:
    """The fused vectors and the text modality, where the pipeline has produced them."""
    inputs: dict[str, np.ndarray] = {}
    if DEFAULT_FUSED.exists():
        inputs["fused"] = np.load(DEFAULT_FUSED, allow_pickle=False)
    if DEFAULT_CATALOG.exists():
        from mmcompress.data import ItemCatalog

        cat = ItemCatalog.load(DEFAULT_CATALOG)
        if "text" in cat.modalities:
            inputs["text"] = cat.modalities["text"][cat.masks["text"]]
    return inputs


def recall_at(found: np.ndarray, gt: np.ndarray, k: int = 10) -> float:
    """|top-k found ∩ true top-k| / k, averaged over queries."""
    return float(np.mean([len(np.intersect1d(f[:k], t[:k])) / k for f, t in zip(found, gt, strict=True)]))


def one_recall_at_1(found: np.ndarray, gt: np.ndarray) -> float:
    """Fraction of queries whose true nearest neighbour is ranked first."""
    return float(np.mean(found[:, 0] == gt[:, 0]))


def median_seconds(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall time of ``fn`` over ``repeats`` runs, and its last result."""
    times, out = [], None
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def machine_info() -> dict[str, Any]:
    import faiss

    return {"python": platform.python_version(), "machine": platform.machine(), "cpu": cpu_model(),
            "cpus": os.cpu_count(), "faiss": faiss.__version__, "numpy": np.__version__,
            "faiss_threads": faiss.omp_get_max_threads(),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
