"""Structured item features: genres, release year, popularity and rating statistics.

Binary columns (genre multi-hot, missing-value flags) stay 0/1; continuous columns are
standardised with statistics fitted on the catalog (``StructuredEncoder.fit``), so the
same transform can be applied to new items later.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mmcompress.errors import CatalogError

NO_GENRE = "(no genres listed)"
MOVIELENS_GENRES = ("Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary",
                    "Drama", "Fantasy", "Film-Noir", "Horror", "IMAX", "Musical", "Mystery", "Romance",
                    "Sci-Fi", "Thriller", "War", "Western")
YEAR_PATTERN = re.compile(r"\((\d{4})(?:\s*[-–]\s*\d{4})?\)\s*$")
CONTINUOUS = ("year", "log_n_ratings", "mean_rating", "rating_std", "first_rating_year")
FLAGS = ("year_missing", "unrated")


@dataclass
class StructuredConfig:
    """Knobs of the structured encoder (``encoders.structured`` in params.yaml).

    ``genres`` fixes the genre vocabulary (so catalogs built at different times have the same
    columns); None learns it from the fitted table.
    """

    enabled: bool = True
    genre_weight: float = 1.0
    genres: list[str] | None = None


def parse_year(title: str) -> float:
    """Release year from a MovieLens title ending in "(1995)" or "(2006–2007)"; NaN if absent."""
    if not isinstance(title, str):
        return float("nan")
    m = YEAR_PATTERN.search(title)
    return float(m.group(1)) if m else float("nan")


def rating_statistics(ratings: pd.DataFrame, item_ids: np.ndarray) -> pd.DataFrame:
    """Per item: n_ratings, mean_rating, rating_std, first_rating_ts (NaN where never rated)."""
    item_ids = np.asarray(item_ids, dtype=np.int64)
    g = ratings.groupby("movieId")
    stats = pd.DataFrame({
        "n_ratings": g["rating"].size(),
        "mean_rating": g["rating"].mean(),
        "rating_std": g["rating"].std(ddof=0),
        "first_rating_ts": g["timestamp"].min().astype(np.float64),
    })
    stats = stats.reindex(item_ids)
    stats["n_ratings"] = stats["n_ratings"].fillna(0).astype(np.int64)
    stats.index.name = "item_id"
    return stats.reset_index()


def genre_vocabulary(genres: pd.Series) -> list[str]:
    """Sorted genres present in a "|"-separated genre column, without the no-genre marker."""
    vocab = set()
    for g in genres.fillna(""):
        vocab.update(x for x in str(g).split("|") if x and x != NO_GENRE)
    return sorted(vocab)


class StructuredEncoder:
    """Fitted transform from an attributes table to a standardised feature matrix.

    The table needs ``title`` or ``year``, ``genres`` and the columns of
    :func:`rating_statistics`. Missing years are filled with the fitted median and flagged;
    items never rated get the fitted global mean rating, zero std, the median first-rating
    time and an ``unrated`` flag.
    """

    def __init__(self, config: StructuredConfig | None = None) -> None:
        self.config = config

    def fit(self, table: pd.DataFrame) -> StructuredEncoder:
        raw = self._raw(table)
        fixed = self.config.genres if self.config else None
        self.genres_ = list(fixed) if fixed is not None else genre_vocabulary(table["genres"])
        self.fill_ = {
            "year": float(np.nanmedian(raw["year"])) if raw["year"].notna().any() else 2000.0,
            "mean_rating": float(np.nanmean(raw["mean_rating"])) if raw["mean_rating"].notna().any() else 3.5,
            "rating_std": 0.0,
            "first_rating_year": float(np.nanmedian(raw["first_rating_year"]))
            if raw["first_rating_year"].notna().any() else 2000.0,
            "log_n_ratings": 0.0,
        }
        filled = raw.fillna(self.fill_)
        self.mean_ = filled[list(CONTINUOUS)].mean().to_numpy(np.float64)
        std = filled[list(CONTINUOUS)].std(ddof=0).to_numpy(np.float64)
        self.scale_ = np.where(std > 0, std, 1.0)
        self.feature_names_ = list(CONTINUOUS) + list(FLAGS) + [f"genre={g}" for g in self.genres_]
        return self

    def transform(self, table: pd.DataFrame) -> np.ndarray:
        if not hasattr(self, "mean_"):
            raise RuntimeError("StructuredEncoder is not fitted; call fit() first")
        raw = self._raw(table)
        flags = np.stack([raw["year"].isna().to_numpy(), (raw["log_n_ratings"] == 0).to_numpy()],
                         axis=1).astype(np.float32)
        cont = (raw.fillna(self.fill_)[list(CONTINUOUS)].to_numpy(np.float64) - self.mean_) / self.scale_
        weight = self.config.genre_weight if self.config else 1.0
        multi_hot = np.zeros((len(table), len(self.genres_)), dtype=np.float32)
        col = {g: j for j, g in enumerate(self.genres_)}
        for i, g in enumerate(table["genres"].fillna("")):
            for x in str(g).split("|"):
                j = col.get(x)
                if j is not None:
                    multi_hot[i, j] = weight
        return np.concatenate([cont.astype(np.float32), flags, multi_hot], axis=1)

    def fit_transform(self, table: pd.DataFrame) -> np.ndarray:
        return self.fit(table).transform(table)

    @staticmethod
    def _raw(table: pd.DataFrame) -> pd.DataFrame:
        need = ["genres", "n_ratings", "mean_rating", "rating_std", "first_rating_ts"]
        missing = [c for c in need if c not in table.columns]
        if missing or ("year" not in table.columns and "title" not in table.columns):
            raise CatalogError("structured features need more columns", column=(missing or ["year"])[0],
                               expected=need + ["year or title"], found=list(table.columns))
        year = table["year"] if "year" in table.columns else table["title"].map(parse_year)
        ts = pd.to_numeric(table["first_rating_ts"], errors="coerce")
        first_year = 1970.0 + ts / (365.2425 * 86400.0)
        n = pd.to_numeric(table["n_ratings"], errors="coerce").fillna(0)
        return pd.DataFrame({
            "year": pd.to_numeric(year, errors="coerce").astype(np.float64),
            "log_n_ratings": np.log1p(n.astype(np.float64)),
            "mean_rating": pd.to_numeric(table["mean_rating"], errors="coerce").astype(np.float64),
            "rating_std": pd.to_numeric(table["rating_std"], errors="coerce").astype(np.float64),
            "first_rating_year": first_year.astype(np.float64),
        }).reset_index(drop=True)
