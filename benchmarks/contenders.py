"""The serving benchmark's contenders, each a saved index that a process opens and searches.

* ``cascade``: mmcompress's cascade index (coarse codes -> fine tier -> exact rerank from its
  own row store).
* ``faiss+rerank``: a faiss first stage in RAM (IVF-RaBitQ, IVF-PQ fast-scan, HNSW over SQ8 /
  PQ codes) whose top ``R`` ids are reranked by :func:`mmcompress.index.rerank.exact_rerank`
  from one row store in base order, read the same way the cascade reads its own: so first
  stages are compared, not storage tricks.
* ``faiss``: HNSW32 over float32 vectors, all in RAM (efConstruction 200): the in-RAM anchor.

A contender is described by a small JSON-able spec (kind, directory, build options) so the
memory probe (:mod:`benchmarks.serve_memory`) can open exactly what the timed run opened in a
fresh process. Every contender answers ``search(Q, setting, threads)`` with base row ids and
counts the exact store's pages in :meth:`Contender.exact_counts`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

K = 10


def set_threads(n: int) -> None:
    """Threads for faiss (OpenMP) and BLAS."""
    import faiss
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(n)
    threadpool_limits(n)


@dataclass
class Built:
    """A saved contender: what to open, how long building took, its own memory accounting."""

    kind: str
    name: str
    directory: str
    build_s: float
    resident_bytes: float  # the index's own accounting of what it holds in RAM (exact store excluded)
    grid: list[dict[str, Any]]
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "directory": self.directory, "build_s": self.build_s,
                "resident_bytes": self.resident_bytes, "grid": self.grid, "extra": self.extra}


# ---- building ----------------------------------------------------------------------------
def training_sample(xb: np.ndarray, rows: int) -> np.ndarray:
    """Up to ``rows`` base rows, drawn with a fixed seed, in base order."""
    rng = np.random.default_rng(0)
    return xb[np.sort(rng.choice(len(xb), min(len(xb), rows), replace=False))]


def build_cascade(xb: np.ndarray, workdir: Path, *, name: str, coarse: str, fine: str, nlist: int,
                  grid: list[dict[str, Any]], train_rows: int = 50_000,
                  fine_options: dict[str, Any] | None = None, store_dtype: str = "float32",
                  store_layout: str = "locality") -> Built:
    """Fit the codecs on a sample of the base, build, save (page-aligned exact row file of
    ``store_dtype`` values, rows in ``store_layout`` order)."""
    from mmcompress.codecs import make_codec
    from mmcompress.index import CascadeConfig, CascadeIndex

    t = time.perf_counter()
    train = training_sample(xb, train_rows)
    coarse_codec = make_codec(coarse).fit(train)
    fine_codec = coarse_codec if fine == "coarse" else make_codec(fine).fit(train)
    config = CascadeConfig.from_params({"coarse": {"codec": coarse, "shortlist": grid[0]["s1"], "nlist": nlist,
                                                   "nprobe": grid[0].get("nprobe", 1)},
                                        "fine": {"codec": fine, "shortlist": grid[0]["s2"],
                                                 **(fine_options or {})},
                                        "exact": {"dtype": store_dtype, "layout": store_layout}})
    directory = workdir / name
    scratch = workdir / f"{name}.exact.rows"
    index = CascadeIndex.build(coarse_codec, fine_codec, xb, np.arange(len(xb)), scratch, config=config)
    index.save(directory)
    build_s = time.perf_counter() - t
    resident = index.memory_report()["resident_total"]
    extra = {"cell_weight": index.cell_weight_, "item_scale_gamma": index.scale_gamma_}
    del index
    scratch.unlink(missing_ok=True)
    return Built("cascade", name, str(directory), build_s, float(resident), grid, extra)


def base_order_path(workdir: Path, dtype: str) -> Path:
    return workdir / f"base.{dtype}.order.npy"


def base_order(xb: np.ndarray, workdir: Path, dtype: str = "float32") -> np.ndarray:
    """Row positions of the faiss first stages' shared exact store: the library's locality order
    (near rows on the same page), as the cascades lay out their own stores, so that first stages
    are compared on the same kind of layout. Computed once per base and dtype."""
    from mmcompress.index.locality import locality_order
    from mmcompress.index.rowstore import RowLayout

    path = base_order_path(workdir, dtype)
    if not path.exists():
        rows_per_page = RowLayout.paged(len(xb), xb.shape[1], dtype).rows_per_group
        np.save(path, locality_order(xb, rows_per_page, metric="ip").astype(np.int32))
    return np.load(path)


def write_base_rows(xb: np.ndarray, order: np.ndarray, workdir: Path, dtype: str = "float32") -> Path:
    """The shared exact store of the faiss first stages: base rows in ``order``
    (:func:`base_order`), as ``dtype``."""
    from mmcompress.index.rowstore import write_rows

    path = workdir / f"base.{dtype}.rows"
    if not path.exists():
        write_rows(path, xb, order.astype(np.int64), dtype=dtype)
    return path


def build_faiss(xb: np.ndarray, workdir: Path, *, name: str, factory: str, grid: list[dict[str, Any]],
                rerank: bool, ef_construction: int | None = None, train_rows: int = 100_000,
                store_dtype: str = "float32") -> Built:
    """A faiss index from a factory string, saved with ``faiss.write_index``; ``rerank``: its
    candidates go to the shared exact store (of ``store_dtype`` rows), and it holds the base
    rows in that store's order (faiss ids = store rows; the order array maps them back to base
    rows, and counts in its memory)."""
    import faiss

    t = time.perf_counter()
    order = base_order(xb, workdir, store_dtype) if rerank else None
    xs = xb if order is None else xb[order]
    index = faiss.index_factory(xb.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    if ef_construction is not None:
        faiss.downcast_index(index).hnsw.efConstruction = ef_construction
    index.train(training_sample(xs, train_rows))
    index.add(xs)
    build_s = time.perf_counter() - t
    directory = workdir / name
    directory.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(directory / "index.faiss"))
    resident = float(faiss.serialize_index(index).nbytes)
    rows = order_path = None
    if rerank:
        rows = str(write_base_rows(xb, order, workdir, store_dtype))
        order_path = str(base_order_path(workdir, store_dtype))
        resident += float(order.nbytes)
    meta = {"factory": factory, "rerank": rerank, "rows": rows, "order": order_path,
            "ef_construction": ef_construction, "bounds": rerank_bounds(index, xs, grid) if rerank else {}}
    (directory / "contender.json").write_text(json.dumps(meta))
    kind = "faiss+rerank" if rerank else "faiss"
    return Built(kind, name, str(directory), build_s, resident, grid, meta)


def first_stage_key(setting: dict[str, Any]) -> str:
    """A setting without its exact-stage keys (R, fw, conf): what the first stage's estimates
    depend on."""
    return describe_setting({k: v for k, v in setting.items() if k not in ("R", "fw", "conf")})


def rerank_bounds(index: Any, xb: np.ndarray, grid: list[dict[str, Any]]) -> dict[str, Any]:
    """The two-wave rerank bound of a faiss first stage, fitted as the cascade fits its own (the
    same function, sample base rows as queries) once per first-stage setting that a grid entry
    reads in two waves: its estimates (RaBitQ's query bits, ...) set the bound's margins."""
    from mmcompress.index.rerankbound import calibrate_rerank_bound

    out: dict[str, Any] = {}
    for setting in grid:
        key = first_stage_key(setting)
        if not setting.get("fw") or key in out:
            continue
        params = faiss_params(setting)
        bound = calibrate_rerank_bound(lambda Q, s, p=params: index.search(Q, s, params=p), xb,
                                       np.arange(len(xb)), depth=int(setting["R"]), metric="ip")
        out[key] = None if bound is None else bound.to_dict()
    return out


# ---- opening and searching ---------------------------------------------------------------
class Contender:
    """An opened contender. ``reader``: how the exact store is read ("mmap": warm through the
    page cache; "direct": O_DIRECT into a pool of ``pool_bytes``)."""

    def __init__(self, built: dict[str, Any], *, reader: str = "mmap", pool_bytes: int = 0,
                 reads_in_flight: int = 64) -> None:
        self.kind, self.name = built["kind"], built["name"]
        self.directory = Path(built["directory"])
        self.rows_path: str | None = None  # the shared exact store of a faiss first stage
        if self.kind == "cascade":
            from mmcompress.index import CascadeIndex

            self.index = CascadeIndex.load(self.directory, mmap=True, exact_reader=reader,
                                           exact_pool_bytes=pool_bytes, reads_in_flight=reads_in_flight)
            self.rows = None
        else:
            import faiss

            from mmcompress.index.rerankbound import RerankBound

            meta = built["extra"]
            self.index = faiss.read_index(str(self.directory / "index.faiss"))
            self.rows = None
            self.order = np.load(meta["order"]) if meta.get("order") else None
            self.bounds = {k: RerankBound.from_dict(v) for k, v in meta.get("bounds", {}).items() if v}
            if meta["rerank"]:
                from mmcompress.index.rowstore import open_row_store

                self.rows_path = meta["rows"]
                self.rows = open_row_store(self.rows_path, reader=reader, pool_bytes=pool_bytes,
                                           reads_in_flight=reads_in_flight)

    def files(self) -> list[Path]:
        """Files this contender reads while searching (for page-cache accounting)."""
        return [self.directory] + ([Path(self.rows_path)] if self.rows_path else [])

    def exact_stats(self) -> dict[str, Any]:
        if self.kind == "cascade":
            return self.index.exact_store_stats()
        return self.rows.stats() if self.rows is not None else {}

    def reset_exact_stats(self) -> None:
        if self.kind == "cascade":
            self.index.reset_exact_store_stats()
        elif self.rows is not None:
            self.rows.reset_stats()

    def search(self, Q: np.ndarray, setting: dict[str, Any], threads: int = 1) -> np.ndarray:
        """Base row ids (nq, 10) of the best matches, best first."""
        waves = {"first_wave": setting.get("fw", 0), "confidence": setting.get("conf", 0.99)}
        if self.kind == "cascade":
            kw = {"coarse_shortlist": setting["s1"], "fine_shortlist": setting["s2"], **waves}
            if "nprobe" in setting:
                kw["nprobe"] = setting["nprobe"]
            return self.index.search(Q, K, threads=threads, **kw)[1]
        params = faiss_params(setting)
        if self.rows is None:
            return self.index.search(Q, K, params=params)[1]
        from mmcompress.index.rerank import exact_rerank

        est, cand = self.index.search(Q, setting["R"], params=params)
        rows = exact_rerank(self.rows, Q, cand, K, "ip", estimates=est,
                            bound=self.bounds.get(first_stage_key(setting)), **waves)[0]
        return rows if self.order is None else np.where(rows >= 0, self.order[np.maximum(rows, 0)], -1)

    def close(self) -> None:
        if self.kind == "cascade":
            self.index.close()
        elif self.rows is not None:
            self.rows.close()


def faiss_params(setting: dict[str, Any]) -> Any:
    """faiss search parameters of a grid setting."""
    import faiss

    if "efSearch" in setting:
        return faiss.SearchParametersHNSW(efSearch=setting["efSearch"])
    if "qb" in setting:
        return faiss.IVFRaBitQSearchParameters(nprobe=setting["nprobe"], qb=setting["qb"])
    if "nprobe" in setting:
        return faiss.SearchParametersIVF(nprobe=setting["nprobe"])
    return None


def describe_setting(setting: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in setting.items())
