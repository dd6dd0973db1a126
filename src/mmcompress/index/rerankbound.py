"""A calibrated upper bound on an item's exact score from its fine-stage estimate, so that the
exact stage reads a shortlist's rows in two waves and skips the rows that cannot reach the top k.

    bound = fit_rerank_bound(estimates, exact)        # (nq, s) pairs from sample queries
    bound.upper(estimates, confidence=0.99)           # a * e + b + margin(0.99)
    exact_rerank(reader, Q, rows, 10, estimates=est, bound=bound, first_wave=24, confidence=0.99)

The fit is ``exact ~ a * estimate + b`` by least squares over (query, shortlisted item) pairs;
``margin(c)`` is the ``c`` quantile of the residuals. The exact stage first reads the rows
whose bound reaches the *predicted* k-th best exact score (the k-th best ``a * e + b +
margin(0.5)``), at least the ``first_wave`` best-estimated; it takes the k-th best exact score
among them, and then reads only the other rows whose bound reaches it (for most queries none,
so one round of reads): a row left unread would have entered the top k only if its residual
exceeded the margin, which a fraction ``1 - c`` of the calibration pairs did. The bound is
empirical (fitted on the catalog's own items), not a worst-case guarantee such as RaBitQ's
error bound; ``confidence`` trades pages read against recall and is tuned like a shortlist.
Any first stage that returns scores can use it: the serving benchmark fits one for each faiss
first stage it reranks, so every contender's exact stage reads the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from numbers import Real
from typing import Any

import numpy as np

from mmcompress.errors import CodecError

LEVELS = (0.5, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999, 1.0)


@dataclass(frozen=True)
class RerankBound:
    """``exact <= slope * estimate + intercept + margin(c)`` for a fraction ``c`` of the
    calibration pairs; margins are the residual quantiles at :data:`LEVELS`."""

    slope: float
    intercept: float
    margins: tuple[float, ...]
    pairs: int

    def margin(self, confidence: float) -> float:
        """The residual quantile at ``confidence`` (interpolated between :data:`LEVELS`)."""
        check_confidence(confidence)
        return float(np.interp(confidence, LEVELS, self.margins))

    def upper(self, estimates: np.ndarray, confidence: float) -> np.ndarray:
        """The bound on each exact score (float32, same shape; -inf stays -inf)."""
        e = np.asarray(estimates, dtype=np.float32)
        return np.float32(self.slope) * e + np.float32(self.intercept + self.margin(confidence))

    def to_dict(self) -> dict[str, Any]:
        return {"slope": self.slope, "intercept": self.intercept, "levels": list(LEVELS),
                "margins": list(self.margins), "pairs": self.pairs}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RerankBound:
        if [float(v) for v in d["levels"]] != list(LEVELS) or len(d["margins"]) != len(LEVELS):
            raise CodecError(f"rerank bound has levels {d['levels']}; expected {list(LEVELS)}")
        margins = tuple(float(m) for m in d["margins"])
        if any(b < a for a, b in zip(margins, margins[1:], strict=False)) or not np.isfinite(margins).all():
            raise CodecError(f"rerank bound margins must be finite and non-decreasing; found {margins}")
        return cls(float(d["slope"]), float(d["intercept"]), margins, int(d["pairs"]))


def check_confidence(confidence: Any, name: str = "the rerank bound's confidence") -> None:
    """Refuse a confidence that is not a number within :data:`LEVELS`, naming it as ``name``."""
    if isinstance(confidence, bool) or not isinstance(confidence, Real) \
            or not LEVELS[0] <= confidence <= LEVELS[-1]:
        raise CodecError(f"{name} must be a number in [{LEVELS[0]}, {LEVELS[-1]}]; found {confidence!r}")


def fit_rerank_bound(estimates: np.ndarray, exact: np.ndarray, *, min_pairs: int = 200) -> RerankBound | None:
    """Fit the bound on (query, candidate) pairs: ``estimates`` and ``exact`` scores of the same
    shape, non-finite entries (padding) ignored. None with fewer than ``min_pairs`` pairs or
    estimates that do not vary."""
    e = np.asarray(estimates, dtype=np.float64).ravel()
    x = np.asarray(exact, dtype=np.float64).ravel()
    if e.shape != x.shape:
        raise CodecError(f"estimates {np.shape(estimates)} and exact scores {np.shape(exact)} differ in shape")
    ok = np.isfinite(e) & np.isfinite(x)
    e, x = e[ok], x[ok]
    if len(e) < min_pairs or np.ptp(e) <= 0:
        return None
    slope, intercept = np.polyfit(e, x, 1)
    resid = x - (slope * e + intercept)
    margins = np.maximum.accumulate(np.quantile(resid, LEVELS))
    return RerankBound(float(slope), float(intercept), tuple(float(m) for m in margins), int(len(e)))


def calibrate_rerank_bound(search: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]], X: np.ndarray,
                           ids: np.ndarray, *, depth: int, metric: str = "ip", n_queries: int = 300,
                           seed: int = 0) -> RerankBound | None:
    """Fit the bound of a first stage on its own catalog: ``n_queries`` sample items of ``X`` as
    queries, ``search(Q, depth)`` -> (estimates, ids) their shortlists (each query's own item
    left out), scored exactly against ``X`` (``ids[i]`` is row ``i``'s id)."""
    X = np.asarray(X)
    ids = np.asarray(ids, dtype=np.int64)
    if len(X) < 2 or depth < 1:
        return None
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(len(X), min(n_queries, len(X)), replace=False))
    Q = np.asarray(X[sample], dtype=np.float32)
    est, found = search(Q, min(depth, len(X)))
    order = np.argsort(ids, kind="stable")
    pos = np.searchsorted(ids[order], np.maximum(found, 0))
    rows = order[np.minimum(pos, len(ids) - 1)]
    valid = (found >= 0) & (ids[rows] == found) & (found != ids[sample][:, None]) & np.isfinite(est)
    V = np.asarray(X[rows.ravel()], dtype=np.float32).reshape(*rows.shape, X.shape[1])
    exact = np.einsum("qd,qsd->qs", Q, V)
    if metric == "l2":
        exact = 2 * exact - (V * V).sum(axis=2) - (Q * Q).sum(axis=1)[:, None]
    return fit_rerank_bound(np.where(valid, est, np.nan), np.where(valid, exact, np.nan))
