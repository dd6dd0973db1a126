"""faiss runs single-threaded here: OpenMP spin-waiting on a busy shared machine turns a
sub-second k-means into tens of seconds."""

from __future__ import annotations

import faiss
import pytest


@pytest.fixture(autouse=True, scope="module")
def single_threaded_faiss():
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(previous)
