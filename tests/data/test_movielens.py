from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mmcompress.data.catalog import ItemCatalog
from mmcompress.data.movielens import (
    MovieLensConfig,
    build_movielens_catalog,
    movie_text,
    read_movielens,
    top_tags,
)
from mmcompress.errors import CatalogError

ROOT = Path(__file__).resolve().parents[2]
NO_TEXT = {"enabled": False}


def test_catalog_without_text_has_modalities_masks_and_attributes(small_raw, tmp_path):
    cat = build_movielens_catalog(small_raw, text=NO_TEXT, collaborative={"dim": 16}, progress=False)
    movies = pd.read_csv(small_raw / "movies.csv")
    ratings = pd.read_csv(small_raw / "ratings.csv")
    assert len(cat) == 80
    assert cat.item_ids.tolist() == sorted(movies["movieId"].tolist())
    assert set(cat.modality_names) == {"collaborative", "structured"}
    assert cat.modalities["collaborative"].shape == (80, 16)
    assert cat.schema["structured"].dim == 26, "fixed MovieLens genre vocabulary: 5 + 2 flags + 19"
    rated = np.isin(cat.item_ids, ratings["movieId"].unique())
    assert not rated.all()
    np.testing.assert_array_equal(cat.masks["collaborative"], rated)
    assert not cat.modalities["collaborative"][~rated].any()
    a = cat.attributes
    assert list(a.columns) == ["item_id", "title", "genres", "year", "n_ratings", "mean_rating",
                               "first_rating_ts", "tags"]
    assert a.loc[a.item_id == 1, "year"].item() == 1995
    n1 = int((ratings["movieId"] == 1).sum())
    assert a.loc[a.item_id == 1, "n_ratings"].item() == n1
    assert a.loc[a.item_id == 1, "first_rating_ts"].item() == ratings.loc[ratings.movieId == 1, "timestamp"].min()
    assert a.loc[~rated, "first_rating_ts"].isna().all()
    assert a.loc[~rated, "mean_rating"].isna().all()
    cat.save(tmp_path / "cat")
    back = ItemCatalog.load(tmp_path / "cat")
    pd.testing.assert_frame_equal(back.attributes, cat.attributes, check_dtype=False)
    np.testing.assert_array_equal(back.modalities["structured"], cat.modalities["structured"])


def test_max_items_keeps_first_movies_by_id(small_raw):
    cat = build_movielens_catalog(small_raw, text=NO_TEXT, max_items=25, progress=False)
    ids = sorted(pd.read_csv(small_raw / "movies.csv")["movieId"])[:25]
    assert cat.item_ids.tolist() == ids


def test_disabled_modalities_are_left_out(small_raw):
    cat = build_movielens_catalog(small_raw, text=NO_TEXT, collaborative={"enabled": False},
                                  progress=False)
    assert cat.modality_names == ["structured"]


def test_top_tags_and_text():
    tags = pd.DataFrame({"movieId": [1, 1, 1, 1, 2], "tag": ["pixar", "Fun", "fun", "zzz", "dark"]})
    assert top_tags(tags, np.array([1, 2, 3]), 2) == [["Fun", "pixar"], ["dark"], []]
    assert movie_text("Toy Story (1995)", "Animation|Comedy", ["pixar"]) == \
        "Toy Story (1995). Genres: Animation, Comedy. Tags: pixar."
    assert movie_text("X", "(no genres listed)", []) == "X."


def test_params_yaml_sections_match_configs():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    cfg = MovieLensConfig.from_params(params["catalog"], params["encoders"])
    assert cfg.text.batch_size == params["encoders"]["text"]["batch_size"]
    assert cfg.collaborative.dim == params["encoders"]["collaborative"]["dim"]
    assert cfg.collaborative.seed == params["catalog"]["seed"]
    with pytest.raises(ValueError, match="unknown keys"):
        MovieLensConfig.from_params(params["catalog"], {"text": {"batchsize": 3}})


def _rewrite(path: Path, edit) -> None:
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    edit(df).to_csv(path, index=False)


def _set(df, row, col, value):
    df = df.copy()
    df.loc[row, col] = value
    return df


@pytest.mark.parametrize("file,edit,match", [
    ("movies.csv", lambda d: d.drop(columns=["genres"]), r"missing column.*movies.csv.*column='genres'"),
    ("movies.csv", lambda d: _set(d, 5, "movieId", d.loc[2, "movieId"]),
     r"duplicate movieId.*movies.csv.*column='movieId'.*row=5 \(line 7\).*also at row 2"),
    ("movies.csv", lambda d: _set(d, 3, "movieId", "12a"),
     r"unparseable value.*column='movieId'.*row=3.*expected=an integer.*found='12a'"),
    ("movies.csv", lambda d: _set(d, 4, "title", ""), r"missing title.*row=4"),
    ("ratings.csv", lambda d: _set(d, 7, "rating", "four"),
     r"unparseable value.*ratings.csv.*column='rating'.*row=7 \(line 9\).*found='four'"),
    ("ratings.csv", lambda d: _set(d, 8, "rating", "9.5"), r"column='rating'.*row=8.*in \[0.5, 5.0\]"),
    ("ratings.csv", lambda d: _set(d, 9, "timestamp", "yesterday"), r"column='timestamp'.*row=9"),
    ("ratings.csv", lambda d: _set(d, 10, "movieId", "99999999"),
     r"movieId not in movies.csv.*ratings.csv.*row=10.*found=99999999"),
    ("ratings.csv", lambda d: d.drop(columns=["userId"]), r"missing column.*column='userId'"),
    ("tags.csv", lambda d: _set(d, 0, "movieId", "x"), r"tags.csv.*column='movieId'.*row=0"),
])
def test_bad_csv_is_refused_naming_file_column_row(small_raw, file, edit, match):
    _rewrite(small_raw / file, edit)
    with pytest.raises(CatalogError, match=match):
        read_movielens(small_raw)


def test_missing_and_unreadable_files(small_raw):
    (small_raw / "ratings.csv").unlink()
    with pytest.raises(CatalogError, match=r"file not found.*ratings.csv"):
        read_movielens(small_raw)
    (small_raw / "ratings.csv").write_bytes(b"userId,movieId,rating,timestamp\n1,1,4.0\n1,2,4,5,6,7\n")
    with pytest.raises(CatalogError, match=r"unreadable CSV.*ratings.csv"):
        read_movielens(small_raw)
    (small_raw / "movies.csv").write_text("movieId,title,genres\n")
    with pytest.raises(CatalogError, match=r"empty catalog.*movies.csv"):
        read_movielens(small_raw)


def test_tags_file_is_optional(small_raw):
    (small_raw / "tags.csv").unlink()
    cat = build_movielens_catalog(small_raw, text=NO_TEXT, progress=False)
    assert (cat.attributes["tags"] == "").all()


@pytest.mark.slow
def test_catalog_with_text_uses_cache_on_rebuild(small_raw, tmp_path):
    cache = tmp_path / "cache"
    a = build_movielens_catalog(small_raw, text={"cache_dir": str(cache)}, max_items=30, progress=False)
    shards = sorted(cache.rglob("shard-*.npz"))
    assert shards
    b = build_movielens_catalog(small_raw, text={"cache_dir": str(cache)}, max_items=30, progress=False)
    assert sorted(cache.rglob("shard-*.npz")) == shards
    np.testing.assert_array_equal(a.modalities["text"], b.modalities["text"])
    assert a.schema["text"].dim == 384
    np.testing.assert_allclose(np.linalg.norm(a.modalities["text"], axis=1), 1.0, atol=1e-5)
