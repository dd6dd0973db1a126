"""Memory probe: open one contender in a fresh process, run the queries the timed run ran, and
report what the process holds while they run: the highest anonymous memory seen over a
baseline (:class:`benchmarks.residency.AnonPeak`: read buffers, gathered rows and scan scratch
that a search frees when it returns count; the garbage of loading is collected before the
queries start), plus the page cache of the contender's files,
which are evicted first. What is still held once the queries are done is reported beside it.

``run`` says which timed work: ``single`` (the queries one at a time, one thread, as the
latency runs) or ``batch`` (all of them in one call on ``threads`` threads, as the batch runs);
each needs its own process, since a batch leaves page cache and buffers behind.

The baseline is taken after a throwaway run of the *same* contender (opened, searched with a
few of the queries, closed), so compiled kernels for its exact shapes and dtypes, thread pools
and AIO contexts are the baseline's, not the index's; the queries are loaded before it (they
are the caller's input). The C heap is trimmed before the baseline and before the reading
(:func:`benchmarks.residency.trim_heap`), so freed buffers that later arrays reuse hide
nothing and freed temporaries count nothing.

    python -m benchmarks.serve_memory SPEC.json      # prints one JSON object

SPEC: {"built": Built.to_dict(), "setting": {...}, "reader": "mmap"|"direct", "pool_bytes": int,
"queries": "test.npy", "warm_queries": "tune.npy" | null, "threads": int, "run": "single"|"batch"}
"""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

import numpy as np

from benchmarks.contenders import Contender, set_threads
from benchmarks.residency import AnonPeak, cached_bytes_of, drop_cache, rss_anon_bytes, trim_heap

THROWAWAY_QUERIES = 20


def _settled_anon() -> int:
    gc.collect()
    trim_heap()
    return rss_anon_bytes()


def probe(spec: dict) -> dict:
    run = spec.get("run", "single")
    if run not in ("single", "batch"):
        raise ValueError(f"run must be 'single' or 'batch'; found {run!r}")
    set_threads(spec["threads"])
    built = spec["built"]
    Q = np.load(spec["queries"])
    warm_q = np.load(spec["warm_queries"]) if spec.get("warm_queries") else None
    c = Contender(built, reader=spec["reader"], pool_bytes=spec["pool_bytes"])
    if warm_q is not None:
        c.search(warm_q[:THROWAWAY_QUERIES], spec["setting"], threads=spec["threads"])
    c.search(Q[:THROWAWAY_QUERIES], spec["setting"], threads=spec["threads"])
    for i in range(min(len(Q), THROWAWAY_QUERIES)):
        c.search(Q[i:i + 1], spec["setting"], threads=1)
    c.close()
    del c
    base_anon = _settled_anon()
    c = Contender(built, reader=spec["reader"], pool_bytes=spec["pool_bytes"])
    files = c.files()
    drop_cache(files)
    if warm_q is not None:  # a pool's warm-up: what it keeps counts, its transients do not
        c.search(warm_q, spec["setting"], threads=spec["threads"])
    _settled_anon()  # what loading left for the collector is not the queries' (a server collects it once)
    with AnonPeak() as peak:
        if run == "batch":
            c.search(Q, spec["setting"], threads=spec["threads"])
        else:
            for i in range(len(Q)):
                c.search(Q[i:i + 1], spec["setting"], threads=1)
    cached = cached_bytes_of(files)
    settled = _settled_anon() - base_anon
    peak_anon = max(peak.max_bytes - base_anon, settled)
    out = {"run": run, "peak_anon_bytes": int(peak_anon), "page_cache_bytes": int(cached),
           "all_in_bytes": int(peak_anon + cached), "settled_anon_bytes": int(settled),
           "settled_all_in_bytes": int(settled + cached), "samples": peak.samples,
           "own_accounting_bytes": built["resident_bytes"] + spec["pool_bytes"]}
    c.close()
    return out


def main(argv: list[str] | None = None) -> int:
    spec = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    print(json.dumps(probe(spec)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
