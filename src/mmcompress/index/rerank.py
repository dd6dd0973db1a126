"""The exact stage: each query's shortlist rescored with its float32 rows, read through a
:class:`~mmcompress.index.rowstore.RowReader`.

    reader = open_row_store("exact.rows", reader="direct", pool_bytes=64 << 20)
    rows, scores = exact_rerank(reader, Q, candidates, keep=10, metric="ip")   # candidates: -1 pads
    reader.stats()["pages_read"]

The cascade calls it for its last stage; a peer that reranks exactly (IVF-PQ + refine, ...)
calls the same function over the same store, so both pay for the same pages. Rows of an
in-RAM or memory-mapped store are scored where they lie (no gather); others are read once
per call (each distinct row once, however many queries share it) and scored from the copy.
"""

from __future__ import annotations

import numpy as np

from mmcompress.index import kernels
from mmcompress.index.rowstore import MemoryRowReader, ReadCounts, RowReader, unique_inverse


def exact_rerank(reader: RowReader, Q: np.ndarray, rows: np.ndarray, keep: int, metric: str = "ip", *,
                 counts: ReadCounts | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each query's best ``keep`` of its ``rows`` (nq, s; store rows, -1 = none) by exact inner
    product (``ip``) or negative squared distance (``l2``): rows (nq, keep) and float32
    scores, best first, padded with -1 / -inf; equal scores keep storage order. ``counts``
    receives what this call read (pages, pool hits)."""
    rows = np.asarray(rows, dtype=np.int64)
    Q = np.ascontiguousarray(Q, dtype=np.float32)
    valid = rows >= 0
    if isinstance(reader, MemoryRowReader) and kernels.AVAILABLE:
        reader.touch(rows[valid], counts)
        return kernels.exact_top(reader.groups, Q, rows, keep, metric,
                                 rows_per_line=reader.rows_per_group, d=reader.d)
    uniq, inv = unique_inverse(rows[valid])
    if len(uniq) == 0:
        return np.full((len(Q), keep), -1, np.int64), np.full((len(Q), keep), -np.inf, np.float32)
    X = reader.read(uniq, counts=counts)
    local = np.full(rows.shape, -1, dtype=np.int64)
    local[valid] = inv  # uniq is sorted: local order is storage order
    top = kernels.exact_top if kernels.AVAILABLE else _faiss_top
    found, scores = top(X, Q, local, keep, metric)
    return np.where(found >= 0, uniq[np.maximum(found, 0)], -1), scores


def _faiss_top(E: np.ndarray, Q: np.ndarray, rows: np.ndarray, keep: int,
               metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Top ``keep`` of each query's rows of ``E`` by exact score, with faiss's by-index kernels
    (rows read in storage order; -1 padding must trail, where the kernel stops)."""
    import faiss

    nq, s = rows.shape
    big = np.iinfo(np.int64).max
    R = np.sort(np.where(rows < 0, big, rows), axis=1)
    R[R == big] = -1
    R = np.ascontiguousarray(R, dtype=np.int64)
    Q = np.ascontiguousarray(Q, dtype=np.float32)
    D = np.empty((nq, keep), dtype=np.float32)
    out = np.empty((nq, keep), dtype=np.int64)
    fn = faiss.knn_inner_products_by_idx if metric == "ip" else faiss.knn_L2sqr_by_idx
    sp = faiss.swig_ptr
    E = np.ascontiguousarray(E, dtype=np.float32)
    fn(sp(Q), sp(E), sp(R), Q.shape[1], nq, len(E), s, keep, sp(D), sp(out), s)
    D = D if metric == "ip" else -D
    D[out < 0] = -np.inf
    return out, D
