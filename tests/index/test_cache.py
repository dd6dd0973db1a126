"""Hot-item caches: byte bounds, LRU order, W-TinyLFU admission, warming, threads, and
hit rates on popularity streams from the real MovieLens ratings."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmcompress.index.cache import (
    ENTRY_OVERHEAD_BYTES,
    LRUCache,
    TinyLFUCache,
    make_cache,
    value_nbytes,
)

RATINGS = Path(__file__).resolve().parents[2] / "data" / "raw" / "movielens" / "ratings.csv"
VALUE = np.zeros(64, np.float32)  # a cached result of ~a dozen (score, id) pairs
ENTRY = value_nbytes(VALUE) + ENTRY_OVERHEAD_BYTES


@pytest.fixture(scope="module")
def ratings() -> pd.DataFrame:
    return pd.read_csv(RATINGS, usecols=["movieId", "timestamp"])


def zipf_stream(ratings: pd.DataFrame, n: int, seed: int) -> list[int]:
    """Item requests drawn in proportion to each movie's rating count (long-tailed, Zipf-like)."""
    counts = ratings["movieId"].value_counts()
    rng = np.random.default_rng(seed)
    return rng.choice(counts.index.to_numpy(), size=n, p=(counts / counts.sum()).to_numpy()).tolist()


def hit_rate(cache, stream) -> float:
    for key in stream:
        if cache.get(key) is None:
            cache.put(key, VALUE)
    return cache.stats().hit_rate


@pytest.mark.parametrize("entries", [100, 400])
def test_tinylfu_beats_lru_on_movielens_popularity(ratings, entries):
    stream = zipf_stream(ratings, 30_000, seed=0)
    lru = hit_rate(LRUCache(entries * ENTRY), stream)
    tiny = hit_rate(TinyLFUCache(entries * ENTRY), stream)
    assert tiny > lru + 0.03, (tiny, lru)


def test_tinylfu_beats_lru_on_the_timestamp_ordered_rating_trace(ratings):
    trace = ratings.sort_values("timestamp", kind="stable")["movieId"].tolist()[:30_000]
    lru = hit_rate(LRUCache(200 * ENTRY), trace)
    tiny = hit_rate(TinyLFUCache(200 * ENTRY), trace)
    assert tiny > lru, (tiny, lru)


def test_one_off_burst_does_not_flush_popular_items():
    popular = list(range(50))
    for cache in (LRUCache(60 * ENTRY), TinyLFUCache(60 * ENTRY)):
        for _ in range(5):
            for key in popular:
                if cache.get(key) is None:
                    cache.put(key, VALUE)
        for key in range(10_000, 10_500):  # a scan of keys seen once
            if cache.get(key) is None:
                cache.put(key, VALUE)
        kept = sum(key in cache for key in popular)
        if isinstance(cache, TinyLFUCache):
            assert kept >= 45
        else:
            assert kept == 0


@pytest.mark.parametrize("policy", ["lru", "tinylfu"])
def test_byte_bound_and_stats(policy):
    cache = make_cache(policy, 10_000)
    rng = np.random.default_rng(1)
    for _ in range(2_000):
        key = int(rng.integers(0, 300))
        if cache.get(key) is None:
            cache.put(key, np.zeros(int(rng.integers(1, 200)), np.float32))
        assert cache.stats().bytes <= 10_000
    s = cache.stats()
    assert s.hits + s.misses == 2_000 and s.evictions > 0 and 0 < s.hit_rate < 1
    assert s.items == len(cache) and s.to_dict()["hit_rate"] == s.hit_rate
    assert not cache.put("huge", np.zeros(10_000, np.float32))  # larger than the cache
    assert "huge" not in cache


def test_lru_evicts_least_recently_used():
    cache = LRUCache(3 * ENTRY)
    for key in "abc":
        cache.put(key, VALUE)
    cache.get("a")
    cache.put("d", VALUE)
    assert "b" not in cache and all(k in cache for k in "acd")


@pytest.mark.parametrize("policy", ["lru", "tinylfu"])
def test_warm_keeps_the_most_popular(ratings, policy):
    counts = ratings["movieId"].value_counts()
    popular = counts.index.to_numpy()[:1000].tolist()
    cache = make_cache(policy, 100 * ENTRY)
    warmed = cache.warm((int(i), VALUE) for i in popular)
    assert 90 <= warmed <= 100
    assert all(int(i) in cache for i in popular[:warmed])
    # warmed entries survive the Zipf stream better than cold ones: hit rate from the first request
    first = zipf_stream(ratings, 2_000, seed=3)
    cold = make_cache(policy, 100 * ENTRY)
    assert hit_rate(cache, first) > hit_rate(cold, first)


@pytest.mark.parametrize("policy", ["lru", "tinylfu"])
def test_thread_safe_under_concurrent_use(policy):
    cache = make_cache(policy, 50 * ENTRY)
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for key in rng.zipf(1.3, 3_000) % 500:
                if cache.get(int(key)) is None:
                    cache.put(int(key), VALUE)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = cache.stats()
    assert not errors and s.hits + s.misses == 12_000 and s.bytes <= 50 * ENTRY
    assert s.bytes == s.items * ENTRY


def test_unknown_policy():
    with pytest.raises(ValueError, match="unknown cache policy"):
        make_cache("fifo", 10)
