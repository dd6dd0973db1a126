"""The compiled coarse + sign-table kernel selects and scores exactly as the numpy path does."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmcompress.codecs import make_codec
from mmcompress.evaluation.metrics import recall_at_k
from mmcompress.index import CascadeConfig, CascadeIndex, kernels
from mmcompress.index.cascade import smallest_counts
from mmcompress.index.hamming import hamming_distances
from mmcompress.index.signscan import sign_tables

pytestmark = pytest.mark.skipif(not kernels.AVAILABLE, reason="numba is not installed")


@pytest.mark.parametrize("n", [3000, 40_000], ids=["counted", "sampled"])
def test_kernel_selection_and_scores_match_a_direct_computation(n):
    """Short scans count every distance; long ones (over 8,192 rows) bound the threshold from
    a sample first: both must keep exactly the rows a full selection keeps."""
    rng = np.random.default_rng(0)
    nq, cs, s1, s2 = 40, 16, 200, 30
    codes = rng.integers(0, 256, (n, cs), dtype=np.uint8)
    codes[n // 3:n // 3 + 400] = codes[0]  # many exact ties at one distance
    qcodes = rng.integers(0, 256, (nq, cs), dtype=np.uint8)
    qcodes[:5] = codes[0]
    offsets = np.array([0, 7 * n // 30, n // 2, 22 * n // 30, n])
    probes = np.array([[2, 0, 3]] * (nq // 2) + [[1, 3, 2]] * (nq - nq // 2))
    excl = rng.random(n) < 0.1
    proj = rng.standard_normal((nq, cs * 8)).astype(np.float32)
    lut = sign_tables(proj)
    const = rng.standard_normal(nq).astype(np.float32)
    rows, scores, scanned, kept = kernels.coarse_fine_scan(qcodes, codes, offsets, probes, excl, s1,
                                                           codes, proj, const, s2)
    off = np.arange(cs) * 256
    for i in range(nq):
        scan = np.concatenate([np.arange(offsets[c], offsets[c + 1]) for c in probes[i]])
        assert scanned[i] == len(scan)
        scan = scan[~excl[scan]]
        dist = hamming_distances(qcodes[i:i + 1], codes[scan])[0]
        chosen = scan[smallest_counts(dist.astype(np.uint8), s1, 255)]  # ties kept in scan order
        assert kept[i] == s1
        full = lut[i][codes[chosen].astype(np.intp) + off].sum(axis=1) + const[i]
        best = np.argsort(-full, kind="stable")[:s2]
        assert set(rows[i]) == set(chosen[best])
        np.testing.assert_allclose(scores[i], full[best], rtol=1e-5, atol=1e-5)
        assert np.all(np.diff(scores[i]) <= 0)
    unordered = kernels.coarse_fine_scan(qcodes, codes, offsets, probes, excl, s1, codes, proj, const, s2,
                                         ordered=False)
    for i in range(nq):  # the same rows and scores, in another order
        assert sorted(unordered[0][i]) == sorted(rows[i])
        np.testing.assert_array_equal(np.sort(unordered[1][i]), np.sort(scores[i]))


def test_a_sample_that_misleads_falls_back_to_counting_every_row():
    """Every eighth row (the sampled ones) is the query's own code and the rest are far: the
    sample promises far more near rows than exist, and the selection must still be exact."""
    rng = np.random.default_rng(3)
    n, cs, s1 = 9000, 16, 2000
    codes = rng.integers(0, 256, (n, cs), dtype=np.uint8)
    q = codes[:1].copy()
    codes[::8] = q
    rows, scores, _, kept = kernels.coarse_scan(q, codes, np.array([0, n]), np.zeros((1, 1), np.int64), None, s1)
    dist = hamming_distances(q, codes)[0]
    want = smallest_counts(dist.astype(np.uint8), s1, 255)
    assert kept[0] == s1
    assert list(rows[0]) == list(want)  # scan order, ties included
    np.testing.assert_array_equal(scores[0], -dist[want].astype(np.float32))


def test_more_candidates_than_the_sample_promised_fall_back_to_counting_every_row():
    """The sampled rows are far, the others all tie near the query: the sample's bound holds
    nearly every row, far more than the candidate buffer (sized from ``s1``, not from the
    scan) takes; the selection must still be exact, ties in scan order."""
    rng = np.random.default_rng(4)
    n, cs, s1 = 20_000, 16, 50
    q = rng.integers(0, 256, (1, cs), dtype=np.uint8)
    codes = np.repeat(q, n, axis=0)
    codes[:, 0] ^= 1  # every row at distance 1 ...
    codes[::8] = ~q  # ... but the sampled ones, at 128
    codes[::8, 0] ^= rng.integers(0, 2, n // 8 if n % 8 == 0 else n // 8 + 1, dtype=np.uint8)
    rows, scores, _, kept = kernels.coarse_scan(q, codes, np.array([0, n]), np.zeros((1, 1), np.int64), None, s1)
    dist = hamming_distances(q, codes)[0]
    want = smallest_counts(dist.astype(np.uint8), s1, 255)
    assert kept[0] == s1 and list(rows[0]) == list(want)
    np.testing.assert_array_equal(scores[0], -dist[want].astype(np.float32))


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.integers(0, 0xFFFF), min_size=64, max_size=256), start=st.integers(0, 192),
       t=st.integers(0, 0xFFFF))
def test_the_compiled_64_row_mask_is_the_plain_loop_bit_for_bit(values, start, t):
    """The selection's mask of 64 distances (an LLVM vector comparison) sets bit ``j`` exactly
    where distance ``start + j`` is at most ``t``, at any offset and for extreme distances."""
    dist = np.zeros(256 + 64, dtype=np.uint16)
    dist[:len(values)] = values
    start = min(start, len(values))

    @numba.njit
    def masks(d, a, t):
        return kernels._at_most(d, a, t), kernels._at_most(d, a, np.uint16(t))

    compiled, narrow = masks(dist, start, t)
    assert compiled == narrow == kernels._at_most_loop(dist, start, t)


def test_sign_tables_sum_the_signed_projections_of_each_byte():
    rng = np.random.default_rng(1)
    proj = rng.standard_normal((3, 16)).astype(np.float32)
    lut = sign_tables(proj).reshape(3, 2, 256)
    signs = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).astype(np.float64) * 2 - 1
    for j in range(2):
        want = proj[:, 8 * j:8 * j + 8].astype(np.float64) @ signs.T
        np.testing.assert_allclose(lut[:, j], want, rtol=1e-5, atol=1e-5)


def test_fine_selection_keeps_equal_scores_in_scan_order():
    codes = np.zeros((50, 8), dtype=np.uint8)  # one code: every row scores the same
    codes[[3, 30]] = 255
    proj = np.ones((1, 64), np.float32)
    rows, scores, _, _ = kernels.coarse_fine_scan(codes[:1], codes, np.array([0, 50]), np.zeros((1, 1), np.int64),
                                                  None, 50, codes, proj, np.zeros(1, np.float32), 5)
    assert list(rows[0]) == [3, 30, 0, 1, 2]  # the two all-ones codes first, then ties in scan order


def test_short_candidate_lists_are_padded():
    codes = np.arange(5 * 8, dtype=np.uint8).reshape(5, 8)
    rows, scores, scanned, kept = kernels.coarse_fine_scan(
        codes[:1], codes, np.array([0, 5]), np.zeros((1, 1), np.int64), None, 10, codes,
        np.zeros((1, 64), np.float32), np.zeros(1, np.float32), 7)
    assert scanned[0] == 5 and kept[0] == 5
    assert sorted(rows[0][:5]) == [0, 1, 2, 3, 4] and list(rows[0][5:]) == [-1, -1]
    assert np.all(np.isneginf(scores[0][5:]))


@pytest.fixture(scope="module")
def bin64(digits):
    return make_codec("BIN64").fit(digits["xb"])


@pytest.mark.parametrize("spec", ["BIN64", "BIN64_f16", "BIN64_i8"])
@pytest.mark.parametrize("routing", [{}, {"nlist": 16, "nprobe": 6}], ids=["exhaustive", "ivf"])
def test_compiled_and_numpy_paths_agree(digits, bin64, routing, spec):
    codec = bin64 if spec == "BIN64" else make_codec(spec).fit(digits["xb"])
    indexes = {}
    for compiled in (True, False):
        config = CascadeConfig.from_params({"coarse": {"codec": spec, "shortlist": 300, **routing},
                                            "fine": {"codec": "coarse", "shortlist": 80},
                                            "compiled_scan": compiled})
        masks = {"text": digits["ids"] % 3 != 0}
        ix = CascadeIndex.build(codec, codec, digits["xb"], digits["ids"], config=config, masks=masks)
        ix.remove(digits["ids"][::11])
        ix.compact()
        indexes[compiled] = ix
    fast, slow = indexes[True], indexes[False]
    assert "coarse+fine" in slow.search(digits["xq"][:3], 10, return_stats=True, compiled=True)[2].seconds
    for kw in ({}, {"modality": "text"}, {"exact_rerank": False}):
        sf, found_f, st_f = fast.search(digits["xq"], 10, return_stats=True, **kw)
        ss, found_s, st_s = slow.search(digits["xq"], 10, return_stats=True, **kw)
        assert "coarse+fine" in st_f.seconds and "coarse+fine" not in st_s.seconds
        assert st_f.coarse_scanned == st_s.coarse_scanned and st_f.coarse_shortlist == st_s.coarse_shortlist
        assert st_f.fine_shortlist == st_s.fine_shortlist
        assert np.mean(found_f == found_s) >= 0.99
        assert np.mean(np.isclose(sf, ss, rtol=1e-4, atol=1e-5)) >= 0.99  # float sums may swap a boundary item
    alive = np.ones(len(digits["ids"]), bool)
    alive[::11] = False
    xb, ids = digits["xb"][alive], digits["ids"][alive]
    truth = ids[np.argsort(-(digits["xq"] @ xb.T), axis=1, kind="stable")[:, :10]]
    assert recall_at_k(truth, fast.search(digits["xq"], 10)[1], 10) >= 0.95


def test_pending_additions_fall_back_to_the_numpy_path(digits, bin64):
    config = CascadeConfig.from_params({"coarse": {"codec": "BIN64", "shortlist": 150},
                                        "fine": {"codec": "coarse", "shortlist": 40}})
    ix = CascadeIndex.build(bin64, bin64, digits["xb"][:1000], digits["ids"][:1000], config=config)
    ix.add(digits["xb"][1000:], digits["ids"][1000:])
    assert not ix._compiled_applies(ix._state, True)
    _, found, stats = ix.search(digits["xq"], 10, return_stats=True)
    assert "coarse+fine" not in stats.seconds and set(found.ravel()) & set(digits["ids"][1000:])
    ix.compact()
    _, found_c, stats = ix.search(digits["xq"], 10, return_stats=True)
    assert "coarse+fine" in stats.seconds and recall_at_k(found, found_c, 10) >= 0.97


@pytest.mark.parametrize("routing", [{}, {"nlist": 16, "nprobe": 6}], ids=["exhaustive", "ivf"])
def test_compiled_coarse_stage_matches_numpy_before_another_fine_codec(digits, bin64, fitted, routing):
    """With a fine codec the kernel does not score (PQ), only the coarse stage is compiled; its
    shortlist and scores equal the numpy path's, so the whole search returns the same items."""
    config = CascadeConfig.from_params({"coarse": {"codec": "BIN64", "shortlist": 150, **routing},
                                        "fine": {"shortlist": 40}})
    ix = CascadeIndex.build(bin64, fitted["PQ8x8"], digits["xb"], digits["ids"], config=config,
                            masks={"text": digits["ids"] % 3 != 0})
    ix.remove(digits["ids"][::7])  # tombstones: excluded inside the kernel
    st = ix._state
    assert ix._compiled_coarse_applies(st) and not ix._compiled_applies(st, True)
    excl = ix._exclusions(st, "text")
    p = {"nprobe": 6, "excl": excl, "s1": 150}
    rows_c, scores_c, scanned_c, _ = ix._compiled_scan(st, digits["xq"], p, fine=False)
    rows_n, scores_n, scanned_n = ix._coarse(st, digits["xq"], 150, 6, excl)
    np.testing.assert_array_equal(rows_c, rows_n)
    np.testing.assert_array_equal(scores_c, scores_n)
    np.testing.assert_array_equal(scanned_c, scanned_n)
    a = ix.search(digits["xq"], 10, modality="text", compiled=True)
    b = ix.search(digits["xq"], 10, modality="text", compiled=False)
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("compiled", [True, False])
def test_coarse_only_scores_are_negative_distances_best_first(digits, bin64, compiled):
    """An item's own code is at distance 0: it must rank first with score 0 on both paths."""
    config = CascadeConfig.from_params({"coarse": {"codec": "BIN64", "shortlist": 10}, "exact_rerank": False})
    ix = CascadeIndex.build(bin64, None, digits["xb"], digits["ids"], config=config)
    scores, found = ix.search(digits["xb"][:20], 10, compiled=compiled)
    assert np.all(scores[:, 0] == 0) and np.all(scores <= 0) and np.all(np.diff(scores, axis=1) <= 0)
    assert np.mean(found[:, 0] == digits["ids"][:20]) >= 0.9


def test_best_cells_are_the_highest_scores_best_first_with_ties_by_column():
    rng = np.random.default_rng(2)
    tied = rng.integers(0, 20, (30, 64)).astype(np.float32)  # many equal scores
    distinct = rng.standard_normal((30, 64))
    for S in (tied, distinct, tied.astype(np.float64)):
        for nprobe in (1, 5, 31, 63, 64):
            got = kernels.best_cells(S, nprobe)
            np.testing.assert_array_equal(got, np.argsort(-S, axis=1, kind="stable")[:, :nprobe])


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("d", [7, 64, 474])
def test_exact_top_is_the_best_of_each_querys_rows(metric, d, dtype):
    """The exact rerank kernel returns each query's best rows by exact score, best first,
    whatever the order of its rows and wherever the -1 padding sits (ragged shortlists); a
    float16 store is scored by its values."""
    rng = np.random.default_rng(d)
    E = rng.standard_normal((500, d)).astype(dtype)
    Q = rng.standard_normal((12, d)).astype(np.float32)
    rows = np.stack([rng.permutation(500)[:37] for _ in range(len(Q))])
    rows[rng.random(rows.shape) < 0.2] = -1
    rows[3, :] = -1
    rows[4, 5:] = -1  # fewer rows than asked for
    got_rows, got_scores = kernels.exact_top(E, Q, rows, 10, metric)
    for i in range(len(Q)):
        r = rows[i][rows[i] >= 0]
        x = E[r].astype(np.float64)
        s = x @ Q[i] if metric == "ip" else -((x - Q[i]) ** 2).sum(axis=1)
        order = np.argsort(-s, kind="stable")[:10]
        n = len(order)
        np.testing.assert_array_equal(got_rows[i, :n], r[order])
        np.testing.assert_allclose(got_scores[i, :n], s[order], rtol=1e-4, atol=1e-4)
        assert np.all(got_rows[i, n:] == -1) and np.all(np.isneginf(got_scores[i, n:]))



@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_a_float16_store_scores_its_values_widened(metric):
    """The float16 kernel scores the widened rows' values (to float32 rounding): subnormal,
    zero, negative and extreme halves included, and queries whose components are too large
    for the inner product's 2^112 prescaling (they take the widening path)."""
    rng = np.random.default_rng(5)
    d = 96
    E = (rng.standard_normal((300, d)) * 0.05).astype(np.float16)
    E[:, :8] = np.array([0.0, -0.0, 6e-8, -6e-8, 3e-5, -5e-6, 60000, -2.0], np.float16)  # subnormals, zeros, extremes
    E[::3, 6] = 0.0
    Q = rng.standard_normal((6, d)).astype(np.float32)
    Q[5, 3] = 40000.0  # times 2^112 would overflow float32
    rows = np.stack([rng.permutation(300)[:50] for _ in range(len(Q))])
    got_rows, got_scores = kernels.exact_top(E, Q, rows, 20, metric)
    X = E.astype(np.float64)
    for i in range(len(Q)):
        s = X[rows[i]] @ Q[i] if metric == "ip" else -((X[rows[i]] - Q[i]) ** 2).sum(axis=1)
        want = np.sort(s)[::-1][:20]
        np.testing.assert_allclose(got_scores[i], want, rtol=1e-6, atol=1e-6 * np.abs(want).max())
        exact = (X[got_rows[i]] @ Q[i]) if metric == "ip" else -((X[got_rows[i]] - Q[i]) ** 2).sum(axis=1)
        np.testing.assert_allclose(got_scores[i], exact, rtol=1e-6, atol=1e-6 * np.abs(want).max())

def test_one_query_product_serves_codes_routing_and_sign_tables(digits, bin64, tmp_path):
    """Where the cells are routed in the BIN codec's space and the sign tables read the same
    codec, a query is multiplied by its projection once; the codes, cells and results are those
    of three separate products (the codec's own encode, routing, tables)."""
    config = CascadeConfig.from_params({"coarse": {"codec": "BIN64", "shortlist": 300, "nlist": 16, "nprobe": 6},
                                        "fine": {"codec": "coarse", "shortlist": 80}})
    built = CascadeIndex.build(bin64, bin64, digits["xb"], digits["ids"], config=config)
    built.save(tmp_path / "ix")
    for ix in (built, CascadeIndex.load(tmp_path / "ix", mmap=True)):
        W = ix._coarse_sign[0]
        assert W is not None and ix.partition.projection_ is W and ix.sign_scorer.W is W
        Q = digits["xq"]
        QW = ix._query_projection(Q)
        assert np.mean(ix._query_codes(Q, QW) == ix.coarse_codec.encode(Q)) >= 0.999
        np.testing.assert_array_equal(ix._probes(Q, 6, QW), ix.partition.probe(Q, 6))
        np.testing.assert_allclose(ix.sign_scorer.projections(Q, QW)[0], ix.sign_scorer.projections(Q)[0],
                                   rtol=1e-5, atol=1e-6)
        shared = ix.search(Q, 10)[1]
        ix._coarse_sign_cache = (None, None)  # three separate products
        assert np.mean(ix.search(Q, 10)[1] == shared) >= 0.99


def test_codes_too_wide_for_the_selection_lanes_are_refused():
    wide = np.zeros((2, 64 * 512 // 8), np.uint8)  # 32,768 bits: distances would reach the padding value
    with pytest.raises(ValueError, match="16-bit lanes"):
        kernels.coarse_scan(wide[:1], wide, np.array([0, 2]), np.zeros((1, 1), np.int64), None, 1)
