"""Row order of the exact store that puts near items on the same 4 KiB page.

A query's exact stage reads the pages of its fine shortlist: the near neighbours of the query,
and so of each other. Stored in an order unrelated to the vectors those rows sit on nearly as
many pages as there are rows; stored so that a page holds items near each other, several of
them share a page and one read serves them (Starling reorders a DiskANN graph's disk blocks and
SPANN keeps each posting list contiguous for the same reason). On the Debian text embeddings (58k x 384,
float16 rows, 5 a page) the exact top-40 of 1,000 held-out queries sits on 40.0 pages in a
random order and 26.4 in this order; the serving benchmark's full-scan cascade read 27.6 pages
a query against 31.2 in catalog order (which already groups related packages).

The order: rows are first grouped (the index's IVF cells where it has them, else k-means
clusters of about :data:`ROWS_PER_CLUSTER` rows), groups keep their order, and each group is
split recursively at the median of its leading principal direction until a piece fits on a
page. The order is computed once at build; rows then keep it (an index compacts cell by cell
and appends added rows at the end of their cell).
"""

from __future__ import annotations

import numpy as np

from mmcompress.errors import CodecError

ROWS_PER_CLUSTER = 64  # k-means groups of the full-scan order: a few pages' worth of rows each
MAX_CLUSTERS = 1024  # beyond it, groups are split further by the bisection (cheaper than k-means)
POWER_ITERATIONS = 8  # leading direction of a group: enough to separate its two halves


def locality_order(X: np.ndarray, rows_per_page: int, *, groups: np.ndarray | None = None,
                   metric: str = "ip", seed: int = 0) -> np.ndarray:
    """A permutation of ``range(len(X))``: row positions in the store, near rows adjacent.

    ``groups``: a group id per row (e.g. IVF cells); the order keeps the groups contiguous and
    in ascending id order (as the cell offsets need), rows ordered inside each. None: groups
    are k-means clusters (spherical for ``ip``). ``rows_per_page``: the store's rows per 4 KiB
    page (1 where a row spans pages: then only the grouping matters)."""
    X = np.asarray(X)
    n = len(X)
    if rows_per_page < 1:
        raise CodecError(f"rows_per_page must be >= 1; found {rows_per_page}")
    if groups is None:
        groups = _cluster(X, metric, seed)
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise CodecError(f"locality_order needs one group per row: {n} rows, groups of shape {groups.shape}")
    by_group = np.argsort(groups, kind="stable")
    if n == 0 or rows_per_page == 1:
        return by_group.astype(np.int64)
    bounds = np.flatnonzero(np.diff(groups[by_group])) + 1
    rng = np.random.default_rng(seed)
    pieces: list[np.ndarray] = []
    for members in np.split(by_group, bounds):
        _bisect(X, members, rows_per_page, rng, pieces)
    return np.concatenate(pieces).astype(np.int64)


def _cluster(X: np.ndarray, metric: str, seed: int) -> np.ndarray:
    """k-means cluster of each row (faiss), about ROWS_PER_CLUSTER rows a cluster."""
    import faiss

    n, d = X.shape
    k = int(np.clip(n // ROWS_PER_CLUSTER, 1, MAX_CLUSTERS))
    if k == 1:
        return np.zeros(n, np.int64)
    Xf = np.ascontiguousarray(X, dtype=np.float32)
    km = faiss.Kmeans(d, k, niter=10, seed=seed, spherical=metric == "ip", max_points_per_centroid=64,
                      verbose=False)
    km.train(Xf)
    return km.index.search(Xf, 1)[1][:, 0]


def _bisect(X: np.ndarray, rows: np.ndarray, leaf: int, rng: np.random.Generator,
            out: list[np.ndarray]) -> None:
    """Append ``rows`` to ``out`` in pieces of at most ``leaf``, split at the median of each
    piece's leading principal direction (power iteration), depth first so that the two halves
    of a split stay adjacent."""
    stack = [rows]
    while stack:
        part = stack.pop()
        if len(part) <= leaf:
            out.append(part)
            continue
        Y = X[part].astype(np.float32)
        Y -= Y.mean(axis=0)
        v = rng.standard_normal(X.shape[1]).astype(np.float32)
        for _ in range(POWER_ITERATIONS):
            v = Y.T @ (Y @ v)
            norm = float(np.linalg.norm(v))
            if norm == 0.0:  # identical rows: any split will do
                break
            v /= norm
        half = len(part) // 2
        split = np.argsort(Y @ v, kind="stable")
        stack.append(part[split[half:]])
        stack.append(part[split[:half]])
