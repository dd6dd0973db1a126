"""The item-catalog suite on a catalog built from the real MovieLens files (small vectors)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from mmcompress.data.catalog import ItemCatalog, ModalitySpec
from validation import ValidationError, raise_for_failure, validate_catalog

RAW = Path(__file__).resolve().parents[2] / "data" / "raw" / "movielens"
N_ITEMS = 400
COVERAGE = {"text": 0.99, "collaborative": 0.5, "structured": 0.99}
NORMS = (0.9, 1.1)


@pytest.fixture(scope="module")
def catalog() -> ItemCatalog:
    """First movies of MovieLens: real attributes, genre-derived text-like vectors, rating factors."""
    movies = pd.read_csv(RAW / "movies.csv").head(N_ITEMS)
    ratings = pd.read_csv(RAW / "ratings.csv")
    ratings = ratings[ratings["movieId"].isin(movies["movieId"])]
    stats = ratings.groupby("movieId").agg(n_ratings=("rating", "size"), mean_rating=("rating", "mean"),
                                           first_rating_ts=("timestamp", "min")).reindex(movies["movieId"])
    attrs = pd.DataFrame({
        "item_id": movies["movieId"].to_numpy(), "title": movies["title"], "genres": movies["genres"],
        "year": movies["title"].str.extract(r"\((\d{4})\)\s*$")[0].astype(float).to_numpy(),
        "n_ratings": stats["n_ratings"].fillna(0).astype(np.int64).to_numpy(),
        "mean_rating": stats["mean_rating"].to_numpy(), "first_rating_ts": stats["first_rating_ts"].to_numpy(),
    })
    rng = np.random.default_rng(0)
    genres = movies["genres"].str.get_dummies("|").to_numpy(np.float32)
    text = genres @ rng.standard_normal((genres.shape[1], 16)).astype(np.float32)
    text += 0.1 * rng.standard_normal(text.shape).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    users, u = np.unique(ratings["userId"], return_inverse=True)
    rows = pd.Index(movies["movieId"]).get_indexer(ratings["movieId"])
    R = np.zeros((len(users), N_ITEMS), dtype=np.float32)
    R[u, rows] = ratings["rating"].to_numpy() - 3.5
    _, _, vt = np.linalg.svd(R, full_matrices=False)
    collab = vt[:8].T.copy()
    rated = attrs["n_ratings"].to_numpy() >= 2
    collab[rated] /= np.linalg.norm(collab[rated], axis=1, keepdims=True)
    collab[~rated] = 0.0
    structured = np.column_stack([genres, np.nan_to_num((attrs["year"].to_numpy() - 1990) / 20)]).astype(np.float32)
    return ItemCatalog(
        attrs["item_id"].to_numpy(), {"text": text, "collaborative": collab, "structured": structured},
        {"collaborative": rated}, attrs,
        {"text": ModalitySpec("text", 16, metric="ip"), "collaborative": ModalitySpec("collaborative", 8, metric="ip"),
         "structured": ModalitySpec("structured", structured.shape[1], metric="l2")})


def _frame(catalog: ItemCatalog) -> pd.DataFrame:
    df = catalog.to_arrow().to_pandas()
    for c in df.columns:
        if c.startswith("emb__"):
            df[c] = df[c].map(lambda v: np.asarray(v, dtype=np.float32).tolist())
    return df


def _table(df: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(df, preserve_index=False)


def _row_corruptions(df: pd.DataFrame) -> dict[str, list[int]]:
    """Corrupt single rows in place; return reason keyword → affected item ids."""
    ids = df["item_id"].tolist()
    df.at[3, "emb__text"] = [float("nan")] * 16
    df.at[5, "emb__text"] = df.at[5, "emb__text"][:15]
    df.at[9, "emb__text"] = [3 * v for v in df.at[9, "emb__text"]]
    df.at[11, "year"] = 3000.0
    df.at[14, "item_id"] = ids[13]
    return {"non-finite": [ids[3]], "dimension": [ids[5]], "L2 norm": [ids[9]], "year": [ids[11]],
            "duplicate": [ids[13]]}


def test_clean_catalog_passes_and_writes_results(catalog, tmp_path):
    result = validate_catalog(catalog, norm_range=NORMS, min_coverage=COVERAGE, out_dir=tmp_path)
    assert result.success, result.summary
    raise_for_failure(result)
    assert result.clean is catalog and result.n_quarantined == 0
    assert "passed" in result.summary and result.failures == []
    saved = json.loads(result.results_path.read_text())
    assert saved["success"] is True and saved["results"]["results"]
    assert result.docs_path.exists() and "item_catalog" in result.docs_path.read_text()
    assert (tmp_path / "summary.txt").read_text().startswith("validation suite 'item_catalog': passed")


def test_saved_catalog_directory_is_checked_as_a_file(catalog, tmp_path):
    catalog.save(tmp_path / "catalog")
    result = validate_catalog(tmp_path / "catalog", norm_range=NORMS, min_coverage=COVERAGE, data_docs=False)
    assert result.success, result.summary
    assert isinstance(result.clean, ItemCatalog) and np.array_equal(result.clean.item_ids, catalog.item_ids)


def test_corrupted_catalog_fails_with_a_readable_summary(catalog, tmp_path):
    df = _frame(catalog)
    bad = _row_corruptions(df)
    df["has__structured"] = np.arange(len(df)) % 5 == 0            # 20% coverage
    result = validate_catalog(_table(df), norm_range=NORMS, min_coverage=COVERAGE, out_dir=tmp_path,
                              schema=catalog.schema)
    assert not result.success and result.clean is None
    by_column = {f.column: f for f in result.failures}
    assert by_column["text__finite"].unexpected_count == 1
    assert by_column["text__finite"].example_ids == bad["non-finite"]
    assert by_column["text__dim"].example_ids == bad["dimension"]
    assert by_column["text__norm"].example_ids == bad["L2 norm"]
    assert by_column["year"].example_ids == bad["year"]
    assert by_column["item_id"].unexpected_count == 2
    assert by_column["structured__present"].observed == pytest.approx(0.2)
    summary = result.summary
    for text in ("expect_column_values_to_be_unique on column 'item_id'", "2 of 400 rows",
                 "expect_column_values_to_be_in_set on column 'text__finite'", "non-finite",
                 "column 'text__dim'", "expected values in [16]", "column 'year'", "[1870.0, 2030.0]",
                 "coverage of modality 'structured'", "observed 0.2", f"item_id {bad['year'][0]}"):
        assert text in summary, text
    with pytest.raises(ValidationError) as err:
        raise_for_failure(result)
    assert str(err.value) == summary and err.value.result is result


def test_quarantine_sets_failing_rows_aside_with_reasons(catalog, tmp_path):
    df = _frame(catalog)
    bad = _row_corruptions(df)
    result = validate_catalog(_table(df), norm_range=NORMS, min_coverage=COVERAGE, on_row_error="quarantine",
                              out_dir=tmp_path, schema=catalog.schema)
    assert result.success, result.summary
    q = pd.read_csv(result.quarantine_path)
    assert result.n_quarantined == len(q) == 6           # both copies of the duplicated id
    for keyword, ids in bad.items():
        hits = q[q["reason"].str.contains(keyword)]
        assert set(ids) <= set(hits["item_id"]), keyword
    assert len(result.clean) + len(q) == len(df)
    assert not set(q["row"]) & set(np.flatnonzero(np.isin(result.clean.item_ids, q["item_id"])))
    assert set(result.clean.item_ids).isdisjoint(q["item_id"])
    assert "6 rows quarantined" in result.summary


def test_quarantine_does_not_hide_table_level_failures(catalog, tmp_path):
    df = _frame(catalog)
    df["has__collaborative"] = False
    df.at[3, "emb__text"] = [float("inf")] * 16
    result = validate_catalog(_table(df), norm_range=NORMS, min_coverage=COVERAGE, on_row_error="quarantine",
                              out_dir=tmp_path, schema=catalog.schema, data_docs=False)
    assert not result.success and result.n_quarantined == 1
    assert [f.column for f in result.failures] == ["collaborative__present"]


def test_missing_modality_and_bad_arguments(catalog, tmp_path):
    result = validate_catalog(catalog, norm_range=NORMS, min_coverage={**COVERAGE, "image": 0.5},
                              data_docs=False)
    assert not result.success
    assert "expect_column_to_exist on column 'image__present'" in result.summary
    with pytest.raises(ValueError, match="on_row_error"):
        validate_catalog(catalog, on_row_error="drop", out_dir=tmp_path)
    with pytest.raises(ValueError, match="out_dir"):
        validate_catalog(catalog, on_row_error="quarantine")
