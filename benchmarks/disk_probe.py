"""The store device's random-read rate, read the way the exact stage reads a store.

4 KiB ``O_DIRECT`` reads of uniformly random pages of one file through kernel AIO
(:mod:`mmcompress.index.kernelaio`), ``depth`` in flight per thread, by one thread and by two
side by side. A cold single query issues a few dozen such reads (adjacent pages of one query
coalesce into one read), so cold queries/s cannot exceed this rate over a query's reads however
fast the search around them is: the serving benchmark records it beside its cold figures.
The two-thread figure shows whether the device takes several submitters: the benchmark
machine's virtio disk (one hardware queue) read less in total from two threads than from one.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from mmcompress.index.rowstore import PAGE_BYTES


def _reader(path: Path, seconds: float, depth: int, seed: int, out: list[int]) -> None:
    from mmcompress.index import kernelaio

    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, depth * PAGE_BYTES)
    ctx = kernelaio.AioContext(depth)
    try:
        base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        bufs = (base + PAGE_BYTES * np.arange(depth)).astype(np.uint64)
        lengths = np.full(depth, PAGE_BYTES, dtype=np.int64)
        n_pages = os.fstat(fd).st_size // PAGE_BYTES
        rng = np.random.default_rng(seed)
        done, end = 0, time.perf_counter() + seconds
        while time.perf_counter() < end:
            offsets = rng.integers(0, n_pages, depth, dtype=np.int64) * PAGE_BYTES
            ctx.read(fd, bufs, offsets, lengths)
            done += depth
        out.append(done)
    finally:
        ctx.close()
        os.close(fd)
        buf.close()


def random_reads_per_s(path: str | Path, *, threads: int = 1, seconds: float = 2.0, depth: int = 64,
                       seed: int = 0) -> float:
    """Random 4 KiB ``O_DIRECT`` reads per second of ``path`` by ``threads`` threads, each with
    ``depth`` reads in flight."""
    counts: list[int] = []
    pool = [threading.Thread(target=_reader, args=(Path(path), seconds, depth, seed + i, counts))
            for i in range(threads)]
    t = time.perf_counter()
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    wall = time.perf_counter() - t
    if len(counts) != threads:
        raise OSError(f"{path}: a reader thread failed")
    return sum(counts) / wall


def probe(path: str | Path, *, seconds: float = 2.0, depth: int = 64) -> dict[str, Any]:
    """The rate with one thread and with two, or why it could not be measured."""
    from mmcompress.index import kernelaio

    path = Path(path)
    if not kernelaio.available():
        return {"file": path.name, "error": "kernel AIO is not available"}
    try:
        one = random_reads_per_s(path, threads=1, seconds=seconds, depth=depth)
        two = random_reads_per_s(path, threads=2, seconds=seconds, depth=depth)
    except OSError as e:  # O_DIRECT refused by the filesystem, a failed read
        return {"file": path.name, "error": str(e)}
    return {"file": path.name, "file_bytes": path.stat().st_size, "depth": depth, "seconds": seconds,
            "reads_per_s_1": one, "reads_per_s_2": two}


def describe(result: dict[str, Any] | None) -> str:
    """One line for a report."""
    if not result:
        return "not measured"
    if "error" in result:
        return f"not measured ({result['error']})"
    return (f"{result['reads_per_s_1']:,.0f} random 4 KiB O_DIRECT reads/s on one thread, "
            f"{result['reads_per_s_2']:,.0f} on two ({result['depth']} in flight each, kernel AIO, "
            f"{result['file_bytes'] / 2**20:,.0f} MiB file)")
