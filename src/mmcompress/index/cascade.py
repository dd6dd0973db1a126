"""Cascade index: a compact coarse code scanned for every candidate, a finer scoring of the
coarse shortlist, and an optional exact rerank from float32 vectors in a row file on disk.

    codec = make_codec("BIN128")                   # sign codes: popcount scan ...
    index = CascadeIndex.build(codec, codec, X, ids,   # ... then their asymmetric sign-table scan
                               config=CascadeConfig(coarse=CoarseStageConfig(shortlist=600)))
    D, I = index.search(xq, k=10)                  # item ids, best first; -1 pads
    D, I = index.search_by_id(item_id, k=10)       # the item itself excluded
    index.add(X_new, ids_new); index.remove(ids_old); index.compact()
    index.save("artifacts/index"); CascadeIndex.load("artifacts/index", mmap=True)
    CascadeIndex.load("artifacts/index", exact_reader="direct", exact_pool_bytes=64 << 20)

Rows live in a *main* segment (sorted by coarse cell when IVF routing is on, memory-mapped when
loaded) and a small *delta* segment that ``add`` appends to; ``remove`` sets tombstones. Neither
retrains a codec. ``compact`` folds the delta in and drops tombstoned rows.

The coarse stage scans sign codes by popcount (every item, or the ``nprobe`` closest IVF cells);
the fine stage rescores the shortlist with a second codec, or with the coarse codes themselves
when the fine codec *is* the coarse codec (binary codes: per-byte sign look-up tables built from
the codec's own projection, optionally times a one-byte item scale chosen by validation at
build, plus a weighted routing score of the item's IVF cell where validation at build finds it
ranks better: :mod:`mmcompress.index.cellprior`); the exact stage reads only the final
shortlist's rows from disk, through a :class:`~mmcompress.index.rowstore.RowReader`
(memory-mapped, or ``O_DIRECT`` into the index's own buffer pool: ``CascadeConfig.exact``),
and scores them (:mod:`mmcompress.index.rerank`). A fine codec whose score is one table entry per code byte plus a
norm term (PQ, RQ, LSQ, their stacks, behind orthonormal transforms: ``Codec.search_tables``) is
scored by gathers from per-query tables, with each item's norm decoded once per segment; other
fine codecs go through their own ``search`` per shortlist.
Binary coarse codes with a sign-table fine stage run both first stages as one compiled pass
(:mod:`mmcompress.index.kernels`, numba) that selects what the numpy path selects, at about
twice its speed. Resident: codes, packed ids, packed modality masks, item scales and the codec /
centroid tables (and the exact store's buffer pool, when it has one); on disk: the exact store
and the id lookup, touched only for the final candidates and for lookups by id.

This module is the orchestration. The rooms around it: :mod:`.segments` (the data),
:mod:`.coarse`, :mod:`.signscan`, :mod:`.kernels` and :mod:`.rerank` (the stages),
:mod:`.rowstore` (the exact store's format and readers) and :mod:`.store` (the saved format).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from mmcompress.codecs.base import Codec, check_vectors
from mmcompress.codecs.halfmath import matmul_half
from mmcompress.errors import CatalogError, CodecError
from mmcompress.index import kernels
from mmcompress.index.cellprior import choose_cell_weight
from mmcompress.index.coarse import codec_shortlist, hamming_shortlist
from mmcompress.index.config import CascadeConfig, check_waves
from mmcompress.index.locality import locality_order
from mmcompress.index.partition import CoarsePartition
from mmcompress.index.rerank import exact_rerank
from mmcompress.index.rerankbound import RerankBound, calibrate_rerank_bound
from mmcompress.index.rowstore import (
    MemoryRowReader,
    ReadCounts,
    RowLayout,
    RowReader,
    RowSubset,
    open_row_store,
    write_rows,
)
from mmcompress.index.scales import choose_scale_weight, quantize_scales, scale_map
from mmcompress.index.searchstats import SearchStats
from mmcompress.index.segments import PackedIds, Segment, State, check_ids, pack_masks, unpack_mask
from mmcompress.index.select import best_columns, smallest_counts, smallest_per_row
from mmcompress.index.signscan import SignLUTScorer, sign_tables, table_scores
from mmcompress.index.store import FORMAT_VERSION, KIND, SavedIndex, read_index, write_index

__all__ = ["FORMAT_VERSION", "KIND", "CascadeIndex", "PackedIds", "SearchStats", "recommended_nlist",
           "smallest_counts", "smallest_per_row"]

_CHUNK_ELEMENTS = 1 << 23  # coarse distance buffer per query chunk (int32 cells)
# queries per chunk of a batch: with the exact store in RAM (or the page cache, which holds it
# anyway) long chunks spread each chunk's fixed cost; read from disk, a chunk waits on its reads
# for milliseconds, and its working arrays (projections, cell scores, shortlists and their
# estimates: about 12 KB a query) are what the process holds beyond the index, so chunks stay short
_CHUNK_QUERIES = 256
_CHUNK_QUERIES_FROM_DISK = 16
POPULAR_KEEP = 10_000  # most popular ids kept with the index, for cache warming


def _codec_state_bytes(codec: Codec | None) -> int:
    if codec is None:
        return 0
    try:
        _, arrays = codec._get_state()
    except Exception:  # a codec without tables
        return 0
    return int(sum(np.asarray(a).nbytes for a in arrays.values()))


class CascadeIndex:
    """Coarse -> fine -> exact retrieval over item embeddings; see the module docstring."""

    def __init__(self, config: CascadeConfig | None = None) -> None:
        self.config = config if config is not None else CascadeConfig()
        self.titles: dict[int, str] = {}
        self.popular_item_ids: list[int] = []
        self.fine_shares_coarse = False
        self.scale_range_: tuple[float, float] | None = None
        self.scale_gamma_: float | None = None
        self.cell_weight_: float | None = None
        self.rerank_bound_: RerankBound | None = None
        self._lock = threading.RLock()

    # ---- construction ----------------------------------------------------------------------
    @classmethod
    def build(cls, coarse_codec: Codec, fine_codec: Codec | None, vectors: np.ndarray,
              ids: Iterable[int] | np.ndarray, exact_vectors_path: str | Path | None = None, *,
              config: CascadeConfig | None = None, masks: Mapping[str, np.ndarray] | None = None,
              titles: Mapping[int, str] | None = None, popularity: np.ndarray | None = None,
              progress: bool = False) -> CascadeIndex:
        """Encode ``vectors`` with both codecs (fitting them on a sample when unfitted).

        ``exact_vectors_path``: where the float32 exact store is written (a page-aligned row
        file, :mod:`.rowstore`, then read as ``config.exact`` says); None keeps it in memory
        until :meth:`save`. ``masks``: modality -> bool per
        item (for the modality filter). ``titles``: item id -> display title. ``popularity``:
        a score per item (e.g. rating counts); the most popular ids are kept for cache warming.
        """
        self = cls(config)
        cfg = self.config
        X = check_vectors(vectors, name="vectors")
        if len(X) == 0:
            raise CatalogError("cannot build an index from zero vectors", expected=">= 1 row", found=0)
        ids = check_ids(ids, len(X))
        mask_names, mask_matrix = self._check_masks(masks, len(X))
        rng = np.random.default_rng(cfg.seed)
        train = X if len(X) <= cfg.train_rows else X[np.sort(rng.choice(len(X), cfg.train_rows, replace=False))]
        for codec in (coarse_codec, fine_codec):
            if codec is not None and not codec.is_fitted:
                codec.fit(train)
            if codec is not None and codec.d_ != X.shape[1]:
                raise CodecError(f"codec {codec.spec!r} was fitted on d={codec.d_}; vectors have d={X.shape[1]}")
            if codec is not None and codec.metric != cfg.metric:
                raise CodecError(f"codec {codec.spec!r} uses metric {codec.metric!r}; the index uses {cfg.metric!r}")
        self.coarse_codec = coarse_codec
        self.fine_codec = fine_codec if cfg.fine.enabled else None
        self.fine_shares_coarse = self.fine_codec is not None and self.fine_codec is coarse_codec
        self.d_ = X.shape[1]
        self.modalities = mask_names
        self.titles = {int(k): str(v) for k, v in (titles or {}).items()}
        if popularity is not None:
            popularity = np.asarray(popularity, dtype=np.float64)
            if popularity.shape != (len(X),):
                raise CatalogError("popularity needs one value per vector", column="popularity",
                                   expected=(len(X),), found=popularity.shape)
            top = np.argsort(-popularity, kind="stable")[:POPULAR_KEEP]
            self.popular_item_ids = [int(i) for i in ids[top]]
        self.partition = None
        if cfg.coarse.nlist > 0:
            nlist = min(cfg.coarse.nlist, len(X))
            projection = self._routing_projection()
            # centroids kept in the code's subspace take its projection's precision (a ``_f16`` or
            # ``_i8`` sign codec: float16, half their bytes; scored in float32 either way). An
            # ``_i8`` projection is the orthonormal one over a uniform scale: rankings unchanged
            half = cfg.half_precision_tables if projection is None else projection.dtype != np.float32
            self.partition = CoarsePartition(nlist, cfg.metric, random_state=cfg.seed,
                                             max_train_rows=cfg.train_rows,
                                             dtype="float16" if half else "float32").fit(train, projection)
            cells = self.partition.assign(X)
            order = self._store_order(X, cells)
            offsets = np.searchsorted(cells[order], np.arange(nlist + 1)).astype(np.int64)
        else:
            order = self._store_order(X, None)
            offsets = np.array([0, len(X)], dtype=np.int64)
        coarse, fine = self._encode(X, order, progress=progress)
        scales = None
        if self._item_scales_apply():
            codes = fine if fine is not None else coarse
            gamma = choose_scale_weight(self.sign_scorer, X[order], codes, seed=cfg.seed)
            if gamma is not None:
                factors = self.sign_scorer.item_factors(X[order], codes, gamma)
                lo, hi = np.percentile(factors, [0.1, 99.9])
                self.scale_gamma_, self.scale_range_ = gamma, (float(lo), float(max(hi, lo + 1e-6)))
                scales = self._quantize_scales(factors)
        if cfg.fine.cell_prior and self.partition is not None and self._sign_fine_stage():
            self.cell_weight_ = choose_cell_weight(
                self.sign_scorer, self.partition, X, fine if fine is not None else coarse, offsets, order=order,
                nprobe=cfg.coarse.nprobe, depth=cfg.fine.shortlist, metric=cfg.metric, seed=cfg.seed)
        exact = None
        if cfg.exact_rerank:
            exact = (self._write_exact(exact_vectors_path, X, order) if exact_vectors_path is not None
                     else MemoryRowReader.from_array(X[order]))
        main = Segment(coarse=coarse, fine=fine, ids=PackedIds.pack(ids[order]), exact=exact,
                        masks=pack_masks(mask_matrix[order]), offsets=offsets, scales=scales)
        self._init_runtime(State(main=main, delta=None, dead=None))
        if exact is not None:
            # the exact stage's two-wave bound, fitted on what the stages before it return
            depth = int(np.clip(2 * (cfg.fine.shortlist if self.fine_codec is not None else cfg.coarse.shortlist),
                                32, 256))
            self.rerank_bound_ = calibrate_rerank_bound(
                lambda Q, s: self.search(Q, s, exact_rerank=False), X, ids, depth=depth, metric=cfg.metric,
                seed=cfg.seed)
            self.total_stats = SearchStats()  # the calibration's searches are not served queries
        return self

    @classmethod
    def from_config(cls, config: CascadeConfig, vectors: np.ndarray, ids: Iterable[int] | np.ndarray, *,
                    fine_codec: Codec | None = None, exact_vectors_path: str | Path | None = None,
                    masks: Mapping[str, np.ndarray] | None = None, titles: Mapping[int, str] | None = None,
                    popularity: np.ndarray | None = None, progress: bool = False) -> CascadeIndex:
        """Build with the codecs the config names: ``coarse.codec`` is made and fitted here;
        ``fine.codec`` is ``"coarse"`` (rescore the coarse codes), a spec (made and fitted here),
        or None (use ``fine_codec``, e.g. the compress stage's fitted codec; none: no fine stage)."""
        from mmcompress.codecs import make_codec

        coarse = make_codec(config.coarse.codec, metric=config.metric, random_state=config.seed)
        spec = config.fine.codec
        if not config.fine.enabled:
            fine = None
        elif spec == "coarse":
            fine = coarse
        elif spec is not None:
            fine = make_codec(spec, metric=config.metric, random_state=config.seed)
        else:
            fine = fine_codec
        return cls.build(coarse, fine, vectors, ids, exact_vectors_path, config=config, masks=masks,
                         titles=titles, popularity=popularity, progress=progress)

    def _check_masks(self, masks: Mapping[str, np.ndarray] | None, n: int,
                     names: list[str] | None = None) -> tuple[list[str], np.ndarray]:
        masks = dict(masks or {})
        if names is not None:
            unknown = sorted(set(masks) - set(names))
            if unknown:
                raise CatalogError(f"unknown modality masks {unknown}", expected=names, found=sorted(masks))
            cols = [np.ones(n, dtype=bool) if m not in masks else masks[m] for m in names]
        else:
            names = sorted(masks)
            cols = [masks[m] for m in names]
        out = np.zeros((n, len(names)), dtype=bool)
        for j, (name, col) in enumerate(zip(names, cols, strict=True)):
            col = np.asarray(col)
            if col.shape != (n,):
                raise CatalogError(f"mask of modality {name!r} has the wrong shape", column=name,
                                   expected=(n,), found=col.shape)
            out[:, j] = col.astype(bool)
        return names, out

    def _store_order(self, X: np.ndarray, cells: np.ndarray | None) -> np.ndarray:
        """Row positions of the built segment: by cell, and inside a cell (or the whole catalog)
        near rows on the same exact-store page where ``config.exact.layout`` is ``locality``."""
        cfg = self.config
        if not cfg.exact_rerank or cfg.exact.layout == "insertion":
            return np.arange(len(X)) if cells is None else np.argsort(cells, kind="stable")
        rows_per_page = RowLayout.paged(len(X), X.shape[1], cfg.exact.dtype).rows_per_group
        return locality_order(X, rows_per_page, groups=cells, metric=cfg.metric, seed=cfg.seed)

    def _encode(self, X: np.ndarray, order: np.ndarray, *, progress: bool) -> tuple[np.ndarray, np.ndarray | None]:
        from tqdm.auto import tqdm

        n = len(order)
        coarse = np.empty((n, self.coarse_codec.code_size), dtype=np.uint8)
        fine = (None if self.fine_codec is None or self.fine_shares_coarse
                else np.empty((n, self.fine_codec.code_size), dtype=np.uint8))
        step = 65536
        for s in tqdm(range(0, n, step), desc="encode", disable=not progress or n <= step):
            block = X[order[s:s + step]]
            coarse[s:s + step] = self.coarse_codec.encode(block)
            if fine is not None:
                fine[s:s + step] = self.fine_codec.encode(block)
        return coarse, fine

    def _routing_projection(self) -> np.ndarray | None:
        """The coarse codec's orthonormal projection when routing in code space, else None."""
        return self._coarse_sign[0] if self.config.coarse.routing == "code" else None

    def _sign_fine_stage(self) -> bool:
        """Whether the fine stage scores sign codes through look-up tables."""
        return self.fine_codec is not None and self.config.fine.scoring == "adc" and self.sign_scorer is not None

    @property
    def _cell_prior_applies(self) -> bool:
        return self.cell_weight_ is not None and self.partition is not None and self._sign_fine_stage()

    def _item_scales_apply(self) -> bool:
        """Whether rows carry item scales: a sign-table fine stage scored by inner product."""
        cfg = self.config
        return (cfg.fine.item_scales and cfg.fine.scoring == "adc" and cfg.metric == "ip"
                and self.fine_codec is not None and self.sign_scorer is not None)

    def _quantize_scales(self, factors: np.ndarray) -> np.ndarray:
        return quantize_scales(factors, *self.scale_range_)

    def _scale_map(self) -> tuple[np.float32, np.float32]:
        return scale_map(*self.scale_range_)

    def _init_runtime(self, state: State) -> None:
        self._state = state
        self._lock = threading.RLock()
        self._stats_lock = threading.Lock()
        self.total_stats = SearchStats()
        self._exclusion_cache: dict[tuple, np.ndarray | None] = {}
        self._widest_cells: tuple[Segment | None, np.ndarray] = (None, np.zeros(0, np.int64))

    # ---- properties ------------------------------------------------------------------------
    @property
    def n_items(self) -> int:
        """Items that are searchable (tombstoned rows excluded)."""
        return self._state.n_alive

    def __len__(self) -> int:
        return self.n_items

    @property
    def has_exact(self) -> bool:
        return self._state.main.exact is not None

    def item_ids(self) -> np.ndarray:
        """Ids of all searchable items (int64), in storage order."""
        st = self._state
        ids = np.asarray(st.main.ids, dtype=np.int64)
        if st.delta is not None:
            ids = np.concatenate([ids, np.asarray(st.delta.ids, dtype=np.int64)])
        return ids if st.dead is None else ids[~st.dead]

    def __contains__(self, item_id: object) -> bool:
        try:
            return self._row_of(self._state, np.array([int(item_id)]))[0] >= 0  # type: ignore[call-overload]
        except (TypeError, ValueError):
            return False

    def has_modality(self, item_id: int, modality: str) -> bool:
        st = self._state
        row = int(self._row_of(st, np.array([item_id]))[0])
        if row < 0:
            raise KeyError(item_id)
        j = self._modality_index(modality)
        seg, r = (st.main, row) if row < st.main.n else (st.delta, row - st.main.n)
        return bool(unpack_mask(seg.masks[j], r, r + 1)[0])

    def _modality_index(self, modality: str) -> int:
        try:
            return self.modalities.index(modality)
        except ValueError:
            raise CatalogError(f"unknown modality {modality!r}", expected=self.modalities,
                               found=modality) from None

    def _row_of(self, st: State, item_ids: np.ndarray) -> np.ndarray:
        """Global row of each alive id, -1 where unknown or removed."""
        item_ids = np.asarray(item_ids, dtype=np.int64)
        rows = np.full(len(item_ids), -1, dtype=np.int64)
        if st.delta is not None:
            r = st.delta.find(item_ids)
            hit = r >= 0
            rows[hit] = r[hit] + st.main.n
        todo = rows < 0
        if todo.any():
            r = st.main.find(item_ids[todo])
            rows[todo] = r
        if st.dead is not None:
            ok = rows >= 0
            rows[ok & st.dead[np.maximum(rows, 0)]] = -1
        return rows

    # ---- search ----------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int, *, modality: str | None = None,
               coarse_shortlist: int | None = None, fine_shortlist: int | None = None,
               nprobe: int | None = None, exact_rerank: bool | None = None,
               first_wave: int | None = None, confidence: float | None = None,
               compiled: bool | None = None, threads: int = 1, return_stats: bool = False
               ) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, SearchStats]:
        """Top-``k`` items of each query: (scores float32 (nq, k), item ids int64 (nq, k)).

        Scores are inner products (``ip``) or negative squared distances (``l2``) of the last
        stage that ran; rows with fewer than ``k`` candidates are padded with id -1 and -inf.
        Keyword arguments override the configured stage parameters for this call
        (``first_wave`` / ``confidence``: ``config.exact``'s two-wave reading).
        """
        st = self._state
        Q = check_vectors(queries, d=self.d_, name="queries")
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise CodecError(f"k must be a positive integer; found {k!r}")
        k = int(k)
        cfg = self.config
        exact = cfg.exact_rerank if exact_rerank is None else bool(exact_rerank)
        exact = exact and st.main.exact is not None
        use_fine = self.fine_codec is not None
        s2 = max(fine_shortlist or cfg.fine.shortlist, k) if (use_fine and exact) else k
        s1 = max(coarse_shortlist or cfg.coarse.shortlist, s2 if use_fine else k)
        if not use_fine and not exact:
            s1 = k
        waves = cfg.exact.first_wave if first_wave is None else first_wave
        confidence = cfg.exact.confidence if confidence is None else confidence
        check_waves(waves, confidence, names=("first_wave", "confidence"))
        if exact and waves < s2:
            self._check_bound_for(waves)
        params = dict(k=k, s1=s1, s2=s2, exact=exact, use_fine=use_fine, waves=waves, confidence=confidence,
                      nprobe=nprobe or cfg.coarse.nprobe,
                      excl=self._exclusions(st, modality))
        want_compiled = cfg.compiled_scan if compiled is None else compiled
        params["compiled_coarse"] = want_compiled and self._compiled_coarse_applies(st)
        params["compiled"] = want_compiled and self._compiled_applies(st, use_fine)
        longest = _CHUNK_QUERIES_FROM_DISK if exact and self._exact_from_disk(st) else _CHUNK_QUERIES
        per_chunk = max(1, min(longest, _CHUNK_ELEMENTS // max(1, self._scan_width(st, params["nprobe"]))))
        chunks = [slice(s, min(s + per_chunk, len(Q))) for s in range(0, len(Q), per_chunk)]

        def run(sl: slice) -> tuple[np.ndarray, np.ndarray, SearchStats]:
            return self._search_chunk(st, Q[sl], params)

        if threads > 1 and len(chunks) > 1:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                parts = list(pool.map(run, chunks))
        else:
            parts = [run(sl) for sl in chunks]
        scores = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, k), np.float32)
        found = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, k), np.int64)
        if len(parts) == 1:  # one chunk: its stats as they are
            stats = parts[0][2]
        else:
            stats = SearchStats()
            for p in parts:
                stats = stats.merge(p[2])
        with self._stats_lock:
            self.total_stats = self.total_stats.merge(stats)
        return (scores, found, stats) if return_stats else (scores, found)

    def search_by_id(self, item_id: int, k: int, *, modality: str | None = None,
                     vector: np.ndarray | None = None, **overrides: Any) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest items to a stored item, the item itself excluded: (scores, ids) 1-D.

        Raises ``KeyError`` for an unknown or removed id. ``vector`` skips the lookup of the
        item's own vector (e.g. from a cache)."""
        if vector is None:
            vector = self.vector_of(item_id)
        scores, found = self.search(vector[None, :], k + 1, modality=modality, **overrides)
        keep = found[0] != int(item_id)
        return scores[0][keep][:k], found[0][keep][:k]

    def vector_of(self, item_id: int) -> np.ndarray:
        """The best vector the index holds for an item: exact, else fine, else coarse decode."""
        st = self._state
        row = int(self._row_of(st, np.array([item_id]))[0])
        if row < 0:
            raise KeyError(item_id)
        rows = np.array([row])
        if st.main.exact is not None:
            return st.exact().read(rows)[0]
        if self.fine_codec is not None:
            return self.fine_codec.decode(self._take(st, self._fine_attr, rows))[0]
        return self.coarse_codec.decode(self._take(st, "coarse", rows))[0]

    @staticmethod
    def _exact_from_disk(st: State) -> bool:
        """Whether the exact stage reads rows from disk (a reader with bounded reads)."""
        return getattr(st.exact(), "rows_per_read", None) is not None

    def _scan_width(self, st: State, nprobe: int) -> int:
        nd = st.delta.n if st.delta is not None else 0
        if self.partition is None:
            return st.main.n + nd
        main, widest = self._widest_cells
        if main is not st.main:  # the main segment changes only on compaction
            widest = np.cumsum(np.sort(np.diff(st.main.offsets))[::-1])
            self._widest_cells = (st.main, widest)
        return int(widest[min(nprobe, len(widest)) - 1]) + nd

    def _exclusions(self, st: State, modality: str | None) -> np.ndarray | None:
        """Bool over all rows: tombstoned, or lacking ``modality``; None when nothing is excluded."""
        j = None if modality is None else self._modality_index(modality)
        key = (st.version, j)
        cached = self._exclusion_cache.get(key, False)
        if cached is not False:
            return cached  # type: ignore[return-value]
        excl = None if st.dead is None else st.dead.copy()
        if j is not None:
            lacks = ~unpack_mask(st.main.masks[j], 0, st.main.n)
            if st.delta is not None:
                lacks = np.concatenate([lacks, ~unpack_mask(st.delta.masks[j], 0, st.delta.n)])
            excl = lacks if excl is None else (excl | lacks)
        if len(self._exclusion_cache) > 16:
            self._exclusion_cache.clear()
        self._exclusion_cache[key] = excl
        return excl

    def _compiled_coarse_applies(self, st: State) -> bool:
        """Whether the compiled kernel can run the coarse stage: binary coarse codes in whole
        64-bit words, within its 16-bit distance lanes, and no pending delta segment."""
        return (kernels.AVAILABLE and st.delta is None and getattr(self.coarse_codec, "is_binary", False)
                and self.coarse_codec.code_size % 8 == 0 and 8 * self.coarse_codec.code_size <= kernels.MAX_BITS)

    def _compiled_applies(self, st: State, use_fine: bool) -> bool:
        """Whether the compiled kernel can run both first stages: the coarse stage, then a
        sign-table fine stage."""
        return (use_fine and self._compiled_coarse_applies(st) and self.config.fine.scoring == "adc"
                and self.sign_scorer is not None)

    def _search_chunk(self, st: State, Q: np.ndarray, p: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, SearchStats]:
        nq, k = len(Q), p["k"]
        stats = SearchStats(n_queries=nq)
        t0 = time.perf_counter()
        if p["compiled"]:
            rows, scores, scanned, kept = self._compiled_scan(st, Q, p, fine=True)
            t1 = t2 = time.perf_counter()
            stats.coarse_scanned = float(scanned.sum()) / nq if nq else 0.0
            stats.coarse_shortlist = float(kept.sum()) / nq if nq else 0.0
            stats.fine_shortlist = float(np.count_nonzero(rows >= 0)) / nq if nq else 0.0
            stats.seconds["coarse+fine"] = t1 - t0
        else:
            QW = self._query_projection(Q)
            probes, S = self._route(Q, p["nprobe"], QW)
            if p["compiled_coarse"]:
                rows, scores, scanned, _ = self._compiled_scan(st, Q, p, fine=False, QW=QW, probes=probes)
            else:
                rows, scores, scanned = self._coarse(st, Q, p["s1"], p["nprobe"], p["excl"], QW=QW, probes=probes)
            t1 = time.perf_counter()
            stats.coarse_scanned = float(scanned.sum()) / nq if nq else 0.0
            stats.coarse_shortlist = float(np.count_nonzero(rows >= 0)) / nq if nq else 0.0
            stats.seconds["coarse"] = t1 - t0
            if p["use_fine"]:
                keep = p["s2"] if p["exact"] else k
                rows, scores = self._rescore(st, Q, rows, keep, cell_scores=S, QW=QW)
                stats.fine_shortlist = float(np.count_nonzero(rows >= 0)) / nq if nq else 0.0
            t2 = time.perf_counter()
            stats.seconds["fine"] = t2 - t1
        if p["exact"]:
            counts = ReadCounts()
            rows, scores = exact_rerank(st.exact(), Q, rows, k, self.config.metric, counts=counts, estimates=scores,
                                        bound=self.rerank_bound_, first_wave=p["waves"], confidence=p["confidence"])
            stats.exact_reranked = counts.scored / max(nq, 1)
            row_bytes = getattr(getattr(st.main.exact, "layout", None), "row_bytes", 4 * self.d_)
            stats.disk_bytes = counts.scored * row_bytes / max(nq, 1)
            stats.exact_pages = counts.pages_read / max(nq, 1)
            stats.exact_pool_hits = counts.pool_hits / max(nq, 1)
        stats.seconds["exact"] = time.perf_counter() - t2
        if not p["exact"] or rows.shape[1] != k:  # the exact stage returns its top k sorted
            rows, scores = best_columns(rows, scores, k)
        ids = self._ids_of(st, rows)
        return scores.astype(np.float32, copy=False), ids, stats

    def _probes(self, Q: np.ndarray, nprobe: int, QW: np.ndarray | None = None) -> np.ndarray:
        """The cells each query scans (nq, nprobe); the single cell 0 when unpartitioned.
        ``QW``: the queries' coarse projection, reused where the cells are routed in that space."""
        return self._route(Q, nprobe, QW)[0]

    def _route(self, Q: np.ndarray, nprobe: int, QW: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray | None]:
        """The probed cells (:meth:`_probes`) and, where the cell prior applies, every cell's
        routing score (nq, nlist), else None."""
        if self.partition is None:
            return np.zeros((len(Q), 1), dtype=np.int64), None
        projected = QW is not None and self.partition.projection_ is self._coarse_sign[0]
        if self._cell_prior_applies:
            return self.partition.probe(QW if projected else Q, nprobe, projected=projected, with_scores=True)
        return self.partition.probe(QW if projected else Q, nprobe, projected=projected), None

    def _cell_prior(self, S: np.ndarray | None, qi: np.ndarray | slice, cells: np.ndarray) -> np.ndarray | None:
        """``weight * S[q, cell]``, float32, for queries ``qi`` and their rows' ``cells``."""
        if S is None:
            return None
        return np.float32(self.cell_weight_) * S[qi, cells].astype(np.float32)

    def _cells_of(self, st: State, rows: np.ndarray) -> np.ndarray:
        """The IVF cell of each (valid) row, main or delta."""
        main = st.main
        out = np.searchsorted(main.offsets, rows, side="right") - 1
        in_delta = rows >= main.n
        if in_delta.any():
            out[in_delta] = st.delta.cells[rows[in_delta] - main.n]
        return out

    @property
    def _coarse_sign(self) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
        """``(W, mean @ W)`` of a binary coarse codec with an orthonormal projection, else Nones."""
        if not hasattr(self, "_coarse_sign_cache"):
            own = getattr(self.coarse_codec, "sign_projection", lambda: None)()
            self._coarse_sign_cache = (None, None) if own is None else (own[1], own[0] @ own[1])
        return self._coarse_sign_cache

    def _query_projection(self, Q: np.ndarray) -> np.ndarray | None:
        """``Q @ W`` for the coarse codec's projection ``W``, else None: one product that the
        query codes, code-space routing and a sign scorer on the same codec all read."""
        W = self._coarse_sign[0]
        return None if W is None else matmul_half(Q, W)

    def _query_codes(self, Q: np.ndarray, QW: np.ndarray | None = None) -> np.ndarray:
        """Coarse codes of the queries; from ``QW`` when given (``(q - m) W > 0`` as ``q W > m W``)."""
        if QW is None:
            return self.coarse_codec.encode(Q)
        return np.packbits(QW > self._coarse_sign[1], axis=1)

    def _sign_projections(self, Q: np.ndarray, QW: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The sign scorer's projections and constants, reusing ``QW`` where the scorer shares
        the coarse codec's projection."""
        scorer = self.sign_scorer
        shared = QW is not None and scorer.W is self._coarse_sign[0]
        return scorer.projections(Q, QW if shared else None)

    def _compiled_scan(self, st: State, Q: np.ndarray, p: dict[str, Any], *, fine: bool,
                       QW: np.ndarray | None = None, probes: np.ndarray | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The compiled coarse popcount selection (the same rows and scores as :meth:`_coarse`),
        and with ``fine`` the sign-table scores of the shortlist in the same pass: rows, scores,
        items scanned and kept by the coarse stage, per query. ``QW`` and ``probes``: as the
        caller routed (the fine pass routes itself, for the cell scores)."""
        main, excl = st.main, p["excl"]
        S = None
        if probes is None:
            QW = self._query_projection(Q)
            probes, S = self._route(Q, p["nprobe"], QW)
        args = (self._query_codes(Q, QW), main.coarse, main.offsets, probes,
                None if excl is None else excl[:main.n], p["s1"])
        if not fine:
            return kernels.coarse_scan(*args)
        proj, const = self._sign_projections(Q, QW)
        scales = None if main.scales is None else (main.scales, *self._scale_map())
        return kernels.coarse_fine_scan(*args, getattr(main, self._fine_attr), proj, const,
                                        p["s2"] if p["exact"] else p["k"], ordered=not p["exact"],
                                        scales=scales, prior=self._cell_prior(S, np.arange(len(Q))[:, None], probes))

    def _coarse(self, st: State, Q: np.ndarray, s1: int, nprobe: int, excl: np.ndarray | None, *,
                QW: np.ndarray | None = None, probes: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Coarse shortlist: global rows (nq, s1) padded with -1, scores (higher = closer),
        and how many items each query scanned (:mod:`.coarse`). ``QW`` and ``probes``: as the
        caller routed."""
        if probes is None:
            QW = self._query_projection(Q)
            probes = self._probes(Q, nprobe, QW)
        partitioned = self.partition is not None
        if not getattr(self.coarse_codec, "is_binary", False):
            return codec_shortlist(st, self.coarse_codec, lambda attr, rows: self._take(st, attr, rows), Q,
                                   probes, s1, excl, partitioned=partitioned)
        return hamming_shortlist(st, self._query_codes(Q, QW), probes, s1, excl,
                                 8 * self.coarse_codec.code_size + 1, partitioned=partitioned)

    def _rescore(self, st: State, Q: np.ndarray, rows: np.ndarray, keep: int,
                 cell_scores: np.ndarray | None = None, QW: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Score shortlisted rows with the fine codec; keep the best ``keep``. ``cell_scores``:
        every cell's routing score per query, for the cell prior; ``QW``: the queries' coarse
        projection where the caller has it."""
        valid = rows >= 0
        if self.config.fine.scoring == "adc":
            return self._rescore_adc(st, Q, rows, valid, keep, cell_scores, QW)
        uniq, inv = np.unique(rows[valid], return_inverse=True)
        X = (self.fine_codec.decode(self._take(st, self._fine_attr, uniq)) if len(uniq)
             else np.zeros((0, self.d_), np.float32))
        pos = np.zeros(rows.shape, dtype=np.int64)
        pos[valid] = inv
        G = X[pos]  # (nq, s, d)
        S = np.matmul(G, Q[:, :, None])[:, :, 0]
        if self.config.metric == "l2":
            S = 2 * S - (G * G).sum(axis=2) - (Q * Q).sum(axis=1)[:, None]
        S = np.where(valid, S, -np.inf).astype(np.float32)
        return best_columns(rows, S, keep)

    @property
    def sign_scorer(self) -> SignLUTScorer | None:
        """Look-up-table scan for a binary fine codec (built on first use), else None."""
        if not hasattr(self, "_sign_scorer"):
            with self._lock:
                if not hasattr(self, "_sign_scorer"):
                    dtype = np.float16 if self.config.half_precision_tables else np.float32
                    self._sign_scorer = (SignLUTScorer.from_codec(self.fine_codec, dtype=dtype)
                                         if self.fine_codec is not None else None)
        return self._sign_scorer

    def _rescore_adc(self, st: State, Q: np.ndarray, rows: np.ndarray, valid: np.ndarray,
                     keep: int, cell_scores: np.ndarray | None = None,
                     QW: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Asymmetric scores of each query's shortlist: sign look-up tables for binary codes
        (batched), else the fine codec's own ``search`` per query."""
        scorer = self.sign_scorer
        if scorer is not None:
            codes = np.zeros(rows.shape + (scorer.code_size,), dtype=np.uint8)
            codes[valid] = self._take(st, self._fine_attr, rows[valid])
            proj, const = self._sign_projections(Q, QW)
            lut = sign_tables(proj)
            S = table_scores(lut, codes)
            if st.main.scales is not None:
                lo, step = self._scale_map()
                S[valid] *= lo + step * self._take(st, "scales", rows[valid]).astype(np.float32)
            S = S + const[:, None].astype(np.float32)
            if cell_scores is not None:  # in the compiled kernel's order: (table sum + const) + prior
                qi = np.nonzero(valid)[0]
                S[valid] += self._cell_prior(cell_scores, qi, self._cells_of(st, rows[valid]))
            S = np.where(valid, S, -np.inf).astype(np.float32)
            return best_columns(rows, S, keep)
        tables = self.fine_codec.search_tables(Q) if self._fine_norm_coef is not None else None
        if tables is not None:  # additive codes: gathers from per-query tables, stored norms
            lut, const, coef = tables
            codes = np.zeros(rows.shape + (self.fine_codec.code_size,), dtype=np.uint8)
            codes[valid] = self._take(st, self._fine_attr, rows[valid])
            S = table_scores(lut, codes) + const[:, None].astype(np.float32)
            if coef:
                S[valid] -= np.float32(coef) * self._fine_norms_of(st, rows[valid])
            return best_columns(rows, np.where(valid, S, -np.inf).astype(np.float32), keep)
        nq = len(Q)
        out_rows = np.full((nq, keep), -1, dtype=np.int64)
        out_scores = np.full((nq, keep), -np.inf, dtype=np.float32)
        for i in range(nq):
            r = rows[i][valid[i]]
            if len(r) == 0:
                continue
            dist, pos = self.fine_codec.search(self._take(st, self._fine_attr, r), Q[i:i + 1], min(keep, len(r)))
            ok = pos[0] >= 0
            m = int(ok.sum())
            out_rows[i, :m] = r[pos[0][ok]]
            out_scores[i, :m] = dist[0][ok]
        return out_rows, out_scores

    @property
    def _fine_norm_coef(self) -> float | None:
        """The norm coefficient of the fine codec's table form (0 when it scores no norm term),
        or None when its score has no table form and each shortlist goes through its search."""
        if not hasattr(self, "_fine_coef"):
            with self._lock:
                if not hasattr(self, "_fine_coef"):
                    got = (self.fine_codec.search_tables(np.zeros((1, self.d_), np.float32))
                           if self.fine_codec is not None and self.sign_scorer is None else None)
                    self._fine_coef = None if got is None else float(got[2])
        return self._fine_coef

    def _segment_fine_norms(self, seg: Segment) -> np.ndarray:
        """One segment's fine-code norms, decoded once and kept with the (immutable) segment."""
        if seg.fine_norms is None:
            with self._lock:
                if seg.fine_norms is None:
                    seg.fine_norms = self.fine_codec.scan_norms(np.asarray(getattr(seg, self._fine_attr)))
        return seg.fine_norms

    def _fine_norms_of(self, st: State, rows: np.ndarray) -> np.ndarray:
        for seg in (st.main, st.delta):
            if seg is not None:
                self._segment_fine_norms(seg)
        return self._take(st, "fine_norms", rows)

    @property
    def _fine_attr(self) -> str:
        return "coarse" if self.fine_shares_coarse else "fine"

    def _take(self, st: State, attr: str, rows: np.ndarray) -> np.ndarray:
        """Rows of one array across the main and delta segments (rows sorted for locality)."""
        main, delta = st.main, st.delta
        rows = np.asarray(rows, dtype=np.int64)
        src = getattr(main, attr)
        if delta is None or len(rows) == 0 or rows.max() < main.n:
            return np.asarray(src[rows])
        dsrc = getattr(delta, attr)
        out = np.empty((len(rows),) + src.shape[1:], dtype=src.dtype)
        m = rows < main.n
        out[m] = src[rows[m]]
        out[~m] = dsrc[rows[~m] - main.n]
        return out

    def _ids_of(self, st: State, rows: np.ndarray) -> np.ndarray:
        out = np.full(rows.shape, -1, dtype=np.int64)
        valid = rows >= 0
        if valid.any():
            out[valid] = self._take(st, "ids", rows[valid])
        return out

    # ---- mutation --------------------------------------------------------------------------
    def add(self, vectors: np.ndarray, ids: Iterable[int] | np.ndarray, *,
            masks: Mapping[str, np.ndarray] | None = None, titles: Mapping[int, str] | None = None) -> None:
        """Encode and append items with the fitted codecs (no retraining). Missing modality
        masks default to present. Ids already in the index are refused."""
        X = check_vectors(vectors, d=self.d_, name="vectors")
        ids = check_ids(ids, len(X))
        _, mask_matrix = self._check_masks(masks, len(X), self.modalities)
        with self._lock:
            st = self._state
            present = self._row_of(st, ids) >= 0
            if present.any():
                raise CatalogError("item ids already in the index", column="item_id",
                                   expected="new ids", found=f"{int(present.sum())} present, first "
                                   f"{int(ids[np.flatnonzero(present)[0]])}")
            order = np.arange(len(X))
            coarse, fine = self._encode(X, order, progress=False)
            scales = (None if st.main.scales is None else self._quantize_scales(
                self.sign_scorer.item_factors(X, fine if fine is not None else coarse, self.scale_gamma_)))
            cells = self.partition.assign(X) if self.partition is not None else np.zeros(len(X), np.int32)
            old = st.delta
            exact = X if st.main.exact is not None else None
            old_exact = None if old is None or old.exact is None else old.exact.read(np.arange(old.n))
            if old is not None:
                def cat(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
                    return None if a is None or b is None else np.concatenate([np.asarray(a), b])
                old_masks = np.unpackbits(old.masks, axis=1, bitorder="little")[:, :old.n].T.astype(bool) \
                    if len(self.modalities) else np.zeros((old.n, 0), bool)
                mask_matrix = np.concatenate([old_masks, mask_matrix])
                coarse, fine = cat(old.coarse, coarse), cat(old.fine, fine)
                exact, scales = cat(old_exact, exact), cat(old.scales, scales)
                cells = np.concatenate([old.cells, cells])
                ids = np.concatenate([np.asarray(old.ids, np.int64), ids])
            delta = Segment(coarse=coarse, fine=fine, ids=ids,
                            exact=None if exact is None else MemoryRowReader.from_array(exact),
                             masks=pack_masks(mask_matrix), offsets=np.array([0, len(ids)], np.int64),
                             cells=cells.astype(np.int32), scales=scales)
            dead = st.dead
            if dead is not None:
                dead = np.concatenate([dead[:st.main.n], np.zeros(delta.n, bool)])
                if old is not None:
                    dead[st.main.n:st.main.n + old.n] = st.dead[st.main.n:]
            self._state = State(main=st.main, delta=delta, dead=dead, n_dead=st.n_dead)
            if titles:
                self.titles.update({int(a): str(b) for a, b in titles.items()})

    def remove(self, ids: Iterable[int] | np.ndarray, *, missing_ok: bool = False) -> int:
        """Tombstone items; returns how many were removed. Unknown ids raise unless ``missing_ok``."""
        ids = np.atleast_1d(np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids)).astype(np.int64)
        with self._lock:
            st = self._state
            rows = self._row_of(st, ids)
            missing = rows < 0
            if missing.any() and not missing_ok:
                raise CatalogError("cannot remove ids that are not in the index", column="item_id",
                                   found=f"{int(missing.sum())} unknown, first {int(ids[np.flatnonzero(missing)[0]])}")
            rows = np.unique(rows[~missing])
            if len(rows) == 0:
                return 0
            dead = np.zeros(st.n_rows, bool) if st.dead is None else st.dead.copy()
            dead[rows] = True
            self._state = State(main=st.main, delta=st.delta, dead=dead, n_dead=int(dead.sum()))
            return len(rows)

    def compact(self, exact_vectors_path: str | Path | None = None) -> None:
        """Fold the delta into the main segment and drop tombstoned rows (codecs unchanged).

        The compacted exact store is written to ``exact_vectors_path`` when given (and read as
        ``config.exact`` says), else kept in memory until :meth:`save`."""
        with self._lock:
            main = self._compacted(self._state, exact_vectors_path)
            self._state = State(main=main, delta=None, dead=None)
            self._exclusion_cache.clear()

    def _compacted(self, st: State, exact_vectors_path: str | Path | None = None, *,
                   lazy_exact: bool = False) -> Segment:
        """The state's alive rows as one segment sorted by cell. The exact store is written to
        ``exact_vectors_path``, else read into memory, else (``lazy_exact``, for saving) a view
        of the old store's rows that the writer streams."""
        if st.delta is None and st.dead is None:
            return st.main
        main, delta = st.main, st.delta
        cells = np.repeat(np.arange(len(main.offsets) - 1, dtype=np.int32), np.diff(main.offsets))
        if delta is not None:
            cells = np.concatenate([cells, delta.cells])
        alive = np.ones(st.n_rows, bool) if st.dead is None else ~st.dead
        rows = np.flatnonzero(alive)
        order = rows[np.argsort(cells[rows], kind="stable")]
        nlist = len(main.offsets) - 1
        offsets = np.searchsorted(cells[order], np.arange(nlist + 1)).astype(np.int64)
        masks = np.zeros((len(order), len(self.modalities)), bool)
        for j in range(len(self.modalities)):
            col = unpack_mask(main.masks[j], 0, main.n)
            if delta is not None:
                col = np.concatenate([col, unpack_mask(delta.masks[j], 0, delta.n)])
            masks[:, j] = col[order]
        exact: RowReader | None = None
        if main.exact is not None:
            if exact_vectors_path is not None:
                exact = self._write_exact(exact_vectors_path, st.exact(), order)
            elif lazy_exact:
                exact = RowSubset(st.exact(), order)
            else:
                exact = MemoryRowReader.from_array(st.exact().read(order))
        return Segment(coarse=self._take(st, "coarse", order),
                        fine=None if main.fine is None else self._take(st, "fine", order),
                        ids=PackedIds.pack(self._take(st, "ids", order).astype(np.int64)),
                        exact=exact, masks=pack_masks(masks), offsets=offsets,
                        scales=None if main.scales is None else self._take(st, "scales", order))

    # ---- memory ----------------------------------------------------------------------------
    def memory_report(self) -> dict[str, Any]:
        """Bytes by component: resident (scanned or touched per query) and on disk."""
        st = self._state
        segs = [st.main] + ([st.delta] if st.delta is not None else [])
        resident = {
            "coarse_codes": sum(s.coarse.nbytes for s in segs),
            "fine_codes": sum(s.fine.nbytes for s in segs if s.fine is not None),
            "ids": sum(s.ids.nbytes for s in segs),
            "modality_masks": sum(s.masks.nbytes for s in segs),
            "tombstones": 0 if st.dead is None else st.dead.nbytes,
            "cell_offsets": st.main.offsets.nbytes,
            "centroids": 0 if self.partition is None else self.partition.centroids_.nbytes,
            "coarse_codec": _codec_state_bytes(self.coarse_codec),
            "fine_codec": 0 if self.fine_shares_coarse else _codec_state_bytes(self.fine_codec),
            "fine_scan_tables": (self.sign_scorer.nbytes if self.config.fine.scoring == "adc"
                                 and self.sign_scorer is not None else 0),
            "item_scales": sum(s.scales.nbytes for s in segs if s.scales is not None),
            "fine_norms": (4 * st.n_rows if self.config.fine.scoring == "adc" and self._fine_norm_coef else 0),
            "exact_buffer_pool": sum(s.exact.resident_bytes() for s in segs
                                     if s.exact is not None and not isinstance(s.exact, MemoryRowReader)),
        }
        on_disk = {
            "exact_vectors": sum(s.exact.nbytes for s in segs if s.exact is not None),
            "id_lookup": st.main.n * 16,
        }
        n = max(st.n_alive, 1)
        total = sum(resident.values())
        mode = None if st.main.exact is None else st.main.exact.stats()["mode"]
        return {"n_items": st.n_alive, "resident_bytes": resident, "resident_total": total,
                "resident_bytes_per_item": total / n, "on_disk_bytes": on_disk,
                "exact_on_disk": mode is not None and mode != "memory", "exact_reader": mode}

    def bytes_per_item(self) -> float:
        """All-in resident bytes per item: codes + ids + masks + tables amortised."""
        return float(self.memory_report()["resident_bytes_per_item"])

    # ---- persistence -----------------------------------------------------------------------
    def save(self, directory: str | Path, *, progress: bool = False) -> Path:
        """Write the index (compacted view) into ``directory`` atomically; see :mod:`.store`."""
        st = self._state
        return write_index(SavedIndex(
            config=self.config, coarse_codec=self.coarse_codec, fine_codec=self.fine_codec,
            fine_shares_coarse=self.fine_shares_coarse, d=self.d_, modalities=list(self.modalities),
            main=self._compacted(st, lazy_exact=True),
            partition=None if self.partition is None else self.partition.get_state(),
            titles=self.titles, popular_item_ids=self.popular_item_ids,
            item_scales=None if self.scale_gamma_ is None else (self.scale_gamma_, *self.scale_range_),
            cell_weight=self.cell_weight_, rerank_bound=self.rerank_bound_), directory)

    @classmethod
    def load(cls, directory: str | Path, *, mmap: bool = True, verify: str = "quick",
             exact_reader: str | None = None, exact_pool_bytes: int | None = None,
             reads_in_flight: int | None = None) -> CascadeIndex:
        """Open a saved index; code arrays are memory-mapped when ``mmap``. ``verify``: "quick"
        checks small files fully and large arrays by size and sampled digest; "full" hashes all.
        ``exact_reader`` / ``exact_pool_bytes`` / ``reads_in_flight`` override the saved
        ``config.exact`` (how the exact store is read: ``"mmap"``, ``"direct"``, ``"pread"``)."""
        saved = read_index(directory, mmap=mmap, verify=verify, exact_reader=exact_reader,
                           exact_pool_bytes=exact_pool_bytes, reads_in_flight=reads_in_flight)
        index = cls(saved.config)
        index.coarse_codec, index.fine_codec = saved.coarse_codec, saved.fine_codec
        index.fine_shares_coarse, index.d_, index.modalities = saved.fine_shares_coarse, saved.d, saved.modalities
        index.partition = None if saved.partition is None else CoarsePartition.from_state(
            *saved.partition, projection=index._routing_projection())
        index.titles, index.popular_item_ids = saved.titles, saved.popular_item_ids
        index.cell_weight_ = saved.cell_weight
        index.rerank_bound_ = saved.rerank_bound
        if saved.item_scales is not None:
            index.scale_gamma_, index.scale_range_ = saved.item_scales[0], saved.item_scales[1:]
        index._init_runtime(State(main=saved.main, delta=None, dead=None))
        # the fine stage's table scorer is derived here rather than on the first query: it decodes
        # every one-bit code to check the sign map (megabytes for a moment, milliseconds of work)
        _ = index.sign_scorer, index._coarse_sign
        return index

    # ---- the exact store -------------------------------------------------------------------
    def _write_exact(self, path: str | Path, source: Any, order: np.ndarray) -> RowReader:
        """Write ``source[order]`` as a row file of ``config.exact.dtype`` at ``path`` and open it
        as ``config.exact`` says."""
        write_rows(path, source, order, dtype=self.config.exact.dtype)
        return self._open_exact(path)

    def _open_exact(self, path: str | Path) -> RowReader:
        ex = self.config.exact
        return open_row_store(path, reader=ex.reader, pool_bytes=ex.pool_bytes, reads_in_flight=ex.reads_in_flight)

    def reopen_exact(self, reader: str | None = None, *, pool_bytes: int | None = None,
                     reads_in_flight: int | None = None) -> None:
        """Read the on-disk exact store another way from now on (e.g. ``"direct"`` with a pool of
        1% of the store), keeping the rest of the index; the settings go into ``config.exact``.
        An exact store held only in memory has no file to reopen: it stays as it is."""
        ex = self.config.exact
        with self._lock:
            ex.reader = ex.reader if reader is None else reader
            ex.pool_bytes = ex.pool_bytes if pool_bytes is None else int(pool_bytes)
            ex.reads_in_flight = ex.reads_in_flight if reads_in_flight is None else int(reads_in_flight)
            self.config.validate()
            st = self._state
            path = None if st.main.exact is None else getattr(st.main.exact, "path", None)
            if path is None:
                return
            main = Segment(**{**st.main.__dict__, "exact": self._open_exact(path)})
            self._state = State(main=main, delta=st.delta, dead=st.dead, n_dead=st.n_dead)

    def set_exact_waves(self, first_wave: int | None = None, confidence: float | None = None) -> None:
        """Read the exact stage in two waves from now on (``config.exact.first_wave`` /
        ``confidence``; None keeps the current value); refuses ``first_wave > 0`` on an index
        without a fitted rerank bound, changing nothing."""
        ex = self.config.exact
        waves = ex.first_wave if first_wave is None else first_wave
        level = ex.confidence if confidence is None else confidence
        check_waves(waves, level, names=("first_wave", "confidence"))
        self._check_bound_for(waves)
        with self._lock:
            ex.first_wave, ex.confidence = int(waves), float(level)

    def _check_bound_for(self, first_wave: int) -> None:
        """Refuse a two-wave exact stage (``first_wave > 0``) on an index without a rerank bound."""
        if first_wave > 0 and self.rerank_bound_ is None:
            raise CodecError(f"first_wave > 0 needs the rerank bound an index fits at build (first_wave="
                             f"{first_wave}); this index has none (built without an exact stage, or saved before "
                             "format 4): rebuild it or read in one wave")

    def exact_store_stats(self) -> dict[str, Any]:
        """The exact store reader's counters (``RowReader.stats``: pages read, pool hits and
        hit rate, bytes, reads, mode); empty without an exact store. For /metrics."""
        reader = self._state.exact()
        return {} if reader is None else reader.stats()

    def reset_exact_store_stats(self) -> None:
        reader = self._state.exact()
        if reader is not None:
            reader.reset_stats()

    def close(self) -> None:
        """Release the exact store's file and read threads (searches needing it fail after)."""
        st = self._state
        for seg in (st.main, st.delta):
            if seg is not None and seg.exact is not None:
                seg.exact.close()

    def describe(self) -> dict[str, Any]:
        cfg = self.config
        return {"coarse_codec": self.coarse_codec.spec,
                "fine_codec": None if self.fine_codec is None else
                ("coarse" if self.fine_shares_coarse else self.fine_codec.spec),
                "exact_rerank": self.has_exact and cfg.exact_rerank, "metric": cfg.metric,
                "nlist": 0 if self.partition is None else self.partition.nlist,
                "nprobe": cfg.coarse.nprobe, "coarse_shortlist": cfg.coarse.shortlist,
                "fine_shortlist": cfg.fine.shortlist, "n_items": self.n_items, "d": self.d_,
                "modalities": list(self.modalities)}

    def __repr__(self) -> str:
        return f"CascadeIndex({json.dumps(self.describe())})"


def recommended_nlist(n: int) -> int:
    """A cell count for ``n`` items: none below 20k items, about 2 * sqrt(n) above."""
    return 0 if n < 20_000 else int(2 ** round(math.log2(2 * math.sqrt(n))))
