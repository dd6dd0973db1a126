"""Compiled kernels of the cascade's stages (numba; the GIL is released).

One pass per query over its probed cells: popcount distances of the binary coarse codes
(vectorised), their histogram, a counting selection of the ``s1`` nearest (ties kept in scan
order, exactly as the numpy path selects; one vector comparison per 64 rows gives a bit mask,
so only kept rows are visited), then the sign look-up-table scores of those rows' fine codes
(tables built here from the query's projections; optionally times each row's item scale, plus
the weighted score of its cell) and their best ``s2`` by a binned threshold. Nothing between
the stages goes back to Python, so the per-query cost is the scan itself rather than array
bookkeeping.
:func:`best_cells` picks IVF probes the same way for both paths; :func:`exact_top` is the
exact rerank (eight stored rows scored at a time). Without numba the index keeps its numpy path.
"""

from __future__ import annotations

import numpy as np

from mmcompress.codecs.halfmath import half_bits_scaled_down, widen_half_row

try:
    import numba
    import numba.extending
    from llvmlite import ir

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


def _cell_distances(q: np.ndarray, words: np.ndarray, a: int, b: int, dist: np.ndarray, w: int) -> None:
    """Hamming distances of rows ``a:b`` into ``dist[w:w + b - a]``; ``words`` is the code matrix
    flattened (row ``r``'s words at ``r * n_words``). A loop with nothing in it but the popcounts
    and the store, which LLVM vectorises (``vpopcntq`` where the CPU has it); codes of 1, 2 and 4
    words get their own loops (a loop over words of unknown trip count does not vectorise)."""
    n_words = q.shape[0]
    out = dist[w:w + b - a]
    if n_words == 2:
        q0, q1 = q[0], q[1]
        src = words[2 * a:2 * b]
        for r in range(b - a):
            out[r] = np.uint16(_popcount64(q0 ^ src[2 * r]) + _popcount64(q1 ^ src[2 * r + 1]))
    elif n_words == 4:
        q0, q1, q2, q3 = q[0], q[1], q[2], q[3]
        src = words[4 * a:4 * b]
        for r in range(b - a):
            out[r] = np.uint16(_popcount64(q0 ^ src[4 * r]) + _popcount64(q1 ^ src[4 * r + 1])
                               + _popcount64(q2 ^ src[4 * r + 2]) + _popcount64(q3 ^ src[4 * r + 3]))
    elif n_words == 1:
        q0 = q[0]
        src = words[a:b]
        for r in range(b - a):
            out[r] = np.uint16(_popcount64(q0 ^ src[r]))
    else:
        for r in range(b - a):
            d = np.uint64(0)
            for j in range(n_words):
                d += _popcount64(q[j] ^ words[(a + r) * n_words + j])
            out[r] = np.uint16(d)


def _histogram(dist: np.ndarray, w: int, hist: np.ndarray) -> None:
    """Counts of ``dist[:w]`` per distance into ``hist`` (4 interleaved copies, summed by the
    caller: consecutive equal distances do not wait on each other's store)."""
    hist[:, :] = 0
    x = 0
    while x + 4 <= w:
        hist[0, dist[x]] += 1
        hist[1, dist[x + 1]] += 1
        hist[2, dist[x + 2]] += 1
        hist[3, dist[x + 3]] += 1
        x += 4
    while x < w:
        hist[0, dist[x]] += 1
        x += 1


def _threshold_bin(hist: np.ndarray, keep: int) -> tuple[int, int]:
    """The lowest distance ``t`` at which the counts of :func:`_histogram` (four interleaved
    copies, summed here) reach ``keep`` rows, and how many rows lie below it."""
    below = 0
    t = 0
    while True:
        n_t = hist[0, t] + hist[1, t] + hist[2, t] + hist[3, t]
        if below + n_t >= keep:
            return t, below
        below += n_t
        t += 1


def _mask_at_most(typingctx, dist, start, t):  # pragma: no cover - compiled (see _at_most_loop)
    """The compiled ``_at_most``'s typing and code (a numba intrinsic)."""
    if not (isinstance(dist, numba.types.Array) and dist.dtype == numba.types.uint16 and dist.ndim == 1
            and dist.layout == "C"):
        return None
    sig = numba.types.uint64(dist, start, t)

    def codegen(context, builder, signature, args):
        arr, first, limit = args
        data = context.make_array(signature.args[0])(context, builder, arr).data
        lanes = ir.VectorType(ir.IntType(16), 64)
        v = builder.load(builder.bitcast(builder.gep(data, [first]), lanes.as_pointer()), align=2)
        t16 = context.cast(builder, limit, signature.args[2], numba.types.uint16)
        one = builder.insert_element(ir.Constant(lanes, ir.Undefined), t16, ir.Constant(ir.IntType(32), 0))
        splat = builder.shuffle_vector(one, ir.Constant(lanes, ir.Undefined),
                                       ir.Constant(ir.VectorType(ir.IntType(32), 64), [0] * 64))
        return builder.bitcast(builder.icmp_unsigned("<=", v, splat), ir.IntType(64))

    return sig, codegen


def _at_most_loop(dist: np.ndarray, start: int, t: int) -> np.uint64:
    """Bit ``j`` set where ``dist[start + j] <= t``, for the 64 distances from ``start`` (the
    caller pads ``dist`` past its last block). Compiled as one vector comparison whose lane
    mask is the word itself (``vpcmpuw`` into a mask register with AVX-512, a compare and
    ``pmovmskb`` pairs with AVX2): numba has no such operation and LLVM does not recognise the
    scalar loop that builds it, which stays several times slower, hence an intrinsic in LLVM
    IR. This plain version is the reference it is tested against."""
    bits = np.uint64(0)
    for j in range(64):
        if dist[start + j] <= t:
            bits |= np.uint64(1) << np.uint64(j)
    return bits


_at_most = _at_most_loop


def _lowest_bit(x: np.uint64) -> np.uint64:
    """The index of the lowest set bit of a non-zero word."""
    return _popcount64((x & (~x + _ONE)) - _ONE)


def _select_below(dist: np.ndarray, w: int, t: int, ties: int, out: np.ndarray) -> int:
    """Positions in ``dist[:w]`` whose distance is below ``t``, plus the first ``ties`` equal to
    it, in scan order, into ``out``; returns their count, or -1 where more than ``len(out)``
    qualify. ``dist`` is padded to a multiple of 64 with 0x7FFF. Each block of 64 distances is
    compared at once into one mask (two where ties are kept, :func:`_at_most`); only the set
    bits (about one row in ten) are visited, so the loop neither branches on each row nor
    stores for rows it drops."""
    limit = out.shape[0]
    m = 0
    for blk in range(0, w, 64):
        lt = _at_most(dist, blk, t - 1) if t > 0 else np.uint64(0)
        if ties > 0:
            eq = _at_most(dist, blk, t) & ~lt
            if eq != 0:
                n_eq = np.int64(_popcount64(eq))
                if n_eq <= ties:
                    ties -= n_eq
                else:  # keep the lowest ``ties`` positions
                    rest = eq
                    for _ in range(ties):
                        rest &= rest - _ONE
                    eq ^= rest
                    ties = 0
                lt |= eq
        if m + np.int64(_popcount64(lt)) > limit:
            return -1
        while lt != 0:
            out[m] = blk + np.int64(_lowest_bit(lt))
            m += 1
            lt &= lt - _ONE
    return m


#: Scans at least this long pick their threshold from a sample (:func:`_select_sampled`).
_SAMPLED_MIN_ROWS = 8192
_SAMPLE_STRIDE = 8
_CAND_PER_S1 = 8


def _select_sampled(dist: np.ndarray, w: int, s1: int, n_bins: int, hist: np.ndarray,
                    cand: np.ndarray, cand_dist: np.ndarray, out: np.ndarray) -> int:
    """The same ``s1`` positions as the full counting selection, from a histogram of every
    eighth distance instead of all of them: the sample's distance below which about twice
    ``s1`` rows should lie bounds the candidates (one masked pass, :func:`_select_below`); the
    exact threshold and its first ties in scan order then come from the candidates alone.
    Exact whenever at least ``s1`` rows lie within the bound, since every row the full
    selection keeps is then a candidate; returns -1 otherwise, or where more candidates lie
    within it than ``cand`` holds (the caller counts everything). The histogram pass is a third
    of a long scan's cost, and this replaces it with an eighth of it. ``hist`` is (4, n_bins);
    ``out`` has a spare slot past ``s1`` (the last pass writes every candidate and advances
    only past those it keeps: ties in random order would mispredict a branch on most rows)."""
    h = hist[0]
    h[:] = 0
    for x in range(0, w, _SAMPLE_STRIDE):
        h[dist[x]] += 1
    want = (2 * s1 + 64 + _SAMPLE_STRIDE - 1) // _SAMPLE_STRIDE
    cum = 0
    t = 0
    while t < n_bins - 1:  # the last bin holds excluded rows: never a candidate
        cum += h[t]
        if cum >= want:
            break
        t += 1
    if t >= n_bins - 1:
        return -1
    c = _select_below(dist, w, t + 1, 0, cand)  # distances <= t, in scan order
    if c < s1:
        return -1
    for y in range(c):
        cand_dist[y] = dist[cand[y]]
    _histogram(cand_dist, c, hist)
    t, below = _threshold_bin(hist, s1)
    ties = s1 - below
    threshold = np.uint16(t)
    m = 0
    seen = 0
    for y in range(c):
        dy = cand_dist[y]
        tied = dy == threshold
        out[m] = cand[y]
        m += (dy < threshold) | (tied & (seen < ties))
        seen += tied
    return m


_SELECT_BINS = 1024
_PAD = np.uint16(0x7FFF)  # above every distance: padding the selection never takes
MAX_BITS = 64 * ((int(_PAD) - 3) // 64)  # widest coarse code whose distances (and excluded bin) stay below it


def _best(score: np.ndarray, m: int, top: int, out: np.ndarray, counts: np.ndarray, bins: np.ndarray,
          tied: np.ndarray) -> None:
    """The ``top`` best of ``score[:m]`` into ``out[:top]`` (positions in ``score``): those above
    the threshold bin in scan order, then the best of the threshold bin; equal scores keep scan
    order. ``out`` and ``tied`` have a spare slot past ``top`` and ``m``.

    A histogram over ``_SELECT_BINS`` equal-width bins between the lowest and highest score
    (four interleaved copies in ``counts``) finds the bin holding the threshold; only that bin's
    few members are compared. Branch-free: every position is written and counted only where it
    is taken (a comparison heap or an introselect mispredicts on most of its steps)."""
    lo = score[0]
    hi = score[0]
    for x in range(1, m):
        lo = min(lo, score[x])
        hi = max(hi, score[x])
    top_bin = _SELECT_BINS - 1
    scale = np.float32(top_bin / (hi - lo)) if hi > lo else np.float32(0.0)
    for x in range(m):
        bins[x] = min(np.int32((score[x] - lo) * scale), top_bin)
    _histogram(bins, m, counts)
    tb = top_bin
    need = top
    while True:
        c = counts[0, tb] + counts[1, tb] + counts[2, tb] + counts[3, tb]
        if c >= need:
            break
        need -= c
        tb -= 1
    y = 0
    nt = 0
    for x in range(m):
        bx = bins[x]
        out[y] = x
        tied[nt] = x
        y += np.int64(bx > tb)
        nt += np.int64(bx == tb)
    if need < nt:  # the threshold bin's best ``need``: a selection sort of a handful of rows
        for j in range(need):
            b = j
            for z in range(j + 1, nt):
                sz, sb = score[tied[z]], score[tied[b]]
                if sz > sb or (sz == sb and tied[z] < tied[b]):
                    b = z
            tied[j], tied[b] = tied[b], tied[j]
    for j in range(need):
        out[y] = tied[j]
        y += 1


def _sign_tables(p: np.ndarray, lut: np.ndarray) -> None:
    """One query's look-up tables from its projections, in the order of
    :func:`mmcompress.index.signscan.sign_tables` (bit-identical results)."""
    two = np.float32(2)
    for j in range(p.shape[0] // 8):
        base = 256 * j
        acc = -p[8 * j]
        for b in range(1, 8):
            acc = acc - p[8 * j + b]
        lut[base] = acc
        for t in range(8):
            half = 1 << t
            pt = two * p[8 * j + 7 - t]
            for v in range(half):
                lut[base + half + v] = lut[base + v] + pt


def _fine_scores4(L: np.ndarray, fine: np.ndarray, n_fine: int, sel: np.ndarray, x: int,
                  score: np.ndarray) -> None:
    """Table sums of the fine codes of rows ``sel[x:x + 4]`` into ``score[x:x + 4]``, each summed
    in code order (the same floats as one row at a time) but interleaved: one row's sum is a
    chain of dependent additions, so four chains keep the adder busy while loads are pending."""
    r0, r1, r2, r3 = sel[x] * n_fine, sel[x + 1] * n_fine, sel[x + 2] * n_fine, sel[x + 3] * n_fine
    s0 = np.float32(0.0)
    s1 = np.float32(0.0)
    s2 = np.float32(0.0)
    s3 = np.float32(0.0)
    for j in range(n_fine):
        base = j * 256
        s0 += L[base + fine[r0 + j]]
        s1 += L[base + fine[r1 + j]]
        s2 += L[base + fine[r2 + j]]
        s3 += L[base + fine[r3 + j]]
    score[x] = s0
    score[x + 1] = s1
    score[x + 2] = s2
    score[x + 3] = s3


def _scan(qwords: np.ndarray, words: np.ndarray, offsets: np.ndarray, probes: np.ndarray,
          excl: np.ndarray, s1: int, fine: np.ndarray, proj: np.ndarray, const: np.ndarray,
          scales: np.ndarray, scale_lo: np.float32, scale_step: np.float32, prior: np.ndarray, s2: int,
          ordered: bool, out_rows: np.ndarray, out_scores: np.ndarray, scanned: np.ndarray,
          kept: np.ndarray) -> None:
    nq, n_words = qwords.shape
    n_fine = fine.shape[1]
    fine = fine.reshape(-1)  # row r's code at r * n_fine
    has_excl = excl.shape[0] > 0
    has_scales = scales.shape[0] > 0
    has_prior = prior.shape[1] > 0
    n_bins = 64 * n_words + 2  # the last bin holds excluded rows (below 0x7FFF: see _select_below)
    excluded_bin = np.uint16(n_bins - 1)
    width = 0
    for i in range(nq):
        w = 0
        for p in range(probes.shape[1]):
            c = probes[i, p]
            w += offsets[c + 1] - offsets[c]
        width = max(width, w)
    dist = np.empty((width // 64 + 2) * 64, dtype=np.uint16)  # whole 64-row blocks plus padding
    hist = np.zeros((4, n_bins), dtype=np.int32)
    # scan positions fit int32 (a probe's scan is under 2^31 rows): half the scratch of int64;
    # a small catalog's long shortlist (s1 = 2,400 of 8,242 rows) held ~200 KB of it per query
    pos = np.empty(s1 + 1, dtype=np.int32)  # a spare slot for _select_sampled's last pass
    # candidates of a sampled selection: about 2 s1 expected; room for 8 s1 (a threshold bin of
    # many ties), not for the whole scan (8 bytes a row scanned: megabytes at a million rows)
    n_cand = _CAND_PER_S1 * s1 + 512 if width >= _SAMPLED_MIN_ROWS else 0
    cand = np.empty(n_cand, dtype=np.int32)
    cand_dist = np.empty(n_cand, dtype=np.uint16)
    sel = np.empty(s1, dtype=np.int64)
    sel_probe = np.empty(s1 if has_prior else 0, dtype=np.int32)  # only a cell prior reads it
    score = np.empty(s1, dtype=np.float32)
    best = np.empty(s2 + 1, dtype=np.int64)
    counts = np.empty((4, _SELECT_BINS), dtype=np.int32)
    bins = np.empty(s1, dtype=np.int32)
    tied = np.empty(s1 + 1, dtype=np.int32)
    L = np.empty(256 * n_fine, dtype=np.float32)
    for i in range(nq):
        # pass 1: distances of every probed row, in scan order, then their histogram
        w = 0
        for p in range(probes.shape[1]):
            c = probes[i, p]
            a, b = offsets[c], offsets[c + 1]
            _cell_distances(qwords[i], words, a, b, dist, w)
            if has_excl:
                for r in range(a, b):
                    if excl[r]:
                        dist[w + r - a] = excluded_bin
            w += b - a
        scanned[i] = w
        dist[w:w + 64] = _PAD
        m = -1
        if w >= _SAMPLED_MIN_ROWS:
            m = _select_sampled(dist, w, s1, n_bins, hist, cand, cand_dist, pos)
        if m < 0:  # short scans, or a sample that promised too few rows: count every distance
            _histogram(dist, w, hist)
            # counting selection: the threshold distance, then rows below it and the first ties
            n_valid = w - (hist[0, n_bins - 1] + hist[1, n_bins - 1] + hist[2, n_bins - 1] + hist[3, n_bins - 1])
            keep = min(s1, n_valid)
            t, below = _threshold_bin(hist, keep)
            m = _select_below(dist, w, t, keep - below, pos)
        p = 0  # scan positions back to rows, cell by cell
        start = 0
        c = probes[i, 0]
        for x in range(m):
            while pos[x] >= start + offsets[c + 1] - offsets[c]:
                start += offsets[c + 1] - offsets[c]
                p += 1
                c = probes[i, p]
            sel[x] = offsets[c] + pos[x] - start
            if has_prior:
                sel_probe[x] = p
            score[x] = -np.float32(dist[pos[x]])
        kept[i] = m
        top = min(s2, m)
        if n_fine == 0:  # coarse stage only: the kept rows in scan order, scored by -distance
            for x in range(top):
                out_rows[i, x] = sel[x]
                out_scores[i, x] = score[x]
        else:  # fine stage: sign look-up-table scores of the kept rows, then their best s2
            _sign_tables(proj[i], L)
            x = 0
            while x + 4 <= m:  # four rows at a time: four independent chains of table additions
                _fine_scores4(L, fine, n_fine, sel, x, score)
                x += 4
            while x < m:
                r = sel[x]
                s = np.float32(0.0)
                for j in range(n_fine):
                    s += L[j * 256 + fine[r * n_fine + j]]
                score[x] = s
                x += 1
            for x in range(m):
                s = score[x]
                if has_scales:
                    s *= scale_lo + scale_step * np.float32(scales[sel[x]])
                score[x] = s + const[i]
                if has_prior:
                    score[x] += prior[i, sel_probe[x]]
            if top > 0:
                _best(score, m, top, best, counts, bins, tied)
            if ordered:  # best first, equal scores in scan order
                chosen = np.sort(best[:top])
                order = np.argsort(-score[chosen], kind="mergesort")
                for x in range(top):
                    best[x] = chosen[order[x]]
            for x in range(top):
                out_rows[i, x] = sel[best[x]]
                out_scores[i, x] = score[best[x]]
        for x in range(top, s2):
            out_rows[i, x] = -1
            out_scores[i, x] = -np.inf


def _best_cells(S: np.ndarray, nprobe: int, out: np.ndarray) -> None:
    """Per row of ``S``, the ``nprobe`` highest columns, best first (equal scores: lower column
    first), by insertion into a short sorted list: most columns fail the first comparison."""
    top_s = np.empty(nprobe, dtype=S.dtype)
    for i in range(S.shape[0]):
        n = 0
        for c in range(S.shape[1]):
            v = S[i, c]
            if n == nprobe and not v > top_s[n - 1]:
                continue
            j = n if n < nprobe else nprobe - 1
            while j > 0 and v > top_s[j - 1]:
                top_s[j] = top_s[j - 1]
                out[i, j] = out[i, j - 1]
                j -= 1
            top_s[j] = v
            out[i, j] = c
            if n < nprobe:
                n += 1


def _line(E: np.ndarray, g: int, d: int, r: np.int64) -> np.ndarray:
    """Stored row ``r`` of ``E`` holding ``g`` rows of ``d`` per line (a view)."""
    if g == 1:  # a plain matrix: no division
        return E[r, :d]
    o = (r % g) * d
    return E[r // g, o:o + d]


def _exact_scores(E: np.ndarray, g: int, d: int, q: np.ndarray, rows: np.ndarray, m: int, l2: bool,
                  out: np.ndarray) -> None:
    """Scores of stored rows ``rows[:m]`` against ``q`` (inner product, or negative squared
    distance), eight rows at a time: eight independent reads in flight instead of one row
    after another (the rerank is bound by fetching rows from the exact store, not by the
    arithmetic). Row ``r`` is ``E[r // g, (r % g) * d:][:d]``: ``g`` rows per line of ``E``
    (the page-aligned row file has several per 4 KiB page; a plain matrix has ``g = 1``)."""
    j = 0
    while j + 8 <= m:
        r0, r1, r2, r3 = _line(E, g, d, rows[j]), _line(E, g, d, rows[j + 1]), _line(E, g, d, rows[j + 2]), _line(
            E, g, d, rows[j + 3])
        r4, r5, r6, r7 = _line(E, g, d, rows[j + 4]), _line(E, g, d, rows[j + 5]), _line(E, g, d, rows[j + 6]), _line(
            E, g, d, rows[j + 7])
        a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = np.float32(0.0)
        if l2:
            for c in range(d):
                qc = q[c]
                a0 += (qc - r0[c]) ** 2
                a1 += (qc - r1[c]) ** 2
                a2 += (qc - r2[c]) ** 2
                a3 += (qc - r3[c]) ** 2
                a4 += (qc - r4[c]) ** 2
                a5 += (qc - r5[c]) ** 2
                a6 += (qc - r6[c]) ** 2
                a7 += (qc - r7[c]) ** 2
            a0, a1, a2, a3, a4, a5, a6, a7 = -a0, -a1, -a2, -a3, -a4, -a5, -a6, -a7
        else:
            for c in range(d):
                qc = q[c]
                a0 += qc * r0[c]
                a1 += qc * r1[c]
                a2 += qc * r2[c]
                a3 += qc * r3[c]
                a4 += qc * r4[c]
                a5 += qc * r5[c]
                a6 += qc * r6[c]
                a7 += qc * r7[c]
        out[j], out[j + 1], out[j + 2], out[j + 3] = a0, a1, a2, a3
        out[j + 4], out[j + 5], out[j + 6], out[j + 7] = a4, a5, a6, a7
        j += 8
    while j < m:
        out[j] = _row_score(q, _line(E, g, d, rows[j]), d, l2)
        j += 1


def _row_score(q: np.ndarray, r: np.ndarray, d: int, l2: bool) -> np.float32:
    """One row's exact score: inner product, or negative squared distance (``l2``)."""
    a = np.float32(0.0)
    if l2:
        for c in range(d):
            a += (q[c] - r[c]) ** 2
        return -a
    for c in range(d):
        a += q[c] * r[c]
    return a


def _exact_scores_half(E: np.ndarray, g: int, d: int, q: np.ndarray, rows: np.ndarray, m: int, l2: bool,
                       out: np.ndarray, bits: np.ndarray, scaled: bool = False) -> None:
    """:func:`_exact_scores` for a float16 store (``E``: its uint16 bit patterns), each row
    widened into ``bits`` (uint32, d) before it is scored.

    ``scaled`` (inner product only): ``q`` comes times 2^112, so each row needs only its bits
    moved (one integer pass that vectorises), not the 2^112 product that renormalises them;
    (v 2^-112)(q 2^112) is v q exactly, powers of two changing no rounding."""
    row = bits.view(np.float32)
    if scaled and not l2:
        for j in range(m):
            half_bits_scaled_down(_line(E, g, d, rows[j]), bits)
            out[j] = _row_score(q, row, d, False)
        return
    for j in range(m):
        widen_half_row(_line(E, g, d, rows[j]), bits)
        out[j] = _row_score(q, row, d, l2)


def _keep_best(sc: np.ndarray, r: np.ndarray, m: int, keep: int, out_rows: np.ndarray,
               out_scores: np.ndarray) -> None:
    """The best ``keep`` of scores ``sc[:m]`` of rows ``r[:m]`` by insertion, best first; equal
    scores keep storage order."""
    n = 0
    for j in range(m):
        v = sc[j]
        if n < keep:
            p = n
            n += 1
        elif v > out_scores[keep - 1]:
            p = keep - 1
        else:
            continue
        while p > 0 and out_scores[p - 1] < v:
            out_scores[p] = out_scores[p - 1]
            out_rows[p] = out_rows[p - 1]
            p -= 1
        out_scores[p] = v
        out_rows[p] = r[j]


def _valid_sorted(rows_i: np.ndarray, r: np.ndarray) -> int:
    """A query's valid rows into ``r``, in storage order (neighbouring rows share pages)."""
    m = 0
    for j in range(rows_i.shape[0]):
        if rows_i[j] >= 0:
            r[m] = rows_i[j]
            m += 1
    r[:m].sort()
    return m


def _exact_top(E: np.ndarray, g: int, d: int, Q: np.ndarray, rows: np.ndarray, keep: int, l2: bool,
               out_rows: np.ndarray, out_scores: np.ndarray) -> None:
    nq, s = rows.shape
    r = np.empty(s, dtype=np.int64)
    sc = np.empty(s, dtype=np.float32)
    for i in range(nq):
        m = _valid_sorted(rows[i], r)
        _exact_scores(E, g, d, Q[i], r, m, l2, sc)
        _keep_best(sc, r, m, keep, out_rows[i], out_scores[i])


def _exact_top_half(E: np.ndarray, g: int, d: int, Q: np.ndarray, rows: np.ndarray, keep: int, l2: bool,
                    out_rows: np.ndarray, out_scores: np.ndarray) -> None:
    nq, s = rows.shape
    r = np.empty(s, dtype=np.int64)
    sc = np.empty(s, dtype=np.float32)
    bits = np.empty(d, dtype=np.uint32)
    q = np.empty(d, dtype=np.float32)
    big = np.float32(2.0 ** 112)
    for i in range(nq):
        m = _valid_sorted(rows[i], r)
        top = np.float32(0.0)
        for c in range(d):
            top = max(top, abs(Q[i, c]))
        scaled = not l2 and top < np.float32(2.0 ** 15)  # times 2^112 stays finite
        for c in range(d):
            q[c] = Q[i, c] * big if scaled else Q[i, c]
        _exact_scores_half(E, g, d, q, r, m, l2, sc, bits, scaled)
        _keep_best(sc, r, m, keep, out_rows[i], out_scores[i])

def _missed_positions(hit: np.ndarray) -> np.ndarray:
    """For each page, how many pages before it missed: where its frame sits among the misses."""
    pos = np.empty(hit.shape[0], dtype=np.int64)
    k = 0
    for p in range(hit.shape[0]):
        pos[p] = k
        if not hit[p]:
            k += 1
    return pos


def _cut_rows(flat: np.ndarray, hit: np.ndarray, pidx: np.ndarray, at: np.ndarray, X: np.ndarray,
              page_values: int) -> None:
    """Rows of ``X`` whose page missed (``hit[pidx[i]]`` false) copied from ``flat``, the missed
    pages' frames back to back as float32: row ``i`` starts at value ``at[i]`` of the
    ``k``-th missed page, ``k`` counting the misses before page ``pidx[i]``."""
    pos = _missed_positions(hit)
    d = X.shape[1]
    for i in range(X.shape[0]):
        p = pidx[i]
        if not hit[p]:
            o = pos[p] * page_values + at[i]
            for j in range(d):
                X[i, j] = flat[o + j]


def _cut_rows_half(flat: np.ndarray, hit: np.ndarray, pidx: np.ndarray, at: np.ndarray, X: np.ndarray,
                   page_values: int) -> None:
    """:func:`_cut_rows` for frames of float16 values (``flat``: their uint16 bit patterns),
    widened to float32 as they are copied."""
    pos = _missed_positions(hit)
    d = X.shape[1]
    bits = np.empty(d, dtype=np.uint32)
    row = bits.view(np.float32)
    for i in range(X.shape[0]):
        p = pidx[i]
        if not hit[p]:
            o = pos[p] * page_values + at[i]
            widen_half_row(flat[o:o + d], bits)
            for j in range(d):
                X[i, j] = row[j]


def _page_plan(rows: np.ndarray, n: int, data_offset: int, g: int, group_bytes: int, row_bytes: int,
               itemsize: int, page_bytes: int, max_run: int, pidx: np.ndarray, at: np.ndarray,
               pages: np.ndarray, run_first: np.ndarray, run_count: np.ndarray) -> tuple[int, int]:
    """Where sorted, distinct ``rows`` of a store with one-page rows lie: per row its page's
    index in ``pages`` and its first value in that page; the distinct pages in order; and the
    runs of adjacent pages (first index, count; at most ``max_run`` pages each). Returns
    (pages, runs), or (-1, -1) where ``rows`` are not sorted and distinct or fall outside
    ``[0, n)`` (the caller takes its general path)."""
    n_pages = 0
    n_runs = 0
    prev_row = -1
    prev_page = -1
    for i in range(rows.shape[0]):
        r = rows[i]
        if r <= prev_row or r >= n:
            return -1, -1
        prev_row = r
        start = data_offset + (r // g) * group_bytes + (r % g) * row_bytes
        page = start // page_bytes
        at[i] = (start % page_bytes) // itemsize
        if page != prev_page:
            pages[n_pages] = page
            if n_runs > 0 and page == prev_page + 1 and run_count[n_runs - 1] < max_run:
                run_count[n_runs - 1] += 1
            else:
                run_first[n_runs] = n_pages
                run_count[n_runs] = 1
                n_runs += 1
            n_pages += 1
            prev_page = page
        pidx[i] = n_pages - 1
    return n_pages, n_runs


if AVAILABLE:
    _missed_positions = numba.njit(cache=True, nogil=True)(_missed_positions)
    _cut_rows = numba.njit(cache=True, nogil=True)(_cut_rows)
    _cut_rows_half = numba.njit(cache=True, nogil=True)(_cut_rows_half)
    _page_plan = numba.njit(cache=True, nogil=True)(_page_plan)
    _popcount64 = numba.njit(cache=True, nogil=True, inline="always")(_popcount64)
    _cell_distances = numba.njit(cache=True, nogil=True)(_cell_distances)
    _at_most = numba.extending.intrinsic(_mask_at_most)
    _lowest_bit = numba.njit(cache=True, nogil=True, inline="always")(_lowest_bit)
    _select_below = numba.njit(cache=True, nogil=True)(_select_below)
    _select_sampled = numba.njit(cache=True, nogil=True)(_select_sampled)
    _histogram = numba.njit(cache=True, nogil=True)(_histogram)
    _threshold_bin = numba.njit(cache=True, nogil=True, inline="always")(_threshold_bin)
    # scores are finite: min/max need not order NaNs, which lets them vectorise
    _best = numba.njit(cache=True, nogil=True, fastmath={"nnan", "ninf"})(_best)
    _sign_tables = numba.njit(cache=True, nogil=True)(_sign_tables)
    _fine_scores4 = numba.njit(cache=True, nogil=True, inline="always")(_fine_scores4)
    _scan = numba.njit(cache=True, nogil=True)(_scan)
    _best_cells = numba.njit(cache=True, nogil=True)(_best_cells)
    _line = numba.njit(cache=True, nogil=True, inline="always")(_line)
    # reassociation lets the eight row sums vectorise over dimensions; nothing else is relaxed
    _row_score = numba.njit(cache=True, nogil=True, inline="always", fastmath={"reassoc", "contract"})(_row_score)
    _exact_scores = numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})(_exact_scores)
    _exact_scores_half = numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})(_exact_scores_half)
    _keep_best = numba.njit(cache=True, nogil=True)(_keep_best)
    _valid_sorted = numba.njit(cache=True, nogil=True)(_valid_sorted)
    _exact_top = numba.njit(cache=True, nogil=True)(_exact_top)
    _exact_top_half = numba.njit(cache=True, nogil=True)(_exact_top_half)


def cut_rows(X: np.ndarray, frames: np.ndarray, hit: np.ndarray, pidx: np.ndarray, at: np.ndarray, *,
             half: bool = False) -> None:
    """Fill the rows of ``X`` (n, d) float32 whose page missed the pool (``hit`` per distinct
    page; row ``i`` lies at value ``at[i]`` of page ``pidx[i]``) from ``frames`` (the missed
    pages in order, uint8 (m, page bytes)) holding float32 values, or float16 ones (``half``),
    widened as they are copied. A copy loop: numpy's gather of strided windows took ~40 µs for
    the few dozen rows of one query."""
    flat = frames.reshape(-1).view(np.uint16 if half else np.float32)
    page_values = frames.shape[1] // flat.itemsize
    if not AVAILABLE:  # pragma: no cover - numba is a project dependency
        values = flat.view(np.float16) if half else flat
        miss = np.flatnonzero(~hit)
        pos = np.empty(len(hit), dtype=np.int64)
        pos[miss] = np.arange(len(miss))
        for i in np.flatnonzero(~hit[pidx]):
            o = pos[pidx[i]] * page_values + at[i]
            X[i] = values[o:o + X.shape[1]]
        return
    args = (flat, np.ascontiguousarray(hit, dtype=np.bool_), np.ascontiguousarray(pidx, dtype=np.int64),
            np.ascontiguousarray(at, dtype=np.int64), X, page_values)
    (_cut_rows_half if half else _cut_rows)(*args)


def page_plan(rows: np.ndarray, n: int, data_offset: int, rows_per_group: int, group_bytes: int,
              row_bytes: int, itemsize: int, page_bytes: int, max_run: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """For sorted, distinct int64 ``rows`` of a store whose rows each lie in one page:
    (page index of each row in the distinct pages, first value of each row in its page, the
    distinct pages, first index and page count of each run of adjacent pages of at most
    ``max_run``), in one pass; None where the rows are not sorted and distinct or lie outside
    ``[0, n)``, or without numba. One call in place of a dozen numpy ones: a query's read asks
    for a few dozen rows, where each numpy call costs about as much as its work."""
    if not AVAILABLE:  # pragma: no cover - numba is a project dependency
        return None
    m = len(rows)
    pidx = np.empty(m, dtype=np.int64)
    at = np.empty(m, dtype=np.int64)
    pages = np.empty(m, dtype=np.int64)
    first = np.empty(m, dtype=np.int64)
    count = np.empty(m, dtype=np.int64)
    n_pages, n_runs = _page_plan(rows, n, data_offset, rows_per_group, group_bytes, row_bytes, itemsize,
                                 page_bytes, max_run, pidx, at, pages, first, count)
    if n_pages < 0:
        return None
    return pidx, at, pages[:n_pages], first[:n_runs], count[:n_runs]


def best_cells(S: np.ndarray, nprobe: int) -> np.ndarray:
    """The ``nprobe`` best-scoring columns of each row of ``S`` (nq, nlist), best first, equal
    scores in column order: int64 (nq, nprobe), ``nprobe <= nlist``."""
    S = np.ascontiguousarray(S)
    if not AVAILABLE:  # pragma: no cover - numba is a project dependency
        return np.argsort(-S, axis=1, kind="stable")[:, :nprobe].astype(np.int64)
    out = np.empty((len(S), nprobe), dtype=np.int64)
    _best_cells(S, int(nprobe), out)
    return out


def coarse_scan(qcodes: np.ndarray, codes: np.ndarray, offsets: np.ndarray, probes: np.ndarray,
                excl: np.ndarray | None, s1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The coarse stage alone (for a fine stage the kernel does not score): rows (nq, s1) in
    scan order with -1 padding, their scores ``-distance`` (-inf padding), items scanned and
    kept per query."""
    nq = len(qcodes)
    return coarse_fine_scan(qcodes, codes, offsets, probes, excl, s1, np.zeros((1, 0), np.uint8),
                            np.zeros((nq, 0), np.float32), np.zeros(nq, np.float32), s1, ordered=False)


def coarse_fine_scan(qcodes: np.ndarray, codes: np.ndarray, offsets: np.ndarray, probes: np.ndarray,
                     excl: np.ndarray | None, s1: int, fine_codes: np.ndarray, proj: np.ndarray,
                     const: np.ndarray, s2: int, *, ordered: bool = True,
                     scales: tuple[np.ndarray, float, float] | None = None,
                     prior: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Both stages for a batch of queries.

    ``qcodes`` (nq, cs) and ``codes`` (n, cs) are packed binary codes with ``cs % 8 == 0``;
    ``offsets`` bound the cells of ``codes``; ``probes`` (nq, P) the cells each query scans;
    ``excl`` a bool per row to skip (or None); ``fine_codes`` (n, F) uint8 sign codes scored
    through look-up tables built from ``proj`` (nq, 8 F), the query's projections on the sign
    directions (:meth:`~mmcompress.index.signscan.SignLUTScorer.projections`), plus ``const`` (nq,);
    ``scales`` = (uint8 per row, lo, step) multiplies each row's table sum by ``lo + step * u``;
    ``prior`` (nq, P) float32 is added to the score of every row of probe ``p`` (the weighted
    cell score, :mod:`mmcompress.index.cellprior`). Returns rows (nq, s2) with -1 padding,
    their scores (-inf padding), and per query the items in its probed cells (excluded rows
    included, as the numpy path counts them) and the items the coarse stage kept. The rows are
    the ``s2`` best (equal scores: the first scanned), best first when ``ordered``; otherwise
    in no stated order, for a caller that rescores them anyway (the exact stage).
    """
    nq = len(qcodes)
    qwords = np.ascontiguousarray(qcodes).view(np.uint64)
    if 64 * qwords.shape[1] > MAX_BITS:
        raise ValueError(f"coarse codes of {64 * qwords.shape[1]} bits exceed the kernel's 16-bit lanes "
                         f"(at most {MAX_BITS} bits)")
    words = np.ascontiguousarray(codes).view(np.uint64).reshape(-1)
    out_rows = np.empty((nq, s2), dtype=np.int64)
    out_scores = np.empty((nq, s2), dtype=np.float32)
    scanned = np.empty(nq, dtype=np.int64)
    kept = np.empty(nq, dtype=np.int64)
    _scan(qwords, words, np.ascontiguousarray(offsets, dtype=np.int64),
          np.ascontiguousarray(probes, dtype=np.int64),
          np.zeros(0, dtype=np.bool_) if excl is None else np.ascontiguousarray(excl, dtype=np.bool_),
          int(s1), np.ascontiguousarray(fine_codes), np.ascontiguousarray(proj, dtype=np.float32),
          np.ascontiguousarray(const, dtype=np.float32),
          np.zeros(0, np.uint8) if scales is None else np.ascontiguousarray(scales[0], dtype=np.uint8),
          np.float32(0 if scales is None else scales[1]), np.float32(0 if scales is None else scales[2]),
          np.zeros((nq, 0), np.float32) if prior is None else np.ascontiguousarray(prior, dtype=np.float32),
          int(s2), bool(ordered), out_rows, out_scores, scanned, kept)
    return out_rows, out_scores, scanned, kept


def exact_top(E: np.ndarray, Q: np.ndarray, rows: np.ndarray, keep: int, metric: str, *,
              rows_per_line: int = 1, d: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The exact rerank: each query's best ``keep`` of its ``rows`` (nq, s; -1 = none) of the
    float32 or float16 store ``E`` (memory-mapped or not; float16 rows are widened as they are
    scored) by inner product (``ip``) or negative squared
    distance (``l2``). ``E`` is (n, d), or holds ``rows_per_line`` rows of ``d`` per line (the
    page-aligned row file's pages: :class:`~mmcompress.index.rowstore.MemoryRowReader`).
    Returns rows (nq, keep) and scores, best first, padded with -1 / -inf."""
    nq = len(Q)
    d = E.shape[1] if d is None else int(d)
    out_rows = np.full((nq, keep), -1, dtype=np.int64)
    out_scores = np.full((nq, keep), -np.inf, dtype=np.float32)
    half = E.dtype == np.float16  # a float16 store: rows widened one at a time as they are scored
    (_exact_top_half if half else _exact_top)(
        E.view(np.uint16) if half else E, int(rows_per_line), d, np.ascontiguousarray(Q, dtype=np.float32),
        np.ascontiguousarray(rows, dtype=np.int64), int(keep), metric == "l2", out_rows, out_scores)
    return out_rows, out_scores
