"""faiss and BLAS run single-threaded here: OpenMP / OpenBLAS spin-waiting on a busy shared
machine turns sub-second k-means or SVDs into tens of seconds."""

from __future__ import annotations

import faiss
import pytest
from threadpoolctl import threadpool_limits


@pytest.fixture(autouse=True, scope="module")
def single_threaded_math():
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    faiss.omp_set_num_threads(previous)
