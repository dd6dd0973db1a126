"""The exact stage: each query's shortlist rescored with its float32 rows, read through a
:class:`~mmcompress.index.rowstore.RowReader`.

    reader = open_row_store("exact.rows", reader="direct", pool_bytes=64 << 20)
    rows, scores = exact_rerank(reader, Q, candidates, keep=10, metric="ip")   # candidates: -1 pads
    reader.stats()["pages_read"]
    # two waves: the rows whose calibrated bound reaches the predicted 10th best exact score (at
    # least the 24 best-estimated), then only those whose bound reaches the 10th best exact
    # score so far (:mod:`mmcompress.index.rerankbound`)
    rows, scores = exact_rerank(reader, Q, candidates, 10, estimates=est, bound=bound,
                                first_wave=24, confidence=0.99)

The cascade calls it for its last stage; a peer that reranks exactly (IVF-PQ + refine, ...)
calls the same function over the same store, so both pay for the same pages. Rows of an
in-RAM or memory-mapped store are scored where they lie (no gather); others are read once
per call (each distinct row once, however many queries share it) and scored from the copy,
a few queries at a time where the reader bounds its calls (``rows_per_read``: a disk reader's
buffers then hold one such range, not the whole batch).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mmcompress.errors import CodecError
from mmcompress.index import kernels
from mmcompress.index.rerankbound import LEVELS, RerankBound, check_confidence
from mmcompress.index.rowstore import (
    MemoryRowReader,
    PageLines,
    ReadCounts,
    RowReader,
    unique_inverse,
)
from mmcompress.index.select import best_columns


def exact_rerank(reader: RowReader, Q: np.ndarray, rows: np.ndarray, keep: int, metric: str = "ip", *,
                 counts: ReadCounts | None = None, estimates: np.ndarray | None = None,
                 bound: RerankBound | None = None, first_wave: int = 0,
                 confidence: float = 0.99) -> tuple[np.ndarray, np.ndarray]:
    """Each query's best ``keep`` of its ``rows`` (nq, s; store rows, -1 = none) by exact inner
    product (``ip``) or negative squared distance (``l2``): rows (nq, keep) and float32
    scores, best first, padded with -1 / -inf; equal scores keep storage order. ``counts``
    receives what this call read (pages, pool hits) and scored.

    With ``first_wave > 0`` (and the first stage's ``estimates`` of the same shape, and a
    ``bound``), rows are read in two waves. The first: each query's ``first_wave``
    best-estimated rows and every row whose ``bound.upper(estimate, confidence)`` reaches the
    predicted ``keep``-th best exact score (the ``keep``-th best bound at confidence 0.5, the
    median), up to the reader's ``rows_per_read`` best-estimated where it has one. The second:
    only the other rows whose bound reaches the ``keep``-th best exact score of the first wave;
    most queries have none, so they pay one round of reads."""
    rows = np.asarray(rows, dtype=np.int64)
    if first_wave > 0 and rows.ndim == 2 and rows.shape[1] > first_wave:
        if estimates is None or bound is None:
            raise CodecError("a two-wave exact stage needs the first stage's estimates and a fitted rerank bound")
        return _two_waves(reader, Q, rows, np.asarray(estimates), keep, metric, counts=counts, bound=bound,
                          first_wave=first_wave, confidence=confidence)
    if counts is not None:
        counts.scored += int(np.count_nonzero(rows >= 0))
    return _one_wave(reader, Q, rows, keep, metric, counts)


def _two_waves(reader: RowReader, Q: np.ndarray, rows: np.ndarray, estimates: np.ndarray, keep: int,
               metric: str, *, counts: ReadCounts | None, bound: RerankBound, first_wave: int,
               confidence: float) -> tuple[np.ndarray, np.ndarray]:
    check_confidence(confidence)
    if estimates.shape != rows.shape:
        raise CodecError(f"estimates {estimates.shape} and candidate rows {rows.shape} differ in shape")
    est = np.where(rows >= 0, estimates.astype(np.float32), -np.inf)
    order = np.argsort(-est, axis=1, kind="stable")
    rows, est = np.take_along_axis(rows, order, axis=1), np.take_along_axis(est, order, axis=1)
    upper = bound.upper(est, confidence)
    # the first wave: the first_wave best-estimated rows and every row whose bound reaches the
    # predicted k-th best exact score (the bound at its median), so most queries need no second
    # round of reads; -inf where fewer than keep rows are valid: the first wave takes them all
    predicted = bound.upper(est, LEVELS[0])
    kth_predicted = -np.partition(-predicted, keep - 1, axis=1)[:, keep - 1] if rows.shape[1] >= keep \
        else np.full(len(rows), -np.inf, np.float32)
    in_first = upper >= kth_predicted[:, None]
    # at most one read's worth of rows beyond the minimum (a longer first wave would map a
    # buffer of its own): rows past it whose bound still reaches the k-th best exact score
    # found go to the second wave
    cap = getattr(reader, "rows_per_read", None)
    if cap is not None:
        in_first[:, max(first_wave, cap):] = False
    in_first[:, :first_wave] = True
    first = np.where(in_first, rows, -1)
    r1, s1 = _one_wave(reader, Q, first, keep, metric, counts)
    kth = s1[:, keep - 1]  # -inf where the first wave found fewer than keep rows: read the rest
    rest = np.where(~in_first & (upper >= kth[:, None]), rows, -1)
    if counts is not None:
        counts.scored += int(np.count_nonzero(first >= 0)) + int(np.count_nonzero(rest >= 0))
    if not (rest >= 0).any():
        return r1, s1
    r2, s2 = _one_wave(reader, Q, rest, keep, metric, counts)
    out, scores = best_columns(np.concatenate([r1, r2], axis=1), np.concatenate([s1, s2], axis=1), keep)
    return out, scores.astype(np.float32, copy=False)


def _one_wave(reader: RowReader, Q: np.ndarray, rows: np.ndarray, keep: int, metric: str,
              counts: ReadCounts | None) -> tuple[np.ndarray, np.ndarray]:
    Q = np.ascontiguousarray(Q, dtype=np.float32)
    valid = rows >= 0
    if isinstance(reader, MemoryRowReader) and kernels.AVAILABLE:  # float32 or float16 rows, in place
        reader.touch(rows[valid], counts)
        return kernels.exact_top(reader.groups, Q, rows, keep, metric,
                                 rows_per_line=reader.rows_per_group, d=reader.d)
    limit = getattr(reader, "rows_per_read", None)
    n_rows = valid.sum(axis=1)
    if limit is not None and rows.shape[1] > limit and int(n_rows.max(initial=0)) > limit:
        # a query with more rows than one read holds: its rows a column range at a time, so no
        # read maps a buffer larger than the reader keeps (one round of reads per range)
        parts = [_one_wave(reader, Q, rows[:, c:c + limit], keep, metric, counts)
                 for c in range(0, rows.shape[1], limit)]
        out, scores = best_columns(np.concatenate([p[0] for p in parts], axis=1),
                                   np.concatenate([p[1] for p in parts], axis=1), keep)
        return out, scores.astype(np.float32, copy=False)
    groups = query_groups(n_rows, limit)
    if len(groups) == 1:
        return _read_and_score(reader, Q, rows, valid, keep, metric, counts)
    # the next range's reads in flight while this one is scored
    def begin(a: int, b: int) -> tuple:
        uniq, inv = unique_inverse(rows[a:b][valid[a:b]])
        return a, b, uniq, inv, _start_read(reader, uniq, counts)

    parts, ahead = [], begin(*groups[0])
    for j in range(len(groups)):
        a, b, uniq, inv, finish = ahead
        try:
            ahead = begin(*groups[j + 1]) if j + 1 < len(groups) else None
        finally:
            lines = finish()
        parts.append(_score(lines, uniq, inv, Q[a:b], valid[a:b], keep, metric))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def query_groups(n_rows: np.ndarray, limit: int | None) -> list[tuple[int, int]]:
    """Consecutive query ranges ``(a, b)`` whose rows add up to at most ``limit`` (a query with
    more is a range of its own); one range when there is no limit.

    A reader's buffers grow with the rows of one call, so a batch read at once would hold every
    query's rows (and the pages under them) at the same time: tens of megabytes for a few
    hundred queries. Read range by range, a batch holds about what two single queries do; a
    reader with ``read_ahead`` has the next range's reads in flight while a range is scored,
    so the device waits on neither the scoring nor the end of each range's reads."""
    n_rows = np.asarray(n_rows, dtype=np.int64)
    if limit is None or int(n_rows.sum()) <= limit:
        return [(0, len(n_rows))]
    out, start, held = [], 0, 0
    for i, m in enumerate(n_rows.tolist()):
        if held and held + m > limit:
            out.append((start, i))
            start, held = i, 0
        held += m
    out.append((start, len(n_rows)))
    return out


def _read_and_score(reader: RowReader, Q: np.ndarray, rows: np.ndarray, valid: np.ndarray, keep: int,
                    metric: str, counts: ReadCounts | None) -> tuple[np.ndarray, np.ndarray]:
    """One read of the distinct rows of ``rows``, then each query's best ``keep`` of them."""
    uniq, inv = unique_inverse(rows[valid])
    return _score(_start_read(reader, uniq, counts)(), uniq, inv, Q, valid, keep, metric)


def _start_read(reader: RowReader, uniq: np.ndarray, counts: ReadCounts | None) -> Callable[[], PageLines]:
    """Start reading the rows ``uniq`` (sorted, distinct); the returned function waits for them.
    A disk reader lends the page frames its reads filled (``lines_ahead``: the rows are scored
    where they lie); otherwise the rows are read (ahead where the reader can) and copied out."""
    if len(uniq):
        lend = getattr(reader, "lines_ahead", None)
        pending = lend(uniq, counts=counts) if lend is not None else None
        if pending is not None:
            return pending
        start = getattr(reader, "read_ahead", None)
        if start is not None:
            finish = start(uniq, counts=counts)
            return lambda: PageLines.of_rows(finish())
    X = reader.read(uniq, counts=counts)
    return lambda: PageLines.of_rows(X)


def _score(lines: PageLines, uniq: np.ndarray, inv: np.ndarray, Q: np.ndarray, valid: np.ndarray, keep: int,
           metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Each query's best ``keep`` of the rows ``uniq`` (read as ``lines``) it has in ``valid``;
    the lines are released here."""
    try:
        if len(uniq) == 0:
            return np.full((len(Q), keep), -1, np.int64), np.full((len(Q), keep), -np.inf, np.float32)
        local = np.full(valid.shape, -1, dtype=np.int64)
        local[valid] = lines.local[inv]  # local increases with the row: local order is storage order
        if kernels.AVAILABLE:
            found, scores = kernels.exact_top(lines.lines, Q, local, keep, metric,
                                              rows_per_line=lines.rows_per_line, d=lines.d)
        else:  # pragma: no cover - numba is a project dependency (readers then lend no frames)
            found, scores = _faiss_top(lines.lines, Q, local, keep, metric)
    finally:
        lines.release()
    at = np.searchsorted(lines.local, np.maximum(found, 0))
    return np.where(found >= 0, uniq[np.minimum(at, len(uniq) - 1)], -1), scores


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
