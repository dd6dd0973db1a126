"""Downstream recommendation quality of item vectors on held-out MovieLens ratings.

For every user the latest liked items (rating >= ``like_threshold``, by timestamp) are held out.
The user's query is built from the vectors of their earlier liked items; items the user already
rated are excluded; each held-out item scores HR@k (it is in the top ``k``) and nDCG@k
(``1 / log2(rank + 2)``). Results come overall, by user activity (rating-count tertiles) and by
the held-out item's popularity (head / torso / tail by share of all ratings).

The candidate search is pluggable (``search_fn``) so the same function measures exact float
vectors and a compressed codec answering from its codes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mmcompress.errors import CatalogError

SearchFn = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]
ACTIVITY_SEGMENTS = ("light", "medium", "heavy")
POPULARITY_BUCKETS = ("head", "torso", "tail")
RATINGS_COLUMNS = ("userId", "movieId", "rating", "timestamp")


@dataclass
class Holdout:
    """Per-user held-out items, query history and already-seen items, as catalog row indices.

    ``history_rows`` is padded with -1 (most recent last). ``seen_rows[seen_indptr[u]:
    seen_indptr[u + 1]]`` are the rows user ``u`` rated, held-out items excluded.
    """

    item_ids: np.ndarray            # (n_items,) catalog ids; row r of item_vectors is item_ids[r]
    user_ids: np.ndarray            # (n_users,)
    target_rows: np.ndarray         # (n_users, holdout_per_user)
    history_rows: np.ndarray        # (n_users, history), -1 padded
    seen_indptr: np.ndarray         # (n_users + 1,)
    seen_rows: np.ndarray           # (nnz,)
    user_segment: np.ndarray        # (n_users,) activity segment name
    target_bucket: np.ndarray       # (n_users, holdout_per_user) popularity bucket name
    item_rating_count: np.ndarray   # (n_items,)
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def seen_counts(self) -> np.ndarray:
        return np.diff(self.seen_indptr)

    def take(self, users: np.ndarray) -> Holdout:
        """The holdout of a subset of users (positions into ``user_ids``), e.g. a quick sample."""
        users = np.asarray(users, dtype=np.int64)
        counts = self.seen_counts[users]
        starts = self.seen_indptr[users]
        idx = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts) + np.arange(counts.sum())
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return Holdout(self.item_ids, self.user_ids[users], self.target_rows[users], self.history_rows[users],
                       indptr, self.seen_rows[idx], self.user_segment[users], self.target_bucket[users],
                       self.item_rating_count, dict(self.params))


def make_holdout(ratings_df: pd.DataFrame, item_ids: np.ndarray, like_threshold: float = 4.0,
                 holdout_per_user: int = 1, history: int = 20, seed: int = 0,
                 popularity_mass: tuple[float, float] = (0.2, 0.8)) -> Holdout:
    """Hold out each user's ``holdout_per_user`` latest liked items among the catalog's items.

    Ratings of items outside ``item_ids`` are ignored. Users need ``holdout_per_user + 1`` liked
    items (at least one to build the query from). Equal timestamps are ordered by a ``seed``-ed
    shuffle. Activity segments are tertiles of the users' rating counts; the popularity bucket of
    an item is head while the cumulative share of ratings of more popular items is below
    ``popularity_mass[0]``, torso below ``popularity_mass[1]``, tail after.
    """
    missing = [c for c in RATINGS_COLUMNS if c not in ratings_df.columns]
    if missing:
        raise CatalogError("ratings table lacks a column", column=missing[0],
                           expected=list(RATINGS_COLUMNS), found=list(ratings_df.columns))
    if holdout_per_user < 1 or history < 1:
        raise ValueError(f"holdout_per_user and history must be >= 1; found {holdout_per_user}, {history}")
    lo, hi = popularity_mass
    if not 0 < lo < hi <= 1:
        raise ValueError(f"popularity_mass must satisfy 0 < head < torso <= 1; found {popularity_mass}")
    item_ids = np.asarray(item_ids, dtype=np.int64)
    row_of = pd.Series(np.arange(len(item_ids)), index=pd.Index(item_ids))
    if not row_of.index.is_unique:
        raise CatalogError("item ids are not unique", column="item_id", expected="unique ids")

    r = ratings_df.loc[:, list(RATINGS_COLUMNS)]
    rows = row_of.reindex(r["movieId"].to_numpy()).to_numpy()
    keep = ~np.isnan(rows)
    r = pd.DataFrame({
        "user": r["userId"].to_numpy()[keep].astype(np.int64),
        "row": rows[keep].astype(np.int64),
        "rating": r["rating"].to_numpy()[keep].astype(np.float64),
        "ts": r["timestamp"].to_numpy()[keep].astype(np.int64),
    })
    if r.empty:
        raise CatalogError("no rating refers to a catalog item", column="movieId",
                           expected="ids from the catalog", found="none")
    rng = np.random.default_rng(seed)
    r["tie"] = rng.permutation(len(r))
    r = r.sort_values(["user", "ts", "tie"], kind="stable").reset_index(drop=True)

    item_count = np.bincount(r["row"].to_numpy(), minlength=len(item_ids))
    user_count = r.groupby("user", sort=True).size()

    liked = r[r["rating"] >= like_threshold]
    n_liked = liked.groupby("user", sort=True).size()
    eligible = n_liked.index[n_liked >= holdout_per_user + 1].to_numpy()
    liked = liked[liked["user"].isin(eligible)]
    # position counted from the end: 0 = latest liked item
    from_end = liked.groupby("user", sort=True).cumcount(ascending=False).to_numpy()
    users = np.sort(eligible)
    uidx = np.searchsorted(users, liked["user"].to_numpy())
    lrows = liked["row"].to_numpy()

    is_target = from_end < holdout_per_user
    target_rows = np.empty((len(users), holdout_per_user), dtype=np.int64)
    target_rows[uidx[is_target], holdout_per_user - 1 - from_end[is_target]] = lrows[is_target]

    hist_pos = from_end - holdout_per_user          # 0 = most recent liked item before the targets
    in_hist = (hist_pos >= 0) & (hist_pos < history)
    history_rows = np.full((len(users), history), -1, dtype=np.int64)
    history_rows[uidx[in_hist], history - 1 - hist_pos[in_hist]] = lrows[in_hist]

    all_rated = r[r["user"].isin(users)]
    a_uidx = np.searchsorted(users, all_rated["user"].to_numpy())
    a_rows = all_rated["row"].to_numpy()
    key = a_uidx * len(item_ids) + a_rows
    target_key = (np.arange(len(users))[:, None] * len(item_ids) + target_rows).ravel()
    seen = ~np.isin(key, target_key)
    seen_u, seen_r = a_uidx[seen], a_rows[seen]
    seen_indptr = np.zeros(len(users) + 1, dtype=np.int64)
    np.cumsum(np.bincount(seen_u, minlength=len(users)), out=seen_indptr[1:])

    ranks = user_count.rank(method="first").to_numpy()
    terc = np.minimum((3 * (ranks - 1) // len(ranks)).astype(int), 2)
    segment_of_user = pd.Series(np.asarray(ACTIVITY_SEGMENTS)[terc], index=user_count.index)
    user_segment = segment_of_user.reindex(users).to_numpy().astype(str)

    bucket = popularity_buckets(item_count, popularity_mass)
    return Holdout(
        item_ids=item_ids, user_ids=users, target_rows=target_rows, history_rows=history_rows,
        seen_indptr=seen_indptr, seen_rows=seen_r.astype(np.int64), user_segment=user_segment,
        target_bucket=bucket[target_rows], item_rating_count=item_count,
        params={"like_threshold": like_threshold, "holdout_per_user": holdout_per_user,
                "history": history, "seed": seed, "popularity_mass": list(popularity_mass)},
    )


def popularity_buckets(counts: np.ndarray, mass: tuple[float, float] = (0.2, 0.8)) -> np.ndarray:
    """Head / torso / tail label per item from rating counts (share of ratings, most popular first)."""
    counts = np.asarray(counts, dtype=np.float64)
    order = np.argsort(-counts, kind="stable")
    before = np.concatenate([[0.0], np.cumsum(counts[order])[:-1]]) / max(counts.sum(), 1.0)
    labels = np.where(before < mass[0], 0, np.where(before < mass[1], 1, 2))
    out = np.empty(len(counts), dtype=object)
    out[order] = np.asarray(POPULARITY_BUCKETS, dtype=object)[labels]
    out[counts == 0] = "tail"
    return out.astype(str)


def exact_search_fn(item_vectors: np.ndarray, metric: str = "ip") -> SearchFn:
    """Exhaustive float search over ``item_vectors`` as a ``search_fn``."""
    from mmcompress.evaluation.metrics import exact_topk

    X = np.ascontiguousarray(item_vectors, dtype=np.float32)
    return lambda xq, k: exact_topk(X, xq, k, metric)


def downstream_metrics(holdout: Holdout, item_vectors: np.ndarray, k: int = 10,
                       search_fn: SearchFn | None = None, *, aggregate: str = "mean",
                       metric: str = "ip") -> dict[str, Any]:
    """HR@k and nDCG@k of recommending by item-vector similarity to each user's liked history.

    ``aggregate="mean"`` queries with the mean of the history vectors; ``"max"`` scores an item by
    its best similarity to any history item. ``search_fn(queries, k) -> (scores, rows)`` answers
    the candidate searches (default: exact ``metric`` search of ``item_vectors``); higher score =
    closer. Candidate lists grow (doubling) for a user until the k-th best unseen score is at
    least the last score of every list, so no unretrieved item can rank higher under the search's
    own scores: the result is the exact top ``k`` unseen items of that search.
    """
    X = np.asarray(item_vectors, dtype=np.float32)
    assert X.ndim == 2 and len(X) == holdout.n_items, (X.shape, holdout.n_items)
    assert k >= 1 and aggregate in ("mean", "max"), (k, aggregate)
    if search_fn is None:
        search_fn = exact_search_fn(X, metric)
    n_items = holdout.n_items
    top = np.full((holdout.n_users, k), -1, dtype=np.int64)
    # enough candidates to be certain: k + everything the user has seen
    sufficient = np.minimum(n_items, k + holdout.seen_counts)
    pending = np.arange(holdout.n_users)
    k_search = min(n_items, 4 * k)
    while len(pending):
        rows, done = _top_unseen(holdout, X, pending, k, k_search, search_fn, aggregate)
        done |= sufficient[pending] <= k_search
        top[pending[done]] = rows[done]
        pending = pending[~done]
        k_search = min(n_items, 2 * k_search)
    hit_rank = np.full(holdout.target_rows.shape, -1, dtype=np.int64)
    for j in range(holdout.target_rows.shape[1]):
        eq = top == holdout.target_rows[:, j:j + 1]
        hit_rank[:, j] = np.where(eq.any(1), eq.argmax(1), -1)
    hit = hit_rank >= 0
    gain = np.where(hit, 1.0 / np.log2(hit_rank.clip(min=0) + 2.0), 0.0)
    segment = np.broadcast_to(holdout.user_segment[:, None], hit.shape)
    out: dict[str, Any] = {
        "k": k, "aggregate": aggregate, "n_users": holdout.n_users, "n_events": int(hit.size),
        **_summary(hit, gain, k),
        "by_activity": {s: _summary(hit[segment == s], gain[segment == s], k) for s in ACTIVITY_SEGMENTS},
        "by_popularity": {b: _summary(hit[holdout.target_bucket == b], gain[holdout.target_bucket == b], k)
                          for b in POPULARITY_BUCKETS},
    }
    return out


def _summary(hit: np.ndarray, gain: np.ndarray, k: int) -> dict[str, float]:
    n = int(hit.size)
    return {f"hr_at_{k}": float(hit.mean()) if n else float("nan"),
            f"ndcg_at_{k}": float(gain.mean()) if n else float("nan"), "n_events": n}


def _history_queries(holdout: Holdout, X: np.ndarray, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of each user's history vectors."""
    H = holdout.history_rows[users]
    valid = H >= 0
    V = X[H.clip(min=0)] * valid[:, :, None]
    return V.sum(1) / np.maximum(valid.sum(1, keepdims=True), 1), valid


def _top_unseen(holdout: Holdout, X: np.ndarray, users: np.ndarray, k: int, k_search: int,
                search_fn: SearchFn, aggregate: str) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` unseen rows for ``users`` from ``k_search`` candidates per query, -1 padded, and
    whether that list is certain (its k-th score beats every list's last score)."""
    n_items = holdout.n_items
    if aggregate == "mean":
        Q, _ = _history_queries(holdout, X, users)
        query_owner = np.arange(len(users))
    else:
        H = holdout.history_rows[users]
        query_owner, hj = np.nonzero(H >= 0)
        Q = X[H[query_owner, hj]]
    D, ids = search_fn(np.ascontiguousarray(Q, dtype=np.float32), k_search)
    D, ids = np.asarray(D, dtype=np.float64), np.asarray(ids, dtype=np.int64)
    valid = ids >= 0
    n_valid = valid.sum(1)
    # an item missing from a list scores at most that list's last score
    last = np.where(n_valid > 0, D[np.arange(len(D)), np.maximum(n_valid - 1, 0)], -np.inf)
    last[n_valid >= n_items] = -np.inf
    bound = np.full(len(users), -np.inf)
    np.maximum.at(bound, query_owner, last)
    owner = np.repeat(query_owner, ids.shape[1])[valid.ravel()]
    cand, score = ids[valid], D[valid]
    key = owner * n_items + cand
    # best score per (user, item): sort by key then score descending, keep the first of each key
    order = np.lexsort((-score, key))
    key, owner, cand, score = key[order], owner[order], cand[order], score[order]
    first = np.concatenate([[True], key[1:] != key[:-1]])
    key, owner, cand, score = key[first], owner[first], cand[first], score[first]
    unseen = ~np.isin(key, _seen_keys(holdout, users))
    owner, cand, score = owner[unseen], cand[unseen], score[unseen]
    order = np.lexsort((cand, -score, owner))
    owner, cand, score = owner[order], cand[order], score[order]
    starts = np.searchsorted(owner, np.arange(len(users)))
    rank = np.arange(len(owner)) - starts[owner]
    top = np.full((len(users), k), -1, dtype=np.int64)
    kth = np.full(len(users), -np.inf)
    keep = rank < k
    top[owner[keep], rank[keep]] = cand[keep]
    at_k = rank == k - 1
    kth[owner[at_k]] = score[at_k]
    done = (top[:, -1] >= 0) & (kth >= bound)
    return top, done


def _seen_keys(holdout: Holdout, users: np.ndarray) -> np.ndarray:
    ptr = holdout.seen_indptr
    counts = ptr[users + 1] - ptr[users]
    idx = np.repeat(ptr[users] - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts) + np.arange(counts.sum())
    return np.repeat(np.arange(len(users)), counts) * holdout.n_items + holdout.seen_rows[idx]
