"""The cell prior: chosen at build where it ranks better, scored alike by both paths, kept on save."""

from __future__ import annotations

import numpy as np
import pytest

from mmcompress.evaluation.metrics import recall_at_k
from mmcompress.index import CascadeConfig, CascadeIndex, kernels
from mmcompress.index.cellprior import choose_cell_weight
from mmcompress.index.hamming import hamming_distances
from mmcompress.index.signscan import sign_tables

pytestmark = pytest.mark.skipif(not kernels.AVAILABLE, reason="numba is not installed")


def _config(prior: bool = True, nlist: int = 64, nprobe: int = 8, compiled: bool = True) -> CascadeConfig:
    return CascadeConfig.from_params({"coarse": {"codec": "BIN64", "shortlist": 300, "nlist": nlist, "nprobe": nprobe},
                                      "fine": {"codec": "coarse", "shortlist": 30, "cell_prior": prior},
                                      "compiled_scan": compiled})


def _shortlist_recall(ix: CascadeIndex, digits: dict, **kw) -> float:
    found = ix.search(digits["xq"], 30, exact_rerank=False, **kw)[1]
    return recall_at_k(digits["truth"], found, 10)


@pytest.fixture(scope="module")
def bin64(digits):
    from mmcompress.codecs import make_codec

    return make_codec("BIN64").fit(digits["xb"])


def test_kernel_adds_the_prior_of_each_rows_probe():
    rng = np.random.default_rng(3)
    n, nq, cs, s1, s2 = 2000, 12, 8, 400, 400
    codes = rng.integers(0, 256, (n, cs), dtype=np.uint8)
    qcodes = rng.integers(0, 256, (nq, cs), dtype=np.uint8)
    offsets = np.array([0, 500, 900, 1500, n])
    probes = np.array([[3, 1, 0]] * nq)
    proj = rng.standard_normal((nq, cs * 8)).astype(np.float32)
    const = rng.standard_normal(nq).astype(np.float32)
    prior = rng.standard_normal((nq, 3)).astype(np.float32)
    rows, scores, _, kept = kernels.coarse_fine_scan(qcodes, codes, offsets, probes, None, s1, codes, proj, const,
                                                     s2, prior=prior)
    lut, off = sign_tables(proj), np.arange(cs) * 256
    cell_probe = {c: j for j, c in enumerate(probes[0])}
    for i in range(nq):
        r = rows[i][rows[i] >= 0]
        assert len(r) == kept[i] == s1
        cells = np.searchsorted(offsets, r, side="right") - 1
        want = (lut[i][codes[r].astype(np.intp) + off].sum(axis=1) + const[i]) \
            + prior[i, [cell_probe[c] for c in cells]]
        np.testing.assert_allclose(scores[i][:len(r)], want, rtol=1e-5, atol=1e-5)
        assert np.all(np.diff(scores[i][:len(r)]) <= 0)
        scanned = np.concatenate([np.arange(offsets[c], offsets[c + 1]) for c in probes[i]])
        d = hamming_distances(qcodes[i:i + 1], codes[scanned])[0]
        assert hamming_distances(qcodes[i:i + 1], codes[r])[0].max() == np.sort(d)[s1 - 1]


def test_build_chooses_a_weight_that_ranks_the_fine_shortlist_better(digits, bin64):
    ix = CascadeIndex.build(bin64, bin64, digits["xb"], digits["ids"], config=_config())
    assert ix.cell_weight_ is not None and ix.cell_weight_ > 0
    with_prior = _shortlist_recall(ix, digits)
    weight, ix.cell_weight_ = ix.cell_weight_, None
    without = _shortlist_recall(ix, digits)
    assert with_prior >= without + 0.03, (weight, with_prior, without)
    off = CascadeIndex.build(bin64, bin64, digits["xb"], digits["ids"], config=_config(prior=False))
    assert off.cell_weight_ is None and not off._cell_prior_applies
    flat = CascadeIndex.build(bin64, bin64, digits["xb"], digits["ids"], config=_config(nlist=0))
    assert flat.cell_weight_ is None  # no cells, no prior


def test_choose_cell_weight_refuses_a_weight_that_does_not_help(digits, bin64):
    ix = CascadeIndex.build(bin64, bin64, digits["xb"], digits["ids"], config=_config(prior=False))
    st = ix._state
    kw = dict(nprobe=8, depth=30, metric="ip")
    X = st.main.exact.read(np.arange(st.main.n))
    assert choose_cell_weight(ix.sign_scorer, ix.partition, X, st.main.coarse, st.main.offsets, **kw) is not None
    # an impossible gain: no weight qualifies
    assert choose_cell_weight(ix.sign_scorer, ix.partition, X, st.main.coarse, st.main.offsets,
                              min_gain=1.0, **kw) is None


def test_both_paths_score_the_prior_alike_with_pending_additions_and_after_reload(digits, bin64, tmp_path):
    n0 = 1200
    fast = CascadeIndex.build(bin64, bin64, digits["xb"], digits["ids"], config=_config())
    slow = CascadeIndex.build(bin64, bin64, digits["xb"], digits["ids"], config=_config(compiled=False))
    assert fast.cell_weight_ == slow.cell_weight_ is not None
    a, b = fast.search(digits["xq"], 10, return_stats=True), slow.search(digits["xq"], 10, return_stats=True)
    assert "coarse+fine" in a[2].seconds and "coarse+fine" not in b[2].seconds
    # equal fine scores at the shortlist's cut fall by each path's own order (a handful of the
    # 200 queries): ranks and scores agree elsewhere
    assert np.mean(a[1] == b[1]) >= 0.99
    assert np.mean(np.isclose(a[0], b[0], rtol=1e-4, atol=1e-5)) >= 0.99

    fast.save(tmp_path / "ix")
    loaded = CascadeIndex.load(tmp_path / "ix", mmap=True)
    assert loaded.cell_weight_ == fast.cell_weight_
    np.testing.assert_array_equal(loaded.search(digits["xq"], 10)[1], a[1])

    # items added later sit in the delta with their cells; the numpy path adds their prior too
    grown = CascadeIndex.build(bin64, bin64, digits["xb"][:n0], digits["ids"][:n0], config=_config())
    grown.cell_weight_ = fast.cell_weight_
    grown.add(digits["xb"][n0:], digits["ids"][n0:])
    st = grown._state
    rows = np.arange(st.main.n, st.n_rows)
    np.testing.assert_array_equal(grown._cells_of(st, rows), grown.partition.assign(digits["xb"][n0:]))
    pending = grown.search(digits["xq"], 30, exact_rerank=False)
    grown.compact()
    compacted = grown.search(digits["xq"], 30, exact_rerank=False)
    assert recall_at_k(compacted[1], pending[1], 30) >= 0.98
