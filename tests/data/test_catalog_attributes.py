import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from mmcompress.data.catalog import ItemCatalog
from mmcompress.errors import CatalogError


def test_attributes_always_carry_the_item_ids(tmp_path):
    X = np.eye(4, dtype=np.float32)
    cat = ItemCatalog([7, 8, 9, 10], {"v": X},
                      attributes=pd.DataFrame({"title": ["a", None, "c", "d"], "year": [1.0, np.nan, 3.0, 4.0]}))
    assert cat.attributes.columns.tolist() == ["item_id", "title", "year"]
    assert cat.attributes["item_id"].tolist() == [7, 8, 9, 10]
    cat.save(tmp_path / "c")
    back = ItemCatalog.load(tmp_path / "c")
    assert back.attributes.columns.tolist() == ["item_id", "title", "year"]
    assert back.attributes["title"].isna().tolist() == [False, True, False, False]
    assert np.isnan(back.attributes["year"][1])
    assert back.subset([2, 0]).attributes["item_id"].tolist() == [9, 7]
    with pytest.raises(CatalogError, match=r"attributes item_id differs.*row=1.*expected=8.*found=5"):
        ItemCatalog([7, 8, 9, 10], {"v": X}, attributes=pd.DataFrame({"item_id": [7, 5, 9, 10]}))


@pytest.mark.parametrize("ids,match", [
    (pa.array([1, None, 3]), r"null item id.*row=1"),
    (pa.array([1.0, 2.5, 3.0]), r"not an integer.*row=1.*found=2.5"),
    (pa.array(["a", "b", "c"]), r"not integer.*found=string"),
])
def test_bad_id_columns(ids, match):
    table = pa.table({"item_id": ids,
                      "emb__v": pa.FixedSizeListArray.from_arrays(pa.array(np.ones(6, np.float32)), 2)})
    with pytest.raises(CatalogError, match=match):
        ItemCatalog.from_arrow(table, file="x.parquet")
