import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.datasets import load_digits

from mmcompress.data.catalog import ItemCatalog, ModalitySpec
from mmcompress.data.readers import (
    PrecomputedModality,
    attach_modality,
    read_catalog,
    read_precomputed_modality,
)
from mmcompress.errors import CatalogError


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    X = (d.data / 16.0).astype(np.float32)[:200]
    return np.arange(1000, 1200, dtype=np.int64), X[:, :32], X[:, 32:], d.target[:200]


def _plain_table(ids, A, B, **extra):
    cols = {"item_id": pa.array(ids),
            "top": pa.array(list(A), type=pa.list_(pa.float32())),
            "bottom": pa.array(list(B), type=pa.list_(pa.float64()))}
    cols.update(extra)
    return pa.table(cols)


def test_plain_list_columns_become_modalities(tmp_path, digits):
    ids, A, B, y = digits
    rows = list(B)
    rows[5] = None
    t = _plain_table(ids, A, B, label=pa.array(y.tolist()), name=pa.array([f"d{i}" for i in ids]))
    t = t.set_column(2, "bottom", pa.array(rows, type=pa.list_(pa.float64())))
    pq.write_table(t, tmp_path / "c.parquet")
    cat = read_catalog(tmp_path / "c.parquet")
    assert cat.modality_names == ["top", "bottom"]
    np.testing.assert_array_equal(cat.modalities["top"], A)
    assert cat.modalities["bottom"].dtype == np.float32
    assert cat.masks["bottom"].sum() == len(ids) - 1 and not cat.masks["bottom"][5]
    assert not cat.modalities["bottom"][5].any()
    assert cat.attributes.columns.tolist() == ["item_id", "label", "name"]
    only = read_catalog(tmp_path / "c.parquet", modalities=["top"])
    assert only.modality_names == ["top"] and "bottom" in only.attributes


def test_catalog_layout_and_directory(tmp_path, digits):
    ids, A, B, _ = digits
    mask = np.ones(len(ids), bool)
    mask[3] = False
    B2 = B.copy()
    B2[3] = 0
    cat = ItemCatalog(ids, {"top": A, "bottom": B2}, {"bottom": mask},
                      schema={"top": ModalitySpec("top", 32, source="digits")})
    cat.save(tmp_path / "dir")
    back = read_catalog(tmp_path / "dir")
    assert back.schema["top"].source == "digits"
    pq.write_table(cat.to_arrow(), tmp_path / "layout.parquet")
    lay = read_catalog(tmp_path / "layout.parquet", dims={"top": 32})
    np.testing.assert_array_equal(lay.masks["bottom"], mask)
    np.testing.assert_array_equal(lay.modalities["top"], A)
    with pytest.raises(CatalogError, match=r"wrong vector dimension.*expected=16.*found=32"):
        read_catalog(tmp_path / "dir", dims={"top": 16})


def _write(tmp_path, table, name="c.parquet"):
    pq.write_table(table, tmp_path / name)
    return tmp_path / name


def test_bad_catalogs_are_refused(tmp_path, digits):
    ids, A, B, _ = digits
    p = _write(tmp_path, _plain_table(ids, A, B).drop(["item_id"]))
    with pytest.raises(CatalogError, match=r"missing column.*c.parquet.*column='item_id'"):
        read_catalog(p)
    dup = ids.copy()
    dup[7] = dup[2]
    p = _write(tmp_path, _plain_table(dup, A, B))
    with pytest.raises(CatalogError, match=r"duplicate item id.*column='item_id'.*row=7.*found=1002 \(also at row 2\)"):
        read_catalog(p)
    bad = A.copy()
    bad[11, 4] = np.nan
    p = _write(tmp_path, _plain_table(ids, bad, B))
    with pytest.raises(CatalogError, match=r"non-finite.*column='top'.*row=11"):
        read_catalog(p)
    bad[11, 4] = np.inf
    p = _write(tmp_path, _plain_table(ids, bad, B))
    with pytest.raises(CatalogError, match=r"non-finite.*column='top'.*row=11"):
        read_catalog(p)
    mixed = [list(r) for r in A]
    mixed[9] = mixed[9][:30]
    t = _plain_table(ids, A, B).set_column(1, "top", pa.array(mixed, type=pa.list_(pa.float32())))
    p = _write(tmp_path, t)
    with pytest.raises(CatalogError, match=r"mixed vector dimensions.*column='top'.*row=9.*expected=32.*found=30"):
        read_catalog(p)
    with pytest.raises(CatalogError, match=r"wrong vector dimension.*column='bottom'.*expected=64.*found=32"):
        read_catalog(_write(tmp_path, _plain_table(ids, A, B)), dims={"bottom": 64})
    p = _write(tmp_path, _plain_table(ids, A, B).slice(0, 0))
    with pytest.raises(CatalogError, match=r"empty catalog.*c.parquet"):
        read_catalog(p)
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 not really parquet")
    with pytest.raises(CatalogError, match=r"unreadable Parquet file.*junk.parquet"):
        read_catalog(tmp_path / "junk.parquet")
    with pytest.raises(CatalogError, match=r"file not found.*nope.parquet"):
        read_catalog(tmp_path / "nope.parquet")
    t = pa.table({"item_id": pa.array(ids), "title": pa.array([str(i) for i in ids])})
    with pytest.raises(CatalogError, match="no modality columns"):
        read_catalog(_write(tmp_path, t))
    t = pa.table({"item_id": pa.array([str(i) for i in ids]),
                  "top": pa.array(list(A), type=pa.list_(pa.float32()))})
    with pytest.raises(CatalogError, match=r"item id column is not integer.*expected=int64.*found=string"):
        read_catalog(_write(tmp_path, t))
    t = pa.table({"item_id": pa.array(ids), "top": pa.array([["a", "b"]] * len(ids))})
    with pytest.raises(CatalogError, match=r"not numeric.*column='top'.*found=object"):
        read_catalog(_write(tmp_path, t), modalities=["top"])


def test_precomputed_npy_parquet_npz_and_attach(tmp_path, digits):
    ids, A, B, _ = digits
    cat = ItemCatalog(ids, {"top": A})
    order = np.random.default_rng(0).permutation(len(ids))[:150]
    extra_ids = np.array([5, 6], dtype=np.int64)
    vec_ids = np.concatenate([ids[order], extra_ids])
    vecs = np.concatenate([B[order], np.ones((2, 32), np.float32)])
    np.save(tmp_path / "bottom.npy", vecs)
    np.save(tmp_path / "bottom.ids.npy", vec_ids)
    mod = read_precomputed_modality(tmp_path / "bottom.npy", "bottom")
    assert mod.dim == 32 and len(mod.item_ids) == 152
    both = attach_modality(cat, mod)
    assert both.masks["bottom"].sum() == 150
    np.testing.assert_array_equal(both.modalities["bottom"][order], B[order])
    assert not both.modalities["bottom"][~both.masks["bottom"]].any()
    with pytest.raises(CatalogError, match=r"item id not in the catalog.*row=150.*found=5"):
        attach_modality(cat, mod, unknown_ids="error")

    pq.write_table(pa.table({"movie": pa.array(vec_ids),
                             "vec": pa.array(list(vecs), type=pa.list_(pa.float32()))}),
                   tmp_path / "b.parquet")
    mod2 = read_precomputed_modality(tmp_path / "b.parquet", "bottom", id_column="movie")
    np.testing.assert_array_equal(mod2.vectors, vecs)
    np.savez(tmp_path / "b.npz", ids=vec_ids, vectors=vecs)
    mod3 = read_precomputed_modality(tmp_path / "b.npz", "bottom")
    np.testing.assert_array_equal(mod3.item_ids, vec_ids)


def test_bad_precomputed_inputs(tmp_path, digits):
    ids, A, B, _ = digits
    cat = ItemCatalog(ids, {"top": A})
    np.save(tmp_path / "v.npy", B)
    with pytest.raises(CatalogError, match=r"ids file not found.*v.npy"):
        read_precomputed_modality(tmp_path / "v.npy", "b")
    np.save(tmp_path / "v_ids.npy", ids[:-1])
    with pytest.raises(CatalogError, match=r"ids do not match.*v_ids.npy.*expected=\(200,\).*found=\(199,\)"):
        read_precomputed_modality(tmp_path / "v.npy", "b")
    dup = ids.copy()
    dup[50] = dup[49]
    np.save(tmp_path / "v_ids.npy", dup)
    with pytest.raises(CatalogError, match=r"duplicate item id.*row=50"):
        read_precomputed_modality(tmp_path / "v.npy", "b")
    np.save(tmp_path / "v_ids.npy", ids.astype(np.float64))
    with pytest.raises(CatalogError, match=r"ids are not integers.*found=float64"):
        read_precomputed_modality(tmp_path / "v.npy", "b")
    np.save(tmp_path / "v_ids.npy", ids)
    with pytest.raises(CatalogError, match=r"wrong vector dimension.*expected=8.*found=32"):
        read_precomputed_modality(tmp_path / "v.npy", "b", dim=8)
    bad = B.copy()
    bad[17, 0] = np.inf
    np.save(tmp_path / "v.npy", bad)
    with pytest.raises(CatalogError, match=r"non-finite.*v.npy.*row=17"):
        read_precomputed_modality(tmp_path / "v.npy", "b")
    np.save(tmp_path / "v.npy", np.array([["a"] * 3] * 200))
    with pytest.raises(CatalogError, match=r"vectors are not numeric.*found=<U1"):
        read_precomputed_modality(tmp_path / "v.npy", "b")
    np.save(tmp_path / "v.npy", B[:, 0])
    with pytest.raises(CatalogError, match=r"2-D matrix.*found=\(200,\)"):
        read_precomputed_modality(tmp_path / "v.npy", "b")
    np.save(tmp_path / "v.npy", np.array([{"a": 1}] * 3, dtype=object), allow_pickle=True)
    with pytest.raises(CatalogError, match=r"unreadable vectors file.*v.npy"):
        read_precomputed_modality(tmp_path / "v.npy", "b")
    (tmp_path / "v.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(CatalogError, match=r"unreadable vectors file"):
        read_precomputed_modality(tmp_path / "v.npy", "b")
    with pytest.raises(CatalogError, match=r"unsupported file type.*found=.csv"):
        read_precomputed_modality(tmp_path / "v.csv", "b")
    pq.write_table(pa.table({"item_id": pa.array(ids),
                             "x": pa.array(list(B), type=pa.list_(pa.float32())),
                             "y": pa.array(list(B), type=pa.list_(pa.float32()))}), tmp_path / "two.parquet")
    with pytest.raises(CatalogError, match="cannot tell which column"):
        read_precomputed_modality(tmp_path / "two.parquet", "b")
    far = PrecomputedModality("b", ids + 10_000, B, np.ones(len(ids), bool))
    with pytest.raises(CatalogError, match="no item of the modality matches"):
        attach_modality(cat, far)
    wrong_dim = PrecomputedModality("top", ids, B[:, :8], np.ones(len(ids), bool))
    with pytest.raises(CatalogError, match=r"another dimension.*expected=32.*found=8"):
        attach_modality(cat, wrong_dim)


@pytest.mark.slow
def test_text_columns_are_embedded(tmp_path):
    from pathlib import Path

    movies = pd.read_csv(Path(__file__).resolve().parents[2] / "data/raw/movielens/movies.csv").head(12)
    t = pa.table({"item_id": pa.array(movies["movieId"]), "title": pa.array(movies["title"]),
                  "genres": pa.array(movies["genres"].where(movies.index != 4, None))})
    pq.write_table(t, tmp_path / "m.parquet")
    cat = read_catalog(tmp_path / "m.parquet", text_columns=["title", "genres"], progress=False)
    assert cat.modality_names == ["text"]
    assert cat.modalities["text"].shape == (12, 384) and cat.masks["text"].all()
    np.testing.assert_allclose(np.linalg.norm(cat.modalities["text"], axis=1), 1.0, atol=1e-5)
    with pytest.raises(CatalogError, match=r"missing text column.*column='plot'"):
        read_catalog(tmp_path / "m.parquet", text_columns=["plot"], progress=False)
