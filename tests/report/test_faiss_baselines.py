"""faiss index_factory baselines measured against the same exact ground truth as the codecs."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from mmcompress.evaluation.faiss_baselines import default_factory_strings, evaluate_faiss_baselines
from mmcompress.evaluation.metrics import exact_topk


@pytest.fixture(scope="module")
def digits():
    X = load_digits().data.astype(np.float32)
    X -= X.mean(0)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    xb, xq = X[:1500], X[1500:1700]
    _, I_true = exact_topk(xb, xq, 10, "ip")
    return xb, xq, I_true


def test_sizes_order_and_recall_follow_the_code_size(digits):
    xb, xq, I_true = digits
    specs = ("SQ8", "PQ4x8", "PQ16x8", "PQ7x8", "NotAnIndex")
    out = evaluate_faiss_baselines(xb, xq, I_true, specs, max_train_rows=1000)
    assert [r["spec"] for r in out] == list(specs)
    by = {r["spec"]: r for r in out}
    assert by["SQ8"]["bytes_per_item"] == 64 and by["PQ4x8"]["bytes_per_item"] == 4
    assert by["PQ16x8"]["bytes_per_item"] == 16
    assert by["SQ8"]["recall_at_10"] > 0.95
    assert by["PQ4x8"]["recall_at_10"] < by["PQ16x8"]["recall_at_10"] < by["SQ8"]["recall_at_10"]
    assert all(0.0 <= r["one_recall_at_1"] <= 1.0 and r["train_rows"] == 1000 for r in out if "skipped" not in r)
    assert "multiple" in by["PQ7x8"]["skipped"] and "parse" in by["NotAnIndex"]["skipped"]
    assert all(r["source"] == "faiss" for r in out)


def test_inner_product_rq_and_opq_are_deterministic(digits):
    xb, xq, I_true = digits
    a = evaluate_faiss_baselines(xb, xq, I_true, ("OPQ4,PQ4x8", "RQ2x8"), max_train_rows=600)
    b = evaluate_faiss_baselines(xb, xq, I_true, ("OPQ4,PQ4x8", "RQ2x8"), max_train_rows=600)
    assert [r["recall_at_10"] for r in a] == [r["recall_at_10"] for r in b]
    assert [r["bytes_per_item"] for r in a] == [4, 2]
    assert all(0.2 < r["recall_at_10"] < 1.0 for r in a)


def test_ground_truth_must_cover_k(digits):
    xb, xq, I_true = digits
    with pytest.raises(AssertionError):
        evaluate_faiss_baselines(xb, xq, I_true[:, :5], ("SQ8",))


@pytest.mark.parametrize("d", [64, 80, 426])
def test_default_strings_build_for_any_dimension(d):
    import faiss

    specs = default_factory_strings(d)
    assert len(specs) == 8
    sizes = [faiss.index_factory(d, s, faiss.METRIC_INNER_PRODUCT).sa_code_size() for s in specs]
    assert sizes == [8, 8, 8, 16, 16, 16, (d + 1) // 2, d]


def test_fewer_rows_than_dimensions_skip_rotations_and_train_rq_plainly():
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((150, 160)).astype(np.float32)
    xq = rng.standard_normal((20, 160)).astype(np.float32)
    _, I_true = exact_topk(xb, xq, 10, "ip")
    out = evaluate_faiss_baselines(xb, xq, I_true, ("OPQ4_160,PQ4x8", "PCA64,SQ8", "RQ2x6"))
    assert "training rows" in out[0]["skipped"] and "training rows" in out[1]["skipped"]
    assert out[2]["bytes_per_item"] == 2 and 0.0 < out[2]["recall_at_10"] <= 1.0
