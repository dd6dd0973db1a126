import math

import numpy as np
import pandas as pd
import pytest

from mmcompress.encoders.structured import StructuredEncoder, parse_year, rating_statistics
from mmcompress.errors import CatalogError


@pytest.mark.parametrize("title,year", [
    ("Toy Story (1995)", 1995),
    ("Death Note: Desu nôto (2006–2007)", 2006),
    ("Babylon 5 (1994) ", 1994),
    ("1984 (1956)", 1956),
    ("Babylon 5", None),
    ("Ready Player One", None),
    ("2001: A Space Odyssey", None),
])
def test_parse_year(title, year):
    got = parse_year(title)
    assert (math.isnan(got) if year is None else got == year)


def test_structured_features_on_movielens_slice(raw_movies, raw_ratings):
    movies = raw_movies.head(300)
    ids = movies["movieId"].to_numpy()
    stats = rating_statistics(raw_ratings, ids)
    table = stats.assign(title=movies["title"].to_numpy(), genres=movies["genres"].to_numpy())
    table.loc[5, "title"] = "A Movie Without Year"
    enc = StructuredEncoder().fit(table)
    X = enc.transform(table)
    names = enc.feature_names_
    assert X.shape == (300, len(names)) and X.dtype == np.float32
    cont = X[:, :5]
    np.testing.assert_allclose(cont.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(cont.std(axis=0), 1, atol=1e-4)
    assert X[5, names.index("year_missing")] == 1 and X[:5, names.index("year_missing")].sum() == 0
    unrated = stats["n_ratings"].to_numpy() == 0
    np.testing.assert_array_equal(X[:, names.index("unrated")] == 1, unrated)
    toy = X[0]
    for g in ("Adventure", "Animation", "Children", "Comedy", "Fantasy"):
        assert toy[names.index(f"genre={g}")] == 1
    assert toy[names.index("genre=Horror")] == 0
    pop = names.index("log_n_ratings")
    assert X[0, pop] > np.median(X[:, pop])


def test_structured_refuses_missing_columns():
    with pytest.raises(CatalogError, match=r"column='n_ratings'"):
        StructuredEncoder().fit(pd.DataFrame({"title": ["x"], "genres": ["Drama"]}))
