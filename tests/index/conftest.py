"""Shared real data for the index tests: scikit-learn digits, L2-normalised, with fitted codecs."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from sklearn.datasets import load_digits
from threadpoolctl import threadpool_limits

from mmcompress.codecs import make_codec


@pytest.fixture(scope="module", autouse=True)
def _single_faiss_thread():
    """OpenMP/BLAS worker threads spin on a shared 2-core machine; one thread is faster here."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    with threadpool_limits(1):
        yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def digits() -> dict[str, np.ndarray]:
    X = load_digits().data.astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    ids = 1000 + 7 * np.arange(len(X), dtype=np.int64)  # catalog ids, not row numbers
    xq, xb, ids_b = X[:200], X[200:], ids[200:]
    truth = ids_b[np.argsort(-(xq @ xb.T), axis=1, kind="stable")[:, :10]]
    return {"xb": xb, "ids": ids_b, "xq": xq, "truth": truth}


@pytest.fixture(scope="module")
def fitted(_single_faiss_thread, digits) -> dict:
    """Codecs fitted once on the base vectors (the index never refits a fitted codec)."""
    return {spec: make_codec(spec).fit(digits["xb"]) for spec in ("BIN32", "PQ8x8", "SQ8")}

