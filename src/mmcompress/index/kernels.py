"""Compiled scan kernel of the cascade's first two stages (numba; the GIL is released).

One pass per query over its probed cells: popcount distances of the binary coarse codes into a
histogram, a counting selection of the ``s1`` nearest (ties kept in scan order, exactly as the
numpy path selects), then the sign look-up-table scores of those rows' fine codes and their best
``s2``. Nothing between the stages goes back to Python, so the per-query cost is the scan itself
rather than array bookkeeping. Without numba the index keeps its numpy path.
"""

from __future__ import annotations

import numpy as np

try:
    import numba

    AVAILABLE = True
except ImportError:  # pragma: no cover - numba is a project dependency
    AVAILABLE = False

_M1 = np.uint64(0x5555555555555555)
_M2 = np.uint64(0x3333333333333333)
_M4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_H01 = np.uint64(0x0101010101010101)
_ONE, _TWO, _FOUR, _56 = np.uint64(1), np.uint64(2), np.uint64(4), np.uint64(56)


def _popcount64(x: np.uint64) -> np.uint64:
    """Set bits of a 64-bit word (the SWAR idiom; LLVM lowers it to ``popcnt``)."""
    x = x - ((x >> _ONE) & _M1)
    x = (x & _M2) + ((x >> _TWO) & _M2)
    x = (x + (x >> _FOUR)) & _M4
    return (x * _H01) >> _56


def _record(dv: np.uint16, excluded: bool, excluded_bin: int, dist: np.ndarray, w: int,
            hist: np.ndarray) -> int:
    """Store one row's distance (the last bin if excluded) and count it; the next position."""
    if excluded:
        dv = np.uint16(excluded_bin)
    dist[w] = dv
    hist[w & 3, dv] += 1
    return w + 1


def _cell_distances(q: np.ndarray, words: np.ndarray, a: int, b: int, excl: np.ndarray, has_excl: bool,
                    excluded_bin: int, dist: np.ndarray, w: int, hist: np.ndarray) -> int:
    """Distances of rows ``a:b`` into ``dist[w:]`` and ``hist``; returns the next free position.
    Codes of 1, 2 and 4 words get unrolled loops: the generic loop over words runs at half the
    speed (its trip count is not known when the kernel compiles)."""
    n_words = q.shape[0]
    if n_words == 2:
        q0, q1 = q[0], q[1]
        for r in range(a, b):
            d = _popcount64(q0 ^ words[r, 0]) + _popcount64(q1 ^ words[r, 1])
            w = _record(np.uint16(d), has_excl and excl[r], excluded_bin, dist, w, hist)
    elif n_words == 4:
        q0, q1, q2, q3 = q[0], q[1], q[2], q[3]
        for r in range(a, b):
            d = (_popcount64(q0 ^ words[r, 0]) + _popcount64(q1 ^ words[r, 1])
                 + _popcount64(q2 ^ words[r, 2]) + _popcount64(q3 ^ words[r, 3]))
            w = _record(np.uint16(d), has_excl and excl[r], excluded_bin, dist, w, hist)
    elif n_words == 1:
        q0 = q[0]
        for r in range(a, b):
            d = _popcount64(q0 ^ words[r, 0])
            w = _record(np.uint16(d), has_excl and excl[r], excluded_bin, dist, w, hist)
    else:
        for r in range(a, b):
            d = np.uint64(0)
            for j in range(n_words):
                d += _popcount64(q[j] ^ words[r, j])
            w = _record(np.uint16(d), has_excl and excl[r], excluded_bin, dist, w, hist)
    return w


def _scan(qwords: np.ndarray, words: np.ndarray, offsets: np.ndarray, probes: np.ndarray,
          excl: np.ndarray, s1: int, fine: np.ndarray, lut: np.ndarray, const: np.ndarray, s2: int,
          out_rows: np.ndarray, out_scores: np.ndarray, scanned: np.ndarray, kept: np.ndarray) -> None:
    nq, n_words = qwords.shape
    n_fine = fine.shape[1]
    has_excl = excl.shape[0] > 0
    n_bins = 64 * n_words + 2  # the last bin holds excluded rows
    width = 0
    for i in range(nq):
        w = 0
        for p in range(probes.shape[1]):
            c = probes[i, p]
            w += offsets[c + 1] - offsets[c]
        width = max(width, w)
    dist = np.empty(width, dtype=np.uint16)
    hist = np.zeros((4, n_bins), dtype=np.int64)  # 4 interleaved copies: no store-to-load stalls
    sel = np.empty(s1, dtype=np.int64)
    score = np.empty(s1, dtype=np.float32)
    for i in range(nq):
        hist[:, :] = 0
        # pass 1: distances of every probed row, in scan order, and their histogram
        w = 0
        for p in range(probes.shape[1]):
            c = probes[i, p]
            w = _cell_distances(qwords[i], words, offsets[c], offsets[c + 1], excl, has_excl,
                                n_bins - 1, dist, w, hist)
        scanned[i] = w
        # counting selection: the threshold distance, then rows below it and the first ties
        n_valid = w - (hist[0, n_bins - 1] + hist[1, n_bins - 1] + hist[2, n_bins - 1] + hist[3, n_bins - 1])
        keep = min(s1, n_valid)
        below = 0
        t = 0
        while True:
            h = hist[0, t] + hist[1, t] + hist[2, t] + hist[3, t]
            if below + h >= keep:
                break
            below += h
            t += 1
        ties = keep - below
        m = 0
        x = 0
        for p in range(probes.shape[1]):
            c = probes[i, p]
            a = offsets[c]
            for y in range(offsets[c + 1] - a):
                dv = dist[x + y]
                if dv <= t and (dv < t or ties > 0):  # rare: one compare per row on the common path
                    if dv == t:
                        ties -= 1
                    sel[m] = a + y
                    score[m] = -np.float32(dv)
                    m += 1
            x += offsets[c + 1] - a
        kept[i] = m
        if n_fine == 0:  # coarse stage only: the kept rows in scan order, scored by -distance
            for x in range(min(m, s2)):
                out_rows[i, x] = sel[x]
                out_scores[i, x] = score[x]
            for x in range(min(m, s2), s2):
                out_rows[i, x] = -1
                out_scores[i, x] = -np.inf
            continue
        # fine stage: sign look-up-table scores of the kept rows, then their best s2
        for x in range(m):
            r = sel[x]
            s = np.float32(0.0)
            for j in range(n_fine):
                s += lut[i, j * 256 + fine[r, j]]
            score[x] = s + const[i]
        top = min(s2, m)
        if top < m:  # threshold by partition, then sort only the survivors
            thr = np.partition(score[:m], m - top)[m - top]
            n_above = 0
            for x in range(m):
                if score[x] > thr:
                    n_above += 1
            ties = top - n_above
            cand = np.empty(top, dtype=np.int64)
            y = 0
            for x in range(m):
                if score[x] > thr or (score[x] == thr and ties > 0):
                    if score[x] == thr:
                        ties -= 1
                    cand[y] = x
                    y += 1
        else:
            cand = np.arange(m)
        order = np.argsort(-score[cand], kind="mergesort")
        for x in range(top):
            out_rows[i, x] = sel[cand[order[x]]]
            out_scores[i, x] = score[cand[order[x]]]
        for x in range(top, s2):
            out_rows[i, x] = -1
            out_scores[i, x] = -np.inf


if AVAILABLE:
    _popcount64 = numba.njit(cache=True, nogil=True, inline="always")(_popcount64)
    _record = numba.njit(cache=True, nogil=True, inline="always")(_record)
    _cell_distances = numba.njit(cache=True, nogil=True)(_cell_distances)
    _scan = numba.njit(cache=True, nogil=True)(_scan)


def coarse_scan(qcodes: np.ndarray, codes: np.ndarray, offsets: np.ndarray, probes: np.ndarray,
                excl: np.ndarray | None, s1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The coarse stage alone (for a fine stage the kernel does not score): rows (nq, s1) in
    scan order with -1 padding, their scores ``-distance`` (-inf padding), items scanned and
    kept per query."""
    nq = len(qcodes)
    return coarse_fine_scan(qcodes, codes, offsets, probes, excl, s1, np.zeros((1, 0), np.uint8),
                            np.zeros((nq, 0), np.float32), np.zeros(nq, np.float32), s1)


def coarse_fine_scan(qcodes: np.ndarray, codes: np.ndarray, offsets: np.ndarray, probes: np.ndarray,
                     excl: np.ndarray | None, s1: int, fine_codes: np.ndarray, lut: np.ndarray,
                     const: np.ndarray, s2: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Both stages for a batch of queries.

    ``qcodes`` (nq, cs) and ``codes`` (n, cs) are packed binary codes with ``cs % 8 == 0``;
    ``offsets`` bound the cells of ``codes``; ``probes`` (nq, P) the cells each query scans;
    ``excl`` a bool per row to skip (or None); ``fine_codes`` (n, F) uint8 scored through
    ``lut`` (nq, F * 256) float32 plus ``const`` (nq,). Returns rows (nq, s2) best first with -1
    padding, their scores (-inf padding), and per query the items in its probed cells (excluded
    rows included, as the numpy path counts them) and the items the coarse stage kept.
    """
    nq = len(qcodes)
    qwords = np.ascontiguousarray(qcodes).view(np.uint64)
    words = np.ascontiguousarray(codes).view(np.uint64)
    out_rows = np.empty((nq, s2), dtype=np.int64)
    out_scores = np.empty((nq, s2), dtype=np.float32)
    scanned = np.empty(nq, dtype=np.int64)
    kept = np.empty(nq, dtype=np.int64)
    _scan(qwords, words, np.ascontiguousarray(offsets, dtype=np.int64),
          np.ascontiguousarray(probes, dtype=np.int64),
          np.zeros(0, dtype=np.bool_) if excl is None else np.ascontiguousarray(excl, dtype=np.bool_),
          int(s1), np.ascontiguousarray(fine_codes), np.ascontiguousarray(lut, dtype=np.float32),
          np.ascontiguousarray(const, dtype=np.float32), int(s2), out_rows, out_scores, scanned, kept)
    return out_rows, out_scores, scanned, kept
