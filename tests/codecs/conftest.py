"""Shared data for codec tests: scikit-learn digits (1,797 x 64), rows L2-normalised."""

import os

# OpenMP threads that spin while waiting starve each other on small shared CPUs.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from mmcompress.codecs import exact_search  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _single_thread_blas():
    """Tiny matrices: one BLAS thread is fastest, and avoids thrashing on loaded CPUs."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        yield


@pytest.fixture(scope="session")
def digits() -> np.ndarray:
    X = load_digits().data.astype(np.float32)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


@pytest.fixture(scope="session")
def split(digits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(base, queries): 200 held-out query rows, the other 1,597 rows as the database."""
    perm = np.random.default_rng(0).permutation(len(digits))
    return digits[np.sort(perm[200:])], digits[perm[:200]]


def _recall10(codec, base: np.ndarray, queries: np.ndarray, metric: str = "ip") -> float:
    codes = codec.encode(base)
    _, found = codec.search(codes, queries, 10)
    _, truth = exact_search(base, queries, 10, metric)
    return float(np.mean([len(np.intersect1d(f, t)) / 10 for f, t in zip(found, truth, strict=True)]))


@pytest.fixture(scope="session")
def recall10():
    """recall10(codec, base, queries, metric="ip"): recall@10 of compressed search vs exact."""
    return _recall10


def _encode_error(encode, decode, rows: np.ndarray, order: np.ndarray) -> float:
    """Mean squared reconstruction error of ``rows`` encoded in the given order."""
    codes = encode(rows[order])
    out = np.empty_like(codes)
    out[order] = codes
    return float(((decode(out) - rows) ** 2).sum(axis=1).mean())


@pytest.fixture(scope="session")
def encode_error():
    """encode_error(encode, decode, rows, order): reconstruction error of rows encoded in ``order``."""
    return _encode_error
