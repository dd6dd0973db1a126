"""The serving benchmark's memory accounting: page-cache residency of files and anonymous RSS."""

from __future__ import annotations

import os

import numpy as np
import pytest

from benchmarks.residency import PAGE, cached_bytes, cached_bytes_of, drop_cache, rss_anon_bytes


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
