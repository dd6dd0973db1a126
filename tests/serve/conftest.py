"""A real saved cascade index (digits vectors, BIN32 -> PQ8x8 -> exact) for the service tests."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from sklearn.datasets import load_digits
from threadpoolctl import threadpool_limits

from mmcompress.codecs import make_codec
from mmcompress.index import CascadeConfig, CascadeIndex


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    """OpenMP/BLAS worker threads spin on a shared 2-core machine; one thread is faster here."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    with threadpool_limits(1):
        yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def catalog(_single_thread) -> dict:
    X = load_digits().data.astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    ids = 1 + 3 * np.arange(len(X), dtype=np.int64)
    return {"X": X, "ids": ids, "titles": {int(i): f"digit #{i}" for i in ids},
            "masks": {"text": ids % 2 == 1, "image": np.arange(len(ids)) < 1000},
            "popularity": np.bincount(np.random.default_rng(0).zipf(1.5, 20_000) % len(ids),
                                      minlength=len(ids)).astype(float)}


def build_index(catalog: dict, *, shortlist: int = 150, drop: int = 0) -> CascadeIndex:
    config = CascadeConfig.from_params({"coarse": {"codec": "BIN32", "shortlist": shortlist},
                                        "fine": {"shortlist": 40}, "cache_bytes": 200_000})
    X, ids = catalog["X"][drop:], catalog["ids"][drop:]
    return CascadeIndex.build(make_codec("BIN32").fit(X), make_codec("PQ8x8").fit(X), X, ids,
                              config=config, masks={k: v[drop:] for k, v in catalog["masks"].items()},
                              titles=catalog["titles"], popularity=catalog["popularity"][drop:])


@pytest.fixture(scope="module")
def index_dir(catalog, tmp_path_factory):
    path = tmp_path_factory.mktemp("served") / "index"
    build_index(catalog).save(path)
    return path


@pytest.fixture(scope="module")
def build(catalog):
    return lambda **kw: build_index(catalog, **kw)
