"""The coarse stage in numpy: each query's shortlist of the rows nearest by their coarse codes.

:func:`hamming_shortlist` scans packed binary codes by popcount over every row or the probed
IVF cells (plus the delta segment) and keeps the ``s1`` nearest by a counting selection;
:func:`codec_shortlist` does the same through ``codec.search`` for non-binary coarse codes.
The compiled kernel (:mod:`mmcompress.index.kernels`) selects the same rows where it applies.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mmcompress.codecs.base import Codec
from mmcompress.index.hamming import hamming_distances
from mmcompress.index.segments import State
from mmcompress.index.select import smallest_per_row

FEW_QUERIES = 4  # below this many queries per chunk, the scan gathers cells per query


def hamming_shortlist(st: State, qcodes: np.ndarray, probes: np.ndarray, s1: int, excl: np.ndarray | None,
                      sentinel: int, *, partitioned: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coarse shortlist by Hamming distance: global rows (nq, s1) padded with -1, scores
    ``-distance`` (higher = closer; -inf padding) and how many items each query scanned.

    ``qcodes``: the queries' packed codes; ``probes`` (nq, P): the cells each query scans
    (cell 0 = every row when not ``partitioned``); ``excl``: bool over all rows to skip;
    ``sentinel``: a distance above any real one (code bits + 1)."""
    main, delta = st.main, st.delta
    nq = len(qcodes)
    lens = main.offsets[probes + 1] - main.offsets[probes]  # one cell [0, n) when unpartitioned
    nd = delta.n if delta is not None else 0
    starts = np.zeros_like(lens)
    starts[:, 1:] = np.cumsum(lens, axis=1)[:, :-1]
    starts += nd
    width = nd + lens.sum(axis=1)
    small = np.uint8 if sentinel <= 255 else np.int32  # narrower rows select faster
    buf = np.full((nq, int(width.max()) if nq else 0), sentinel, dtype=small)
    if nd:
        blk = hamming_distances(qcodes, delta.coarse)
        if excl is not None:
            blk[:, excl[main.n:]] = sentinel
        buf[:, :nd] = blk
    offs = main.offsets
    if not partitioned:
        if nd == 0 and small is np.int32:
            hamming_distances(qcodes, main.coarse, out=buf)
        else:
            buf[:, nd:] = hamming_distances(qcodes, main.coarse)
        if excl is not None:
            buf[:, nd:][:, excl[:main.n]] = sentinel
    elif nq <= FEW_QUERIES:  # gather the probed cells per query: fewer calls than cell by cell
        for i in range(nq):
            cells = probes[i]
            codes = np.concatenate([main.coarse[offs[c]:offs[c + 1]] for c in cells])
            buf[i, nd:nd + len(codes)] = hamming_distances(qcodes[i:i + 1], codes)[0]
            if excl is not None:
                ex = np.concatenate([excl[offs[c]:offs[c + 1]] for c in cells])
                buf[i, nd:nd + len(codes)][ex] = sentinel
    else:  # cell-major: one kernel call per probed cell for all queries probing it
        _scan_cells(qcodes, main.coarse, offs, probes, excl, starts, buf, sentinel)
    qi, slot = smallest_per_row(buf, s1, sentinel)
    dist = buf[qi, slot]
    counts = np.bincount(qi, minlength=nq)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.arange(len(qi)) - first[qi]
    r = np.empty(len(qi), dtype=np.int64)
    in_delta = slot < nd
    r[in_delta] = main.n + slot[in_delta]
    span = buf.shape[1] + 1
    qm, sm = qi[~in_delta], slot[~in_delta]
    flat_starts = (starts + (np.arange(nq, dtype=np.int64) * span)[:, None]).ravel()
    key = qm * span + sm
    jj = np.searchsorted(flat_starts, key, side="right") - 1
    r[~in_delta] = offs[probes.ravel()[jj]] + (key - flat_starts[jj])
    rows = np.full((nq, s1), -1, dtype=np.int64)
    scores = np.full((nq, s1), -np.inf, dtype=np.float32)
    rows[qi, pos] = r
    scores[qi, pos] = -dist.astype(np.float32)  # not -dist: uint8 negation wraps
    return rows, scores, width


def _scan_cells(qcodes: np.ndarray, coarse: np.ndarray, offs: np.ndarray, probes: np.ndarray,
                excl: np.ndarray | None, starts: np.ndarray, buf: np.ndarray, sentinel: int) -> None:
    """Distances of every probed cell, cell by cell for all the queries probing it, into each
    query's slots of ``buf``."""
    flat = probes.ravel()
    order = np.argsort(flat, kind="stable")
    cells = flat[order]
    bounds = np.flatnonzero(np.diff(cells)) + 1
    g_start = np.concatenate([[0], bounds])
    g_end = np.concatenate([bounds, [len(cells)]])
    for gs, ge in zip(g_start, g_end, strict=True):
        c = int(cells[gs])
        a, b = int(offs[c]), int(offs[c + 1])
        if a == b:
            continue
        pairs = order[gs:ge]
        qi, pj = pairs // probes.shape[1], pairs % probes.shape[1]
        blk = hamming_distances(qcodes[qi], coarse[a:b])
        if excl is not None:
            ex = excl[a:b]
            if ex.any():
                blk[:, ex] = sentinel
        dst = starts[qi, pj]
        for r in range(len(qi)):
            buf[qi[r], dst[r]:dst[r] + (b - a)] = blk[r]


def codec_shortlist(st: State, codec: Codec, take: Callable[[str, np.ndarray], np.ndarray], Q: np.ndarray,
                    probes: np.ndarray, s1: int, excl: np.ndarray | None, *, partitioned: bool
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coarse shortlist through ``codec.search`` (ADC or decode) for non-binary coarse codes;
    returns as :func:`hamming_shortlist`. ``take(attr, rows)`` reads rows of a segment array
    across main and delta."""
    main, delta = st.main, st.delta
    nq = len(Q)
    rows = np.full((nq, s1), -1, dtype=np.int64)
    scores = np.full((nq, s1), -np.inf, dtype=np.float32)
    scanned = np.zeros(nq, dtype=np.int64)
    delta_rows = np.arange(main.n, st.n_rows) if delta is not None else np.zeros(0, np.int64)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i in range(nq):
        groups.setdefault(tuple(probes[i]) if partitioned else (), []).append(i)
    for key, qs in groups.items():
        if not partitioned:
            cand = np.arange(st.n_rows)
        else:
            cand = np.concatenate([np.arange(main.offsets[c], main.offsets[c + 1]) for c in key] + [delta_rows])
        if excl is not None:
            cand = cand[~excl[cand]]
        scanned[qs] = len(cand)
        if len(cand) == 0:
            continue
        dist, pos = codec.search(take("coarse", cand), Q[qs], min(s1, len(cand)))
        valid = pos >= 0
        r = np.where(valid, cand[np.maximum(pos, 0)], -1)
        rows[qs, :r.shape[1]] = r
        scores[qs, :r.shape[1]] = np.where(valid, dist, -np.inf)
    return rows, scores, scanned
