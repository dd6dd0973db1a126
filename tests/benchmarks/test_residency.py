"""The serving benchmark's memory accounting: page-cache residency of files and anonymous RSS."""

from __future__ import annotations

import os

import numpy as np
import pytest

from benchmarks.residency import (
    PAGE,
    AnonPeak,
    cached_bytes,
    cached_bytes_of,
    drop_cache,
    rss_anon_bytes,
)


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "rows.bin"
    path.write_bytes(np.random.default_rng(0).integers(0, 255, 64 * PAGE, dtype=np.uint8).tobytes())
    return path


def test_evicted_file_is_not_cached_and_reads_bring_exactly_their_pages_back(data_file):
    drop_cache([data_file])
    if cached_bytes(data_file) != 0:
        pytest.skip("this filesystem keeps pages after POSIX_FADV_DONTNEED (e.g. tmpfs)")
    fd = os.open(data_file, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)  # no readahead: only the pages read
        for page in (3, 10, 11, 40):
            os.pread(fd, PAGE, page * PAGE)
    finally:
        os.close(fd)
    assert cached_bytes(data_file) == 4 * PAGE
    assert cached_bytes_of([data_file.parent]) == 4 * PAGE
    drop_cache([data_file.parent])
    assert cached_bytes(data_file) == 0


def test_anonymous_memory_grows_with_what_the_process_touches():
    before = rss_anon_bytes()
    block = np.ones(64 << 20, dtype=np.uint8)  # touched: 64 MiB resident
    grown = rss_anon_bytes() - before
    assert 60 << 20 <= grown <= 72 << 20, grown
    del block



def test_the_peak_counts_memory_a_call_frees_before_it_returns():
    """What a search holds only while it runs is gone when it returns: a reading taken after
    the work misses it, the sampled peak does not."""
    import time

    def transient() -> None:
        block = np.ones(48 << 20, dtype=np.uint8)  # 48 MiB, touched, held for 20 ms
        time.sleep(0.02)
        del block

    before = rss_anon_bytes()
    with AnonPeak() as peak:
        transient()
    assert rss_anon_bytes() - before < 8 << 20  # freed: gone afterwards
    assert peak.max_bytes - before >= 46 << 20 and peak.samples > 10
    with AnonPeak() as idle:
        time.sleep(0.01)
    assert idle.max_bytes - before < 8 << 20


def test_memory_probe_counts_at_least_the_index_own_arrays(tmp_path):
    """A contender opened in a fresh process holds at least what its own accounting lists: a
    probe whose baseline absorbs the index (freed warm-up buffers reused, kernels compiled for
    other shapes counted as the index's) reads too little or too much; this one does neither."""
    from benchmarks.contenders import build_cascade
    from benchmarks.serve_memory import probe

    rng = np.random.default_rng(0)
    X = rng.standard_normal((30_000, 256)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    grid = [{"s1": 300, "s2": 20}]
    built = build_cascade(X, tmp_path, name="probe", coarse="BIN128", fine="coarse", nlist=0, grid=grid,
                          train_rows=5000)
    built.extra.update({"coarse": "BIN128", "fine": "coarse"})
    np.save(tmp_path / "q.npy", X[:200])
    own = built.resident_bytes
    for run in ("single", "batch"):
        r = probe({"built": built.to_dict(), "setting": grid[0], "reader": "direct", "pool_bytes": 0,
                   "queries": str(tmp_path / "q.npy"), "warm_queries": None, "threads": 1, "run": run})
        assert r["run"] == run and r["samples"] > 10
        assert r["settled_all_in_bytes"] >= 0.95 * own, (r, own)
        assert r["all_in_bytes"] >= r["settled_all_in_bytes"], r  # the peak is never below what stays
        # its own arrays, read buffers of at most 64 pages and a query's scratch, also in a batch
        # (read a few queries at a time): no more
        assert r["all_in_bytes"] <= own + (2 << 20), (r, own)
