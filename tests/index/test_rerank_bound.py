"""The exact stage read in two waves: the calibrated bound, the reranker that uses it, and the
cascade that fits, saves and applies it (real digits vectors)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmcompress.errors import ArtifactError, CodecError
from mmcompress.evaluation.metrics import recall_at_k
from mmcompress.index import CascadeConfig, CascadeIndex, exact_rerank
from mmcompress.index.rerankbound import (
    LEVELS,
    RerankBound,
    calibrate_rerank_bound,
    fit_rerank_bound,
)
from mmcompress.index.rowstore import MemoryRowReader, ReadCounts, open_row_store, write_rows

SECTION = {"coarse": {"codec": "BIN64", "shortlist": 200}, "fine": {"codec": "coarse", "shortlist": 60}}


def test_fit_recovers_a_linear_relation_and_its_noise_quantiles():
    rng = np.random.default_rng(0)
    e = rng.normal(size=(400, 50))
    noise = rng.normal(scale=0.1, size=e.shape)
    b = fit_rerank_bound(e, 2.0 * e + 0.5 + noise)
    assert b.slope == pytest.approx(2.0, abs=0.01) and b.intercept == pytest.approx(0.5, abs=0.01)
    assert b.margin(0.5) == pytest.approx(0.0, abs=0.01)
    assert b.margin(0.99) == pytest.approx(0.1 * 2.326, rel=0.05)  # the normal's 99th percentile
    assert b.margin(0.97) < b.margin(0.99) < b.margin(1.0) == pytest.approx(np.abs(noise).max(), rel=0.2)
    e[0, :3] = np.nan  # padding is ignored, not fitted
    assert fit_rerank_bound(e, 2.0 * e + 0.5 + noise).pairs == e.size - 3
    assert fit_rerank_bound(e[:2, :5], e[:2, :5]) is None  # too few pairs to fit
    assert RerankBound.from_dict(b.to_dict()) == b


@pytest.mark.parametrize("bad", [0.4, 1.5, True, "0.9"])
def test_a_confidence_outside_the_fitted_levels_is_refused(bad):
    b = RerankBound(1.0, 0.0, tuple(np.linspace(0, 1, len(LEVELS))), 1000)
    with pytest.raises(CodecError, match="confidence"):
        b.margin(bad)


def test_a_tampered_bound_is_refused():
    d = RerankBound(1.0, 0.0, tuple(np.linspace(0, 1, len(LEVELS))), 1000).to_dict()
    with pytest.raises(CodecError, match="non-decreasing"):
        RerankBound.from_dict({**d, "margins": d["margins"][::-1]})
    with pytest.raises(CodecError, match="levels"):
        RerankBound.from_dict({**d, "levels": d["levels"][1:]})


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), first=st.integers(1, 30), keep=st.integers(1, 10),
       metric=st.sampled_from(["ip", "l2"]))
def test_at_full_confidence_two_waves_find_what_one_wave_finds(seed, first, keep, metric):
    """A bound fitted on the very pairs it is applied to, at confidence 1.0 (the largest
    residual), never skips a row that would enter the top k: both waves' answer is the
    one-wave answer, and no more rows are scored."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(300, 12)).astype(np.float32)
    Q = rng.normal(size=(8, 12)).astype(np.float32)
    rows = np.stack([rng.choice(300, 40, replace=False) for _ in Q])
    rows[0, 35:] = -1  # padding
    exact = np.einsum("qd,qsd->qs", Q, X[rows])
    if metric == "l2":
        exact = 2 * exact - (X[rows] ** 2).sum(axis=2) - (Q * Q).sum(axis=1)[:, None]
    est = (exact + rng.normal(scale=0.5, size=exact.shape)).astype(np.float32)
    bound = fit_rerank_bound(np.where(rows >= 0, est, np.nan), np.where(rows >= 0, exact, np.nan))
    reader = MemoryRowReader.from_array(X)
    one = exact_rerank(reader, Q, rows, keep, metric)
    counts = ReadCounts()
    two = exact_rerank(reader, Q, rows, keep, metric, estimates=est, bound=bound, first_wave=first,
                       confidence=1.0, counts=counts)
    np.testing.assert_array_equal(two[0], one[0])
    np.testing.assert_allclose(two[1], one[1], rtol=1e-5)
    assert counts.scored <= int((rows >= 0).sum())


def _noisy_shortlists_on_disk(path, seed: int, nq: int):
    """Queries, their 80 best rows of a 20,000-row store on disk (2 rows a page: few pages shared
    by queries), exact scores, estimates with noise, the bound fitted on them, and a reader."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(20_000, 384)).astype(np.float32)
    Q = rng.normal(size=(nq, 384)).astype(np.float32)
    rows = np.argsort(-(Q @ X.T), axis=1)[:, :80]
    exact = np.take_along_axis(Q @ X.T, rows, axis=1)
    est = exact + rng.normal(scale=3.0, size=exact.shape).astype(np.float32)
    write_rows(path, X)
    return Q, rows, exact, est, fit_rerank_bound(est, exact), open_row_store(path, reader="pread")


def test_two_waves_read_fewer_pages_from_disk_and_skip_only_rows_below_the_bound(tmp_path):
    Q, rows, exact, est, bound, reader = _noisy_shortlists_on_disk(tmp_path / "x.rows", 1, 20)
    one, c1 = ReadCounts(), ReadCounts()
    want = exact_rerank(reader, Q, rows, 10, counts=one)
    got = exact_rerank(reader, Q, rows, 10, estimates=est, bound=bound, first_wave=20, confidence=0.9, counts=c1)
    reader.close()
    assert one.scored == 20 * 80 and c1.scored < 0.75 * one.scored
    assert c1.pages_read < 0.8 * one.pages_read
    assert recall_at_k(want[0], got[0], 10) >= 0.9
    # the first wave: the 20 best-estimated rows and those whose bound reaches the predicted 10th
    # best score, up to a read's worth (64 rows); what the second wave skipped was below the
    # first wave's 10th best exact score
    order = np.argsort(-est, axis=1, kind="stable")
    e, x, r = (np.take_along_axis(a, order, axis=1) for a in (est, exact, rows))
    upper = bound.upper(e, 0.9)
    in_first = upper >= np.sort(bound.upper(e, 0.5), axis=1)[:, -10:-9]
    in_first[:, reader.rows_per_read:] = False
    in_first[:, :20] = True
    assert (in_first.sum(axis=1) > 20).any()
    kth = np.sort(np.where(in_first, x, -np.inf), axis=1)[:, -10]
    skipped = ~in_first & (upper < kth[:, None])
    assert skipped.any()
    for i in range(len(Q)):
        dropped = set(r[i][skipped[i]])
        assert not dropped & set(got[0][i]) and not dropped & set(r[i][in_first[i]])


def test_the_first_wave_leaves_most_queries_a_single_round_of_reads(tmp_path):
    Q, rows, exact, est, bound, reader = _noisy_shortlists_on_disk(tmp_path / "x.rows", 2, 40)
    single = ReadCounts()
    rounds = []
    for i in range(len(Q)):
        calls = reader.stats()["calls"]
        exact_rerank(reader, Q[i:i + 1], rows[i:i + 1], 10, estimates=est[i:i + 1], bound=bound,
                     first_wave=10, confidence=0.95, counts=single)
        rounds.append(reader.stats()["calls"] - calls)
    reader.close()
    # a first wave of the 10 best-estimated rows alone leaves nearly every query a second round
    order = np.argsort(-est, axis=1, kind="stable")
    e, x = np.take_along_axis(est, order, axis=1), np.take_along_axis(exact, order, axis=1)
    kth10 = np.sort(x[:, :10], axis=1)[:, -10]
    assert np.mean((bound.upper(e[:, 10:], 0.95) >= kth10[:, None]).any(axis=1)) > 0.9
    assert np.mean(np.array(rounds) == 1) >= 0.6
    assert single.scored < 0.75 * 40 * 80


def test_a_first_wave_longer_than_one_read_leaves_the_rest_to_the_second(tmp_path):
    """Where the bound admits more rows than one read holds (``rows_per_read``), a single
    query's first read takes that many and the second wave the rest that still matter, so no
    read maps a buffer larger than the reader keeps; at full confidence nothing is lost."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(20_000, 384)).astype(np.float32)
    Q = rng.normal(size=(6, 384)).astype(np.float32)
    rows = np.argsort(-(Q @ X.T), axis=1)[:, :160]  # long shortlists, noisy estimates: wide first waves
    exact = np.take_along_axis(Q @ X.T, rows, axis=1)
    est = exact + rng.normal(scale=6.0, size=exact.shape).astype(np.float32)
    bound = fit_rerank_bound(est, exact)
    write_rows(tmp_path / "x.rows", X)
    reader = open_row_store(tmp_path / "x.rows", reader="pread")
    e = np.sort(est, axis=1)[:, ::-1]
    admitted = (bound.upper(e, 1.0) >= np.sort(bound.upper(e, 0.5), axis=1)[:, -10:-9]).sum(axis=1)
    assert admitted.max() > reader.rows_per_read  # the bound alone would read more at once
    want = exact_rerank(reader, Q, rows, 10)
    asked: list[int] = []
    read = reader.read
    reader.read = lambda rr, **kw: asked.append(len(rr)) or read(rr, **kw)
    for i in range(len(Q)):
        got = exact_rerank(reader, Q[i:i + 1], rows[i:i + 1], 10, estimates=est[i:i + 1], bound=bound,
                           first_wave=10, confidence=1.0)
        np.testing.assert_array_equal(got[0], want[0][i:i + 1])
    reader.close()
    assert max(asked) <= reader.rows_per_read == 64 and len(asked) > len(Q)  # second waves ran


def test_two_waves_need_estimates_and_a_bound():
    reader = MemoryRowReader.from_array(np.eye(40, dtype=np.float32))
    rows = np.arange(30)[None, :]
    with pytest.raises(CodecError, match="estimates"):
        exact_rerank(reader, np.eye(40, dtype=np.float32)[:1], rows, 5, first_wave=10)


@pytest.fixture(scope="module")
def built(digits):
    from mmcompress.codecs import make_codec

    codec = make_codec("BIN64").fit(digits["xb"])
    return CascadeIndex.build(codec, codec, digits["xb"], digits["ids"], config=CascadeConfig.from_params(SECTION))


def test_the_cascade_fits_a_bound_at_build_that_holds_on_held_out_queries(built, digits):
    b = built.rerank_bound_
    assert b is not None and b.pairs > 10_000 and 0.5 < b.slope < 1.5
    assert built.total_stats.n_queries == 0  # the calibration's searches are not counted as served
    # the calibration: sample items as queries, their own item left out
    redo = calibrate_rerank_bound(lambda Q, s: built.search(Q, s, exact_rerank=False), digits["xb"], digits["ids"],
                                  depth=120)
    assert redo == b
    # on held-out queries the exact score exceeds the bound about as often as the level says
    est, found = built.search(digits["xq"], 60, exact_rerank=False)
    pos = {int(i): r for r, i in enumerate(digits["ids"])}
    V = digits["xb"][np.vectorize(pos.get)(found)]
    exact = np.einsum("qd,qsd->qs", digits["xq"], V)
    for c, lo, hi in ((0.9, 0.04, 0.2), (0.99, 0.0, 0.03)):
        assert lo <= (exact > b.upper(est, c)).mean() <= hi


def test_the_cascade_reads_fewer_rows_in_two_waves_and_loses_nothing_at_full_confidence(built, digits):
    one = built.search(digits["xq"], 10, return_stats=True)
    two = built.search(digits["xq"], 10, first_wave=16, confidence=0.9, return_stats=True)
    full = built.search(digits["xq"], 10, first_wave=16, confidence=1.0, return_stats=True)
    r1, r2, r3 = (recall_at_k(digits["truth"], r[1], 10) for r in (one, two, full))
    assert one[2].exact_reranked == 60 and two[2].exact_reranked < 0.9 * 60
    assert r1 > 0.9 and r2 >= r1 - 0.06 and r3 >= r1 - 0.002
    assert two[2].disk_bytes == pytest.approx(two[2].exact_reranked * 64 * 4)


def test_the_bound_is_saved_and_a_bad_one_is_refused(built, digits, tmp_path):
    built.save(tmp_path / "ix")
    loaded = CascadeIndex.load(tmp_path / "ix", exact_reader="direct")
    assert loaded.rerank_bound_ == built.rerank_bound_
    got = loaded.search(digits["xq"], 10, first_wave=16, confidence=0.95)
    want = built.search(digits["xq"], 10, first_wave=16, confidence=0.95)
    np.testing.assert_array_equal(got[1], want[1])
    path = tmp_path / "ix" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["rerank_bound"]["margins"] = manifest["rerank_bound"]["margins"][::-1]
    path.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="rerank_bound"):
        CascadeIndex.load(tmp_path / "ix")


def test_an_index_without_a_bound_refuses_two_waves_by_name(built, digits, tmp_path):
    built.save(tmp_path / "ix")
    path = tmp_path / "ix" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["format_version"], manifest["rerank_bound"] = 3, None  # saved before the bound existed
    path.write_text(json.dumps(manifest))
    old = CascadeIndex.load(tmp_path / "ix")
    np.testing.assert_array_equal(old.search(digits["xq"], 10)[1], built.search(digits["xq"], 10)[1])
    with pytest.raises(CodecError, match="first_wave > 0 needs the rerank bound"):
        old.search(digits["xq"], 10, first_wave=16)


@pytest.mark.parametrize("key,value,match", [("first_wave", -1, "first_wave"), ("first_wave", 2.5, "first_wave"),
                                             ("confidence", 0.3, "confidence"), ("confidence", "high", "confidence")])
def test_params_refuse_a_bad_two_wave_setting_by_key(key, value, match):
    with pytest.raises(CodecError, match=f"index.exact.{match}"):
        CascadeConfig.from_params({**SECTION, "exact": {key: value}})
