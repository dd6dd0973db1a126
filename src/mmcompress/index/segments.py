"""The data of a cascade index: segments of row-aligned arrays and the immutable state over them.

Both the cascade (which searches and mutates) and the saved format (:mod:`.store`, which
writes and reads them) use these; neither reaches into the other. A segment's exact store is
a :class:`~mmcompress.index.rowstore.RowReader`, so where its rows come from (RAM, a memory
map, ``O_DIRECT`` reads through a buffer pool) is the reader's business, not the segment's.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmcompress.errors import CatalogError
from mmcompress.index.rowstore import RowReader, StackedRowReader

_STATE_VERSIONS = itertools.count()


@dataclass
class Segment:
    """Row-aligned arrays of one segment. ``offsets`` bound the coarse cells (one cell if
    unpartitioned); ``masks`` are packed little-endian bits, one row per modality; ``exact``
    reads the float32 vectors of the rows (None without an exact stage)."""

    coarse: np.ndarray
    fine: np.ndarray | None
    ids: Any  # PackedIds (main) or int64 array (delta)
    exact: RowReader | None
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
class State:
    """An immutable snapshot; mutations build a new one, so searches never see a torn index."""

    main: Segment
    delta: Segment | None
    dead: np.ndarray | None  # bool over main + delta rows
    n_dead: int = 0
    version: int = field(default_factory=lambda: next(_STATE_VERSIONS))

    @property
    def n_rows(self) -> int:
        return self.main.n + (self.delta.n if self.delta is not None else 0)

    @property
    def n_alive(self) -> int:
        return self.n_rows - self.n_dead

    def exact(self) -> RowReader | None:
        """The exact store over all rows (main, then delta), or None without one."""
        if self.main.exact is None:
            return None
        if self.delta is None or self.delta.exact is None:
            return self.main.exact
        return StackedRowReader([self.main.exact, self.delta.exact])


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


def pack_masks(masks: np.ndarray) -> np.ndarray:
    """(n, n_mod) bool -> (n_mod, ceil(n/8)) uint8."""
    if masks.shape[1] == 0:
        return np.zeros((0, (len(masks) + 7) // 8), dtype=np.uint8)
    return np.packbits(np.ascontiguousarray(masks.T), axis=1, bitorder="little")


def unpack_mask(packed_row: np.ndarray, a: int, b: int) -> np.ndarray:
    """Bits [a, b) of one packed mask row, as bool."""
    bits = np.unpackbits(np.asarray(packed_row[a // 8:(b + 7) // 8]), bitorder="little")
    return bits[a % 8:a % 8 + (b - a)].astype(bool)


def check_ids(ids: Any, n: int) -> np.ndarray:
    """``ids`` as int64, refused unless one unique integer per vector."""
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
