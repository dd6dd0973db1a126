"""Build an :class:`ItemCatalog` from the MovieLens CSV files (movies, ratings, tags).

Modalities: ``text`` (title + genres + top tags, all-MiniLM-L6-v2), ``collaborative``
(rating-matrix factors) and ``structured`` (genres, year, popularity, rating statistics).

Attributes per item: ``item_id`` (movieId), ``title``, ``genres`` ("|"-separated), ``year``
(float, NaN when the title has none), ``n_ratings`` (int), ``mean_rating`` (float, NaN when
never rated), ``first_rating_ts`` (float Unix seconds of the item's first rating, NaN when
never rated — used for temporal drift splits) and ``tags`` (the top tags by count,
"|"-separated, empty when none).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmcompress.data.catalog import ItemCatalog, ModalitySpec
from mmcompress.encoders.collaborative import CollaborativeConfig, collaborative_factors
from mmcompress.encoders.structured import (
    MOVIELENS_GENRES,
    NO_GENRE,
    StructuredConfig,
    StructuredEncoder,
    parse_year,
    rating_statistics,
)
from mmcompress.encoders.text import DIM as TEXT_DIM
from mmcompress.encoders.text import TextEncoder, TextEncoderConfig
from mmcompress.errors import CatalogError

log = logging.getLogger(__name__)

MOVIES_COLUMNS = ("movieId", "title", "genres")
RATINGS_COLUMNS = ("userId", "movieId", "rating", "timestamp")
TAGS_COLUMNS = ("userId", "movieId", "tag", "timestamp")
RATING_RANGE = (0.5, 5.0)


@dataclass
class MovieLensConfig:
    """Everything that shapes a MovieLens catalog (``catalog`` + ``encoders`` in params.yaml)."""

    raw_dir: str = "data/raw/movielens"
    max_items: int | None = None
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    collaborative: CollaborativeConfig = field(default_factory=CollaborativeConfig)
    structured: StructuredConfig = field(default_factory=StructuredConfig)

    @classmethod
    def from_params(cls, catalog: dict[str, Any], encoders: dict[str, Any]) -> MovieLensConfig:
        """From the ``catalog`` and ``encoders`` sections of params.yaml (unknown keys refused)."""
        return cls(
            raw_dir=str(catalog.get("raw_dir", cls.raw_dir)),
            max_items=catalog.get("max_items"),
            text=_coerce(TextEncoderConfig, encoders.get("text")),
            collaborative=_coerce(CollaborativeConfig, encoders.get("collaborative"),
                                  defaults={"seed": catalog.get("seed", 0)}),
            structured=_coerce(StructuredConfig, encoders.get("structured")),
        )


def _coerce(cls: type, value: Any, *, defaults: dict[str, Any] | None = None) -> Any:
    if value is None:
        return cls(**(defaults or {}))
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise TypeError(f"{cls.__name__}: expected a dict or {cls.__name__}, found {type(value).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {unknown}; known: {sorted(known)}")
    return cls(**{**(defaults or {}), **value})


@dataclass
class MovieLensTables:
    """The validated raw tables (typed columns)."""

    movies: pd.DataFrame
    ratings: pd.DataFrame
    tags: pd.DataFrame


# ---- reading and validating the CSV files ----------------------------------------------------
def _read_csv(path: Path, columns: tuple[str, ...], *, required: bool = True) -> pd.DataFrame | None:
    if not path.exists():
        if required:
            raise CatalogError("file not found", file=str(path), expected=f"a CSV with {list(columns)}")
        return None
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise CatalogError(f"unreadable CSV: {str(e).strip()}", file=str(path)) from e
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise CatalogError("missing column", file=str(path), column=missing[0],
                           expected=list(columns), found=list(df.columns))
    return df


def _row(i: int) -> str:
    return f"{i} (line {i + 2})"


def _numeric(df: pd.DataFrame, column: str, path: Path, *, integer: bool,
             valid_range: tuple[float, float] | None = None) -> pd.Series:
    raw = df[column]
    values = pd.to_numeric(raw, errors="coerce")
    v = values.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(v)
    if integer:
        bad = bad | (np.nan_to_num(v) % 1 != 0)
    if valid_range is not None:
        bad = bad | ~((v >= valid_range[0]) & (v <= valid_range[1]))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        kind = "an integer" if integer else "a number"
        if valid_range is not None:
            kind += f" in [{valid_range[0]}, {valid_range[1]}]"
        raise CatalogError("unparseable value", file=str(path), column=column, row=_row(i),
                           expected=kind, found=repr(raw.iloc[i]))
    return values.astype(np.int64) if integer else values.astype(np.float64)


def _check_known_ids(ids: np.ndarray, known: pd.Index, path: Path) -> None:
    unknown = ~pd.Index(ids).isin(known)
    if unknown.any():
        i = int(np.flatnonzero(unknown)[0])
        raise CatalogError("movieId not in movies.csv", file=str(path), column="movieId", row=_row(i),
                           expected="a movieId listed in movies.csv", found=int(ids[i]))


def read_movielens(raw_dir: str | Path) -> MovieLensTables:
    """Read and validate movies.csv, ratings.csv and (optional) tags.csv."""
    raw_dir = Path(raw_dir)
    mpath, rpath, tpath = raw_dir / "movies.csv", raw_dir / "ratings.csv", raw_dir / "tags.csv"

    m = _read_csv(mpath, MOVIES_COLUMNS)
    if len(m) == 0:
        raise CatalogError("empty catalog", file=str(mpath), expected="at least 1 movie", found=0)
    movie_id = _numeric(m, "movieId", mpath, integer=True)
    dup = movie_id.duplicated().to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        first = int(np.flatnonzero(movie_id.to_numpy() == movie_id.iloc[i])[0])
        raise CatalogError("duplicate movieId", file=str(mpath), column="movieId", row=_row(i),
                           expected="unique ids", found=f"{int(movie_id.iloc[i])} (also at row {first})")
    no_title = m["title"].isna().to_numpy()
    if no_title.any():
        i = int(np.flatnonzero(no_title)[0])
        raise CatalogError("missing title", file=str(mpath), column="title", row=_row(i),
                           expected="a non-empty title", found="empty")
    movies = pd.DataFrame({"movieId": movie_id, "title": m["title"].str.strip(),
                           "genres": m["genres"].fillna(NO_GENRE)})
    known = pd.Index(movies["movieId"])

    r = _read_csv(rpath, RATINGS_COLUMNS)
    ratings = pd.DataFrame({
        "userId": _numeric(r, "userId", rpath, integer=True),
        "movieId": _numeric(r, "movieId", rpath, integer=True),
        "rating": _numeric(r, "rating", rpath, integer=False, valid_range=RATING_RANGE),
        "timestamp": _numeric(r, "timestamp", rpath, integer=True),
    })
    _check_known_ids(ratings["movieId"].to_numpy(), known, rpath)

    t = _read_csv(tpath, TAGS_COLUMNS, required=False)
    if t is None:
        tags = pd.DataFrame({c: pd.Series(dtype=object) for c in TAGS_COLUMNS})
    else:
        tags = pd.DataFrame({
            "userId": _numeric(t, "userId", tpath, integer=True),
            "movieId": _numeric(t, "movieId", tpath, integer=True),
            "tag": t["tag"].fillna("").str.strip(),
            "timestamp": _numeric(t, "timestamp", tpath, integer=True),
        })
        _check_known_ids(tags["movieId"].to_numpy(), known, tpath)
        tags = tags[tags["tag"] != ""]
    return MovieLensTables(movies.reset_index(drop=True), ratings, tags.reset_index(drop=True))


# ---- text --------------------------------------------------------------------------------------
def top_tags(tags: pd.DataFrame, item_ids: np.ndarray, max_tags: int) -> list[list[str]]:
    """Per item, its tags ordered by how many times they were applied (ties: alphabetical)."""
    out: dict[int, list[str]] = {}
    if max_tags > 0 and len(tags):
        t = tags.assign(key=tags["tag"].str.lower())
        counts = (t.groupby(["movieId", "key"]).agg(n=("tag", "size"), tag=("tag", "first"))
                  .reset_index().sort_values(["movieId", "n", "key"], ascending=[True, False, True]))
        for mid, grp in counts.groupby("movieId", sort=False):
            out[int(mid)] = grp["tag"].head(max_tags).tolist()
    return [out.get(int(i), []) for i in item_ids]


def movie_text(title: str, genres: str, tags: list[str]) -> str:
    """The text embedded for one movie: title, genres and top tags."""
    parts = [title.strip() + "."]
    g = [x for x in str(genres).split("|") if x and x != NO_GENRE]
    if g:
        parts.append("Genres: " + ", ".join(g) + ".")
    if tags:
        parts.append("Tags: " + ", ".join(tags) + ".")
    return " ".join(parts)


# ---- the builder ------------------------------------------------------------------------------
def build_movielens_catalog(
    raw_dir: str | Path,
    *,
    text: TextEncoderConfig | dict[str, Any] | None = None,
    collaborative: CollaborativeConfig | dict[str, Any] | None = None,
    structured: StructuredConfig | dict[str, Any] | None = None,
    max_items: int | None = None,
    progress: bool = True,
) -> ItemCatalog:
    """Read, validate and encode MovieLens into a catalog (items ordered by movieId).

    ``max_items`` keeps the first N movies by id (ratings and tags of the rest are dropped).
    A modality whose config has ``enabled: false`` is left out.
    """
    text_cfg = _coerce(TextEncoderConfig, text)
    collab_cfg = _coerce(CollaborativeConfig, collaborative)
    struct_cfg = _coerce(StructuredConfig, structured)
    raw_dir = Path(raw_dir)
    t0 = time.perf_counter()
    tables = read_movielens(raw_dir)
    movies = tables.movies.sort_values("movieId").reset_index(drop=True)
    if max_items is not None:
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1, found {max_items}")
        movies = movies.head(max_items)
    item_ids = movies["movieId"].to_numpy(np.int64)
    in_catalog = pd.Index(item_ids)
    ratings = tables.ratings[tables.ratings["movieId"].isin(in_catalog)]
    tags = tables.tags[tables.tags["movieId"].isin(in_catalog)]

    stats = rating_statistics(ratings, item_ids)
    item_tags = top_tags(tags, item_ids, text_cfg.max_tags)
    attrs = pd.DataFrame({
        "item_id": item_ids,
        "title": movies["title"].to_numpy(object),
        "genres": movies["genres"].to_numpy(object),
        "year": movies["title"].map(parse_year).to_numpy(np.float64),
        "n_ratings": stats["n_ratings"].to_numpy(np.int64),
        "mean_rating": stats["mean_rating"].to_numpy(np.float64),
        "first_rating_ts": stats["first_rating_ts"].to_numpy(np.float64),
        "tags": ["|".join(t) for t in item_tags],
    })
    log.info("read %d movies, %d ratings, %d tags in %.1fs", len(movies), len(ratings), len(tags),
             time.perf_counter() - t0)

    mods: dict[str, np.ndarray] = {}
    masks: dict[str, np.ndarray] = {}
    schema: dict[str, ModalitySpec] = {}
    if text_cfg.enabled:
        t1 = time.perf_counter()
        enc = TextEncoder(text_cfg, progress=progress)
        texts = [movie_text(ti, g, tg) for ti, g, tg in
                 zip(attrs["title"], attrs["genres"], item_tags, strict=True)]
        mods["text"] = enc.encode(texts)
        masks["text"] = np.ones(len(item_ids), dtype=bool)
        schema["text"] = ModalitySpec("text", TEXT_DIM, metric="ip",
                                      source=f"{enc.model_id}; title+genres+top{text_cfg.max_tags} tags")
        log.info("text embeddings in %.1fs (%s)", time.perf_counter() - t1, enc.last_stats_)
    if collab_cfg.enabled:
        t1 = time.perf_counter()
        cf = collaborative_factors(ratings, item_ids, collab_cfg, progress=progress)
        mods["collaborative"] = cf.vectors
        masks["collaborative"] = cf.mask
        schema["collaborative"] = ModalitySpec(
            "collaborative", collab_cfg.dim, metric="ip",
            source=f"ratings.csv {collab_cfg.method} dim={collab_cfg.dim} reg={collab_cfg.reg} "
                   f"min_ratings={collab_cfg.min_ratings} seed={collab_cfg.seed}")
        log.info("collaborative factors in %.1fs", time.perf_counter() - t1)
    if struct_cfg.enabled:
        table = attrs.assign(rating_std=stats["rating_std"].to_numpy(np.float64))
        if struct_cfg.genres is None:
            struct_cfg = replace(struct_cfg, genres=list(MOVIELENS_GENRES))
        enc_s = StructuredEncoder(struct_cfg).fit(table)
        X = enc_s.transform(table)
        mods["structured"] = X
        masks["structured"] = np.ones(len(item_ids), dtype=bool)
        schema["structured"] = ModalitySpec("structured", X.shape[1], metric="l2",
                                            source="movies.csv+ratings.csv: " + ",".join(enc_s.feature_names_))
    log.info("MovieLens catalog (%d items, modalities %s) in %.1fs", len(item_ids), list(mods),
             time.perf_counter() - t0)
    return ItemCatalog(item_ids, mods, masks, attrs, schema)


def config_dict(config: MovieLensConfig) -> dict[str, Any]:
    """The config as plain data (for run tracking)."""
    return asdict(config)
