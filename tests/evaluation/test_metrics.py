"""Search-quality metrics against straightforward reference implementations, on real vectors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import kendalltau
from sklearn.datasets import load_digits
from sklearn.metrics import ndcg_score

from mmcompress.evaluation.metrics import (
    bytes_per_item,
    compression_ratio,
    evaluate_codec,
    exact_topk,
    flatten_metrics,
    match_positions,
    ndcg_at_k,
    one_recall_at_1,
    rank_stability,
    recall_at_k,
    reconstruction_mse,
    time_call,
)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    X = load_digits().data.astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X[:1500], X[1500:1700]


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_exact_topk_matches_brute_force(digits, metric):
    xb, xq = digits
    D, ids = exact_topk(xb, xq, 10, metric)
    S = xq @ xb.T if metric == "ip" else -((xq[:, None, :] - xb[None]) ** 2).sum(-1)
    ref = np.argsort(-S, axis=1, kind="stable")[:, :10]
    # compare scores (ties may order differently), and ids where scores are distinct
    np.testing.assert_allclose(D, np.take_along_axis(S, ref, 1), rtol=1e-4, atol=1e-4)
    assert (ids == ref).mean() > 0.99
    assert np.all(np.diff(D, axis=1) <= 1e-6)


def test_exact_topk_clamps_k_to_base_size(digits):
    xb, xq = digits
    _, ids = exact_topk(xb[:5], xq[:3], 50)
    assert ids.shape == (3, 5) and sorted(ids[0]) == list(range(5))


def _recall_ref(I_true, I_pred, k):
    return np.mean([len(set(t[:k]) & set(p[:k])) / k for t, p in zip(I_true, I_pred, strict=True)])


ids_rows = st.integers(1, 6).flatmap(lambda nq: st.lists(
    st.tuples(st.permutations(list(range(30))), st.permutations(list(range(30)))), min_size=nq, max_size=nq))


@settings(max_examples=60, deadline=None)
@given(rows=ids_rows, k=st.integers(1, 12))
def test_recall_matches_set_reference(rows, k):
    I_true = np.array([r[0][:12] for r in rows])
    I_pred = np.array([r[1][:12] for r in rows])
    assert recall_at_k(I_true, I_pred, k) == pytest.approx(_recall_ref(I_true, I_pred, k))
    expected_1r = np.mean([t[0] in p[:k] for t, p in zip(I_true, I_pred, strict=True)])
    assert one_recall_at_1(I_true, I_pred, k) == pytest.approx(expected_1r)
    pos = match_positions(I_true, I_pred)
    for i in range(len(rows)):
        for j in range(I_pred.shape[1]):
            hit = np.flatnonzero(I_true[i] == I_pred[i, j])
            assert pos[i, j] == (hit[0] if len(hit) else -1)


def test_missing_results_never_match():
    I_true = np.array([[3, 1, 2]])
    I_pred = np.array([[3, -1, -1]])
    assert recall_at_k(I_true, I_pred, 3) == pytest.approx(1 / 3)
    assert match_positions(np.array([[-1, 4]]), np.array([[-1, 4]])).tolist() == [[-1, 1]]


def test_ndcg_matches_sklearn(digits):
    xb, xq = digits
    rng = np.random.default_rng(0)
    D, I_true = exact_topk(xb, xq, 20)
    noisy = xq + 0.05 * rng.standard_normal(xq.shape).astype(np.float32)
    _, I_pred = exact_topk(xb, noisy, 10)
    rel = np.maximum(D, 0)
    dense_true = np.zeros((len(xq), len(xb)))
    np.put_along_axis(dense_true, I_true, rel, 1)
    dense_score = np.zeros((len(xq), len(xb)))
    np.put_along_axis(dense_score, I_pred, np.arange(10, 0, -1, dtype=float), 1)
    # sklearn breaks ties among unranked items by averaging; those items are all irrelevant or
    # outside the top 10, so only the ranked ones count
    expected = np.mean([ndcg_score(dense_true[i:i + 1], dense_score[i:i + 1], k=10) for i in range(len(xq))])
    assert ndcg_at_k(I_true, rel, I_pred, 10) == pytest.approx(expected, rel=1e-9)
    assert ndcg_at_k(I_true, rel, I_true, 10) == pytest.approx(1.0)
    assert ndcg_at_k(I_true, None, I_pred, 10) <= 1.0


def test_rank_stability_matches_scipy_kendall(digits):
    xb, xq = digits
    rng = np.random.default_rng(1)
    _, I_true = exact_topk(xb, xq, 50)
    _, I_pred = exact_topk(xb, xq + 0.05 * rng.standard_normal(xq.shape).astype(np.float32), 50)
    taus = []
    for t, p in zip(I_true, I_pred, strict=True):
        shared = [x for x in p if x in set(t)]
        if len(shared) >= 2:
            taus.append(kendalltau([list(t).index(x) for x in shared], range(len(shared))).statistic)
    assert rank_stability(I_true, I_pred, 50) == pytest.approx(np.mean(taus))
    assert rank_stability(I_true, I_true, 50) == pytest.approx(1.0)
    assert rank_stability(I_true, I_true[:, ::-1], 50) == pytest.approx(-1.0)


def test_size_and_error_measures(digits):
    xb, _ = digits
    assert reconstruction_mse(xb, xb) == 0
    noise = np.full_like(xb, 0.1)
    assert reconstruction_mse(xb, xb + noise) == pytest.approx(0.01 * xb.shape[1], rel=1e-5)
    assert reconstruction_mse(xb, np.zeros_like(xb), relative=True) == pytest.approx(1.0, rel=1e-5)
    assert compression_ratio(384, 16) == 96
    assert bytes_per_item(16, n_items=1000, shared_bytes=4000, id_bytes=8) == 28


def test_time_call_reports_median():
    calls = []
    t = time_call(lambda: calls.append(1), n_items=10, repeats=3, warmup=2)
    assert len(calls) == 5 and t.repeats == 3 and t.min_s <= t.median_s <= t.max_s
    assert set(t.to_dict()) >= {"median_s", "items_per_s", "per_item_ms"}


def test_evaluate_codec_ranks_codecs_by_fidelity(digits):
    from mmcompress.codecs import make_codec

    xb, xq = digits
    fine = make_codec("SQ8", metric="ip").fit(xb)
    coarse = make_codec("PQ4x4", metric="ip").fit(xb)
    m_fine = evaluate_codec(fine, xb, xq, ks=(1, 10, 50))
    m_coarse = evaluate_codec(coarse, xb, xq, ks=(1, 10, 50))
    for key in ("recall_at_1", "recall_at_10", "one_recall_at_1", "ndcg_at_10", "rank_stability_at_50",
                "mse", "relative_mse", "bytes_per_item", "compression_ratio"):
        assert key in m_fine and key in m_coarse
    assert m_fine["recall_at_10"] > 0.9 > m_coarse["recall_at_10"]
    assert m_fine["mse"] < m_coarse["mse"]
    assert m_coarse["compression_ratio"] == 64 * 4 / coarse.code_size
    assert m_fine["spec"] == "SQ8"
    flat = flatten_metrics({"a": m_fine, "n": {"b": 1}})
    assert "spec" not in flat and flat["n/b"] == 1.0 and flat["a/recall_at_10"] == m_fine["recall_at_10"]
