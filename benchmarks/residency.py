"""What a searching process holds in RAM: its anonymous memory and the page cache of the files
it reads, the two things a machine running the index has to keep.

RSS alone misses the page cache of files read with ``read``/``pread`` and counts only the
mapped pages a process has touched; the page cache alone misses heaps. So a figure here is
``RssAnon`` growth over a baseline taken after the same imports, plus the pages of the index's
files resident in the page cache (``mincore``), whether the process mapped them or read them.
``mincore`` is called through ctypes because Python's ``mmap`` does not expose it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import sys
import threading
from collections.abc import Iterable
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
_libc.mincore.restype = ctypes.c_int
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                       ctypes.c_long)
_libc.mmap.restype = ctypes.c_void_p
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_MAP_FAILED = ctypes.c_void_p(-1).value


def files_under(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Every regular file of ``paths`` (files, or directories walked)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file())
        elif p.is_file():
            out.append(p)
    return out


def cached_bytes(path: str | os.PathLike) -> int:
    """Bytes of ``path`` resident in the page cache now (``mincore`` over a fresh mapping,
    which itself faults nothing in)."""
    size = os.path.getsize(path)
    if size == 0:
        return 0
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, _MAP_FAILED):
            raise OSError(ctypes.get_errno(), f"mmap of {path} failed")
        try:
            n_pages = (size + PAGE - 1) // PAGE
            vec = (ctypes.c_ubyte * n_pages)()
            if _libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), f"mincore of {path} failed")
            resident = sum(b & 1 for b in bytes(vec))
        finally:
            _libc.munmap(addr, size)
    finally:
        os.close(fd)
    return min(resident * PAGE, size)


def cached_bytes_of(paths: Iterable[str | os.PathLike]) -> int:
    """Page-cache bytes of every file under ``paths``."""
    return sum(cached_bytes(f) for f in files_under(paths))


def drop_cache(paths: Iterable[str | os.PathLike]) -> None:
    """Evict the files under ``paths`` from the page cache (written back first, so every page
    is clean and ``POSIX_FADV_DONTNEED`` can drop it): the next reads come from the disk."""
    for f in files_under(paths):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def trim_heap() -> None:
    """Give the C heap's free memory back to the kernel (glibc ``malloc_trim(0)``).

    Memory a process has freed stays in its ``RssAnon`` until the allocator returns it, and a
    later allocation reuses it without growing ``RssAnon``: a baseline taken over freed warm-up
    buffers hides that much of what is loaded next. Trimming before the baseline and before the
    reading makes both count live memory only. No-op where the C library has no ``malloc_trim``.
    """
    trim = getattr(_libc, "malloc_trim", None)
    if trim is not None:
        trim(0)


def rss_anon_bytes() -> int:
    """This process's anonymous resident memory (``RssAnon`` of /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("RssAnon not found in /proc/self/status")


def _statm_anon(fd: int) -> int:
    """Anonymous resident bytes from ``/proc/self/statm`` (resident minus file-backed and shared
    pages), read through a descriptor kept open: a sample costs one ``pread``."""
    fields = os.pread(fd, 256, 0).split()
    return (int(fields[1]) - int(fields[2])) * PAGE


class AnonPeak:
    """The highest anonymous resident memory of this process while a block runs.

    Memory a search holds only while it runs (read buffers, gathered rows, scan scratch) is
    gone when it returns, so a figure taken after the work misses it. A thread samples
    ``/proc/self/statm`` every ``interval`` seconds (the interpreter's switch interval is
    shortened to match, so Python code between compiled calls cannot starve it); the kernel's
    own high-water mark (``VmHWM``) would count file-backed pages too, which the page-cache
    term already holds.

        with AnonPeak() as peak:
            run_queries()
        peak.max_bytes
    """

    def __init__(self, interval: float = 1e-4) -> None:
        self.interval = interval
        self.max_bytes = 0
        self.samples = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        self.max_bytes = max(self.max_bytes, _statm_anon(self._fd))
        self.samples += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> AnonPeak:
        self._fd = os.open("/proc/self/statm", os.O_RDONLY)
        self._switch = sys.getswitchinterval()
        sys.setswitchinterval(self.interval)
        self._sample()
        self._thread = threading.Thread(target=self._loop, name="anon-peak", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        sys.setswitchinterval(self._switch)
        os.close(self._fd)
