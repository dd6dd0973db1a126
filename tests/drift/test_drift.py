"""Drift statistics and the retrain decision on real shifts and on random (null) splits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_digits

from mmcompress.data.catalog import ItemCatalog
from mmcompress.drift import (
    DriftThresholds,
    catalog_drift,
    drift_report,
    false_positive_rate,
    retrain_decision,
    temporal_split,
    write_drift_html,
)
from mmcompress.drift.statistics import code_entropy, mmd_permutation_test, psi, unpack_fields
from mmcompress.errors import CatalogError

RAW = Path(__file__).resolve().parents[2] / "data" / "raw" / "movielens"


@pytest.fixture(scope="module")
def movies() -> tuple[np.ndarray, pd.DataFrame, pd.DataFrame]:
    """Structured item features from movies.csv + ratings.csv and the items' attributes."""
    m = pd.read_csv(RAW / "movies.csv")
    r = pd.read_csv(RAW / "ratings.csv")
    genres = m["genres"].str.get_dummies("|").drop(columns=["(no genres listed)"])
    year = m["title"].str.extract(r"\((\d{4})\)\s*$")[0].astype(float)
    st = r.groupby("movieId").agg(n=("rating", "size"), mean=("rating", "mean"),
                                  first=("timestamp", "min")).reindex(m["movieId"])
    X = np.column_stack([
        genres.to_numpy(np.float32),
        ((year.fillna(year.median()) - 1990) / 20).to_numpy(),
        np.log1p(st["n"].fillna(0)).to_numpy() / 3,
        (st["mean"].fillna(3.0) - 3.0).to_numpy(),
    ]).astype(np.float32)
    attrs = pd.DataFrame({"item_id": m["movieId"], "year": year, "first_rating_ts": st["first"].to_numpy()})
    return X, attrs, genres


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    d = load_digits()
    X = d.data.astype(np.float32)
    return X / np.linalg.norm(X, axis=1, keepdims=True), d.target


def test_held_out_genres_are_flagged_and_a_random_split_is_not(movies):
    X, _, genres = movies
    block = genres[["Horror", "Documentary", "Animation"]].to_numpy().any(1)
    shifted = drift_report(X[~block], X[block], seed=0)
    assert shifted.retrain and shifted.mmd_pvalue < 0.05 and shifted.psi_max > 0.25
    perm = np.random.default_rng(0).permutation(len(X))
    same = drift_report(X[perm[:5000]], X[perm[5000:]], seed=0)
    assert not same.retrain, same.reasons
    assert same.mmd_pvalue > 0.05 and same.psi_max < 0.1 and same.mean_shift < 0.1
    assert shifted.mean_shift > 5 * same.mean_shift and shifted.psi_max > 10 * same.psi_max


def test_temporal_split_and_later_items_drift(movies):
    X, attrs, _ = movies
    ref, new = temporal_split(attrs, "2010-01-01")
    ts = attrs["first_rating_ts"].to_numpy()
    assert np.all(ts[ref] < 1262304000) and np.all(ts[new] >= 1262304000)
    assert len(ref) + len(new) == np.isfinite(ts).sum() < len(attrs)
    ref2, new2 = temporal_split(attrs, 1262304000)
    assert np.array_equal(ref, ref2) and np.array_equal(new, new2)
    rep = drift_report(X[ref], X[new], seed=0)
    assert rep.retrain and any("PSI" in r for r in rep.reasons)
    with pytest.raises(CatalogError, match="first_rating_ts"):
        temporal_split(attrs.drop(columns=["first_rating_ts"]), "2010-01-01")


def test_unseen_digit_classes_are_flagged(digits):
    X, y = digits
    rep = drift_report(X[y < 5], X[y >= 5], seed=0)
    assert rep.retrain and rep.mmd_pvalue < 0.05


def test_false_positive_rate_is_low(movies, digits):
    X, _, _ = movies
    sub = X[np.random.default_rng(1).choice(len(X), 800, replace=False)]
    assert false_positive_rate(sub, 10, permutations=50, seed=0) <= 0.1
    D, _ = digits
    assert false_positive_rate(D[:800], 10, permutations=50, seed=1) <= 0.1


def test_statistics_behave_under_null_and_shift():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((300, 4))
    B = rng.standard_normal((300, 4))
    assert psi(A, B).max() < 0.15
    assert psi(A, B + 1.0).min() > 0.5
    _, p_null, _ = mmd_permutation_test(A, B, permutations=100, seed=0)
    _, p_shift, _ = mmd_permutation_test(A, B + 0.5, permutations=100, seed=0)
    assert p_shift < 0.05 < p_null
    codes = np.stack([np.arange(256).repeat(2), np.zeros(512)], 1).astype(np.uint8)
    np.testing.assert_allclose(code_entropy(codes), [8.0, 0.0])
    fields = unpack_fields(codes, [4, 4, 6, 2])
    np.testing.assert_array_equal(fields[:, 0] * 16 + fields[:, 1], codes[:, 0])
    np.testing.assert_allclose(code_entropy(fields), [4.0, 4.0, 0.0, 0.0])


def test_codec_statistics_flag_items_the_codec_was_not_fitted_on(digits):
    from mmcompress.codecs import make_codec

    X, y = digits
    ref_mask = y < 5
    codec = make_codec("PQ8x4", metric="ip").fit(X[ref_mask])
    shifted = drift_report(X[ref_mask], X[~ref_mask], codec=codec, seed=0, permutations=20)
    assert shifted.recon_error_ratio > 1.5
    assert any("reconstruction error" in r for r in shifted.reasons)
    assert len(shifted.entropy_batch) == len(codec.field_bits) == len(shifted.entropy_reference) == 8

    idx = np.flatnonzero(ref_mask)
    np.random.default_rng(0).shuffle(idx)
    half = len(idx) // 2
    codec_half = make_codec("PQ8x4", metric="ip").fit(X[idx[:half]])
    no_floor = DriftThresholds(recall_floor=None)
    same = drift_report(X[idx[:half]], X[idx[half:]], codec=codec_half, seed=0, permutations=20,
                        thresholds=no_floor)
    assert same.recon_error_ratio < 1.5
    assert abs(same.recall_at_10_batch - same.recall_at_10_reference) < 0.1
    assert not same.retrain, same.reasons
    # a floor above what a 4-byte code reaches is reported on its own, with no shift reasons
    strict = DriftThresholds(recall_floor=0.9)
    floor = drift_report(X[idx[:half]], X[idx[half:]], codec=codec_half, seed=0, permutations=20,
                         thresholds=strict)
    assert floor.recall_at_10_batch < 0.9 and floor.reasons == [r for r in floor.reasons if "floor" in r] != []


def test_collapsed_codes_on_new_items_lower_entropy(digits):
    from mmcompress.codecs import make_codec

    X, y = digits
    codec = make_codec("PQ8x6", metric="ip").fit(X)
    # a batch of near-duplicates of one item uses few codewords
    batch = X[np.zeros(300, dtype=int)] + 1e-3 * np.random.default_rng(0).standard_normal((300, X.shape[1]))
    rep = drift_report(X, batch.astype(np.float32), codec=codec, seed=0, permutations=20,
                       thresholds=DriftThresholds(entropy_drop_bits=1.0))
    assert rep.entropy_drop > 2.0
    assert any("entropy" in r for r in rep.reasons)


def test_report_is_json_and_html(movies, tmp_path):
    X, attrs, genres = movies
    block = genres["Horror"].to_numpy().astype(bool)
    rep = drift_report(X[~block], X[block], modality="structured", permutations=20)
    d = rep.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["retrain"] is True and d["reasons"] and "projection_reference" not in d
    assert d["thresholds"]["psi_threshold"] == 0.25
    path = write_drift_html(tmp_path / "report.html", {"structured": rep})
    html = path.read_text()
    assert "RETRAIN" in html and html.count("data:image/png;base64,") == 1 and "PSI" in html


def test_thresholds_from_params_and_disabled_checks(movies):
    t = DriftThresholds.from_params({"psi_threshold": 0.3, "mmd_threshold": 0.01, "cutoff": "2010-01-01",
                                     "recall_floor": None})
    assert t.psi_threshold == 0.3 and t.mmd_threshold == 0.01 and t.recall_floor is None
    X, _, genres = movies
    block = genres["Horror"].to_numpy().astype(bool)
    off = DriftThresholds(psi_threshold=None, mmd_threshold=None, mean_shift_threshold=None,
                          cov_shift_threshold=None)
    assert not drift_report(X[~block], X[block], thresholds=off, permutations=10).retrain


def test_catalog_drift_uses_present_rows(movies):
    X, attrs, genres = movies
    n = 2000
    mask = np.ones(n, dtype=bool)
    mask[::3] = False
    cat = ItemCatalog(attrs["item_id"].to_numpy()[:n], {"structured": X[:n], "other": X[:n, :5].copy()},
                      {"structured": np.ones(n, dtype=bool), "other": mask}, attrs.iloc[:n])
    ref, new = np.arange(0, 1500), np.arange(1500, n)
    reports = catalog_drift(cat, ref, new, permutations=20)
    assert set(reports) == {"structured", "other"}
    assert reports["other"].n_reference == mask[ref].sum() and reports["other"].n_batch == mask[new].sum()
    retrain, reasons = retrain_decision(reports)
    assert retrain == any(r.retrain for r in reports.values())
    assert all(r.split(":")[0] in reports for r in reasons)
