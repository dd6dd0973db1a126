"""Downstream HR@10 / nDCG@10 on the real MovieLens ratings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.sparse.linalg import svds

from mmcompress.errors import CatalogError
from mmcompress.evaluation.downstream import (
    ACTIVITY_SEGMENTS,
    POPULARITY_BUCKETS,
    downstream_metrics,
    exact_search_fn,
    make_holdout,
    popularity_buckets,
)

RAW = Path(__file__).resolve().parents[2] / "data" / "raw" / "movielens"


@pytest.fixture(scope="module")
def ratings() -> pd.DataFrame:
    return pd.read_csv(RAW / "ratings.csv")


@pytest.fixture(scope="module")
def item_ids() -> np.ndarray:
    return pd.read_csv(RAW / "movies.csv")["movieId"].to_numpy()


@pytest.fixture(scope="module")
def holdout(ratings, item_ids):
    return make_holdout(ratings, item_ids, like_threshold=4.0, holdout_per_user=1, history=20, seed=0)


@pytest.fixture(scope="module")
def cf_vectors(holdout) -> np.ndarray:
    """Item factors from the training interactions only (held-out items left out)."""
    users = np.repeat(np.arange(holdout.n_users), holdout.seen_counts)
    A = sp.csr_matrix((np.ones(len(users)), (users, holdout.seen_rows)),
                      shape=(holdout.n_users, holdout.n_items))
    _, s, vt = svds(A, k=32, random_state=0)
    V = (vt.T * s).astype(np.float32)
    return V / np.maximum(np.linalg.norm(V, axis=1, keepdims=True), 1e-9)


def test_holdout_takes_each_users_latest_liked_item(holdout, ratings, item_ids):
    r = ratings[ratings["movieId"].isin(item_ids)]
    liked = r[r["rating"] >= 4.0]
    counts = liked.groupby("userId").size()
    assert set(holdout.user_ids) == set(counts.index[counts >= 2])
    row_of = {int(m): i for i, m in enumerate(item_ids)}
    for u_idx in range(0, holdout.n_users, 37):
        u = holdout.user_ids[u_idx]
        mine = liked[liked["userId"] == u]
        latest_ts = mine["timestamp"].max()
        target_item = item_ids[holdout.target_rows[u_idx, 0]]
        assert mine.loc[mine["movieId"] == target_item, "timestamp"].iloc[0] == latest_ts
        hist = holdout.history_rows[u_idx][holdout.history_rows[u_idx] >= 0]
        assert 1 <= len(hist) <= 20 and holdout.target_rows[u_idx, 0] not in hist
        liked_rows = {row_of[int(m)] for m in mine["movieId"]}
        assert set(hist) <= liked_rows
        seen = holdout.seen_rows[holdout.seen_indptr[u_idx]:holdout.seen_indptr[u_idx + 1]]
        rated = {row_of[int(m)] for m in r.loc[r["userId"] == u, "movieId"]}
        assert set(seen) == rated - {holdout.target_rows[u_idx, 0]}


def test_holdout_take_keeps_each_users_rows(holdout):
    users = np.array([5, 0, 17])
    sub = holdout.take(users)
    for i, u in enumerate(users):
        assert sub.user_ids[i] == holdout.user_ids[u]
        assert np.array_equal(sub.seen_rows[sub.seen_indptr[i]:sub.seen_indptr[i + 1]],
                              holdout.seen_rows[holdout.seen_indptr[u]:holdout.seen_indptr[u + 1]])
        assert np.array_equal(sub.history_rows[i], holdout.history_rows[u])


def test_holdout_segments_and_buckets(holdout):
    seg_sizes = [int((holdout.user_segment == s).sum()) for s in ACTIVITY_SEGMENTS]
    assert sum(seg_sizes) == holdout.n_users and min(seg_sizes) > 0.25 * holdout.n_users
    light = holdout.user_segment == "light"
    heavy = holdout.user_segment == "heavy"
    assert holdout.seen_counts[light].max() < np.median(holdout.seen_counts[heavy])
    buckets = popularity_buckets(holdout.item_rating_count)
    head, tail = holdout.item_rating_count[buckets == "head"], holdout.item_rating_count[buckets == "tail"]
    assert head.min() >= tail.max()
    share = {b: holdout.item_rating_count[buckets == b].sum() / holdout.item_rating_count.sum()
             for b in POPULARITY_BUCKETS}
    assert 0.15 < share["head"] < 0.3 and 0.1 < share["tail"] < 0.3


def test_make_holdout_rejects_bad_input(ratings, item_ids):
    with pytest.raises(CatalogError, match="timestamp"):
        make_holdout(ratings.drop(columns=["timestamp"]), item_ids)
    with pytest.raises(CatalogError, match="no rating"):
        make_holdout(ratings, np.array([10**9]))


def _naive_metrics(holdout, X, k, aggregate):
    """Dense scores of every item for every user, seen items masked, full sort."""
    XT = np.ascontiguousarray(X.T, dtype=np.float64)
    hits, gains = [], []
    for start in range(0, holdout.n_users, 64):
        users = range(start, min(start + 64, holdout.n_users))
        hists = [holdout.history_rows[u][holdout.history_rows[u] >= 0] for u in users]
        S = X[np.concatenate(hists)].astype(np.float64) @ XT
        bounds = np.cumsum([0] + [len(h) for h in hists])
        for i, u in enumerate(users):
            block = S[bounds[i]:bounds[i + 1]]
            score = block.mean(0) if aggregate == "mean" else block.max(0)
            score[holdout.seen_rows[holdout.seen_indptr[u]:holdout.seen_indptr[u + 1]]] = -np.inf
            top = np.argsort(-score, kind="stable")[:k]
            rank = np.flatnonzero(top == holdout.target_rows[u, 0])
            hits.append(len(rank) > 0)
            gains.append(1 / np.log2(rank[0] + 2) if len(rank) else 0.0)
    return np.mean(hits), np.mean(gains)


@pytest.mark.parametrize("aggregate", ["mean", "max"])
def test_downstream_matches_naive_loop(holdout, cf_vectors, aggregate):
    sample = holdout.take(np.arange(0, holdout.n_users, 3))
    res = downstream_metrics(sample, cf_vectors, k=10, aggregate=aggregate)
    hr, ndcg = _naive_metrics(sample, cf_vectors, 10, aggregate)
    assert res["hr_at_10"] == pytest.approx(hr, abs=1 / sample.n_users)
    assert res["ndcg_at_10"] == pytest.approx(ndcg, abs=1 / sample.n_users)
    assert res["n_events"] == sample.n_users
    res = downstream_metrics(holdout, cf_vectors, k=10, aggregate=aggregate)
    assert res["n_events"] == holdout.n_users
    assert sum(v["n_events"] for v in res["by_activity"].values()) == res["n_events"]
    assert sum(v["n_events"] for v in res["by_popularity"].values()) == res["n_events"]


def test_collaborative_vectors_beat_random(holdout, cf_vectors):
    cf = downstream_metrics(holdout, cf_vectors)
    rnd = downstream_metrics(holdout, np.random.default_rng(0).standard_normal(cf_vectors.shape).astype(np.float32))
    assert cf["hr_at_10"] > 0.04 and cf["hr_at_10"] > 4 * max(rnd["hr_at_10"], 0.005)
    assert cf["ndcg_at_10"] <= cf["hr_at_10"]


def test_compressed_search_is_evaluated_the_same_way(holdout, cf_vectors):
    from mmcompress.codecs import make_codec

    exact = downstream_metrics(holdout, cf_vectors)
    via_fn = downstream_metrics(holdout, cf_vectors, search_fn=exact_search_fn(cf_vectors))
    assert via_fn == exact
    codec = make_codec("SQ8", metric="ip").fit(cf_vectors)
    codes = codec.encode(cf_vectors)
    sq8 = downstream_metrics(holdout, cf_vectors, search_fn=lambda q, k: codec.search(codes, q, k))
    assert abs(sq8["hr_at_10"] - exact["hr_at_10"]) <= 0.02
    coarse = make_codec("PQ2x4", metric="ip").fit(cf_vectors)
    ccodes = coarse.encode(cf_vectors)
    pq = downstream_metrics(holdout, cf_vectors, search_fn=lambda q, k: coarse.search(ccodes, q, k))
    assert pq["hr_at_10"] < exact["hr_at_10"]
