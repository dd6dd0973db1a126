import numpy as np
import pytest
from sklearn.datasets import load_digits

from mmcompress.data.catalog import ItemCatalog


@pytest.fixture(scope="session")
def digits_catalog() -> ItemCatalog:
    """Two real views of each handwritten digit: the top and the bottom half of the image.

    A few items lack one view (masked), so fusion must cope with missing modalities.
    """
    d = load_digits()
    X = (d.data / 16.0).astype(np.float32)
    n = len(X)
    top, bottom = X[:, :32].copy(), X[:, 32:].copy()
    has_top, has_bottom = np.ones(n, bool), np.ones(n, bool)
    has_top[::50] = False
    has_bottom[7::50] = False
    top[~has_top] = 0
    bottom[~has_bottom] = 0
    import pandas as pd

    return ItemCatalog(np.arange(n) + 100, {"top": top, "bottom": bottom},
                       {"top": has_top, "bottom": has_bottom},
                       pd.DataFrame({"label": d.target}))
