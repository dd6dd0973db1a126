"""Memory probe: open one contender in a fresh process, run the queries the timed run ran, and
report what the process holds: anonymous memory grown over a baseline taken after the same
imports and a throwaway search (so JIT-compiled kernels and thread pools are the baseline's),
plus the page cache of the contender's files, which are evicted first.

    python -m benchmarks.serve_memory SPEC.json      # prints one JSON object

SPEC: {"built": Built.to_dict(), "setting": {...}, "reader": "mmap"|"direct", "pool_bytes": int,
"queries": "test.npy", "warm_queries": "tune.npy" | null, "threads": int}
"""

from __future__ import annotations

import gc
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.contenders import Contender, build_cascade, set_threads
from benchmarks.residency import cached_bytes_of, drop_cache, rss_anon_bytes


def _warm_libraries(spec: dict) -> None:
    """Run what the contender's search runs (compiled kernels, read threads) on a tiny index of
    the same kind and a tiny row store read the same way, then drop them."""
    from mmcompress.index.rerank import exact_rerank
    from mmcompress.index.rowstore import open_row_store, write_rows

    built = spec["built"]
    rng = np.random.default_rng(1)
    d = int(spec["d"])
    X = rng.standard_normal((2048, d)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    with tempfile.TemporaryDirectory() as tmp:
        if built["kind"] == "cascade":
            grid = [{"s1": 64, "s2": 16}]
            tiny = build_cascade(X, Path(tmp), name="warm", coarse=built["extra"]["coarse"],
                                 fine=built["extra"]["fine"], nlist=0, grid=grid, train_rows=2048,
                                 fine_options=built["extra"].get("fine_options"))
            c = Contender(tiny.to_dict(), reader=spec["reader"], pool_bytes=0)
            c.search(X[:4], grid[0], threads=spec["threads"])
            c.search(X[:1], grid[0], threads=1)
            c.close()
            del c
        write_rows(Path(tmp) / "warm.rows", X)
        reader = open_row_store(Path(tmp) / "warm.rows", reader=spec["reader"], pool_bytes=0)
        exact_rerank(reader, X[:4], rng.integers(0, len(X), (4, 16)), 10, "ip")
        reader.close()
    gc.collect()


def probe(spec: dict) -> dict:
    set_threads(spec["threads"])
    _warm_libraries(spec)
    base_anon = rss_anon_bytes()
    built = spec["built"]
    c = Contender(built, reader=spec["reader"], pool_bytes=spec["pool_bytes"])
    files = c.files()
    drop_cache(files)
    if spec.get("warm_queries"):
        c.search(np.load(spec["warm_queries"]), spec["setting"], threads=spec["threads"])
    Q = np.load(spec["queries"])
    for i in range(len(Q)):
        c.search(Q[i:i + 1], spec["setting"], threads=1)
    anon = rss_anon_bytes() - base_anon
    cached = cached_bytes_of(files)
    out = {"anon_bytes": int(anon), "page_cache_bytes": int(cached), "all_in_bytes": int(anon + cached),
           "own_accounting_bytes": built["resident_bytes"] + spec["pool_bytes"]}
    c.close()
    return out


def main(argv: list[str] | None = None) -> int:
    spec = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    print(json.dumps(probe(spec)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
