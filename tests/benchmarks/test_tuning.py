"""The serving benchmark's pick rule: the target must clear the tuning mean by its margin."""

import numpy as np
import pytest

from benchmarks.tuning import per_query_recall, qualifies, recall_lower_bound


def test_per_query_recall_counts_true_neighbours_and_ignores_padding():
    truth = np.array([[1, 2, 3, 4], [5, 6, 7, -1]])
    found = np.array([[4, 3, 9, -1], [-1, 7, 5, 6]])
    np.testing.assert_allclose(per_query_recall(truth, found, k=4), [0.5, 1.0])
    with pytest.raises(ValueError, match="queries"):
        per_query_recall(truth, found[:1], k=4)


def test_a_mean_just_above_the_target_does_not_qualify_on_few_queries():
    rng = np.random.default_rng(0)
    # 500 queries, recall 0.951 on average with the spread real tuning queries show (std ~0.1)
    per_query = np.clip(rng.normal(0.951, 0.1, 500), 0, 1)
    per_query += 0.951 - per_query.mean()
    assert per_query.mean() >= 0.95
    assert not qualifies(per_query, 0.95)
    se = per_query.std(ddof=1) / np.sqrt(500)
    assert recall_lower_bound(per_query) == pytest.approx(0.951 - se)
    assert qualifies(per_query + 2 * se, 0.95)
    # the same mean on many more queries is precise enough
    many = np.tile(per_query, 100)
    assert qualifies(many, 0.95)


def test_identical_recalls_need_no_margin():
    assert qualifies(np.full(50, 0.95), 0.95)
    assert recall_lower_bound(np.array([0.9])) == pytest.approx(0.9)
