"""The exact-vector row store: a page-aligned row file and the readers that fetch its rows.

The exact rerank reads a few dozen rows per query from a store far larger than RAM;
what it costs is the 4 KiB pages those rows touch. This module owns that layer, apart from
the index stages that use it: the cascade and any peer that reranks exactly call
:meth:`RowReader.read` and read the counts from :meth:`RowReader.stats`.

File format (``exact.rows``)::

    page 0        b"MMROWS1\\n" + JSON layout (n, d, dtype, rows_per_group, group_bytes, ...)
                  zero-padded to 4096 bytes
    pages 1..     rows of d float32 or float16 (``dtype``; little-endian), packed so no row
                  straddles a page:
                  row_bytes <= 4096: 4096 // row_bytes rows per page, the rest of the page zero;
                  row_bytes >  4096: each row starts on a page and spans ceil(row_bytes / 4096)

A row is then one page read (or exactly its own pages), which an ``.npy`` (rows back to back
after a 128-byte header) does not give: there a 1536-byte row straddles two pages one time in
three. :class:`RowLayout` describes both, so older indexes with ``exact.npy`` stay readable.
A float16 store holds twice the rows per page (5 instead of 2 at d=384): half the file, and
fewer pages per query where a query's rows share pages. Readers always return float32.

Readers (one interface, :class:`RowReader`):

* :class:`DirectRowReader` - ``O_DIRECT`` reads into page-aligned anonymous memory and an
  index-owned :class:`PagePool` bounded in bytes (CLOCK; 0 bytes: every page from disk).
  Pages are deduplicated per call, adjacent pages coalesced into one read, and up to
  ``reads_in_flight`` reads kept in flight at once, since random 4 KiB reads are latency
  bound. The reads go through kernel AIO (:mod:`mmcompress.index.kernelaio`: one system call
  submits a call's reads, one waits for them) where the kernel takes it, else through a small
  pool of threads issuing ``os.preadv`` (the serving benchmark, 2 cores, cold: about 2.8x
  the page reads/s with kernel AIO, see docs/serving.md).
  Where the filesystem refuses ``O_DIRECT`` (``EINVAL``), it reads with ``pread`` and drops the
  pages from the page cache after each read (``POSIX_FADV_DONTNEED``, readahead off). The mode
  and the engine are in ``stats()`` so a benchmark says which ones ran.
* :class:`MemoryRowReader` - rows memory-mapped (``mmap``: warm once the page cache has them)
  or in RAM (``memory``), with the same page accounting (the distinct pages the rows touch).
* :class:`StackedRowReader` - several stores read as one row range (main + delta segment).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import json
import mmap
import os
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from mmcompress.artifacts import atomic_path
from mmcompress.errors import ArtifactError
from mmcompress.index import kernelaio, kernels

PAGE_BYTES = 4096
MAGIC = b"MMROWS1\n"
PAGED = "paged_rows"
NPY = "npy"
READER_KINDS = ("mmap", "direct", "pread")
ENGINES = ("auto", "kernel_aio", "threads")
_BATCH_PAGES = 2048  # pages per internal batch of one read call (8 MiB of frames)
_SPARE_SCRATCH = 8  # page-aligned scratch buffers kept for reuse (first touches fault, reuse does not)
# the largest buffer kept: a spare stays resident up to the most pages a call ever wrote into it,
# so one long read (a batch, a query's long first wave) would hold its size for the process's
# life; longer calls map a buffer of their own and return it (a fault per page, a few
# microseconds against the milliseconds their reads take)
_SPARE_MAX_PAGES = 64
_MAX_RUN_PAGES = 64  # adjacent missing pages coalesced into one read, up to 256 KiB
DTYPES = ("float32", "float16")  # what a row file may hold; rows are read back as float32
_FLOAT16_MAX = float(np.finfo(np.float16).max)
_COUNTERS = ("calls", "rows", "pages_read", "pool_hits", "pool_misses", "bytes_read", "reads")


# ---- layout ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class RowLayout:
    """Where row ``r`` of an (n, d) store of ``dtype`` (float32 or float16) lies in its file.

    Rows come in groups of ``rows_per_group`` laid out ``group_bytes`` apart from
    ``data_offset``; inside a group rows are back to back. The page-aligned format has one
    page per group (or one run of pages per long row); an ``.npy`` is one row per group with
    ``group_bytes == row_bytes`` (rows may straddle pages).
    """

    n: int
    d: int
    data_offset: int
    rows_per_group: int
    group_bytes: int
    format: str = PAGED
    dtype: str = "float32"

    @classmethod
    def paged(cls, n: int, d: int, dtype: str = "float32") -> RowLayout:
        """The page-aligned layout of ``n`` rows of ``d`` values of ``dtype`` after a one-page header."""
        row_bytes = _itemsize(dtype) * int(d)
        if row_bytes <= PAGE_BYTES:
            return cls(int(n), int(d), PAGE_BYTES, PAGE_BYTES // row_bytes, PAGE_BYTES, PAGED, dtype)
        return cls(int(n), int(d), PAGE_BYTES, 1, -(-row_bytes // PAGE_BYTES) * PAGE_BYTES, PAGED, dtype)

    @classmethod
    def npy(cls, n: int, d: int, data_offset: int) -> RowLayout:
        """The layout of a C-ordered float32 ``.npy`` whose data starts at ``data_offset``."""
        return cls(int(n), int(d), int(data_offset), 1, 4 * int(d), NPY)

    @property
    def itemsize(self) -> int:
        return _itemsize(self.dtype)

    @property
    def row_bytes(self) -> int:
        return self.itemsize * self.d

    @property
    def n_groups(self) -> int:
        return -(-self.n // self.rows_per_group)

    @property
    def file_bytes(self) -> int:
        """Bytes of the file up to the end of the last row (the last group, when paged)."""
        if self.format == NPY:
            return self.data_offset + self.n * self.row_bytes
        return self.data_offset + self.n_groups * self.group_bytes

    @property
    def max_pages_per_row(self) -> int:
        """The most pages one row can touch: 1 for a paged row that fits in one."""
        span = -(-self.row_bytes // PAGE_BYTES)
        return span if self.format == PAGED else span + 1

    def offsets(self, rows: np.ndarray) -> np.ndarray:
        """Byte offset of each row in the file (int64)."""
        rows = np.asarray(rows, dtype=np.int64)
        g = self.rows_per_group
        if g == 1:
            return self.data_offset + rows * self.group_bytes
        return self.data_offset + (rows // g) * self.group_bytes + (rows % g) * self.row_bytes

    def pages(self, rows: np.ndarray) -> np.ndarray:
        """The distinct file pages (sorted, int64) that the rows touch."""
        start = self.offsets(rows)
        first = start // PAGE_BYTES
        span = self.max_pages_per_row
        if span == 1:
            return _distinct(first)
        last = (start + self.row_bytes - 1) // PAGE_BYTES
        cand = first[:, None] + np.arange(span, dtype=np.int64)
        return _distinct(cand[cand <= last[:, None]])

    def page_count(self, rows: np.ndarray) -> int:
        """``len(self.pages(rows))``, computed without listing them where the layout allows
        (the page-aligned file: a page per group, or whole pages per row)."""
        if len(rows) == 0:
            return 0
        if self.format != PAGED:
            return len(self.pages(rows))
        g = rows // self.rows_per_group if self.rows_per_group > 1 else rows
        n_groups = -(-self.n // self.rows_per_group)
        if 16 * g.size >= n_groups:  # a batch's rows: mark their groups (a sort costs ~20x more)
            seen = np.zeros(n_groups, dtype=np.bool_)
            seen[g] = True
            return int(np.count_nonzero(seen)) * self.max_pages_per_row
        g = np.sort(g, axis=None)
        return (1 + int(np.count_nonzero(g[1:] != g[:-1]))) * self.max_pages_per_row

    def check_rows(self, rows: np.ndarray) -> None:
        if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= self.n):
            raise IndexError(f"row out of range [0, {self.n}): {int(rows.min())}..{int(rows.max())}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "page_bytes": PAGE_BYTES}

    @classmethod
    def from_dict(cls, meta: dict[str, Any]) -> RowLayout:
        dtype = meta.get("dtype", "float32")
        fmt = str(meta.get("format", PAGED))
        if (dtype not in DTYPES or meta.get("page_bytes", PAGE_BYTES) != PAGE_BYTES
                or (fmt == NPY and dtype != "float32")):
            raise ArtifactError(f"unsupported row layout {meta}")
        return cls(int(meta["n"]), int(meta["d"]), int(meta["data_offset"]), int(meta["rows_per_group"]),
                   int(meta["group_bytes"]), fmt, dtype)


def _itemsize(dtype: str) -> int:
    if dtype not in DTYPES:
        raise ValueError(f"row store dtype must be one of {DTYPES}; found {dtype!r}")
    return np.dtype(dtype).itemsize


def _distinct(a: np.ndarray) -> np.ndarray:
    """Sorted distinct values of an int64 array (a sort and a mask: cheaper than ``np.unique``)."""
    s = np.sort(a, axis=None)
    if len(s) < 2:
        return s
    keep = np.empty(len(s), dtype=bool)
    keep[0] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]


def unique_inverse(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(a, return_inverse=True)`` for int64 rows, by one stable argsort."""
    order = np.argsort(a, kind="stable")
    s = a[order]
    new = np.empty(len(s), dtype=bool)
    new[:1] = True
    np.not_equal(s[1:], s[:-1], out=new[1:])
    inv = np.empty(len(a), dtype=np.int64)
    inv[order] = np.cumsum(new) - 1
    return s[new], inv


# ---- writing --------------------------------------------------------------------------------
def write_rows(path: str | os.PathLike, source: Any, order: np.ndarray | None = None, *,
               step: int = 65536, progress: Callable[[int], None] | None = None,
               dtype: str = "float32") -> RowLayout:
    """Write ``source[order]`` (all rows when ``order`` is None) as a page-aligned row file of
    ``dtype`` values (``float16``: half the bytes; a value beyond float16's range is refused,
    naming its row, rather than stored as infinity).

    ``source``: a float32 (n, d) array (memory-mapped or not) or a :class:`RowReader`. The file
    is written beside ``path``, fsynced, renamed into place and its directory fsynced
    (:func:`~mmcompress.artifacts.atomic_path`), so a crash leaves the previous file or the
    complete new one. Returns the layout written."""
    path = Path(path)
    d = int(source.shape[1]) if hasattr(source, "shape") else int(source.d)
    n_src = int(source.shape[0]) if hasattr(source, "shape") else int(source.n)
    order = np.arange(n_src, dtype=np.int64) if order is None else np.asarray(order, dtype=np.int64)
    layout = RowLayout.paged(len(order), d, dtype)
    g = layout.rows_per_group
    step = max(g, step // g * g)  # each block starts a group
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(_header(layout))
            for s in range(0, len(order), step):
                idx = order[s:s + step]
                block = _fetch_sorted(source, idx)
                if layout.dtype == "float16":
                    _check_half_range(block, s)
                f.write(_pack_groups(layout, block).data)
                if progress is not None:
                    progress(len(idx))
    return layout  # atomic_path fsynced the file and its directory


def copy_row_file(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy a row file and fsync the copy (saving an index whose store is already on disk)."""
    import shutil

    with open(src, "rb") as fi, open(dst, "wb") as fo:
        shutil.copyfileobj(fi, fo, 1 << 20)
        fo.flush()
        os.fsync(fo.fileno())


def _header(layout: RowLayout) -> bytes:
    meta = json.dumps({**layout.to_dict(), "version": 1}, sort_keys=True).encode() + b"\n"
    head = MAGIC + meta
    if len(head) > layout.data_offset:
        raise ValueError("row file header exceeds its page")
    return head + b"\0" * (layout.data_offset - len(head))


def _check_half_range(block: np.ndarray, first: int) -> None:
    """Refuse rows float16 cannot hold (beyond +-65504, or not finite), naming the first."""
    bad = ~np.isfinite(block) | (np.abs(block) > _FLOAT16_MAX)
    if bad.any():
        r, c = map(int, np.argwhere(bad)[0])
        raise ValueError(f"row {first + r} (in write order), column {c}: {block[r, c]!r} is outside "
                         f"float16's range (+-{_FLOAT16_MAX:g}); store the rows as float32")


def _pack_groups(layout: RowLayout, block: np.ndarray) -> np.ndarray:
    """Rows (m, d) starting a group, as whole zero-padded groups: uint8 (groups, group_bytes)."""
    g, d = layout.rows_per_group, layout.d
    n_groups = -(-len(block) // g)
    out = np.zeros((n_groups, layout.group_bytes), dtype=np.uint8)
    rows = np.zeros((n_groups * g, d), dtype=layout.dtype)
    rows[:len(block)] = block
    out[:, :g * layout.row_bytes].view(layout.dtype).reshape(n_groups, g, d)[...] = rows.reshape(n_groups, g, d)
    return out


def _fetch_sorted(source: Any, idx: np.ndarray) -> np.ndarray:
    """``source[idx]`` as float32, read in row order (sequential on disk), returned in ``idx`` order."""
    srt = np.argsort(idx, kind="stable")
    out = np.empty((len(idx), int(source.shape[1]) if hasattr(source, "shape") else source.d), np.float32)
    got = source.read(idx[srt]) if hasattr(source, "read") else source[idx[srt]]
    out[srt] = np.asarray(got, dtype=np.float32)
    return out


# ---- opening --------------------------------------------------------------------------------
def read_layout(path: str | os.PathLike) -> RowLayout:
    """The layout of a row file (page-aligned, from its header) or of a float32 ``.npy``."""
    with open(path, "rb") as f:
        head = f.read(PAGE_BYTES)
        if head.startswith(MAGIC):
            try:
                layout = RowLayout.from_dict(json.loads(head[len(MAGIC):].split(b"\n", 1)[0]))
            except (ValueError, KeyError, TypeError) as e:
                raise ArtifactError(f"{path}: unreadable row file header: {e}") from e
        elif head.startswith(b"\x93NUMPY"):
            f.seek(0)
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
            if len(shape) != 2 or fortran or dtype != np.dtype("<f4"):
                raise ArtifactError(f"{path}: exact store must be a C-ordered float32 matrix; "
                                    f"found {dtype} {shape}{' (Fortran order)' if fortran else ''}")
            layout = RowLayout.npy(shape[0], shape[1], f.tell())
        else:
            raise ArtifactError(f"{path}: neither a row file nor an .npy")
    size = os.path.getsize(path)
    if size < layout.file_bytes:
        raise ArtifactError(f"{path}: {size} bytes, the layout needs {layout.file_bytes} (truncated)")
    return layout


def open_row_store(path: str | os.PathLike, *, reader: str = "mmap", pool_bytes: int = 0,
                   reads_in_flight: int = 64, in_memory: bool = False,
                   layout: RowLayout | None = None) -> RowReader:
    """Open a row file (or an ``.npy``) for reading.

    ``reader``: ``"mmap"`` (memory-mapped, or read into RAM when ``in_memory``), ``"direct"``
    (``O_DIRECT`` into a buffer pool of ``pool_bytes``, buffered reads that drop the page cache
    where ``O_DIRECT`` is refused) or ``"pread"`` (that fallback, always). ``layout``: what the
    caller expects (e.g. from a manifest); a file that disagrees is refused."""
    found = read_layout(path)
    if layout is not None and layout != found:
        raise ArtifactError(f"{path}: layout {found} differs from the expected {layout}")
    if reader == "mmap":
        return MemoryRowReader.from_file(path, found, in_memory=in_memory)
    if reader in ("direct", "pread"):
        return DirectRowReader(path, found, pool_bytes=pool_bytes, reads_in_flight=reads_in_flight,
                               io="auto" if reader == "direct" else "pread")
    raise ValueError(f"reader must be one of {READER_KINDS}; found {reader!r}")


# ---- the interface --------------------------------------------------------------------------
@dataclass
class ReadCounts:
    """What one or more read calls cost: rows asked for, pages from below the pool, pool hits,
    bytes and read calls issued; and ``scored``, the (query, row) pairs the exact stage scored
    (a row shared by two queries of a batch is read once and scored twice)."""

    rows: int = 0
    pages_read: int = 0
    pool_hits: int = 0
    bytes_read: int = 0
    reads: int = 0
    scored: int = 0

    def add(self, other: ReadCounts) -> None:
        self.rows += other.rows
        self.scored += other.scored
        self.pages_read += other.pages_read
        self.pool_hits += other.pool_hits
        self.bytes_read += other.bytes_read
        self.reads += other.reads


@dataclass(frozen=True)
class PageLines:
    """Rows as they lie in the page frames a read filled: row ``i`` of the read is
    ``lines[local[i] // rows_per_line, (local[i] % rows_per_line) * d:][:d]`` (values of the
    store's dtype; ``local`` increases with the row). ``release()`` hands the frames back to the
    reader once the rows are scored (the view must not be used after)."""

    lines: np.ndarray  # (pages, values per page), or (rows, d) with rows_per_line 1
    local: np.ndarray  # int64, one per row read
    rows_per_line: int
    d: int
    release: Callable[[], None]

    @classmethod
    def of_rows(cls, X: np.ndarray) -> PageLines:
        """Rows already copied out, one per line (readers without frames to lend)."""
        return cls(X, np.arange(len(X), dtype=np.int64), 1, X.shape[1], lambda: None)


@runtime_checkable
class RowReader(Protocol):
    """Reads rows of an (n, d) store (float32 or float16 on disk) as float32 and counts the
    4 KiB pages it costs. Thread safe.

    ``stats()`` counters (since the last ``reset_stats``): ``calls``, ``rows``, ``pages_read``
    (pages fetched from below the index's pool: the disk, or the page cache for ``mmap``),
    ``pool_hits`` / ``pool_misses`` (pages found / not found in the pool), ``bytes_read``,
    ``reads`` (read calls issued); and ``mode``, ``pool_bytes``, ``pool_pages_held``."""

    n: int
    d: int

    def read(self, rows: np.ndarray, *, counts: ReadCounts | None = None) -> np.ndarray:
        """Rows ``rows`` (any order, repeats allowed) as float32 (len(rows), d); what the call
        cost is added to ``counts`` too when given (per-call figures under concurrency)."""
        ...

    def stats(self) -> dict[str, Any]: ...

    def reset_stats(self) -> None: ...

    def resident_bytes(self) -> int:
        """Bytes this reader holds in RAM (its pool, or an in-RAM copy; not the page cache)."""
        ...

    def close(self) -> None: ...


class _Counters:
    """Thread-safe cumulative counters shared by the readers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._c = dict.fromkeys(_COUNTERS, 0)

    def add(self, c: ReadCounts, counts: ReadCounts | None) -> None:
        with self._lock:
            t = self._c
            t["calls"] += 1
            t["rows"] += c.rows
            t["pages_read"] += c.pages_read
            t["pool_misses"] += c.pages_read
            t["pool_hits"] += c.pool_hits
            t["bytes_read"] += c.bytes_read
            t["reads"] += c.reads
        if counts is not None:
            counts.add(c)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = dict(self._c)
        looked = out["pool_hits"] + out["pool_misses"]
        out["pool_hit_rate"] = out["pool_hits"] / looked if looked else 0.0
        return out


# ---- in RAM / memory-mapped -----------------------------------------------------------------
class MemoryRowReader:
    """Rows of an in-RAM or memory-mapped store, with the page accounting of a disk reader.

    ``groups``: the store as float32 or float16 (n_groups, values per group), C-contiguous, row
    ``r`` at ``groups[r // rows_per_group, (r % rows_per_group) * d:][:d]`` (a plain (n, d)
    matrix is one row per group: ``rows_per_group=1``). The rerank scores rows in place from it
    (no gather; float16 rows widened in the kernel), ``read`` returns them as float32; ``layout`` says which file pages a row touches (for ``stats()``), and how rows are
    grouped unless ``rows_per_group`` says otherwise (an in-RAM matrix accounted as the file)."""

    def __init__(self, groups: np.ndarray, layout: RowLayout, *, mode: str = "memory",
                 path: str | os.PathLike | None = None, rows_per_group: int | None = None) -> None:
        assert groups.dtype in (np.float32, np.float16) and groups.ndim == 2 and groups.flags.c_contiguous
        self.groups, self.layout, self.mode = groups, layout, mode
        self.n, self.d = layout.n, layout.d
        self.rows_per_group = layout.rows_per_group if rows_per_group is None else int(rows_per_group)
        self.path = None if path is None else Path(path)
        self._counters = _Counters()

    @classmethod
    def from_array(cls, X: np.ndarray) -> MemoryRowReader:
        """An in-RAM store over ``X`` (n, d), accounted as the page-aligned file would be."""
        X = np.ascontiguousarray(X, dtype=np.float32)
        return cls(X, RowLayout.paged(len(X), X.shape[1]), mode="memory", rows_per_group=1)

    @classmethod
    def from_file(cls, path: str | os.PathLike, layout: RowLayout | None = None, *,
                  in_memory: bool = False) -> MemoryRowReader:
        """The file memory-mapped (``mmap`` mode), or read into RAM when ``in_memory``."""
        layout = read_layout(path) if layout is None else layout
        shape = (layout.n_groups, layout.group_bytes // layout.itemsize)
        if in_memory:
            with open(path, "rb") as f:
                f.seek(layout.data_offset)
                data = np.fromfile(f, dtype=layout.dtype, count=shape[0] * shape[1]).reshape(shape)
            return cls(data, layout, mode="memory", path=path)
        mm = np.memmap(path, dtype=layout.dtype, mode="r", offset=layout.data_offset, shape=shape)
        return cls(np.asarray(mm), layout, mode="mmap", path=path)  # a plain view: no subclass wrap per read

    def read(self, rows: np.ndarray, *, counts: ReadCounts | None = None) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64).ravel()
        self.layout.check_rows(rows)
        self.touch(rows, counts)
        g = self.rows_per_group
        if g == 1:
            X = self.groups[rows, :self.d]
        else:
            X = self.groups[(rows // g)[:, None], ((rows % g) * self.d)[:, None] + np.arange(self.d)]
        return X.astype(np.float32, copy=False)

    def touch(self, rows: np.ndarray, counts: ReadCounts | None = None) -> None:
        """Account a read of ``rows`` without copying them (the rerank scores them in place)."""
        pages = self.layout.page_count(rows)
        self._counters.add(ReadCounts(rows=len(rows), pages_read=pages, bytes_read=pages * PAGE_BYTES), counts)

    def stats(self) -> dict[str, Any]:
        return {**self._counters.snapshot(), "mode": self.mode, "pool_bytes": 0, "pool_pages_held": 0}

    def reset_stats(self) -> None:
        self._counters.reset()

    def resident_bytes(self) -> int:
        return 0 if self.mode == "mmap" else int(self.groups.nbytes)

    @property
    def nbytes(self) -> int:
        """Bytes of the store (its file's rows, padding included)."""
        return int(self.groups.nbytes) if self.mode == "memory" and self.path is None else self.layout.file_bytes

    def close(self) -> None:
        """Nothing to release: the mapping goes with the last reference to it."""


# ---- the buffer pool ------------------------------------------------------------------------
class PagePool:
    """An index-owned cache of 4 KiB file pages, bounded in bytes (CLOCK replacement).

    ``capacity_bytes // 4096`` page frames in one anonymous mapping, allocated up front (the
    kernel backs them as they fill); the page table and reference bits are the bookkeeping
    on top (``resident_bytes``). Hits are copied out under the lock (whole pages, or only the
    rows asked for), so a page evicted by another thread right after is never read
    half-overwritten."""

    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes < 0:
            raise ValueError(f"pool bytes must be >= 0; found {capacity_bytes}")
        self.capacity_bytes = int(capacity_bytes)
        self.slots = self.capacity_bytes // PAGE_BYTES
        self._lock = threading.Lock()
        self._mem = mmap.mmap(-1, max(self.slots, 1) * PAGE_BYTES)
        self._frames = np.frombuffer(self._mem, dtype=np.uint8).reshape(-1, PAGE_BYTES)[:self.slots]
        self._page_of = np.full(self.slots, -1, dtype=np.int64)
        self._ref = np.zeros(self.slots, dtype=bool)
        self._table: dict[int, int] = {}
        self._hand = 0
        self._filled = 0
        self._rng = np.random.default_rng(0)

    def __len__(self) -> int:
        """Pages held now."""
        return len(self._table)

    def _slots(self, pages: np.ndarray) -> np.ndarray:
        """The frame holding each page, -1 where none (under the lock)."""
        found = list(map(self._table.get, pages.tolist(), itertools.repeat(-1, len(pages))))
        return np.array(found, dtype=np.int64)

    def lookup(self, pages: np.ndarray, frames: np.ndarray | None = None, *,
               rows: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
               dtype: str = "float32") -> np.ndarray:
        """Copy what the pool holds of ``pages`` and return the hit mask over them: whole pages
        into ``frames[i]``, or with ``rows = (page_of_row, at, out)`` only rows that lie in one
        page each (row ``i``: ``out.shape[1]`` values of ``dtype`` from value ``at[i]`` of page
        ``pages[page_of_row[i]]``), into ``out`` (float32)."""
        if self.slots == 0:
            return np.zeros(len(pages), dtype=bool)
        with self._lock:
            slot = self._slots(pages)
            hit = slot >= 0
            if hit.any():
                if rows is None:
                    frames[hit] = self._frames[slot[hit]]
                else:
                    page_of_row, at, out = rows
                    held = hit[page_of_row]
                    per_page = PAGE_BYTES // np.dtype(dtype).itemsize
                    out[held] = _windows(self._frames, out.shape[1], dtype)[slot[page_of_row[held]] * per_page
                                                                            + at[held]]
                self._ref[slot[hit]] = True
        return hit

    @property
    def admit_limit(self) -> int:
        """The most pages one read admits: half the frames (64 in a smaller pool), so a large
        batch cannot flush the pages that other reads keep hitting."""
        return min(self.slots, max(64, self.slots // 2))

    def insert(self, pages: np.ndarray, frames: np.ndarray, *, share: float = 1.0) -> None:
        """Hold ``frames[i]`` as the content of ``pages[i]``, evicting by CLOCK: a random
        ``share`` of them (a read that inserts in parts gives each part its share of
        :attr:`admit_limit`), at most ``admit_limit``. Pages another thread inserted meanwhile
        are kept as they are."""
        if self.slots == 0 or len(pages) == 0:
            return
        with self._lock:
            keep = len(pages) if share >= 1 else int(self._rng.binomial(len(pages), share))
            keep = min(keep, self.admit_limit)
            if keep < len(pages):
                pick = np.sort(self._rng.choice(len(pages), keep, replace=False))
                pages, frames = pages[pick], frames[pick]
            dst, src = [], []
            for i, p in enumerate(pages.tolist()):
                if p in self._table:
                    continue
                s = self._victim()
                old = int(self._page_of[s])
                if old >= 0:
                    del self._table[old]
                self._table[p] = s
                self._page_of[s] = p
                dst.append(s)
                src.append(i)
            if dst:
                self._frames[dst] = frames[src]
                self._ref[dst] = False  # a second touch makes a page worth keeping

    def _victim(self) -> int:
        if self._filled < self.slots:
            self._filled += 1
            return self._filled - 1
        ref, n = self._ref, self.slots
        while ref[self._hand]:
            ref[self._hand] = False
            self._hand = (self._hand + 1) % n
        s = self._hand
        self._hand = (s + 1) % n
        return s

    def clear(self) -> None:
        with self._lock:
            self._table.clear()
            self._page_of[:] = -1
            self._ref[:] = False
            self._hand = self._filled = 0

    def resident_bytes(self) -> int:
        """Frames plus bookkeeping (page numbers, reference bits, about 100 bytes per table entry)."""
        return self.slots * (PAGE_BYTES + 8 + 1) + 100 * len(self._table)


# ---- the disk reader ------------------------------------------------------------------------
class DirectRowReader:
    """Rows read from disk the way a disk-resident index reads them: see the module docstring.

    ``io``: ``"auto"`` (``O_DIRECT``; buffered + ``DONTNEED`` where refused), ``"direct"``
    (``O_DIRECT`` or an error) or ``"pread"`` (buffered + ``DONTNEED``). ``stats()["mode"]``
    is ``"o_direct"`` or ``"pread_dontneed"``. ``engine``: ``"auto"`` (kernel AIO for
    ``O_DIRECT`` reads where the kernel takes it, else threads), ``"kernel_aio"`` (or an
    error) or ``"threads"``; ``stats()["engine"]`` says which one reads."""

    def __init__(self, path: str | os.PathLike, layout: RowLayout | None = None, *, pool_bytes: int = 0,
                 reads_in_flight: int = 64, io: str = "auto", engine: str = "auto") -> None:
        if io not in ("auto", "direct", "pread"):
            raise ValueError(f"io must be 'auto', 'direct' or 'pread'; found {io!r}")
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}; found {engine!r}")
        if reads_in_flight < 1:
            raise ValueError(f"reads_in_flight must be >= 1; found {reads_in_flight}")
        self.path = Path(path)
        self.layout = read_layout(path) if layout is None else layout
        self.n, self.d = self.layout.n, self.layout.d
        self.reads_in_flight = int(reads_in_flight)
        self.pool = PagePool(pool_bytes)
        self._counters = _Counters()
        self._fd, self.mode = _open_for_reads(self.path, io)
        try:
            self.engine = _pick_engine(engine, self.mode)
        except OSError:
            os.close(self._fd)
            raise
        self._aio_local = threading.local()
        self._aio_contexts: list[kernelaio.AioContext] = []  # every thread's, closed with the reader
        self._executor: ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()
        self._spare: list[mmap.mmap] = []
        self._scratch_lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _release, self._fd, [None], self._aio_contexts)
        lay = self.layout
        # the lean path's fixed arguments (kernels.page_plan) where it applies, and the most rows it takes
        self._plan_args = ((lay.n, lay.data_offset, lay.rows_per_group, lay.group_bytes, lay.row_bytes,
                            lay.itemsize, PAGE_BYTES, _MAX_RUN_PAGES)
                           if self.engine == "kernel_aio" and lay.format == PAGED and lay.max_pages_per_row == 1
                           else None)
        self._plan_rows = self.rows_per_read

    @property
    def nbytes(self) -> int:
        return self.layout.file_bytes

    @property
    def rows_per_read(self) -> int:
        """The most rows a caller should ask of one :meth:`read` for its buffers to stay
        bounded: as many as always fit the largest spare read buffer (a call of more maps a
        buffer of its own, and returns rows as large as what it read)."""
        return max(1, _SPARE_MAX_PAGES // self.layout.max_pages_per_row)

    def read(self, rows: np.ndarray, *, counts: ReadCounts | None = None) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64).ravel()
        if self._fd < 0:
            raise ValueError(f"{self.path}: reader is closed")
        if len(rows) == 0:
            self._counters.add(ReadCounts(), counts)
            return np.empty((0, self.d), dtype=np.float32)
        plan = self._plan(rows)
        if plan is not None:  # a query's few dozen sorted rows: the lean path of read_ahead
            return self._start(rows, plan, counts)()
        self.layout.check_rows(rows)
        distinct = bool(np.all(rows[1:] > rows[:-1]))  # already sorted and distinct (the rerank's ask)
        uniq, inv = (rows, None) if distinct else unique_inverse(rows)
        c = ReadCounts(rows=len(rows))
        step = max(1, _BATCH_PAGES // self.layout.max_pages_per_row)
        share = min(1.0, self.pool.admit_limit / max(1, self.layout.page_count(uniq)))
        parts = [self._read_unique(uniq[a:a + step], c, share) for a in range(0, len(uniq), step)]
        X = parts[0] if len(parts) == 1 else np.concatenate(parts)
        self._counters.add(c, counts)
        return X if inv is None else X[inv]

    def _read_unique(self, rows: np.ndarray, c: ReadCounts, share: float) -> np.ndarray:
        """Sorted distinct rows: hits from the pool, misses read in parallel, rows cut out."""
        start = self.layout.offsets(rows)
        X = np.empty((len(rows), self.d), dtype=np.float32)
        if self.layout.max_pages_per_row == 1:  # the page-aligned file with rows of <= 4 KiB
            page, at = start // PAGE_BYTES, start % PAGE_BYTES // self.layout.itemsize
            pages = _distinct(page)
            pidx = np.searchsorted(pages, page)
            hit = self.pool.lookup(pages, rows=(pidx, at, X), dtype=self.layout.dtype)
            miss = np.flatnonzero(~hit)
            if len(miss):
                with self._missing(pages[miss], c, share) as frames:
                    _cut_rows(X, frames, hit, pidx, at, self.layout.dtype)
        else:  # rows over several pages: whole pages, then rows cut out
            pages = self.layout.pages(rows)
            frames = np.empty((len(pages), PAGE_BYTES), dtype=np.uint8)
            hit = self.pool.lookup(pages, frames)
            miss = np.flatnonzero(~hit)
            if len(miss):
                with self._missing(pages[miss], c, share) as read:
                    frames[miss] = read
            X[:] = _windows(frames, self.d, self.layout.dtype)[
                (np.searchsorted(pages, start // PAGE_BYTES) * PAGE_BYTES + start % PAGE_BYTES) // self.layout.itemsize]
        c.pool_hits += len(pages) - len(miss)
        return X

    @contextlib.contextmanager
    def _missing(self, pages: np.ndarray, c: ReadCounts, share: float) -> Iterator[np.ndarray]:
        """Read ``pages`` (sorted, distinct) into page-aligned frames (yielded), put a ``share``
        of them in the pool, and count the reads. Adjacent pages are read together."""
        mem = self._scratch(len(pages))
        try:
            runs = _runs(pages)
            c.bytes_read += self._read_runs(memoryview(mem), pages, runs)
            c.pages_read += len(pages)
            c.reads += len(runs[0])
            frames = np.frombuffer(mem, dtype=np.uint8, count=len(pages) * PAGE_BYTES).reshape(-1, PAGE_BYTES)
            yield frames
            self.pool.insert(pages, frames, share=share)
            del frames
        finally:
            self._give_back(mem)

    def _scratch(self, n_pages: int) -> mmap.mmap:
        """A page-aligned buffer of at least ``n_pages`` pages (anonymous memory, as O_DIRECT
        needs): the smallest spare that is large enough; else a new one, sized to the next power
        of two (at least 16 pages), that takes the place of the largest spare. So there are about
        as many spares as reads that ran at once, each as large as the largest call that used
        it, not one per size a call happened to ask for (a search reading in two waves asks for
        two sizes); only the pages a read wrote into are resident. A call of more than
        ``_SPARE_MAX_PAGES`` gets a buffer of its own and leaves the spares as they are."""
        if n_pages > _SPARE_MAX_PAGES:
            return mmap.mmap(-1, n_pages * PAGE_BYTES)
        with self._scratch_lock:
            sizes = [len(mem) for mem in self._spare]
            fits = [j for j, size in enumerate(sizes) if size >= n_pages * PAGE_BYTES]
            if fits:
                return self._spare.pop(min(fits, key=sizes.__getitem__))
            old = self._spare.pop(int(np.argmax(sizes))) if sizes else None
        if old is not None:
            _unmap(old)
        return mmap.mmap(-1, max(16, 1 << (n_pages - 1).bit_length()) * PAGE_BYTES)

    def _read_runs(self, mem: memoryview, pages: np.ndarray, runs: tuple[np.ndarray, np.ndarray]) -> int:
        """Read each run of adjacent pages into its frames, up to ``reads_in_flight`` at once."""
        if self.engine == "kernel_aio":
            return self._read_runs_aio(mem, pages, runs)
        return self._read_runs_threads(mem, pages, runs)

    def _aio_context(self) -> kernelaio.AioContext:
        """This thread's AIO context: room for two calls' reads, one read while the next is
        submitted (:meth:`read_ahead`)."""
        ctx = getattr(self._aio_local, "ctx", None)
        if ctx is None or ctx.closed:
            ctx = kernelaio.AioContext(2 * self.reads_in_flight)
            self._aio_local.ctx = ctx
            with self._scratch_lock:
                self._aio_contexts[:] = [c for c in self._aio_contexts if not c.closed] + [ctx]
        return ctx

    def _aio_batch(self, mem: memoryview, pages: np.ndarray, runs: tuple[np.ndarray, np.ndarray]
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Addresses, file offsets and lengths of the runs' reads into ``mem``."""
        first, count = runs
        base = ctypes.addressof(ctypes.c_char.from_buffer(mem))
        return (base + first * PAGE_BYTES).astype(np.uint64), pages[first] * PAGE_BYTES, count * PAGE_BYTES

    def _check_got(self, got: np.ndarray, offsets: np.ndarray, lengths: np.ndarray) -> int:
        if np.array_equal(got, lengths):  # every read whole (the usual case)
            return int(lengths.sum())
        short = np.flatnonzero((got < lengths) & (offsets + got < self.layout.file_bytes))
        if len(short):
            j = int(short[0])
            raise OSError(errno.EIO, f"{self.path}: short read of {int(got[j])} bytes at {int(offsets[j])}")
        return int(got.sum())

    def _read_runs_aio(self, mem: memoryview, pages: np.ndarray, runs: tuple[np.ndarray, np.ndarray]) -> int:
        """The runs as one batch of kernel AIO reads from this thread's context."""
        bufs, offsets, lengths = self._aio_batch(mem, pages, runs)
        got = self._aio_context().read(self._fd, bufs, offsets, lengths, limit=self.reads_in_flight)
        return self._check_got(got, offsets, lengths)

    def read_ahead(self, rows: np.ndarray, *, counts: ReadCounts | None = None) -> Callable[[], np.ndarray]:
        """Start reading ``rows`` (sorted and distinct) and return a function that waits for
        them and returns them as :meth:`read` does (call it once, from the same thread).

        With kernel AIO, a call of at most :attr:`rows_per_read` rows of a page each has its
        reads in flight while the caller works: scoring one range of a batch while the next
        is read keeps the device as busy as one long call would, with two calls' buffers
        instead of the whole batch's. Otherwise the rows are read at once."""
        rows = np.asarray(rows, dtype=np.int64).ravel()
        plan = self._plan(rows) if self._fd >= 0 else None
        if plan is None:
            X = self.read(rows, counts=counts)
            return lambda: X
        return self._start(rows, plan, counts)

    def _plan(self, rows: np.ndarray) -> tuple[np.ndarray, ...] | None:
        """:func:`~mmcompress.index.kernels.page_plan` of ``rows`` where the lean path reads
        them (kernel AIO, rows of one page, at most :attr:`rows_per_read` of them, sorted and
        distinct, in range); else None."""
        if self._plan_args is None or not 0 < len(rows) <= self._plan_rows:
            return None
        return kernels.page_plan(rows, *self._plan_args)

    def lines_ahead(self, rows: np.ndarray, *, counts: ReadCounts | None = None
                    ) -> Callable[[], PageLines] | None:
        """Start reading ``rows`` (sorted and distinct) as the pages that hold them and return a
        function that waits for them and returns them as :class:`PageLines` (call it once,
        from the same thread, and ``release()`` what it returns once scored); None where the
        lean path does not apply (the caller reads rows with :meth:`read_ahead`).

        The rows are scored where they lie in the page frames the disk wrote: no float32 copy
        of them (a query's 100 rows of 474 values are 190 KB of float32 next to 40 page frames
        of 160 KB), and no copy of a row out of its page."""
        rows = np.asarray(rows, dtype=np.int64).ravel()
        plan = self._plan(rows) if self._fd >= 0 else None
        if plan is None:
            return None
        return self._start_lines(rows, plan, counts)

    def _start_lines(self, rows: np.ndarray, plan: tuple[np.ndarray, ...], counts: ReadCounts | None
                     ) -> Callable[[], PageLines]:
        """Put the reads of ``rows`` (planned by :meth:`_plan`) in flight into one frame per
        distinct page (the pool's hits copied in, the misses read into theirs); the returned
        function waits for the reads and returns the frames as :class:`PageLines`."""
        pidx, at, pages, run_first, run_count = plan
        c = ReadCounts(rows=len(rows))
        mem = self._scratch(len(pages))
        done = False
        try:
            frames = np.frombuffer(mem, dtype=np.uint8, count=len(pages) * PAGE_BYTES).reshape(-1, PAGE_BYTES)
            if self.pool.slots:
                hit = self.pool.lookup(pages, frames)
                miss = np.flatnonzero(~hit)
                if len(miss) < len(pages):  # runs of adjacent missed pages, as indices into pages
                    first, count = _runs(pages[miss])
                    run_first, run_count = miss[first], count
                share = min(1.0, self.pool.admit_limit / max(1, len(pages)))
            else:  # no pool: every page from disk, as planned
                miss, share = None, 1.0
            n_miss = len(pages) if miss is None else len(miss)
            c.pool_hits += len(pages) - n_miss
            runs = (run_first, run_count)
            token = ctx = None
            if n_miss > self.reads_in_flight:  # more pages than one call's reads: read them now
                c.bytes_read += self._read_runs(memoryview(mem), pages, runs)
            elif n_miss:
                ctx = self._aio_context()
                bufs, offsets, lengths = self._aio_batch(memoryview(mem), pages, runs)
                token = ctx.submit(self._fd, bufs, offsets, lengths)
            done = True
        finally:
            if not done:
                self._give_back(mem)
        g = self.layout.rows_per_group
        local = pidx * g + at // self.d  # a row's place among the frames' rows (g per page, from its start)

        def finish() -> PageLines:
            try:
                if token is not None:
                    c.bytes_read += self._check_got(ctx.wait(token), offsets, lengths)
                c.pages_read += n_miss
                c.reads += len(runs[0])
                if n_miss:
                    got = frames if miss is None else frames[miss]
                    self.pool.insert(pages if miss is None else pages[miss], got, share=share)
                    del got
            except BaseException:
                self._give_back(mem)
                raise
            self._counters.add(c, counts)
            lines = frames.view(self.layout.dtype)
            return PageLines(lines, local, g, self.d, lambda: self._give_back(mem))

        return finish

    def _start(self, rows: np.ndarray, plan: tuple[np.ndarray, ...], counts: ReadCounts | None
               ) -> Callable[[], np.ndarray]:
        """:meth:`_start_lines`, the rows then copied out of their frames as float32."""
        pidx, at = plan[0], plan[1]
        finish_lines = self._start_lines(rows, plan, counts)

        def finish() -> np.ndarray:
            lines = finish_lines()
            try:
                X = np.empty((len(rows), self.d), dtype=np.float32)
                _cut_rows(X, lines.lines.view(np.uint8), np.zeros(len(lines.lines), dtype=bool), pidx, at,
                          self.layout.dtype)
            finally:
                lines.release()
            return X

        return finish

    def _give_back(self, mem: mmap.mmap) -> None:
        """A scratch buffer back to the spares, or unmapped if larger than they are kept."""
        if len(mem) > _SPARE_MAX_PAGES * PAGE_BYTES:
            _unmap(mem)
        else:
            with self._scratch_lock:
                if len(self._spare) < _SPARE_SCRATCH:
                    self._spare.append(mem)

    def _read_runs_threads(self, mem: memoryview, pages: np.ndarray, runs: tuple[np.ndarray, np.ndarray]) -> int:
        """Read each run of adjacent pages into its frames, up to ``reads_in_flight`` at once:
        the calling thread and the read threads take the next run as each finishes (a slow
        read holds up one lane, not a fixed share of the runs)."""
        take = itertools.count().__next__  # atomic under the GIL
        spans = list(zip(runs[0].tolist(), runs[1].tolist(), strict=True))

        def lane() -> int:
            got = 0
            while (j := take()) < len(spans):
                i, k = spans[j]
                got += self._pread(mem[i * PAGE_BYTES:(i + k) * PAGE_BYTES], int(pages[i]) * PAGE_BYTES)
            return got

        lanes = min(self.reads_in_flight, len(spans))
        futures = [self._pool_threads().submit(lane) for _ in range(lanes - 1)]
        total = lane()
        return total + sum(f.result() for f in futures)

    def _pread(self, buf: memoryview, offset: int) -> int:
        got = os.preadv(self._fd, [buf], offset)
        if got < len(buf) and offset + got < self.layout.file_bytes:
            raise OSError(errno.EIO, f"{self.path}: short read of {got} bytes at {offset}")
        if self.mode == "pread_dontneed":
            os.posix_fadvise(self._fd, offset, len(buf), os.POSIX_FADV_DONTNEED)
        return got

    def _pool_threads(self) -> ThreadPoolExecutor:
        if self._executor is None:
            with self._executor_lock:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(self.reads_in_flight - 1, thread_name_prefix="rowstore")
                    self._finalizer.detach()
                    self._finalizer = weakref.finalize(self, _release, self._fd, [self._executor],
                                                       self._aio_contexts)
        return self._executor

    def stats(self) -> dict[str, Any]:
        return {**self._counters.snapshot(), "mode": self.mode, "engine": self.engine,
                "pool_bytes": self.pool.capacity_bytes, "pool_pages_held": len(self.pool),
                "reads_in_flight": self.reads_in_flight}

    def reset_stats(self) -> None:
        self._counters.reset()

    def resident_bytes(self) -> int:
        """The pool, plus the spare read buffers (at most 8 of up to 64 pages, as large as the
        largest calls made them)."""
        with self._scratch_lock:
            spare = sum(len(m) for m in self._spare)
        return self.pool.resident_bytes() + spare

    def close(self) -> None:
        """Close the file and stop the read threads; reads after this fail."""
        self._fd = -1
        self._finalizer()


def _unmap(mem: mmap.mmap) -> None:
    """Release a read buffer now, or (a view of it still open) when the collector frees it."""
    with contextlib.suppress(BufferError):
        mem.close()


def _open_for_reads(path: Path, io: str) -> tuple[int, str]:
    """A descriptor for ``O_DIRECT`` reads where the filesystem takes them (probed with one
    aligned read), else for buffered reads with readahead off."""
    if io != "pread" and hasattr(os, "O_DIRECT"):
        fd = -1
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
            probe = mmap.mmap(-1, PAGE_BYTES)
            os.preadv(fd, [probe], 0)
            probe.close()
            return fd, "o_direct"
        except OSError as e:
            if fd >= 0:
                os.close(fd)
            if io == "direct" or e.errno != errno.EINVAL:
                raise
    elif io == "direct":
        raise OSError(errno.EINVAL, "O_DIRECT is not available on this platform")
    fd = os.open(path, os.O_RDONLY)
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
    return fd, "pread_dontneed"


def _pick_engine(engine: str, mode: str) -> str:
    """The read engine for a descriptor opened in ``mode``: kernel AIO only helps ``O_DIRECT``
    (buffered AIO reads block in the submitting call)."""
    if engine == "threads" or (engine == "auto" and (mode != "o_direct" or not kernelaio.available())):
        return "threads"
    if mode != "o_direct":
        raise OSError(errno.EINVAL, f"kernel AIO reads need O_DIRECT; the store is read in mode {mode}")
    if not kernelaio.available():
        raise OSError(errno.ENOSYS, "kernel AIO is not available here")
    return "kernel_aio"


def _release(fd: int, executor: list[ThreadPoolExecutor | None], contexts: list[kernelaio.AioContext]) -> None:
    if executor[0] is not None:
        executor[0].shutdown(wait=True)
    for ctx in list(contexts):
        ctx.close()
    try:
        os.close(fd)
    except OSError:
        pass


def _cut_rows(X: np.ndarray, frames: np.ndarray, hit: np.ndarray, pidx: np.ndarray, at: np.ndarray,
              dtype: str) -> None:
    """Fill the rows of ``X`` whose page missed the pool (``hit`` per distinct page; row ``i``
    lies at value ``at[i]`` of page ``pidx[i]``) from ``frames``, the missed pages in order,
    holding values of ``dtype``."""
    kernels.cut_rows(X, frames, hit, pidx, at, half=dtype == "float16")


def _windows(frames: np.ndarray, d: int, dtype: str = "float32") -> np.ndarray:
    """Every run of ``d`` values of ``dtype`` in a block of page frames, as rows of a view:
    indexing it with value offsets copies whole rows (faster than gathering element by element)."""
    flat = frames.reshape(-1).view(dtype)
    size = flat.itemsize
    return np.lib.stride_tricks.as_strided(flat, shape=(max(len(flat) - d + 1, 0), d),
                                           strides=(size, size), writeable=False)


def _runs(pages: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first index, page count) of each run of adjacent ``pages`` (sorted, distinct), at most
    ``_MAX_RUN_PAGES`` long: one read each. Array arithmetic, no per-run Python loop (a search
    reads a few dozen runs of one page each, and a loop over them cost ~40 µs a call)."""
    n = len(pages)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.diff(pages) != 1) + 1
    starts = np.concatenate([[0], starts]).astype(np.int64)
    lengths = np.diff(np.append(starts, n))
    if lengths.max() <= _MAX_RUN_PAGES:
        return starts, lengths
    pieces = -(-lengths // _MAX_RUN_PAGES)  # a long run cut into reads of at most _MAX_RUN_PAGES
    piece = np.arange(int(pieces.sum())) - np.repeat(np.cumsum(pieces) - pieces, pieces)
    first = np.repeat(starts, pieces) + piece * _MAX_RUN_PAGES
    count = np.minimum(_MAX_RUN_PAGES, np.repeat(lengths, pieces) - piece * _MAX_RUN_PAGES)
    return first, count


# ---- several stores as one ------------------------------------------------------------------
class StackedRowReader:
    """Stores read as one row range, part after part (the main segment, then the delta).

    It does not own its parts: ``close`` leaves them open (the segments close their own)."""

    def __init__(self, parts: Sequence[RowReader]) -> None:
        self.parts = list(parts)
        self.bounds = np.cumsum([0] + [p.n for p in self.parts])
        self.n, self.d = int(self.bounds[-1]), self.parts[0].d
        limits = [p.rows_per_read for p in self.parts if getattr(p, "rows_per_read", None)]
        self.rows_per_read = min(limits) if limits else None

    def read(self, rows: np.ndarray, *, counts: ReadCounts | None = None) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64).ravel()
        out = np.empty((len(rows), self.d), dtype=np.float32)
        part = np.searchsorted(self.bounds, rows, side="right") - 1
        for j, reader in enumerate(self.parts):
            m = part == j
            if m.any():
                out[m] = reader.read(rows[m] - self.bounds[j], counts=counts)
        return out

    def stats(self) -> dict[str, Any]:
        each = [p.stats() for p in self.parts]
        out: dict[str, Any] = {k: sum(s[k] for s in each) for k in (*_COUNTERS, "pool_bytes", "pool_pages_held")}
        looked = out["pool_hits"] + out["pool_misses"]
        out["pool_hit_rate"] = out["pool_hits"] / looked if looked else 0.0
        out["mode"] = "+".join(s["mode"] for s in each)
        return out

    def reset_stats(self) -> None:
        for p in self.parts:
            p.reset_stats()

    def resident_bytes(self) -> int:
        return sum(p.resident_bytes() for p in self.parts)

    def close(self) -> None:
        """The parts belong to their segments; nothing to close here."""


class RowSubset:
    """Rows ``rows`` of another store, renumbered from 0 (a compacted view, streamed to a new
    row file on save without holding it in RAM). Does not own ``base``."""

    def __init__(self, base: RowReader, rows: np.ndarray) -> None:
        self.base, self.rows = base, np.asarray(rows, dtype=np.int64)
        self.n, self.d = len(self.rows), base.d

    def read(self, rows: np.ndarray, *, counts: ReadCounts | None = None) -> np.ndarray:
        return self.base.read(self.rows[np.asarray(rows, dtype=np.int64)], counts=counts)

    def stats(self) -> dict[str, Any]:
        return self.base.stats()

    def reset_stats(self) -> None:
        self.base.reset_stats()

    def resident_bytes(self) -> int:
        return int(self.rows.nbytes)

    def close(self) -> None:
        """``base`` belongs to its segment; nothing to close here."""
