"""The serving benchmark's pick rule, shared by the project's contenders and the peers' runner.

A setting is picked on the tuning queries and run once on the test queries. Picking the fastest
setting whose tuning recall@10 merely reaches the target makes the test recall a coin flip
around it: the Debian IVF cascade's pick reached 0.951 on 500 tuning queries and 0.949 on the
1,000 test queries. So a setting qualifies when the target lies below its tuning recall by at
least ``Z`` standard errors of that mean (the per-query recalls' sample standard deviation over
the square root of their count): about 0.0045 on 500 tuning queries at recall 0.95. The rule is
the same for every contender, peers included, and fixed before the test queries are run.
"""

from __future__ import annotations

import numpy as np

K = 10
Z = 1.0  # standard errors of margin: one-sided, about 84% that the mean recall is above the target


def per_query_recall(truth: np.ndarray, found: np.ndarray, k: int = K) -> np.ndarray:
    """Each query's share of its true top-``k`` among its found top-``k`` (ids < 0 never match)."""
    truth, found = np.asarray(truth)[:, :k], np.asarray(found)[:, :k]
    if truth.shape[0] != found.shape[0]:
        raise ValueError(f"truth has {truth.shape[0]} queries, found has {found.shape[0]}")
    hits = [len(np.intersect1d(f[f >= 0], t[t >= 0])) for f, t in zip(found, truth, strict=True)]
    n_true = np.maximum((truth >= 0).sum(axis=1), 1)
    return np.asarray(hits, dtype=np.float64) / n_true


def recall_lower_bound(per_query: np.ndarray, z: float = Z) -> float:
    """Mean recall minus ``z`` standard errors of the mean."""
    r = np.asarray(per_query, dtype=np.float64)
    if len(r) < 2:
        return float(r.mean()) if len(r) else 0.0
    return float(r.mean() - z * r.std(ddof=1) / np.sqrt(len(r)))


def qualifies(per_query: np.ndarray, target: float, z: float = Z) -> bool:
    """Whether the tuning queries show the target reached with the rule's margin."""
    return recall_lower_bound(per_query, z) >= target
