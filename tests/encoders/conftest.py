from pathlib import Path

import pandas as pd
import pytest

RAW = Path(__file__).resolve().parents[2] / "data" / "raw" / "movielens"


@pytest.fixture(scope="session")
def raw_movies() -> pd.DataFrame:
    return pd.read_csv(RAW / "movies.csv")


@pytest.fixture(scope="session")
def raw_ratings() -> pd.DataFrame:
    return pd.read_csv(RAW / "ratings.csv")
