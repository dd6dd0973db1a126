from pathlib import Path

import pandas as pd
import pytest

RAW = Path(__file__).resolve().parents[2] / "data" / "raw" / "movielens"


@pytest.fixture(scope="session")
def raw_slice() -> dict[str, pd.DataFrame]:
    """The first 80 MovieLens movies with their tags and up to 3,000 ratings (3 movies unrated)."""
    movies = pd.read_csv(RAW / "movies.csv", dtype=str).head(80)
    keep = set(movies["movieId"])
    unrated = set(movies["movieId"].iloc[[10, 20, 30]])
    ratings = pd.read_csv(RAW / "ratings.csv", dtype=str)
    ratings = ratings[ratings["movieId"].isin(keep - unrated)].head(3000)
    tags = pd.read_csv(RAW / "tags.csv", dtype=str)
    return {"movies": movies, "ratings": ratings, "tags": tags[tags["movieId"].isin(keep)]}


@pytest.fixture
def small_raw(tmp_path, raw_slice) -> Path:
    """The slice written as MovieLens CSV files in a fresh directory."""
    out = tmp_path / "raw"
    out.mkdir()
    for name, df in raw_slice.items():
        df.to_csv(out / f"{name}.csv", index=False)
    return out
