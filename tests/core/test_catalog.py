import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from mmcompress.data import ItemCatalog, ModalitySpec
from mmcompress.errors import CatalogError


def _catalog(n=5, d=3):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, d)).astype(np.float32)
    mask = np.ones(n, bool)
    mask[1] = False
    X[1] = 0
    return ItemCatalog(np.arange(10, 10 + n), {"text": X}, {"text": mask},
                       pd.DataFrame({"title": [f"t{i}" for i in range(n)]}),
                       {"text": ModalitySpec("text", d, source="test")})


def test_save_load_round_trip(tmp_path):
    cat = _catalog()
    cat.save(tmp_path / "c")
    back = ItemCatalog.load(tmp_path / "c")
    np.testing.assert_array_equal(back.item_ids, cat.item_ids)
    np.testing.assert_array_equal(back.modalities["text"], cat.modalities["text"])
    np.testing.assert_array_equal(back.masks["text"], cat.masks["text"])
    assert back.schema["text"] == cat.schema["text"]
    assert back.attributes["title"].tolist() == cat.attributes["title"].tolist()


def test_tampered_parquet_is_refused(tmp_path):
    _catalog().save(tmp_path / "c")
    p = tmp_path / "c" / "catalog.parquet"
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(CatalogError, match="checksum"):
        ItemCatalog.load(tmp_path / "c")


def test_failed_save_keeps_previous(tmp_path):
    cat = _catalog()
    cat.save(tmp_path / "c")
    before = (tmp_path / "c" / "catalog.parquet").read_bytes()
    cat.attributes["bad"] = [object()] * len(cat)
    with pytest.raises((pa.ArrowException, TypeError, CatalogError)):
        cat.save(tmp_path / "c")
    assert (tmp_path / "c" / "catalog.parquet").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


@pytest.mark.parametrize("kwargs,match", [
    ({"item_ids": []}, "empty catalog"),
    ({"item_ids": [1, 2, 2]}, "duplicate item id.*row=2"),
    ({"modalities": {"text": np.array([[0.0, np.nan]] * 3, np.float32)}}, "non-finite.*row=0"),
    ({"modalities": {"text": np.zeros((2, 4), np.float32)}}, r"wrong shape.*expected=\(3, d\)"),
])
def test_bad_input_names_problem(kwargs, match):
    args = {"item_ids": [1, 2, 3], "modalities": {"text": np.zeros((3, 2), np.float32)}}
    args.update(kwargs)
    with pytest.raises(CatalogError, match=match):
        ItemCatalog(**args)


def test_subset_keeps_alignment():
    cat = _catalog()
    sub = cat.subset([3, 1])
    assert sub.item_ids.tolist() == [13, 11]
    assert sub.masks["text"].tolist() == [True, False]
    assert sub.attributes["title"].tolist() == ["t3", "t1"]
