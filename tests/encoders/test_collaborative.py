import numpy as np
import pytest

from mmcompress.encoders.collaborative import CollaborativeConfig, collaborative_factors
from mmcompress.fusion.diagnostics import topk_neighbors
from mmcompress.fusion.normalization import ModalityNormalizer


def _neighbours(cf, item, k=10):
    Z = ModalityNormalizer().fit_transform(cf.vectors, cf.mask)
    row = int(np.flatnonzero(cf.item_ids == item)[0])
    nn = topk_neighbors(Z[[row]], Z, k, self_rows=np.array([row]))[0]
    return cf.item_ids[nn].tolist()


def test_svd_factors_on_ratings(raw_movies, raw_ratings):
    ids = raw_movies["movieId"].to_numpy()
    cf = collaborative_factors(raw_ratings, ids, CollaborativeConfig(dim=32))
    assert cf.vectors.shape == (len(ids), 32) and cf.vectors.dtype == np.float32
    rated = np.isin(ids, raw_ratings["movieId"].unique())
    assert (~rated).sum() == 18
    np.testing.assert_array_equal(cf.mask, rated)
    assert not cf.vectors[~cf.mask].any()
    assert np.isfinite(cf.vectors).all()
    assert 0 < cf.explained_variance_ratio < 1
    # the original Star Wars trilogy is rated by the same people
    assert {1196, 1210} <= set(_neighbours(cf, 260))
    again = collaborative_factors(raw_ratings, ids, CollaborativeConfig(dim=32))
    np.testing.assert_array_equal(again.vectors, cf.vectors)


def test_min_ratings_masks_rare_items(raw_movies, raw_ratings):
    ids = raw_movies["movieId"].to_numpy()
    cf = collaborative_factors(raw_ratings, ids, CollaborativeConfig(dim=8, min_ratings=5))
    counts = raw_ratings["movieId"].value_counts().reindex(ids).fillna(0).to_numpy()
    np.testing.assert_array_equal(cf.mask, counts >= 5)
    assert not cf.vectors[~cf.mask].any()


def test_regularisation_shrinks_rarely_rated_items(raw_movies, raw_ratings):
    ids = raw_movies["movieId"].to_numpy()[:2000]
    loose = collaborative_factors(raw_ratings, ids, CollaborativeConfig(dim=16, reg=0.0))
    tight = collaborative_factors(raw_ratings, ids, CollaborativeConfig(dim=16, reg=20.0))
    ratio = np.linalg.norm(tight.vectors, axis=1)[tight.mask] / np.linalg.norm(loose.vectors, axis=1)[loose.mask]
    n = tight.n_ratings[tight.mask]
    assert ratio[n <= 2].mean() < ratio[n >= 50].mean()


def test_als_factors(raw_movies, raw_ratings):
    ids = raw_movies["movieId"].to_numpy()[:3000]
    cf = collaborative_factors(raw_ratings, ids,
                               CollaborativeConfig(dim=16, method="als", als_iterations=6, reg=1.0))
    assert cf.vectors.shape == (3000, 16) and np.isfinite(cf.vectors).all()
    assert not cf.vectors[~cf.mask].any() and np.abs(cf.vectors[cf.mask]).sum(axis=1).min() > 0
    assert {1196, 1210} & set(_neighbours(cf, 260, k=10))


def test_bad_config():
    with pytest.raises(ValueError, match="method"):
        CollaborativeConfig(method="nmf")
    with pytest.raises(ValueError, match="dim"):
        CollaborativeConfig(dim=0)


def test_truncated_svd_matches_dense_svd(raw_ratings):
    from mmcompress.encoders.collaborative import rating_matrix, truncated_svd

    ids = np.sort(raw_ratings["movieId"].unique())[:400]
    R, _ = rating_matrix(raw_ratings, ids)
    _, s_ref, vt_ref = np.linalg.svd(R.toarray(), full_matrices=False)
    for M, ref in ((R, vt_ref), (R.T.tocsr(), None)):
        s, Vt = truncated_svd(M, 8)
        np.testing.assert_allclose(s, s_ref[:8], rtol=1e-8)
        if ref is not None:
            np.testing.assert_allclose(np.abs((Vt @ ref[:8].T).diagonal()), 1.0, atol=1e-8)
    s_rand, _ = truncated_svd(R, 8, gram_limit=0)
    np.testing.assert_allclose(s_rand[:3], s_ref[:3], rtol=1e-2)
