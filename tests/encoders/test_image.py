import numpy as np
import pytest

from mmcompress.data.image_catalog import build_image_catalog, build_sample_image_catalog
from mmcompress.encoders.image import ImageEncoder, preprocess_image
from mmcompress.errors import CatalogError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def catalog():
    return build_sample_image_catalog(image={"num_threads": 1}, progress=False)


def _nearest(cat, title, k):
    titles = cat.attributes["title"].tolist()
    X = cat.modalities["image"]
    i = titles.index(title)
    s = X @ X[i]
    s[i] = -np.inf
    return [titles[j] for j in np.argsort(-s)[:k]]


def test_sample_catalog_neighbours(catalog):
    X = catalog.modalities["image"]
    assert X.shape == (len(catalog), 1280) and X.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)
    cats = {"chelsea", "chelsea_crop", "chelsea_flip"}
    for c in cats:
        assert set(_nearest(catalog, c, 2)) == cats - {c}
    assert _nearest(catalog, "motorcycle_left", 1) == ["motorcycle_right"]
    assert _nearest(catalog, "coffee_crop", 1) == ["coffee"]
    assert _nearest(catalog, "astronaut_crop", 1) == ["astronaut"]


def test_preprocess_shapes_and_range():
    gray = (np.arange(300 * 400) % 256).astype(np.uint8).reshape(300, 400)
    x = preprocess_image(gray)
    assert x.shape == (3, 224, 224) and x.min() >= -1 and x.max() <= 1
    rgba = np.zeros((50, 80, 4), np.float32)
    assert preprocess_image(rgba).shape == (3, 224, 224)


def test_bad_images_are_refused(catalog):
    ok = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(CatalogError, match=r"not an image.*row=1 \(item_id=8\).*found=\(64, 64, 5\)"):
        build_image_catalog({7: ok, 8: np.zeros((64, 64, 5))}, progress=False)
    bad = ok.astype(np.float32)
    bad[0, 0, 0] = np.nan
    with pytest.raises(CatalogError, match=r"non-finite pixel.*row=0"):
        ImageEncoder(progress=False).encode([bad])
    with pytest.raises(CatalogError, match="empty catalog"):
        build_image_catalog([], progress=False)
