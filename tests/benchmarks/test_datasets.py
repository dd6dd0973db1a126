import gzip
import hashlib

import numpy as np
import pytest

from benchmarks import datasets as D
from mmcompress.errors import ArtifactError

NO_SHARED = f"shared float16 Debian vectors absent ({D.SHARED_DEBIAN_F16}): no reference to compare with"


class StubEncoder:
    """Deterministic unit vectors per text, so cache tests need no model."""

    def __init__(self, model_id: str = "stub") -> None:
        self.model_id = model_id
        self.calls = 0

    def encode(self, texts):
        self.calls += 1
        seeds = [int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little") for t in texts]
        X = np.stack([np.random.default_rng(s).standard_normal(384) for s in seeds]).astype(np.float32)
        return X / np.linalg.norm(X, axis=1, keepdims=True)


@pytest.fixture
def small_tsv(tmp_path):
    """The first 30 packages of the committed catalog, as their own packages.tsv.gz."""
    with gzip.open(D.DEBIAN_TSV, "rt", encoding="utf-8") as f:
        lines = [next(f) for _ in range(31)]
    path = tmp_path / "packages.tsv.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(lines)
    return path


def anisotropic_source(n: int = 3000, d: int = 384, seed: int = 0) -> np.ndarray:
    """Unit rows with a shared mean direction and a decaying spectrum, like sentence embeddings."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((d, d)))[0]
    Z = rng.standard_normal((n, d)) * (1.0 / np.sqrt(np.arange(1, d + 1)))
    X = 0.6 * basis[0] + Z @ basis.T * 0.25
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


def test_split_is_disjoint_complete_and_deterministic():
    X = np.zeros((1000, 4), np.float32)
    s = D.split_queries(X, 50, 100, seed=3, data="toy")
    assert (len(s.base), len(s.tune), len(s.test)) == (850, 50, 100)
    assert not np.intersect1d(s.base, s.tune).size and not np.intersect1d(s.base, s.test).size
    assert not np.intersect1d(s.tune, s.test).size
    np.testing.assert_array_equal(np.sort(np.concatenate([s.base, s.tune, s.test])), np.arange(1000))
    again = D.split_queries(X, 50, 100, seed=3, data="toy")
    for a, b in zip((s.base, s.tune, s.test), (again.base, again.tune, again.test), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(D.split_queries(X, 50, 100, seed=4).test, s.test)
    xb, xt, xq = s.vectors(np.arange(1000, dtype=np.float32)[:, None])
    assert xb.shape == (850, 1) and xq[:, 0].tolist() == s.test.tolist()
    assert s.data.startswith("toy; queries: 50 tuning + 100 test real items held out")
    with pytest.raises(ValueError):
        D.split_queries(X, 500, 500)


@pytest.mark.parametrize("source", ["anisotropic", "debian-shared"])
def test_synthetic_like_plants_no_near_copies_and_keeps_the_covariance(source):
    if source == "anisotropic":
        X = anisotropic_source()
    else:
        if not D.SHARED_DEBIAN_F16.exists():
            pytest.skip(NO_SHARED)
        R = np.load(D.SHARED_DEBIAN_F16, mmap_mode="r")
        X = np.asarray(R[np.sort(np.random.default_rng(0).choice(len(R), 3000, replace=False))],
                       dtype=np.float32)
        X /= np.linalg.norm(X, axis=1, keepdims=True)
    Y, meta = D.synthetic_like(X, 4000, seed=1, chunk=1500, source=source)
    assert Y.shape == (4000, 384) and Y.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(Y, axis=1), 1.0, atol=1e-5)
    assert meta["components"] >= 400 and meta["data"].endswith("(n=4,000, d=384), synthetic")
    G = Y @ Y.T
    np.fill_diagonal(G, -1)
    assert G.max() < 0.99  # no near-copies among synthetic rows
    assert (Y @ X.T).max() < 0.99  # nor of real rows
    # The covariance, roughly: total variance, and the variance along the source's top axes
    # (a whole-matrix norm is dominated by sampling noise of 400 component means at this n).
    Cx, Cy = np.cov(X, rowvar=False), np.cov(Y, rowvar=False)
    assert abs(np.trace(Cy) / np.trace(Cx) - 1) < 0.05
    lam, axes = np.linalg.eigh(Cx)
    top = axes[:, ::-1][:, :10]
    ratio = np.einsum("ij,jk,ki->i", top.T, Cy, top) / lam[::-1][:10]
    assert np.all(np.abs(ratio - 1) < 0.15), ratio.round(3)
    my, mx = Y.mean(0), X.mean(0)
    assert my @ mx / (np.linalg.norm(my) * np.linalg.norm(mx)) > 0.98
    np.testing.assert_array_equal(Y, D.synthetic_like(X, 4000, seed=1, chunk=1500)[0])
    assert not np.array_equal(Y, D.synthetic_like(X, 4000, seed=2, chunk=1500)[0])


def test_cache_reuses_checks_and_refuses_a_tampered_array(tmp_path, small_tsv):
    enc = StubEncoder()
    X, meta = D.debian_vectors(tmp_path / "cache", tsv=small_tsv, reference=None, encoder=enc)
    assert X.shape == (30, 384) and X.dtype == np.float32 and enc.calls == 1
    assert meta["data"] == "Debian 12 package descriptions, MiniLM-L6 (n=30, d=384), real"
    assert meta["package"][0] == "0ad" and meta["check"]["reference"] is None
    X2, _ = D.debian_vectors(tmp_path / "cache", tsv=small_tsv, reference=None, encoder=enc)
    assert enc.calls == 1
    np.testing.assert_array_equal(X, X2)
    D.debian_vectors(tmp_path / "cache", tsv=small_tsv, reference=None, encoder=StubEncoder("other"))
    npy = tmp_path / "cache" / "debian-minilm.npy"
    blob = bytearray(npy.read_bytes())
    blob[-5] ^= 0xFF
    npy.write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match=r"debian-minilm\.npy: SHA-256 .* tampered with"):
        D.debian_vectors(tmp_path / "cache", tsv=small_tsv, reference=None, encoder=StubEncoder("other"))


def test_reference_check_records_cosines_and_names_a_bad_row(tmp_path, small_tsv):
    texts = D.debian_texts(D.read_debian(small_tsv))
    ref = StubEncoder().encode(texts).astype(np.float16)
    np.save(tmp_path / "ref.npy", ref)
    _, meta = D.debian_vectors(tmp_path / "a", tsv=small_tsv, reference=tmp_path / "ref.npy",
                               encoder=StubEncoder())
    assert 0.999 <= meta["check"]["min_cosine"] <= meta["check"]["median_cosine"] <= 1.0 + 1e-6
    ref[7] = ref[8]
    np.save(tmp_path / "ref.npy", ref)
    with pytest.raises(ArtifactError, match=r"row 7 \('[^']+'\): cosine .* below 0.999"):
        D.debian_vectors(tmp_path / "b", tsv=small_tsv, reference=tmp_path / "ref.npy",
                         encoder=StubEncoder())
    assert not (tmp_path / "b" / "debian-minilm.json").exists()


@pytest.mark.slow
@pytest.mark.skipif(not D.SHARED_DEBIAN_F16.exists(), reason=NO_SHARED)
def test_project_encoder_matches_the_shared_float16_vectors():
    texts = D.debian_texts(D.read_debian())
    rows = np.array([0, 1, 777, 12345, 30000, 45678, 59000, len(texts) - 1])
    X = D.default_encoder(batch_size=8).encode([texts[i] for i in rows])
    R = np.load(D.SHARED_DEBIAN_F16, mmap_mode="r")[rows].astype(np.float32)
    cos = (X * R).sum(1) / np.linalg.norm(R, axis=1)
    assert cos.min() >= 0.999, dict(zip(rows.tolist(), cos.round(5).tolist(), strict=True))


def test_movielens_vectors_are_the_serving_benchmark_rows():
    X, meta = D.movielens_vectors()
    assert X.dtype == np.float32 and len(X) == len(meta["item_ids"]) > 9000
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)
    assert meta["data"].startswith("MovieLens") and meta["data"].endswith("real")
