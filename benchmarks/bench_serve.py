"""Serving benchmark: the cascade index served from disk, against the first stages and peers a
user with a memory budget would pick, on real catalogs with held-out real queries.

    python -m benchmarks.bench_serve                   # Debian + MovieLens (make bench-serve)
    python -m benchmarks.bench_serve --scale 1000000   # plus synthetic scale rows
    python -m benchmarks.bench_serve --peers           # plus DiskANN / ScaNN / LanceDB / usearch
    python -m benchmarks.bench_serve --quick           # smoke run (MovieLens only, short grids)

Data. (a) Debian 12 package descriptions (59,961 real MiniLM text vectors, ``make bench-data``),
(b) the MovieLens fused item vectors; each with real items held out as queries: a tuning split
and a test split. ``--scale N`` adds N synthetic rows from :func:`benchmarks.datasets.synthetic_like`
(a Gaussian mixture with the Debian catalog's moments, no planted near-copies) searched with the
Debian test queries. Every table names its data.

Protocol. Each contender's settings are chosen on the tuning queries only: the fastest setting
reaching recall@10 >= 0.95 with a margin of one standard error of the tuning mean
(:mod:`benchmarks.tuning`, the same rule for the peers), once by warm queries/s and once by cold queries/s (cold: the fastest
that reads at most 40 pages a query, where one does); each choice is then run once on the test
queries. Contenders with an exact stage are also tuned reading it in two waves (the
best-estimated 24 rows, then only those whose calibrated bound reaches the 10th best exact
score: :mod:`mmcompress.index.rerankbound`, fitted the same way for each first stage). Warm: the exact store read through the page cache
(memory-mapped, after a warm-up pass), queries/s of whole batches, all contenders alternating
batch by batch over ``--rounds`` rounds (median and range). Cold: the exact store read with
``O_DIRECT`` into the index's own buffer pool of 0, 1% and 10% of the store (warmed with the
tuning queries), ``--threads`` threads each issuing one query at a time (a batch would share
pages between queries); pages read per query and pool hit rates from the reader's counters.
Memory: each chosen setting is opened again in a fresh process (:mod:`benchmarks.serve_memory`)
that evicts the contender's files, runs the test queries and reports its anonymous memory growth
over a baseline with the same imports plus the page cache of the contender's files: the all-in
resident bytes, next to the index's own accounting.
Exact stores hold float16 rows by default (``--store-dtype``; the cascades' stores and the
faiss first stages' shared one alike): half the file and more rows per page.
Results: benchmarks/results/serve.{json,md} (``--quick``: serve.quick.*).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import disk_probe
from benchmarks.contenders import (
    Built,
    Contender,
    build_cascade,
    build_faiss,
    describe_setting,
    set_threads,
)
from benchmarks.machine import cpu_model
from benchmarks.tuning import Z as PICK_MARGIN_SE
from benchmarks.tuning import per_query_recall, recall_lower_bound

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"
TARGET_RECALL = 0.95
BUDGET_BYTES = 48.0
PAGES_BUDGET = 40
PEERS = ("diskann", "scann", "lancedb", "usearch")


# ---- data --------------------------------------------------------------------------------
def catalogs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Each catalog: name, data description, base / tuning / test vectors."""
    from benchmarks.datasets import debian_vectors, movielens_vectors, split_queries, synthetic_like

    out = []
    M, mmeta = movielens_vectors()
    msplit = split_queries(M, args.tune, args.queries, seed=0, data=mmeta["data"])
    out.append({"name": "movielens", "data": msplit.data, **dict(zip(("xb", "xtune", "xtest"),
                                                                      msplit.vectors(M), strict=True))})
    if args.quick:  # the smoke run needs no embedded Debian catalog (make bench-data)
        return out
    X, meta = debian_vectors()
    split = split_queries(X, args.tune, args.queries, seed=0, data=meta["data"])
    xb, xt, xq = split.vectors(X)
    out.insert(0, {"name": "debian", "data": split.data, "xb": xb, "xtune": xt, "xtest": xq})
    for n in args.scale:
        S, smeta = synthetic_like(X, n, seed=1)
        out.append({"name": f"synthetic-{n}", "xb": S, "xtune": xt, "xtest": xq,
                    "data": f"{smeta.get('data', 'synthetic')} (n={n:,}), queried with the Debian real "
                            "tuning / test items"})
    return out


def ground_truth(xb: np.ndarray, xq: np.ndarray, k: int = 10) -> np.ndarray:
    """Exact inner-product top-``k`` ids."""
    from mmcompress.codecs import exact_search

    return exact_search(xb, xq, k, "ip")[1]


def recall10(truth: np.ndarray, found: np.ndarray) -> float:
    from mmcompress.evaluation.metrics import recall_at_k

    return recall_at_k(truth, found, 10)


# ---- contenders --------------------------------------------------------------------------
# the exact stage read in two waves (the rows whose calibrated bound, at confidence ``conf``,
# reaches the predicted 10th best exact score, at least the ``fw`` best-estimated; then those
# whose bound reaches the 10th best exact score so far): longer shortlists for fewer pages. A
# first wave of at least 24 rows read more pages than one of 10 and gained no recall at the
# same confidence (Debian, tuning split), so the grid spends its settings on confidence.
FIRST_WAVES = (10,)
CONFIDENCES = (0.9, 0.93, 0.95, 0.99)


def two_wave(setting: dict[str, Any], quick: bool) -> list[dict[str, Any]]:
    """The two-wave variants of a setting."""
    if quick:
        return [{**setting, "fw": FIRST_WAVES[0], "conf": CONFIDENCES[-1]}]
    return [{**setting, "fw": fw, "conf": c} for fw in FIRST_WAVES for c in CONFIDENCES]


def cascade_grid(n: int, quick: bool) -> list[dict[str, Any]]:
    s2s = (20, 30, 40) if quick else (20, 30, 40, 60, 100)
    s1s = (800, 1600) if quick else (600, 1000, 1600, 2400)
    one = [{"s1": s1, "s2": s2} for s1 in s1s for s2 in s2s]
    return one + [w for s1 in s1s[-2:] for s2 in ((60,) if quick else (60, 100))
                  for w in two_wave({"s1": s1, "s2": s2}, quick)]


def cascade_ivf_grid(nlist: int, quick: bool, n: int = 0) -> list[dict[str, Any]]:
    """IVF-routed cascade settings: a fifth to two fifths of the cells, shortlists as above; from
    250k rows (a scale row: about 1,000 cells) a twentieth to a fifth, with coarse shortlists
    up to 5,000 and fine ones up to 400 read in two waves (a shortlist that is a fixed share of
    the catalog grows with it)."""
    if n >= 250_000 and not quick:
        probes = [max(1, round(f * nlist)) for f in (0.05, 0.1, 0.2)]
        one = [{"nprobe": p, "s1": s1, "s2": 100} for p in probes for s1 in (600, 2000)]
        return one + [w for p in probes for s1 in (2000, 5000) for s2 in (200, 400)
                      for w in two_wave({"nprobe": p, "s1": s1, "s2": s2}, quick)]
    fracs = (0.3,) if quick else (0.2, 0.3, 0.4)
    s2s = (40, 60) if quick else (40, 60, 100)
    probes = [max(1, round(f * nlist)) for f in fracs]
    one = [{"nprobe": p, "s1": s1, "s2": s2} for p in probes for s1 in (400, 600) for s2 in s2s]
    return one + [w for p in probes for s2 in ((80,) if quick else (80, 120))
                  for w in two_wave({"nprobe": p, "s1": 600, "s2": s2}, quick)]


def build_all(xb: np.ndarray, workdir: Path, quick: bool, only: list[str] | None = None,
              store_dtype: str = "float32", layout_ablation: bool = False,
              projection: str = "f16") -> list[Built]:
    """The contenders at their documented good settings (grids to tune over); ``only``: label
    substrings to keep (every contender without it); ``store_dtype``: the values of every exact
    store the benchmark writes (the cascades' own and the faiss first stages' shared one);
    ``layout_ablation``: also the wide full-scan cascade with its rows stored in insertion order
    instead of the locality order every other store uses; ``projection``: how the cascades' sign
    codecs hold their (d, bits) projection (``f16``: float16; ``i8``: int8 times one scale)."""

    def wanted(label: str) -> bool:
        return not only or any(o in label for o in only)

    n, d = xb.shape
    nlist = int(max(16, min(4096, 4 * np.sqrt(n)) // 16 * 16))
    # up to 96 probes: under the pick rule's margin IVF960,RaBitQ's best at 64 (tuning recall 0.954
    # on Debian) fell short of qualifying
    probes = (4, 8, 16) if quick else (4, 8, 16, 32, 64, 96)
    rs = (20, 40) if quick else (20, 40, 80, 160)
    efs = (16, 32, 64) if quick else (16, 32, 48, 64, 96, 128)
    # 4-bit fast-scan PQ on 6-dim sub-vectors (64 of them at d=384: 32 B), behind a PCA rotation
    # to a multiple of 6 where d is not one
    m4 = min(64, d // 6 // 2 * 2)
    pq_prefix = "" if m4 * 6 == d else f"PCAR{m4 * 6},"
    built = []
    # ITQ sign codes give at most d bits (the BIN_rr variant goes wider); projections in float16
    # (_f16) or int8 (_i8): the (d, bits) table is most of the fixed cost on a catalog of a few
    # thousand items
    wide = f"BIN256_{projection}" if d >= 256 else f"BIN{min(256, 2 * d) // 8 * 8}_rr_{projection}"
    narrow = f"BIN{min(128, d // 8 * 8)}_{projection}"
    specs = [(f"cascade {narrow} -> sign tables", narrow, {})]
    if d >= 256:  # between the two: 24 bytes of codes, for catalogs whose projection costs more
        specs.append((f"cascade BIN192_{projection} -> sign tables x item scales", f"BIN192_{projection}",
                      {"item_scales": True}))
    specs.append((f"cascade {wide} -> sign tables x item scales", wide, {"item_scales": True}))
    if layout_ablation:
        specs.append((f"cascade {wide} -> sign tables x item scales, insertion layout", wide, {"item_scales": True}))
    # IVF routing for the wide codes: about sqrt(n) cells (centroids in the code's subspace), so a
    # query scans a fraction of the codes instead of all of them
    cells = max(16, int(np.sqrt(n)) // 16 * 16)
    specs.append((f"cascade {wide} IVF{cells} -> sign tables x item scales", wide, {"item_scales": True}))
    for name, coarse, options in specs:
        if not wanted(name):
            continue
        print(f"  build {name}", flush=True)
        ivf = "IVF" in name
        layout = "insertion" if name.endswith("insertion layout") else "locality"
        built.append(build_cascade(xb, workdir, name=name.replace(" ", "_").replace(">", "").replace(",", ""),
                                   coarse=coarse, fine="coarse", nlist=cells if ivf else 0,
                                   grid=cascade_ivf_grid(cells, quick, n) if ivf else cascade_grid(n, quick),
                                   fine_options=options, store_dtype=store_dtype, store_layout=layout))
        built[-1].extra.update({"coarse": coarse, "fine": "coarse", "fine_options": options, "label": name,
                                "nlist": cells if ivf else 0})
    faiss_specs = [
        # qb: bits of the query's own quantization in RaBitQ's estimator (the factory's 4, and 8)
        (f"IVF{nlist},RaBitQ", [{"nprobe": p, "qb": qb, "R": r} for p in probes for qb in (4, 8) for r in rs]
         + [w for p in probes for r in rs[-2:] for w in two_wave({"nprobe": p, "qb": 8, "R": r}, quick)], None),
        (f"{pq_prefix}IVF{nlist},PQ{m4}x4fs", [{"nprobe": p, "R": r} for p in probes for r in rs]
         + [w for p in probes for r in rs[-2:] for w in two_wave({"nprobe": p, "R": r}, quick)], None),
        ("HNSW32,SQ8", [{"efSearch": e, "R": r} for e in efs for r in rs if e >= r // 2]
         + [w for e in efs for r in rs[-2:] if e >= r // 2 for w in two_wave({"efSearch": e, "R": r}, quick)], 200),
    ]
    for factory, grid, efc in faiss_specs:
        if not wanted(f"faiss {factory} -> exact rerank"):
            continue
        print(f"  build faiss {factory} + exact rerank", flush=True)
        b = build_faiss(xb, workdir, name=factory.replace(",", "_").replace("-", "_"), factory=factory, grid=grid, rerank=True,
                        ef_construction=efc, store_dtype=store_dtype)
        b.extra["label"] = f"faiss {factory} -> exact rerank"
        built.append(b)
    flat_label = "faiss HNSW32,Flat (in RAM)"
    if not wanted(flat_label):
        return built
    # the in-RAM anchor's search breadth finely near its operating point (efSearch 16 can reach
    # recall 0.95 on tuning without clearing the pick rule's margin, and 32 is far above it)
    print("  build faiss HNSW32,Flat (efConstruction 200)", flush=True)
    b = build_faiss(xb, workdir, name="HNSW32_Flat", factory="HNSW32,Flat",
                    grid=[{"efSearch": e} for e in sorted({*efs, 20, 24, 192, 256})], rerank=False,
                    ef_construction=200)
    b.extra["label"] = flat_label
    built.append(b)
    return built


# ---- timing ------------------------------------------------------------------------------
def batch_qps(c: Contender, Q: np.ndarray, setting: dict[str, Any], threads: int) -> tuple[float, np.ndarray]:
    """Queries/s of one whole batch (faiss: OpenMP threads; the cascade: its search threads),
    and the ids it found."""
    set_threads(1 if c.kind == "cascade" else threads)
    t = time.perf_counter()
    found = c.search(Q, setting, threads=threads)
    return len(Q) / (time.perf_counter() - t), found


def concurrent_run(c: Contender, Q: np.ndarray, setting: dict[str, Any], threads: int
                   ) -> tuple[float, np.ndarray, np.ndarray]:
    """``threads`` threads each answering one query at a time, as a server would: (queries/s,
    per-query latencies in ms, found ids)."""
    set_threads(1)
    lat = np.zeros(len(Q))
    found = np.zeros((len(Q), 10), dtype=np.int64)
    nxt = iter(range(len(Q)))
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                i = next(nxt, None)
            if i is None:
                return
            t = time.perf_counter()
            found[i] = c.search(Q[i:i + 1], setting, threads=1)[0]
            lat[i] = (time.perf_counter() - t) * 1e3

    t = time.perf_counter()
    pool = [threading.Thread(target=work) for _ in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    return len(Q) / (time.perf_counter() - t), lat, found


def single_latency(c: Contender, Q: np.ndarray, setting: dict[str, Any]) -> tuple[float, float]:
    set_threads(1)
    lat = []
    for i in range(len(Q)):
        t = time.perf_counter()
        c.search(Q[i:i + 1], setting, threads=1)
        lat.append((time.perf_counter() - t) * 1e3)
    return float(np.percentile(lat, 50)), float(np.percentile(lat, 99))


def pages_per_query(c: Contender, n: int) -> tuple[float, float]:
    s = c.exact_stats()
    hits, misses = s.get("pool_hits", 0), s.get("pool_misses", 0)
    return s.get("pages_read", 0) / max(n, 1), hits / max(hits + misses, 1)


# ---- tuning ------------------------------------------------------------------------------
def tune(b: Built, xtune: np.ndarray, truth: np.ndarray, threads: int, quick: bool) -> dict[str, Any]:
    """Every setting on the tuning queries: recall, warm batch q/s, and (with an exact store)
    cold q/s and pages per query from a concurrent run on the first 200 tuning queries."""
    disk = b.kind != "faiss"
    warm = Contender(b.to_dict(), reader="mmap")
    cold = Contender(b.to_dict(), reader="direct", pool_bytes=0) if disk else None
    rows = []
    n_cold = min(len(xtune), 100 if quick else 200)
    for s in b.grid:
        found = warm.search(xtune, s, threads=threads)
        per_query = per_query_recall(truth, found)
        r = {"setting": s, "recall": float(per_query.mean()), "recall_lower": recall_lower_bound(per_query),
             "warm_qps": batch_qps(warm, xtune, s, threads)[0]}
        if disk and r["recall"] >= TARGET_RECALL - 0.02:
            cold.reset_exact_stats()
            r["cold_qps"], _, _ = concurrent_run(cold, xtune[:n_cold], s, threads)
            r["pages"], _ = pages_per_query(cold, n_cold)
        rows.append(r)
        print(f"    tune {describe_setting(s):<28} recall {r['recall']:.3f} (>= {r['recall_lower']:.3f})  warm {r['warm_qps']:8.0f} q/s"
              + (f"  cold {r['cold_qps']:6.0f} q/s  {r['pages']:.1f} pages" if "cold_qps" in r else ""),
              flush=True)
    warm.close()
    if cold is not None:
        cold.close()
    ok = [r for r in rows if r["recall_lower"] >= TARGET_RECALL]
    picks = {"warm": max(ok, key=lambda r: r["warm_qps"])["setting"] if ok else None}
    if disk:  # cold: the fastest setting within the page budget, else the fastest
        okc = [r for r in ok if "cold_qps" in r]
        okc = [r for r in okc if r["pages"] <= PAGES_BUDGET] or okc
        picks["cold"] = max(okc, key=lambda r: r["cold_qps"])["setting"] if okc else None
    return {"rows": rows, "picks": picks}


# ---- the test run ------------------------------------------------------------------------
def test_warm(builts: list[Built], picks: dict[str, dict], xtest: np.ndarray, truth: np.ndarray,
              xtune: np.ndarray, threads: int, rounds: int, n_single: int) -> dict[str, Any]:
    """Each contender's warm pick on the test queries, batches alternating over ``rounds``."""
    opened = {b.name: Contender(b.to_dict(), reader="mmap") for b in builts if picks[b.name].get("warm")}
    out: dict[str, Any] = {}
    for name, c in opened.items():
        s = picks[name]["warm"]
        c.search(xtune, s, threads=threads)  # warm-up: the page cache holds what the tuning queries read
        c.reset_exact_stats()
        found = c.search(xtest, s, threads=threads)
        pages, _ = pages_per_query(c, len(xtest))
        out[name] = {"setting": s, "recall": recall10(truth, found), "qps": [], "pages_touched": pages}
    for _ in range(rounds):
        for name, c in opened.items():
            time.sleep(0.02)  # faiss's OpenMP workers spin after a search: let them sleep first
            out[name]["qps"].append(batch_qps(c, xtest, out[name]["setting"], threads)[0])
    for name, c in opened.items():
        q = out[name]["qps"]
        out[name].update({"qps_median": float(np.median(q)), "qps_min": float(min(q)), "qps_max": float(max(q))})
        out[name]["p50_ms"], out[name]["p99_ms"] = single_latency(c, xtest[:n_single], out[name]["setting"])
        c.close()
    return out


def test_cold(builts: list[Built], picks: dict[str, dict], xtest: np.ndarray, truth: np.ndarray,
              xtune: np.ndarray, threads: int, rounds: int, pools: tuple[float, ...]) -> dict[str, Any]:
    """Each disk contender's cold pick on the test queries, read with O_DIRECT, for each pool
    size (a fraction of the exact store; pools warmed with the tuning queries); contenders
    alternate within each round."""
    out: dict[str, Any] = {}
    for frac in pools:
        opened = {}
        for b in builts:
            s = picks[b.name].get("cold")
            if b.kind == "faiss" or s is None:
                continue
            store = _store_bytes(b)
            c = Contender(b.to_dict(), reader="direct", pool_bytes=int(frac * store))
            if frac > 0:
                c.search(xtune, s, threads=threads)
            opened[b.name] = (c, s)
            out.setdefault(b.name, {"setting": s, "store_bytes": store, "pools": {}})
            out[b.name]["pools"][str(frac)] = {"qps": [], "pages": [], "hit_rate": [], "batch_qps": [],
                                               "batch_pages": [], "qps_1": [], "pool_bytes": int(frac * store)}
        for _ in range(rounds):
            for name, (c, s) in opened.items():
                c.reset_exact_stats()
                qps, lat, found = concurrent_run(c, xtest, s, threads)
                pages, hit = pages_per_query(c, len(xtest))
                p = out[name]["pools"][str(frac)]
                p["qps"].append(qps)
                p["pages"].append(pages)
                p["hit_rate"].append(hit)
                p.update({"recall": recall10(truth, found), "p50_ms": float(np.percentile(lat, 50)),
                          "p99_ms": float(np.percentile(lat, 99)), "mode": c.exact_stats().get("mode"),
                          "engine": c.exact_stats().get("engine")})
                if frac == 0 and threads > 1:
                    # the same single queries on one thread: how far a second thread helps (little
                    # where a query's time is mostly its reads and the disk serves one submitter
                    # best, see benchmarks/disk_probe.py)
                    p["qps_1"].append(concurrent_run(c, xtest, s, 1)[0])
                # the peers' protocol: the whole test batch in one call on the same threads (each
                # chunk's exact reads go to the disk together)
                c.reset_exact_stats()
                qps, found = batch_qps(c, xtest, s, threads)
                p["batch_qps"].append(qps)
                p["batch_pages"].append(pages_per_query(c, len(xtest))[0])
                p["batch_recall"] = recall10(truth, found)
        for name, (c, _) in opened.items():
            p = out[name]["pools"][str(frac)]
            p.update({"qps_median": float(np.median(p["qps"])), "qps_min": float(min(p["qps"])),
                      "qps_max": float(max(p["qps"])), "pages_per_query": float(np.median(p["pages"])),
                      "hit_rate_median": float(np.median(p["hit_rate"])),
                      "batch_qps_median": float(np.median(p["batch_qps"])),
                      "batch_qps_min": float(min(p["batch_qps"])), "batch_qps_max": float(max(p["batch_qps"])),
                      "batch_pages_per_query": float(np.median(p["batch_pages"]))})
            if p["qps_1"]:
                p["qps_1_median"] = float(np.median(p["qps_1"]))
            print(f"    cold pool {frac:>5.0%} {name:<40} {p['qps_median']:7.0f} q/s  "
                  f"{p['pages_per_query']:.1f} pages/query  hit {p['hit_rate_median']:.2f}  "
                  f"batch {p['batch_qps_median']:7.0f} q/s  "
                  f"recall {p['recall']:.3f}  [{p['mode']}, {p['engine']}]", flush=True)
            c.close()
    return out


def _store_path(b: Built) -> Path:
    if b.kind == "cascade":
        return next(Path(b.directory).glob("exact.rows"), None) or next(Path(b.directory).glob("exact*"))
    return Path(b.extra["rows"])


def _store_bytes(b: Built) -> int:
    from mmcompress.index.rowstore import read_layout

    return read_layout(_store_path(b)).file_bytes


def measure_memory(b: Built, setting: dict[str, Any], *, reader: str, pool_bytes: int, workdir: Path,
                   threads: int, run: str) -> dict[str, Any]:
    """All-in resident bytes of ``b`` opened in a fresh process while it runs the test queries
    one at a time (``run="single"``) or as one batch (``"batch"``): see
    :mod:`benchmarks.serve_memory`."""
    spec = {"built": b.to_dict(), "setting": setting, "reader": reader, "pool_bytes": pool_bytes,
            "queries": str(workdir / "test.npy"), "warm_queries": str(workdir / "tune.npy") if pool_bytes else None,
            "threads": threads, "run": run}
    path = workdir / f"memspec-{b.name}-{reader}-{pool_bytes}-{run}.json"
    path.write_text(json.dumps(spec, default=float))
    p = subprocess.run([sys.executable, "-m", "benchmarks.serve_memory", str(path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=1800,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    if p.returncode != 0:
        return {"error": p.stderr[-2000:]}
    return json.loads(p.stdout.strip().splitlines()[-1])


# ---- peers in their own venv -------------------------------------------------------------
def run_peers(workdir: Path, truth_tune: np.ndarray, truth_test: np.ndarray, threads: int) -> dict[str, Any]:
    """DiskANN, ScaNN, LanceDB, usearch through ``benchmarks/peers/run_peer.py`` in .venv-peers."""
    if not PEERS_PYTHON.exists():
        return {"skipped": f"{PEERS_PYTHON} missing: make venv-peers"}
    np.save(workdir / "tune_gt.npy", truth_tune)
    np.save(workdir / "test_gt.npy", truth_test)
    out = {}
    for peer in PEERS:
        res = workdir / f"peer-{peer}.json"
        cmd = [str(PEERS_PYTHON), str(ROOT / "benchmarks" / "peers" / "run_peer.py"), peer,
               "--base", str(workdir / "base.npy"), "--tune-queries", str(workdir / "tune.npy"),
               "--test-queries", str(workdir / "test.npy"), "--tune-gt", str(workdir / "tune_gt.npy"),
               "--test-gt", str(workdir / "test_gt.npy"), "--workdir", str(workdir / f"peer-{peer}"),
               "--out", str(res), "--threads", str(threads), "--target", str(TARGET_RECALL)]
        print(f"  peer {peer}", flush=True)
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        out[peer] = json.loads(res.read_text()) if p.returncode == 0 and res.exists() else {
            "error": (p.stderr or p.stdout)[-2000:]}
        shutil.rmtree(workdir / f"peer-{peer}", ignore_errors=True)
    return out


# ---- one catalog -------------------------------------------------------------------------
def bench_catalog(cat: dict[str, Any], args: argparse.Namespace, workroot: Path) -> dict[str, Any]:
    print(f"== {cat['name']}: {cat['data']}", flush=True)
    xb, xtune, xtest = cat["xb"], cat["xtune"], cat["xtest"]
    workdir = workroot / cat["name"]
    workdir.mkdir()
    for name, arr in (("base", xb), ("tune", xtune), ("test", xtest)):
        np.save(workdir / f"{name}.npy", arr)
    truth_tune, truth_test = ground_truth(xb, xtune), ground_truth(xb, xtest)
    set_threads(args.threads)
    builts = build_all(xb, workdir, args.quick, args.contenders, args.store_dtype, args.layout_ablation,
                       args.projection)
    tuned, picks = {}, {}
    for b in builts:
        print(f"  tune {b.extra['label']}", flush=True)
        tuned[b.name] = tune(b, xtune, truth_tune, args.threads, args.quick)
        picks[b.name] = tuned[b.name]["picks"]
    os.sync()  # written-back index files: no write-back runs during the timings
    print("  test, warm", flush=True)
    warm = test_warm(builts, picks, xtest, truth_test, xtune, args.threads, args.rounds, args.single)
    for name, r in warm.items():
        print(f"    warm {name:<40} recall {r['recall']:.3f}  {r['qps_median']:8.0f} q/s "
              f"({r['qps_min']:.0f}-{r['qps_max']:.0f})  p50 {r['p50_ms']:.2f} ms", flush=True)
    stores = [_store_path(b) for b in builts if b.kind != "faiss"]
    disk = disk_probe.probe(max(stores, key=lambda p: p.stat().st_size), seconds=0.5 if args.quick else 2.0) \
        if stores else None
    print(f"  disk: {disk_probe.describe(disk)}", flush=True)
    print("  test, cold", flush=True)
    cold = test_cold(builts, picks, xtest, truth_test, xtune, args.threads, args.cold_rounds, args.pools)
    memory: dict[str, Any] = {}
    for b in builts:
        memory[b.name] = {}
        # each figure beside the timing it belongs to: warm batches (page cache holds the store),
        # cold single queries and cold batches (O_DIRECT, pool 0)
        for key, mode, run in (("warm", "warm", "batch"), ("cold", "cold", "single"), ("cold_batch", "cold", "batch")):
            setting = picks[b.name].get(mode)
            if setting is None:
                continue
            reader = "mmap" if mode == "warm" else "direct"
            memory[b.name][key] = measure_memory(b, setting, reader=reader, pool_bytes=0, workdir=workdir,
                                                 threads=args.threads, run=run)
            print(f"    memory {key} {b.name:<40} {memory[b.name][key]}", flush=True)
    peers = run_peers(workdir, truth_tune, truth_test, args.threads) if args.peers else {}
    result = {"name": cat["name"], "data": cat["data"], "n_items": len(xb), "d": int(xb.shape[1]),
              "n_tune": len(xtune), "n_test": len(xtest), "disk": disk,
              "contenders": {b.name: {**b.to_dict(), "tuning": tuned[b.name], "picks": picks[b.name],
                                      "warm": warm.get(b.name), "cold": cold.get(b.name),
                                      "memory": memory[b.name]} for b in builts},
              "peers": peers}
    shutil.rmtree(workdir, ignore_errors=True)
    return result


# ---- report ------------------------------------------------------------------------------
def _bpi(mem: dict[str, Any] | None, n: int) -> str:
    if not mem or "all_in_bytes" not in mem:
        return "-"
    return f"{mem['all_in_bytes'] / n:.1f}"


def _batch_cell(p: dict[str, Any], mem: dict[str, Any] | None, n: int) -> str:
    if "batch_qps_median" not in p:
        return "-"
    return (f"{p['batch_qps_median']:.0f} ({p['batch_qps_min']:.0f}-{p['batch_qps_max']:.0f}), "
            f"{p['batch_pages_per_query']:.1f} pages, {_bpi(mem, n)} B/item")


def markdown(result: dict[str, Any]) -> str:
    lines = ["# Serving benchmark", "",
             f"Machine: {result['machine']}; {result['threads']} threads; recall@10 against exact "
             "inner-product top-10 on held-out test queries; settings chosen on tuning queries "
             f"(fastest reaching recall@10 >= {TARGET_RECALL} by at least {PICK_MARGIN_SE:g} standard "
             "error of the tuning mean, benchmarks/tuning.py; cold: the fastest of those within "
             f"{PAGES_BUDGET} pages a query where one is), run once on the test queries. Settings with "
             "fw / conf read the exact stage in two waves: the rows whose bound (fitted at build, "
             "confidence conf) reaches the predicted 10th best exact score, at least the fw "
             "best-estimated; then the others whose bound reaches the 10th best exact score so far. "
             f"Exact stores (each cascade's own and the faiss first stages' shared one) hold "
             f"{result.get('store_dtype', 'float32')} rows (index.exact.dtype), widened to float32 to be "
             "scored, " + ("in locality order (index.exact.layout: near items on the same page; the "
                           "row labelled insertion layout keeps catalog order)"
                           if result.get("store_layout") == "locality" else "in catalog order")
             + "; DiskANN and LanceDB keep their own formats.", "",
             "Warm: exact store through the page cache, whole test batches, contenders alternating "
             f"batch by batch ({result['rounds']} rounds: median (min-max)). Cold: exact store read with "
             "O_DIRECT into the index's own buffer pool (0 / 1% / 10% of the store), "
             f"{result['threads']} threads of single queries ({result['cold_rounds']} rounds, median; "
             "1 thread: the same queries on one thread in each round, so the two columns show how "
             "far a second thread helps); "
             "batch q/s: the whole test batch in one call on the same threads, as the peers are timed "
             "(a row several queries of one call share is read once, so its pages per query can be fewer). "
             "All-in B/item: the highest anonymous memory of a fresh process over a baseline with the "
             "same imports while it runs the test queries (sampled every 0.1 ms: read buffers and "
             "scratch a search frees on return count), plus the page cache of the contender's files; "
             "warm: one batch, mmap reader; cold: single queries, and for the batch column one batch, "
             "O_DIRECT, pool 0. Own B/item: the index's own accounting of what it keeps in RAM (exact "
             "store excluded).", ""]
    for cat in result["catalogs"]:
        n = cat["n_items"]
        lines += [f"## {cat['name']}", "", f"Data: {cat['data']}.", "",
                  "| contender | warm setting | recall | warm q/s | p50 / p99 ms | own B/item | all-in B/item warm |",
                  "|---|---|---|---|---|---|---|"]
        for c in cat["contenders"].values():
            w = c.get("warm")
            label = c["extra"].get("label", c["name"])
            if not w:
                best = max(c["tuning"]["rows"], key=lambda r: r["recall"], default=None)
                reached = "" if best is None else (f" (tuning best: {best['recall']:.3f} at "
                                                   f"{describe_setting(best['setting'])})")
                lines.append(f"| {label} | none reached {TARGET_RECALL}{reached} | | | | "
                             f"{c['resident_bytes'] / n:.1f} | |")
                continue
            lines.append(f"| {label} | {describe_setting(w['setting'])} | {w['recall']:.3f} | "
                         f"{w['qps_median']:.0f} ({w['qps_min']:.0f}-{w['qps_max']:.0f}) | "
                         f"{w['p50_ms']:.2f} / {w['p99_ms']:.2f} | {c['resident_bytes'] / n:.1f} | "
                         f"{_bpi(c['memory'].get('warm'), n)} |")
        lines += ["", f"Disk (where the exact stores lie, probed before the cold test): "
                  f"{disk_probe.describe(cat.get('disk'))}. Cold single queries cannot run faster "
                  "than this rate over the reads each issues (adjacent pages of a query coalesce "
                  "into one read).", "",
                  "| contender (exact store on disk) | cold setting | recall | pages/query | q/s pool 0 "
                  "| q/s pool 0, 1 thread | batch q/s pool 0 | p50 / p99 ms pool 0 | q/s pool 1% (hit) "
                  "| q/s pool 10% (hit) | all-in B/item cold |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for c in cat["contenders"].values():
            cold = c.get("cold")
            if not cold:
                continue
            label = c["extra"].get("label", c["name"])
            p0 = cold["pools"].get("0.0") or cold["pools"].get("0")
            cells = []
            for frac in ("0.01", "0.1"):
                p = cold["pools"].get(frac)
                cells.append(f"{p['qps_median']:.0f} ({p['hit_rate_median']:.2f})" if p else "-")
            one = f"{p0['qps_1_median']:.0f}" if "qps_1_median" in p0 else "-"
            lines.append(f"| {label} | {describe_setting(cold['setting'])} | {p0['recall']:.3f} | "
                         f"{p0['pages_per_query']:.1f} | {p0['qps_median']:.0f} ({p0['qps_min']:.0f}-{p0['qps_max']:.0f}) | "
                         f"{one} | {_batch_cell(p0, c['memory'].get('cold_batch'), n)} | "
                         f"{p0['p50_ms']:.2f} / {p0['p99_ms']:.2f} | {cells[0]} | {cells[1]} | "
                         f"{_bpi(c['memory'].get('cold'), n)} |")
        if cat.get("peers"):
            lines += ["", "Peers (own processes in .venv-peers, same base, queries and threads, after the "
                      "above; batch q/s; pages = bytes read per query / 4 KiB from /proc/self/io; "
                      "RSS B/item = RSS growth on loading the index; all-in B/item = the highest anonymous "
                      "memory while the batch / the single queries ran, over the one before load, plus the "
                      "page cache of the index's files, measured as the contenders above):", "",
                      "| peer | setting | recall | q/s | p50 / p99 ms | pages/query | RSS B/item "
                      "| all-in B/item batch / single | notes |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for peer, r in cat["peers"].items():
                lines.append(_peer_line(peer, r, n))
        lines.append("")
    for part in ("cache", "load"):
        if result.get(part):
            lines += [f"## {part}", "", "```", json.dumps(result[part], indent=1, default=float), "```", ""]
    return "\n".join(lines)


def _peer_line(peer: str, r: dict[str, Any], n: int) -> str:
    """One row per cache state of a peer's test run (``run_peer.py``'s summary)."""
    if "error" in r or "skipped" in r:
        return f"| {peer} | - | - | - | - | - | - | - | {(r.get('error') or r.get('skipped'))[-160:]!r} |"
    s = r["summary"]
    setting = " ".join(f"{k}={v}" for k, v in s["chosen_setting"].items())
    out = []
    for cache, qps in s["test_qps"].items():
        lat = s["test_latency_ms"].get(cache, {})
        read = s["read_bytes_per_query"].get(f"{cache}/batch")
        pages = "-" if read is None else f"{read / 4096:.1f}"
        held = s.get("all_in_bytes", {})
        all_in = " / ".join("-" if held.get(f"{cache}/{kind}") is None else f"{held[f'{cache}/{kind}'] / n:.1f}"
                            for kind in ("batch", "single-query latency"))
        out.append(f"| {peer} ({cache}) | {setting} | {s['test_recall_at_10']:.3f} | {qps:.0f} | "
                   f"{lat.get('p50', float('nan')):.2f} / {lat.get('p99', float('nan')):.2f} | {pages} | "
                   f"{s['rss_index_delta_mib'] * 2**20 / n:.1f} | {all_in} | build {s['build_s']:.0f} s; "
                   f"tuning target met: {s['target_met_on_tuning']} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tune", type=int, default=500, help="tuning queries per catalog")
    ap.add_argument("--queries", type=int, default=1000, help="test queries per catalog")
    ap.add_argument("--single", type=int, default=300, help="single-query calls timed for warm p50/p99")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds of the warm test")
    ap.add_argument("--cold-rounds", type=int, default=3, help="alternating rounds of the cold test")
    ap.add_argument("--pools", type=float, nargs="+", default=[0.0, 0.01, 0.1])
    ap.add_argument("--scale", type=int, nargs="*", default=[], help="synthetic rows (e.g. 1000000)")
    ap.add_argument("--only", nargs="*", default=None, help="catalog names to run")
    ap.add_argument("--contenders", nargs="*", default=None, metavar="LABEL",
                    help="label substrings of the contenders to build (default: all), e.g. for a scale row")
    ap.add_argument("--peers", action="store_true", help="also DiskANN, ScaNN, LanceDB, usearch (.venv-peers)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["cache", "load"])
    ap.add_argument("--store-dtype", choices=["float16", "float32"], default="float16",
                    help="values of the exact stores (cascades' and the faiss first stages' shared one)")
    ap.add_argument("--projection", choices=["f16", "i8"], default="i8",
                    help="how the cascades' sign codecs hold their projection (float16, or int8 times a scale)")
    ap.add_argument("--layout-ablation", action="store_true",
                    help="also the wide full-scan cascade with its exact store in insertion order")
    ap.add_argument("--quick", action="store_true", help="small smoke run")
    ap.add_argument("--render", action="store_true", help="only rewrite the markdown from the JSON results")
    ap.add_argument("--out", type=Path, default=RESULTS, help="results folder (default benchmarks/results)")
    args = ap.parse_args(argv)
    out_dir: Path = args.out
    if args.render:
        stem = "serve.quick" if args.quick else "serve"
        result = json.loads((out_dir / f"{stem}.json").read_text())
        (out_dir / f"{stem}.md").write_text(markdown(result) + "\n")
        return 0
    if args.quick:
        args.tune, args.queries, args.single, args.rounds, args.cold_rounds = 200, 300, 50, 2, 1
        args.skip = ["cache", "load"]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still remove the work directory
    result: dict[str, Any] = {
        "machine": f"{platform.machine()}, {cpu_model()}, {os.cpu_count()} CPUs, load average "
                   f"{os.getloadavg()[0]:.1f} at start", "threads": args.threads, "quick": args.quick,
        "rounds": args.rounds, "cold_rounds": args.cold_rounds, "target_recall": TARGET_RECALL,
        "budget_bytes_per_item": BUDGET_BYTES, "pages_budget": PAGES_BUDGET, "store_dtype": args.store_dtype,
        "store_layout": "locality", "catalogs": []}
    stem = "serve.quick" if args.quick else "serve"
    workroot = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    try:
        for cat in catalogs(args):
            if args.only and cat["name"] not in args.only:
                continue
            result["catalogs"].append(bench_catalog(cat, args, workroot))
            _write(out_dir, stem, result, partial=True)  # a later failure keeps what was measured
        if "cache" not in args.skip or "load" not in args.skip:
            from benchmarks.datasets import load_real_vectors
            from benchmarks.serve_service import bench_cache, bench_load

            V, movie_ids, _ = load_real_vectors()
            if "cache" not in args.skip:
                print("== hot-item cache", flush=True)
                result["cache"] = bench_cache(V, movie_ids, n_requests=20_000, workdir=workroot)
            if "load" not in args.skip:
                print("== loopback load test", flush=True)
                if not (workroot / "movielens_index").exists():
                    bench_cache(V, movie_ids, n_requests=10, workdir=workroot)
                result["load"] = bench_load(workroot / "movielens_index", movie_ids, V, rate=30.0, seconds=60.0)
    finally:
        shutil.rmtree(workroot, ignore_errors=True)
    _write(out_dir, stem, result, partial=False)
    print(f"wrote {out_dir / stem}.json and .md")
    return 0


def _write(out_dir: Path, stem: str, result: dict[str, Any], *, partial: bool) -> None:
    """The results so far (``<stem>.partial.json``) or the finished run (``<stem>.json`` and
    ``.md``, the partial file removed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2, default=float) + "\n"
    if partial:
        (out_dir / f"{stem}.partial.json").write_text(text)
        return
    (out_dir / f"{stem}.json").write_text(text)
    (out_dir / f"{stem}.md").write_text(markdown(result) + "\n")
    (out_dir / f"{stem}.partial.json").unlink(missing_ok=True)


if __name__ == "__main__":
    raise SystemExit(main())
