"""Selection primitives shared by the cascade's stages: the best columns of each row."""

from __future__ import annotations

import numpy as np


def smallest_per_row(buf: np.ndarray, s: int, sentinel: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) of the ``s`` smallest values below ``sentinel`` in each row of a matrix of
    small non-negative integers, ties broken by column, grouped by row in column order.

    A counting selection row by row: the row's histogram gives its threshold value; everything
    below it and the first ties at it are kept (several times faster than argpartition on the
    heavily tied values of Hamming distances, and than the same counting done on the 2-D batch).
    """
    cols = [smallest_counts(line, s, sentinel) for line in buf]
    if not cols:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    qi = np.repeat(np.arange(len(cols), dtype=np.int64), [len(c) for c in cols])
    return qi, np.concatenate(cols).astype(np.int64)


def smallest_counts(line: np.ndarray, s: int, sentinel: int) -> np.ndarray:
    """Columns of the ``s`` smallest values below ``sentinel`` in one row, in column order."""
    hist = np.bincount(line, minlength=sentinel + 1)[:sentinel]
    cum = np.cumsum(hist)
    if cum[-1] <= s:
        return np.flatnonzero(line < sentinel)
    thr = int(np.searchsorted(cum, s))
    below = line < thr
    at = np.flatnonzero(line == thr)[:s - int(cum[thr - 1] if thr > 0 else 0)]
    below[at] = True
    return np.flatnonzero(below)


def best_columns(rows: np.ndarray, scores: np.ndarray, keep: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``keep`` best columns of each row, sorted by score descending (padding -1 / -inf)."""
    nq, s = rows.shape
    if s > keep:
        part = np.argpartition(-scores, keep - 1, axis=1)[:, :keep]
        rows = np.take_along_axis(rows, part, axis=1)
        scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")
    rows = np.take_along_axis(rows, order, axis=1)
    scores = np.take_along_axis(scores, order, axis=1)
    if rows.shape[1] < keep:
        pad = keep - rows.shape[1]
        rows = np.concatenate([rows, np.full((nq, pad), -1, rows.dtype)], axis=1)
        scores = np.concatenate([scores, np.full((nq, pad), -np.inf, scores.dtype)], axis=1)
    rows = np.where(np.isfinite(scores), rows, -1)
    return rows, scores
