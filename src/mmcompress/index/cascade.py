"""Cascade index: a compact coarse code scanned for every candidate, a finer scoring of the
coarse shortlist, and an optional exact rerank from float32 vectors memory-mapped on disk.

    codec = make_codec("BIN128")                   # sign codes: popcount scan ...
    index = CascadeIndex.build(codec, codec, X, ids,   # ... then their asymmetric sign-table scan
                               config=CascadeConfig(coarse=CoarseStageConfig(shortlist=600)))
    D, I = index.search(xq, k=10)                  # item ids, best first; -1 pads
    D, I = index.search_by_id(item_id, k=10)       # the item itself excluded
    index.add(X_new, ids_new); index.remove(ids_old); index.compact()
    index.save("artifacts/index"); CascadeIndex.load("artifacts/index", mmap=True)

Rows live in a *main* segment (sorted by coarse cell when IVF routing is on, memory-mapped when
loaded) and a small *delta* segment that ``add`` appends to; ``remove`` sets tombstones. Neither
retrains a codec. ``compact`` folds the delta in and drops tombstoned rows.

The coarse stage scans sign codes by popcount (every item, or the ``nprobe`` closest IVF cells);
the fine stage rescores the shortlist with a second codec, or with the coarse codes themselves
when the fine codec *is* the coarse codec (binary codes: per-byte sign look-up tables built from
the codec's own projection, optionally times a one-byte item scale chosen by validation at
build, plus a weighted routing score of the item's IVF cell where validation at build finds it
ranks better: :mod:`mmcompress.index.cellprior`); the exact stage reads only the final
shortlist's rows from disk. A fine codec whose score is one table entry per code byte plus a
norm term (PQ, RQ, LSQ, their stacks, behind orthonormal transforms: ``Codec.search_tables``) is
scored by gathers from per-query tables, with each item's norm decoded once per segment; other
fine codecs go through their own ``search`` per shortlist.
Binary coarse codes with a sign-table fine stage run both first stages as one compiled pass
(:mod:`mmcompress.index.kernels`, numba) that selects what the numpy path selects, at about
twice its speed. Resident: codes, packed ids, packed modality masks, item scales and the codec /
centroid tables; on disk: the exact store and the id lookup, touched only for the final
candidates and for lookups by id.
"""

from __future__ import annotations

import itertools
import json
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmcompress.codecs.base import Codec, check_vectors
from mmcompress.errors import CatalogError, CodecError
from mmcompress.index import kernels
from mmcompress.index.cellprior import choose_cell_weight
from mmcompress.index.config import CascadeConfig
from mmcompress.index.hamming import hamming_distances
from mmcompress.index.partition import CoarsePartition
from mmcompress.index.scales import choose_scale_weight, quantize_scales, scale_map
from mmcompress.index.signscan import SignLUTScorer, sign_tables, table_scores

FORMAT_VERSION = 2  # 2: item scales (optional array + manifest entry); version 1 indexes still load
KIND = "cascade_index"
_CHUNK_ELEMENTS = 1 << 23  # coarse distance buffer per query chunk (int32 cells)
_STATE_VERSIONS = itertools.count()
_FEW_QUERIES = 4  # below this many queries per chunk, the coarse scan gathers cells per query
POPULAR_KEEP = 10_000  # most popular ids kept with the index, for cache warming
_INT64_MAX = np.iinfo(np.int64).max


@dataclass
class SearchStats:
    """Per-query means of what each stage touched (items) and bytes read from the exact store."""

    n_queries: int = 0
    coarse_scanned: float = 0.0
    coarse_shortlist: float = 0.0
    fine_shortlist: float = 0.0
    exact_reranked: float = 0.0
    disk_bytes: float = 0.0
    seconds: dict[str, float] = field(default_factory=lambda: {"coarse": 0.0, "fine": 0.0, "exact": 0.0})

    def merge(self, other: SearchStats) -> SearchStats:
        n = self.n_queries + other.n_queries
        if n == 0:
            return SearchStats()

        def mean(a: float, b: float) -> float:
            return (a * self.n_queries + b * other.n_queries) / n

        return SearchStats(
            n_queries=n,
            coarse_scanned=mean(self.coarse_scanned, other.coarse_scanned),
            coarse_shortlist=mean(self.coarse_shortlist, other.coarse_shortlist),
            fine_shortlist=mean(self.fine_shortlist, other.fine_shortlist),
            exact_reranked=mean(self.exact_reranked, other.exact_reranked),
            disk_bytes=mean(self.disk_bytes, other.disk_bytes),
            seconds={k: self.seconds.get(k, 0.0) + other.seconds.get(k, 0.0)
                     for k in set(self.seconds) | set(other.seconds)},
        )

    def to_dict(self) -> dict[str, Any]:
        return {"n_queries": self.n_queries, "coarse_scanned": self.coarse_scanned,
                "coarse_shortlist": self.coarse_shortlist, "fine_shortlist": self.fine_shortlist,
                "exact_reranked": self.exact_reranked, "disk_bytes_per_query": self.disk_bytes,
                "seconds": dict(self.seconds)}


@dataclass
class _Segment:
    """Row-aligned arrays of one segment. ``offsets`` bound the coarse cells (one cell if
    unpartitioned); ``masks`` are packed little-endian bits, one row per modality."""

    coarse: np.ndarray
    fine: np.ndarray | None
    ids: np.ndarray
    exact: np.ndarray | None
    masks: np.ndarray
    offsets: np.ndarray
    cells: np.ndarray | None = None  # delta only: the coarse cell of each row
    fine_norms: np.ndarray | None = None  # the fine codec's norm term per row, computed on first use
    scales: np.ndarray | None = None  # uint8 item scale of each row's sign-code estimate
    id_sorted: np.ndarray | None = None
    id_order: np.ndarray | None = None

    @property
    def n(self) -> int:
        return len(self.ids)

    def lookup(self) -> tuple[np.ndarray, np.ndarray]:
        if self.id_sorted is None or self.id_order is None:
            ids = np.asarray(self.ids, dtype=np.int64)
            order = np.argsort(ids, kind="stable").astype(np.int64)
            self.id_sorted, self.id_order = ids[order], order
        return self.id_sorted, self.id_order

    def find(self, item_ids: np.ndarray) -> np.ndarray:
        """Row of each id in this segment, -1 where absent."""
        if self.n == 0:
            return np.full(len(item_ids), -1, dtype=np.int64)
        srt, order = self.lookup()
        pos = np.searchsorted(srt, item_ids)
        pos_c = np.minimum(pos, self.n - 1)
        hit = np.asarray(srt[pos_c]) == item_ids
        return np.where(hit, np.asarray(order[pos_c]), -1).astype(np.int64)


@dataclass(frozen=True)
class _State:
    """An immutable snapshot; mutations build a new one, so searches never see a torn index."""

    main: _Segment
    delta: _Segment | None
    dead: np.ndarray | None  # bool over main + delta rows
    n_dead: int = 0
    version: int = field(default_factory=lambda: next(_STATE_VERSIONS))

    @property
    def n_rows(self) -> int:
        return self.main.n + (self.delta.n if self.delta is not None else 0)

    @property
    def n_alive(self) -> int:
        return self.n_rows - self.n_dead


def _pack_masks(masks: np.ndarray) -> np.ndarray:
    """(n, n_mod) bool -> (n_mod, ceil(n/8)) uint8."""
    if masks.shape[1] == 0:
        return np.zeros((0, (len(masks) + 7) // 8), dtype=np.uint8)
    return np.packbits(np.ascontiguousarray(masks.T), axis=1, bitorder="little")


def _unpack_mask(packed_row: np.ndarray, a: int, b: int) -> np.ndarray:
    """Bits [a, b) of one packed mask row, as bool."""
    bits = np.unpackbits(np.asarray(packed_row[a // 8:(b + 7) // 8]), bitorder="little")
    return bits[a % 8:a % 8 + (b - a)].astype(bool)


def _check_ids(ids: Any, n: int) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1 or len(ids) != n:
        raise CatalogError("item ids must be a 1-D array with one id per vector", column="item_id",
                           expected=f"shape ({n},)", found=f"shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise CatalogError("item ids must be integers", column="item_id", expected="int64",
                           found=str(ids.dtype))
    ids = ids.astype(np.int64)
    if n:
        srt = np.sort(ids)
        dup = srt[1:][srt[1:] == srt[:-1]]
        if len(dup):
            raise CatalogError("duplicate item ids", column="item_id", expected="unique ids",
                               found=f"{len(dup)} duplicates, first {int(dup[0])}")
    return ids


class PackedIds:
    """Item ids stored as offsets from the smallest id in the fewest whole bytes (little-endian):
    ids of a catalog spanning < 2**24 values cost 3 bytes instead of 8. Reads return int64."""

    dtype = np.dtype(np.int64)

    def __init__(self, data: np.ndarray, base: int) -> None:
        assert data.dtype == np.uint8 and data.ndim == 2 and 1 <= data.shape[1] <= 8, (data.dtype, data.shape)
        self.data, self.base, self.width = data, int(base), data.shape[1]
        self._rows = np.asarray(data)  # a plain view: a memmap's indexing costs a subclass wrap per read
        self._shifts = (8 * np.arange(self.width)).astype(np.uint64)

    @classmethod
    def pack(cls, ids: np.ndarray) -> PackedIds:
        ids = np.asarray(ids, dtype=np.int64)
        base = int(ids.min()) if len(ids) else 0
        span = (ids - base).astype(np.uint64)
        width = max(1, -(-int(span.max() if len(ids) else 0).bit_length() // 8))
        data = ((span[:, None] >> (8 * np.arange(width, dtype=np.uint64))) & np.uint64(0xFF)).astype(np.uint8)
        return cls(data, base)

    def _unpack(self, d: np.ndarray) -> np.ndarray:
        vals = (d.astype(np.uint64) << self._shifts).sum(axis=-1, dtype=np.uint64)
        return vals.astype(np.int64) + self.base

    def __getitem__(self, rows: Any) -> np.ndarray:
        return self._unpack(self._rows[rows])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self._unpack(np.asarray(self.data))
        return out if dtype is None else out.astype(dtype)

    def __len__(self) -> int:
        return len(self.data)

    @property
    def shape(self) -> tuple[int]:
        return (len(self.data),)

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)


def _narrow_ids(ids: np.ndarray) -> PackedIds:
    return PackedIds.pack(ids)


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
        self._lock = threading.RLock()

    # ---- construction ----------------------------------------------------------------------
    @classmethod
    def build(cls, coarse_codec: Codec, fine_codec: Codec | None, vectors: np.ndarray,
              ids: Iterable[int] | np.ndarray, exact_vectors_path: str | Path | None = None, *,
              config: CascadeConfig | None = None, masks: Mapping[str, np.ndarray] | None = None,
              titles: Mapping[int, str] | None = None, popularity: np.ndarray | None = None,
              progress: bool = False) -> CascadeIndex:
        """Encode ``vectors`` with both codecs (fitting them on a sample when unfitted).

        ``exact_vectors_path``: where the float32 exact store is written (an .npy, memory-mapped
        afterwards); None keeps it in memory until :meth:`save`. ``masks``: modality -> bool per
        item (for the modality filter). ``titles``: item id -> display title. ``popularity``:
        a score per item (e.g. rating counts); the most popular ids are kept for cache warming.
        """
        self = cls(config)
        cfg = self.config
        X = check_vectors(vectors, name="vectors")
        if len(X) == 0:
            raise CatalogError("cannot build an index from zero vectors", expected=">= 1 row", found=0)
        ids = _check_ids(ids, len(X))
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
            half = cfg.half_precision_tables and projection is None  # few code-space centroids: float32 scores faster
            self.partition = CoarsePartition(nlist, cfg.metric, random_state=cfg.seed,
                                             max_train_rows=cfg.train_rows,
                                             dtype="float16" if half else "float32").fit(train, projection)
            cells = self.partition.assign(X)
            order = np.argsort(cells, kind="stable")
            offsets = np.searchsorted(cells[order], np.arange(nlist + 1)).astype(np.int64)
        else:
            order = np.arange(len(X))
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
            if exact_vectors_path is not None:
                exact = _write_npy_rows(Path(exact_vectors_path), X, order)
            else:
                exact = X[order]
        main = _Segment(coarse=coarse, fine=fine, ids=_narrow_ids(ids[order]), exact=exact,
                        masks=_pack_masks(mask_matrix[order]), offsets=offsets, scales=scales)
        self._init_runtime(_State(main=main, delta=None, dead=None))
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

    def _init_runtime(self, state: _State) -> None:
        self._state = state
        self._lock = threading.RLock()
        self._stats_lock = threading.Lock()
        self.total_stats = SearchStats()
        self._exclusion_cache: dict[tuple, np.ndarray | None] = {}
        self._widest_cells: tuple[_Segment | None, np.ndarray] = (None, np.zeros(0, np.int64))

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
        return bool(_unpack_mask(seg.masks[j], r, r + 1)[0])

    def _modality_index(self, modality: str) -> int:
        try:
            return self.modalities.index(modality)
        except ValueError:
            raise CatalogError(f"unknown modality {modality!r}", expected=self.modalities,
                               found=modality) from None

    def _row_of(self, st: _State, item_ids: np.ndarray) -> np.ndarray:
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
               compiled: bool | None = None, threads: int = 1, return_stats: bool = False
               ) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, SearchStats]:
        """Top-``k`` items of each query: (scores float32 (nq, k), item ids int64 (nq, k)).

        Scores are inner products (``ip``) or negative squared distances (``l2``) of the last
        stage that ran; rows with fewer than ``k`` candidates are padded with id -1 and -inf.
        Keyword arguments override the configured stage parameters for this call.
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
        params = dict(k=k, s1=s1, s2=s2, exact=exact, use_fine=use_fine,
                      nprobe=nprobe or cfg.coarse.nprobe,
                      excl=self._exclusions(st, modality))
        want_compiled = cfg.compiled_scan if compiled is None else compiled
        params["compiled_coarse"] = want_compiled and self._compiled_coarse_applies(st)
        params["compiled"] = want_compiled and self._compiled_applies(st, use_fine)
        per_chunk = max(1, min(256, _CHUNK_ELEMENTS // max(1, self._scan_width(st, params["nprobe"]))))
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
            return np.asarray(self._take(st, "exact", rows)[0], dtype=np.float32)
        if self.fine_codec is not None:
            return self.fine_codec.decode(self._take(st, self._fine_attr, rows))[0]
        return self.coarse_codec.decode(self._take(st, "coarse", rows))[0]

    def _scan_width(self, st: _State, nprobe: int) -> int:
        nd = st.delta.n if st.delta is not None else 0
        if self.partition is None:
            return st.main.n + nd
        main, widest = self._widest_cells
        if main is not st.main:  # the main segment changes only on compaction
            widest = np.cumsum(np.sort(np.diff(st.main.offsets))[::-1])
            self._widest_cells = (st.main, widest)
        return int(widest[min(nprobe, len(widest)) - 1]) + nd

    def _exclusions(self, st: _State, modality: str | None) -> np.ndarray | None:
        """Bool over all rows: tombstoned, or lacking ``modality``; None when nothing is excluded."""
        j = None if modality is None else self._modality_index(modality)
        key = (st.version, j)
        cached = self._exclusion_cache.get(key, False)
        if cached is not False:
            return cached  # type: ignore[return-value]
        excl = None if st.dead is None else st.dead.copy()
        if j is not None:
            lacks = ~_unpack_mask(st.main.masks[j], 0, st.main.n)
            if st.delta is not None:
                lacks = np.concatenate([lacks, ~_unpack_mask(st.delta.masks[j], 0, st.delta.n)])
            excl = lacks if excl is None else (excl | lacks)
        if len(self._exclusion_cache) > 16:
            self._exclusion_cache.clear()
        self._exclusion_cache[key] = excl
        return excl

    def _compiled_coarse_applies(self, st: _State) -> bool:
        """Whether the compiled kernel can run the coarse stage: binary coarse codes in whole
        64-bit words, within its 16-bit distance lanes, and no pending delta segment."""
        return (kernels.AVAILABLE and st.delta is None and getattr(self.coarse_codec, "is_binary", False)
                and self.coarse_codec.code_size % 8 == 0 and 8 * self.coarse_codec.code_size <= kernels.MAX_BITS)

    def _compiled_applies(self, st: _State, use_fine: bool) -> bool:
        """Whether the compiled kernel can run both first stages: the coarse stage, then a
        sign-table fine stage."""
        return (use_fine and self._compiled_coarse_applies(st) and self.config.fine.scoring == "adc"
                and self.sign_scorer is not None)

    def _search_chunk(self, st: _State, Q: np.ndarray, p: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, SearchStats]:
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
                rows, scores = self._rescore(st, "fine", Q, rows, keep, cell_scores=S, QW=QW)
                stats.fine_shortlist = float(np.count_nonzero(rows >= 0)) / nq if nq else 0.0
            t2 = time.perf_counter()
            stats.seconds["fine"] = t2 - t1
        if p["exact"]:
            rows, scores, nbytes = self._rescore(st, "exact", Q, rows, k, count_bytes=True)
            stats.exact_reranked = stats.fine_shortlist if p["use_fine"] else stats.coarse_shortlist
            stats.disk_bytes = nbytes / max(nq, 1)
        stats.seconds["exact"] = time.perf_counter() - t2
        if not p["exact"] or rows.shape[1] != k:  # the exact stage returns its top k sorted
            rows, scores = _top(rows, scores, k)
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

    def _cells_of(self, st: _State, rows: np.ndarray) -> np.ndarray:
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
        return None if W is None else Q @ W

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

    def _compiled_scan(self, st: _State, Q: np.ndarray, p: dict[str, Any], *, fine: bool,
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

    def _coarse(self, st: _State, Q: np.ndarray, s1: int, nprobe: int, excl: np.ndarray | None, *,
                QW: np.ndarray | None = None, probes: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Coarse shortlist: global rows (nq, s1) padded with -1, scores (higher = closer),
        and how many items each query scanned. ``QW`` and ``probes``: as the caller routed."""
        main, delta = st.main, st.delta
        nq = len(Q)
        if probes is None:
            QW = self._query_projection(Q)
            probes = self._probes(Q, nprobe, QW)
        lens = main.offsets[probes + 1] - main.offsets[probes]  # one cell [0, n) when unpartitioned
        nd = delta.n if delta is not None else 0
        if not getattr(self.coarse_codec, "is_binary", False):
            return self._coarse_generic(st, Q, probes, s1, excl)
        qcodes = self._query_codes(Q, QW)
        sentinel = 8 * self.coarse_codec.code_size + 1
        starts = np.zeros_like(lens)
        starts[:, 1:] = np.cumsum(lens, axis=1)[:, :-1]
        starts += nd
        width = nd + lens.sum(axis=1)
        small = np.uint8 if sentinel <= 255 else np.int32  # narrower rows select faster
        buf = np.full((nq, int(width.max()) if nq else 0), sentinel, dtype=small)
        if nd:
            blk = hamming_distances(qcodes, delta.coarse)
            if excl is not None:
                blk[:, excl[main.n:]] = sentinel
            buf[:, :nd] = blk
        offs = main.offsets
        if self.partition is None:
            if nd == 0 and small is np.int32:
                hamming_distances(qcodes, main.coarse, out=buf)
            else:
                buf[:, nd:] = hamming_distances(qcodes, main.coarse)
            if excl is not None:
                buf[:, nd:][:, excl[:main.n]] = sentinel
        elif nq <= _FEW_QUERIES:  # gather the probed cells per query: fewer calls than cell by cell
            for i in range(nq):
                cells = probes[i]
                codes = np.concatenate([main.coarse[offs[c]:offs[c + 1]] for c in cells])
                buf[i, nd:nd + len(codes)] = hamming_distances(qcodes[i:i + 1], codes)[0]
                if excl is not None:
                    ex = np.concatenate([excl[offs[c]:offs[c + 1]] for c in cells])
                    buf[i, nd:nd + len(codes)][ex] = sentinel
        else:  # cell-major: one kernel call per probed cell for all queries probing it
            flat = probes.ravel()
            order = np.argsort(flat, kind="stable")
            cells = flat[order]
            bounds = np.flatnonzero(np.diff(cells)) + 1
            g_start = np.concatenate([[0], bounds])
            g_end = np.concatenate([bounds, [len(cells)]])
            for gs, ge in zip(g_start, g_end, strict=True):
                c = int(cells[gs])
                a, b = int(offs[c]), int(offs[c + 1])
                if a == b:
                    continue
                pairs = order[gs:ge]
                qi, pj = pairs // probes.shape[1], pairs % probes.shape[1]
                blk = hamming_distances(qcodes[qi], main.coarse[a:b])
                if excl is not None:
                    ex = excl[a:b]
                    if ex.any():
                        blk[:, ex] = sentinel
                dst = starts[qi, pj]
                for r in range(len(qi)):
                    buf[qi[r], dst[r]:dst[r] + (b - a)] = blk[r]
        qi, slot = smallest_per_row(buf, s1, sentinel)
        dist = buf[qi, slot]
        counts = np.bincount(qi, minlength=nq)
        first = np.concatenate([[0], np.cumsum(counts)[:-1]])
        pos = np.arange(len(qi)) - first[qi]
        r = np.empty(len(qi), dtype=np.int64)
        in_delta = slot < nd
        r[in_delta] = main.n + slot[in_delta]
        span = buf.shape[1] + 1
        qm, sm = qi[~in_delta], slot[~in_delta]
        flat_starts = (starts + (np.arange(nq, dtype=np.int64) * span)[:, None]).ravel()
        key = qm * span + sm
        jj = np.searchsorted(flat_starts, key, side="right") - 1
        r[~in_delta] = offs[probes.ravel()[jj]] + (key - flat_starts[jj])
        rows = np.full((nq, s1), -1, dtype=np.int64)
        scores = np.full((nq, s1), -np.inf, dtype=np.float32)
        rows[qi, pos] = r
        scores[qi, pos] = -dist.astype(np.float32)  # not -dist: uint8 negation wraps
        return rows, scores, width

    def _coarse_generic(self, st: _State, Q: np.ndarray, probes: np.ndarray, s1: int,
                        excl: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Coarse stage through ``codec.search`` (ADC or decode) for non-binary coarse codes."""
        main, delta = st.main, st.delta
        nq = len(Q)
        rows = np.full((nq, s1), -1, dtype=np.int64)
        scores = np.full((nq, s1), -np.inf, dtype=np.float32)
        scanned = np.zeros(nq, dtype=np.int64)
        delta_rows = np.arange(main.n, st.n_rows) if delta is not None else np.zeros(0, np.int64)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i in range(nq):
            groups.setdefault(tuple(probes[i]) if self.partition is not None else (), []).append(i)
        for key, qs in groups.items():
            if self.partition is None:
                cand = np.arange(st.n_rows)
            else:
                cand = np.concatenate([np.arange(main.offsets[c], main.offsets[c + 1]) for c in key] + [delta_rows])
            if excl is not None:
                cand = cand[~excl[cand]]
            scanned[qs] = len(cand)
            if len(cand) == 0:
                continue
            codes = self._take(st, "coarse", cand)
            dist, pos = self.coarse_codec.search(codes, Q[qs], min(s1, len(cand)))
            valid = pos >= 0
            r = np.where(valid, cand[np.maximum(pos, 0)], -1)
            rows[qs, :r.shape[1]] = r
            scores[qs, :r.shape[1]] = np.where(valid, dist, -np.inf)
        return rows, scores, scanned

    def _rescore(self, st: _State, stage: str, Q: np.ndarray, rows: np.ndarray, keep: int,
                 count_bytes: bool = False, cell_scores: np.ndarray | None = None,
                 QW: np.ndarray | None = None) -> tuple:
        """Score shortlisted rows with the fine codec or exact vectors; keep the best ``keep``.
        ``cell_scores``: every cell's routing score per query, for the cell prior; ``QW``: the
        queries' coarse projection where the caller has it."""
        valid = rows >= 0
        if stage == "fine" and self.config.fine.scoring == "adc":
            return self._rescore_adc(st, Q, rows, valid, keep, cell_scores, QW)
        if stage == "exact":
            nbytes = int(valid.sum()) * self.d_ * 4
            E = st.main.exact
            if st.delta is None and E.dtype == np.float32 and E.flags.c_contiguous:
                exact_top = kernels.exact_top if kernels.AVAILABLE else _exact_topk
                rows, S = exact_top(E, Q, rows, keep, self.config.metric)
            else:
                rows, S = _top(*self._rescore_exact(st, Q, rows), keep)
            return (rows, S, nbytes) if count_bytes else (rows, S)
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
        return _top(rows, S, keep)

    def _rescore_exact(self, st: _State, Q: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores, query by query over its rows in storage order (sequential reads)."""
        rows = np.sort(rows, axis=1)  # -1 padding first
        S = np.full(rows.shape, -np.inf, dtype=np.float32)
        src = st.main.exact if st.delta is None else None
        l2 = self.config.metric == "l2"
        for i in range(len(Q)):
            r = rows[i]
            a = int(np.searchsorted(r, 0))
            if a == len(r):
                continue
            X = np.asarray(src[r[a:]] if src is not None else self._take(st, "exact", r[a:]), dtype=np.float32)
            s = X @ Q[i]
            if l2:
                s = 2 * s - np.einsum("ij,ij->i", X, X) - float(Q[i] @ Q[i])
            S[i, a:] = s
        return rows, S

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

    def _rescore_adc(self, st: _State, Q: np.ndarray, rows: np.ndarray, valid: np.ndarray,
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
            return _top(rows, S, keep)
        tables = self.fine_codec.search_tables(Q) if self._fine_norm_coef is not None else None
        if tables is not None:  # additive codes: gathers from per-query tables, stored norms
            lut, const, coef = tables
            codes = np.zeros(rows.shape + (self.fine_codec.code_size,), dtype=np.uint8)
            codes[valid] = self._take(st, self._fine_attr, rows[valid])
            S = table_scores(lut, codes) + const[:, None].astype(np.float32)
            if coef:
                S[valid] -= np.float32(coef) * self._fine_norms_of(st, rows[valid])
            return _top(rows, np.where(valid, S, -np.inf).astype(np.float32), keep)
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

    def _segment_fine_norms(self, seg: _Segment) -> np.ndarray:
        """One segment's fine-code norms, decoded once and kept with the (immutable) segment."""
        if seg.fine_norms is None:
            with self._lock:
                if seg.fine_norms is None:
                    seg.fine_norms = self.fine_codec.scan_norms(np.asarray(getattr(seg, self._fine_attr)))
        return seg.fine_norms

    def _fine_norms_of(self, st: _State, rows: np.ndarray) -> np.ndarray:
        for seg in (st.main, st.delta):
            if seg is not None:
                self._segment_fine_norms(seg)
        return self._take(st, "fine_norms", rows)

    @property
    def _fine_attr(self) -> str:
        return "coarse" if self.fine_shares_coarse else "fine"

    def _take(self, st: _State, attr: str, rows: np.ndarray) -> np.ndarray:
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

    def _ids_of(self, st: _State, rows: np.ndarray) -> np.ndarray:
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
        ids = _check_ids(ids, len(X))
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
            if old is not None:
                def cat(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
                    return None if a is None or b is None else np.concatenate([np.asarray(a), b])
                old_masks = np.unpackbits(old.masks, axis=1, bitorder="little")[:, :old.n].T.astype(bool) \
                    if len(self.modalities) else np.zeros((old.n, 0), bool)
                mask_matrix = np.concatenate([old_masks, mask_matrix])
                coarse, fine = cat(old.coarse, coarse), cat(old.fine, fine)
                exact, scales = cat(old.exact, exact), cat(old.scales, scales)
                cells = np.concatenate([old.cells, cells])
                ids = np.concatenate([np.asarray(old.ids, np.int64), ids])
            delta = _Segment(coarse=coarse, fine=fine, ids=ids, exact=exact,
                             masks=_pack_masks(mask_matrix), offsets=np.array([0, len(ids)], np.int64),
                             cells=cells.astype(np.int32), scales=scales)
            dead = st.dead
            if dead is not None:
                dead = np.concatenate([dead[:st.main.n], np.zeros(delta.n, bool)])
                if old is not None:
                    dead[st.main.n:st.main.n + old.n] = st.dead[st.main.n:]
            self._state = _State(main=st.main, delta=delta, dead=dead, n_dead=st.n_dead)
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
            self._state = _State(main=st.main, delta=st.delta, dead=dead, n_dead=int(dead.sum()))
            return len(rows)

    def compact(self, exact_vectors_path: str | Path | None = None) -> None:
        """Fold the delta into the main segment and drop tombstoned rows (codecs unchanged).

        The compacted exact store is written to ``exact_vectors_path`` when given, else kept in
        memory until :meth:`save`."""
        with self._lock:
            main = self._compacted(self._state, exact_vectors_path)
            self._state = _State(main=main, delta=None, dead=None)
            self._exclusion_cache.clear()

    def _compacted(self, st: _State, exact_vectors_path: str | Path | None = None) -> _Segment:
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
            col = _unpack_mask(main.masks[j], 0, main.n)
            if delta is not None:
                col = np.concatenate([col, _unpack_mask(delta.masks[j], 0, delta.n)])
            masks[:, j] = col[order]
        exact = None
        if main.exact is not None:
            if exact_vectors_path is not None:
                exact = _write_npy_rows(Path(exact_vectors_path), _RowSource(self, st), order)
            else:
                exact = self._take(st, "exact", order).astype(np.float32)
        return _Segment(coarse=self._take(st, "coarse", order),
                        fine=None if main.fine is None else self._take(st, "fine", order),
                        ids=_narrow_ids(self._take(st, "ids", order).astype(np.int64)),
                        exact=exact, masks=_pack_masks(masks), offsets=offsets,
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
        }
        on_disk = {
            "exact_vectors": sum(s.exact.nbytes for s in segs if s.exact is not None),
            "id_lookup": st.main.n * 16,
        }
        n = max(st.n_alive, 1)
        total = sum(resident.values())
        return {"n_items": st.n_alive, "resident_bytes": resident, "resident_total": total,
                "resident_bytes_per_item": total / n, "on_disk_bytes": on_disk,
                "exact_on_disk": isinstance(st.main.exact, np.memmap)}

    def bytes_per_item(self) -> float:
        """All-in resident bytes per item: codes + ids + masks + tables amortised."""
        return float(self.memory_report()["resident_bytes_per_item"])

    # ---- persistence -----------------------------------------------------------------------
    def save(self, directory: str | Path, *, progress: bool = False) -> Path:
        """Write the index (compacted view) into ``directory`` atomically; see :mod:`.store`."""
        from mmcompress.index.store import save_index

        return save_index(self, directory, progress=progress)

    @classmethod
    def load(cls, directory: str | Path, *, mmap: bool = True, verify: str = "quick") -> CascadeIndex:
        """Open a saved index; code arrays are memory-mapped when ``mmap``. ``verify``: "quick"
        checks small files fully and large arrays by size and sampled digest; "full" hashes all."""
        from mmcompress.index.store import load_index

        return load_index(directory, mmap=mmap, verify=verify)

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


def smallest_per_row(buf: np.ndarray, s: int, sentinel: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) of the ``s`` smallest values below ``sentinel`` in each row of a matrix of
    small non-negative integers, ties broken by column, grouped by row in column order.

    A counting selection row by row: the row's histogram gives its threshold value; everything
    below it and the first ties at it are kept (several times faster than argpartition on the
    heavily tied values of Hamming distances, and than the same counting done on the 2-D batch).
    """
    cols = [smallest_counts(line, s, sentinel) for line in buf]
    if not cols:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    qi = np.repeat(np.arange(len(cols), dtype=np.int64), [len(c) for c in cols])
    return qi, np.concatenate(cols).astype(np.int64)


def smallest_counts(line: np.ndarray, s: int, sentinel: int) -> np.ndarray:
    """Columns of the ``s`` smallest values below ``sentinel`` in one row, in column order."""
    hist = np.bincount(line, minlength=sentinel + 1)[:sentinel]
    cum = np.cumsum(hist)
    if cum[-1] <= s:
        return np.flatnonzero(line < sentinel)
    thr = int(np.searchsorted(cum, s))
    below = line < thr
    at = np.flatnonzero(line == thr)[:s - int(cum[thr - 1] if thr > 0 else 0)]
    below[at] = True
    return np.flatnonzero(below)


def _exact_topk(E: np.ndarray, Q: np.ndarray, rows: np.ndarray, keep: int,
                metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Top ``keep`` of each query's rows of ``E`` by exact score, with faiss's by-index kernels
    (rows read in storage order; -1 padding must trail, where the kernel stops)."""
    import faiss

    nq, s = rows.shape
    big = _INT64_MAX
    R = np.sort(np.where(rows < 0, big, rows), axis=1)
    R[R == big] = -1
    R = np.ascontiguousarray(R, dtype=np.int64)
    Q = np.ascontiguousarray(Q, dtype=np.float32)
    D = np.empty((nq, keep), dtype=np.float32)
    out = np.empty((nq, keep), dtype=np.int64)
    fn = faiss.knn_inner_products_by_idx if metric == "ip" else faiss.knn_L2sqr_by_idx
    sp = faiss.swig_ptr
    fn(sp(Q), sp(E), sp(R), Q.shape[1], nq, len(E), s, keep, sp(D), sp(out), s)
    D = D if metric == "ip" else -D
    D[out < 0] = -np.inf
    return out, D


def _top(rows: np.ndarray, scores: np.ndarray, keep: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``keep`` best columns of each row, sorted by score descending (padding -1 / -inf)."""
    nq, s = rows.shape
    if s > keep:
        part = np.argpartition(-scores, keep - 1, axis=1)[:, :keep]
        rows = np.take_along_axis(rows, part, axis=1)
        scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")
    rows = np.take_along_axis(rows, order, axis=1)
    scores = np.take_along_axis(scores, order, axis=1)
    if rows.shape[1] < keep:
        pad = keep - rows.shape[1]
        rows = np.concatenate([rows, np.full((nq, pad), -1, rows.dtype)], axis=1)
        scores = np.concatenate([scores, np.full((nq, pad), -np.inf, scores.dtype)], axis=1)
    rows = np.where(np.isfinite(scores), rows, -1)
    return rows, scores


class _RowSource:
    """Exact vectors of a state's rows, readable by row index (for streaming compaction)."""

    def __init__(self, index: CascadeIndex, st: _State) -> None:
        self.index, self.st = index, st
        self.shape = (st.n_rows, index.d_)

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        return self.index._take(self.st, "exact", rows)


def _write_npy_rows(path: Path, source: Any, order: np.ndarray, step: int = 65536,
                    progress: Callable[[int], None] | None = None) -> np.memmap:
    """Write ``source[order]`` as a float32 .npy at ``path`` in chunks; return it memory-mapped."""
    from mmcompress.artifacts import atomic_path

    d = source.shape[1]
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(order), d))
        for s in range(0, len(order), step):
            idx = order[s:s + step]
            srt = np.argsort(idx, kind="stable")
            block = np.empty((len(idx), d), np.float32)
            block[srt] = np.asarray(source[idx[srt]], dtype=np.float32)
            out[s:s + step] = block
            if progress is not None:
                progress(len(idx))
        out.flush()
        del out
    return np.load(path, mmap_mode="r")


def recommended_nlist(n: int) -> int:
    """A cell count for ``n`` items: none below 20k items, about 2 * sqrt(n) above."""
    return 0 if n < 20_000 else int(2 ** round(math.log2(2 * math.sqrt(n))))
