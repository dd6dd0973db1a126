"""Memory probe: open one contender in a fresh process, run the queries the timed run ran, and
report what the process holds: anonymous memory grown over a baseline, plus the page cache of
the contender's files, which are evicted first.

The baseline is taken after a throwaway run of the *same* contender (opened, searched with a
few of the queries, closed), so compiled kernels for its exact shapes and dtypes, thread pools
and AIO contexts are the baseline's, not the index's; the queries are loaded before it (they
are the caller's input). The C heap is trimmed before the baseline and before the reading
(:func:`benchmarks.residency.trim_heap`), so freed buffers that later arrays reuse hide
nothing and freed temporaries count nothing.

    python -m benchmarks.serve_memory SPEC.json      # prints one JSON object

SPEC: {"built": Built.to_dict(), "setting": {...}, "reader": "mmap"|"direct", "pool_bytes": int,
"queries": "test.npy", "warm_queries": "tune.npy" | null, "threads": int}
"""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

import numpy as np

from benchmarks.contenders import Contender, set_threads
from benchmarks.residency import cached_bytes_of, drop_cache, rss_anon_bytes, trim_heap

THROWAWAY_QUERIES = 20


def _settled_anon() -> int:
    gc.collect()
    trim_heap()
    return rss_anon_bytes()


def probe(spec: dict) -> dict:
    set_threads(spec["threads"])
    built = spec["built"]
    Q = np.load(spec["queries"])
    warm_q = np.load(spec["warm_queries"]) if spec.get("warm_queries") else None
    c = Contender(built, reader=spec["reader"], pool_bytes=spec["pool_bytes"])
    if warm_q is not None:
        c.search(warm_q[:THROWAWAY_QUERIES], spec["setting"], threads=spec["threads"])
    for i in range(min(len(Q), THROWAWAY_QUERIES)):
        c.search(Q[i:i + 1], spec["setting"], threads=1)
    c.close()
    del c
    base_anon = _settled_anon()
    c = Contender(built, reader=spec["reader"], pool_bytes=spec["pool_bytes"])
    files = c.files()
    drop_cache(files)
    if warm_q is not None:
        c.search(warm_q, spec["setting"], threads=spec["threads"])
    for i in range(len(Q)):
        c.search(Q[i:i + 1], spec["setting"], threads=1)
    anon = _settled_anon() - base_anon
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
