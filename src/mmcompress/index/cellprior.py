"""Cell prior for sign-code estimates: the query's routing score of an item's IVF cell.

A sign code sees only which side of each of its directions an item lies on; the item's IVF
cell says, for free, roughly where it lies (its centroid). Adding ``weight * score(q, cell)``
to the code's estimate ranks a fine shortlist closer to the exact order where cells are small
(many cells per item count: 4,096 cells over a million items), and not at all where they are
large. So the weight is chosen on a sample at build, and none is used where it does not help.
"""

from __future__ import annotations

import numpy as np

from mmcompress.index.kernels import best_cells
from mmcompress.index.partition import CoarsePartition
from mmcompress.index.signscan import SignLUTScorer

WEIGHTS = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0)


def choose_cell_weight(scorer: SignLUTScorer, partition: CoarsePartition, X: np.ndarray, codes: np.ndarray,
                       offsets: np.ndarray, *, order: np.ndarray | None = None, nprobe: int, depth: int,
                       metric: str = "ip", seed: int = 0,
                       n_queries: int = 300, min_gain: float = 0.002) -> float | None:
    """The weight in :data:`WEIGHTS` whose estimate plus ``weight * cell score`` best ranks the
    items of each sample query's ``nprobe`` cells (sample items as queries, themselves left out),
    by recall of the exact top 10 among those items within the estimate's top ``depth``; None
    when none beats the plain estimate by ``min_gain``. ``codes`` are in storage order (cell by
    cell, bounded by ``offsets``); storage row ``r`` is ``X[order[r]]`` (``X[r]`` without
    ``order``)."""
    n, nlist = len(codes), len(offsets) - 1
    order = np.arange(n) if order is None else np.asarray(order)
    if nlist < 2 or n < 4 * depth:
        return None
    rng = np.random.default_rng(seed)
    qrows = np.sort(rng.choice(n, min(n_queries, n), replace=False))
    Q = np.asarray(X[order[qrows]], dtype=np.float32)
    S = partition.scores(Q)
    probes = best_cells(S, min(nprobe, nlist))
    cell_of = np.repeat(np.arange(nlist), np.diff(offsets))
    weights = np.array((0.0, *WEIGHTS), dtype=np.float32)
    hits = np.zeros(len(weights))
    for i in range(len(qrows)):
        cand = np.concatenate([np.arange(offsets[c], offsets[c + 1]) for c in probes[i]])
        cand = cand[cand != qrows[i]]
        if len(cand) <= depth:
            continue
        V = np.asarray(X[order[cand]], dtype=np.float32)
        exact = V @ Q[i] if metric == "ip" else -((V - Q[i]) ** 2).sum(axis=1)
        truth = np.argpartition(-exact, 10)[:10]
        est = scorer.scores(Q[i:i + 1], codes[cand][None])[0]
        prior = S[i, cell_of[cand]].astype(np.float32)
        for j, w in enumerate(weights):
            top = np.argpartition(-(est + w * prior), depth)[:depth]
            hits[j] += len(np.intersect1d(top, truth))
    recall = hits / (10 * len(qrows))
    best = int(np.argmax(recall[1:])) + 1
    return float(weights[best]) if recall[best] >= recall[0] + min_gain else None
