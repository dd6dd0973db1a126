"""One serving-benchmark peer (DiskANN, ScaNN, LanceDB or usearch) at its documented settings.

Standalone: run it with the peers venv (``make venv-peers``), never the project's; it does not
import mmcompress, so the peers' pins (numpy 1.25 for diskannpy, TensorFlow for scann) stay out
of the locked stack.

    .venv-peers/bin/python benchmarks/peers/run_peer.py diskann \\
        --base base.npy --tune-queries tune.npy --test-queries test.npy \\
        --tune-gt tune_gt.npy --test-gt test_gt.npy --workdir /tmp/peer-diskann \\
        --threads 2 --target 0.95 --out diskann.json

Inputs: base vectors (n x d float32, L2-normalised; the metric is inner product), tuning and
test queries (float32, same d), and the exact inner-product top-10 ids of each query set
(int, shape (nq, >=10)).

Protocol, each phase in its own child process so that the resident-memory figure after load
counts the index only (plus the library's imports, given separately):

1. build: every index variant the grid needs (timed; size on disk per file);
2. tune: every setting of the peer's documented search knobs on the TUNING queries (warm):
   recall@10 and queries/s (median over batch passes of all tuning queries on ``--threads``
   threads: at least ``--repeats`` passes and ``--min-time`` seconds); the chosen setting is
   the fastest one reaching ``--target`` by one standard error of the tuning mean (the
   shared rule of ``benchmarks/tuning.py``; if none does, the one with the best recall,
   flagged ``target_met: false``);
3. test: the chosen setting ONCE on the TEST queries: recall@10, batch queries/s, p50/p99
   latency of single queries (one at a time, in order), RSS after load, and the process's
   storage reads (``/proc/self/io`` ``read_bytes``; ``rchar``/``syscr`` for syscalls) per
   query. Disk-based peers (DiskANN, LanceDB) run twice: ``cold`` first (every file of the
   index dir fsynced and dropped from the page cache with
   ``posix_fadvise(POSIX_FADV_DONTNEED)``, the index reopened so no in-process cache
   survives; one batch pass and, after a second drop and reopen, one latency pass), then
   ``warm`` (the same index again, median of batch passes as in tuning, one latency pass).
   Every run says whether it was cold or warm. DiskANN reads its graph with O_DIRECT, so its
   reads bypass the page cache in either state; its in-RAM node cache is refilled on reopen.

Results: one JSON (``--out``) with the settings tried (tuning recall and q/s), the chosen
one, the test figures, build time and sizes, library versions and the documented source of
each setting.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

# the memory sampler and page-cache count the project's own contenders are measured with
# (standard library only: no mmcompress import)
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.residency import AnonPeak, cached_bytes_of, rss_anon_bytes  # noqa: E402
from benchmarks.tuning import per_query_recall, recall_lower_bound  # noqa: E402

PEERS = ("diskann", "scann", "lancedb", "usearch")
K = 10
DISTRIBUTIONS = {"diskann": "diskannpy", "scann": "scann", "lancedb": "lancedb",
                 "usearch": "usearch"}
EXTRA_VERSIONS = {"lancedb": ["pyarrow"], "scann": ["tensorflow"], "usearch": ["numkong"]}


# ---- measurement helpers -----------------------------------------------------------------
def recall_at_10(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean |found[:, :10] & truth[:, :10]| / 10 (ids < 0 or padding never match)."""
    found = np.asarray(found)[:, :K]
    truth = np.asarray(truth)[:, :K]
    hits = sum(len(np.intersect1d(f[f >= 0], t)) for f, t in zip(found, truth, strict=True))
    return hits / (K * len(truth))


def proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def rss_mib() -> float:
    return proc_status_kib("VmRSS") / 1024


def proc_io() -> dict[str, int]:
    """/proc/self/io counters (read_bytes: bytes this process caused to be fetched from
    storage, O_DIRECT included; rchar/syscr: bytes and calls of read-like syscalls)."""
    try:
        with open("/proc/self/io") as f:
            return {k: int(v) for k, v in (line.split(": ") for line in f.read().splitlines())}
    except OSError:
        return {}


def io_delta(before: dict[str, int], after: dict[str, int], nq: int) -> dict[str, Any]:
    keys = ("read_bytes", "rchar", "syscr")
    d = {k: after[k] - before[k] for k in keys if k in before and k in after}
    return {**{f"{k}_total": v for k, v in d.items()},
            **{f"{k}_per_query": v / nq for k, v in d.items()}}


def drop_page_cache(directory: Path) -> dict[str, Any]:
    """fsync and POSIX_FADV_DONTNEED every file under ``directory`` (clean pages only can be
    dropped, hence the fsync)."""
    files, nbytes = 0, 0
    for p in sorted(directory.rglob("*")):
        if not p.is_file():
            continue
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        files += 1
        nbytes += p.stat().st_size
    return {"files": files, "bytes": nbytes}


def dir_sizes(directory: Path) -> dict[str, int]:
    return {str(p.relative_to(directory)): p.stat().st_size
            for p in sorted(directory.rglob("*")) if p.is_file()}


def time_batch(fn, queries: np.ndarray, repeats: int,
               min_time: float = 0.0) -> tuple[np.ndarray, list[float]]:
    """The ids of the first pass, and queries/s of each pass: at least ``repeats`` passes and
    at least ``min_time`` seconds of them (a cold run passes repeats=1, min_time=0)."""
    rates, ids = [], None
    t_start = time.perf_counter()
    while len(rates) < repeats or time.perf_counter() - t_start < min_time:
        t = time.perf_counter()
        out = fn(queries)
        rates.append(len(queries) / (time.perf_counter() - t))
        ids = out if ids is None else ids
    return np.asarray(ids), rates


def time_single(fn, queries: np.ndarray) -> dict[str, float]:
    lat = []
    for q in queries:
        t = time.perf_counter()
        fn(q)
        lat.append((time.perf_counter() - t) * 1e3)
    return {"p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "mean_ms": float(np.mean(lat)), "n": len(lat)}


def versions(peer: str) -> dict[str, str]:
    out = {}
    for dist in [DISTRIBUTIONS[peer], "numpy", *EXTRA_VERSIONS.get(peer, [])]:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def unit_norms(x: np.ndarray) -> dict[str, float]:
    n = np.linalg.norm(x, axis=1)
    return {"min": float(n.min()), "max": float(n.max())}


# ---- peers -------------------------------------------------------------------------------
class Peer:
    """A library under test. ``build`` runs in the build child, the rest in the tune/test
    children. Settings are plain dicts; ``variant`` names the built index they search."""

    name = ""
    disk_based = False
    sources: dict[str, str] = {}

    def __init__(self, workdir: Path, threads: int):
        self.workdir = workdir
        self.threads = threads

    module = ""

    def preload(self) -> None:
        """Import the library, so that RSS before load counts its code but not the index."""
        importlib.import_module(self.module)

    def variant_dir(self, variant: str) -> Path:
        return self.workdir / "index" / variant

    def build(self, base: np.ndarray) -> dict[str, Any]:
        raise NotImplementedError

    def settings(self, build_info: dict[str, Any]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def load(self, variant: str, build_info: dict[str, Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def batch(self, queries: np.ndarray, s: dict[str, Any]) -> np.ndarray:
        raise NotImplementedError

    def single(self, q: np.ndarray, s: dict[str, Any]) -> np.ndarray:
        raise NotImplementedError

    def library_io(self, queries: np.ndarray, s: dict[str, Any]) -> dict[str, Any] | None:
        """What the library itself reports of its reads, where it reports any."""
        return None

    def serving_bytes(self, variant: str) -> int:
        return sum(dir_sizes(self.variant_dir(variant)).values())


class DiskANN(Peer):
    """diskannpy's SSD index: Vamana graph + full-precision vectors on disk (read with
    O_DIRECT, beam search), PQ codes of ``--pq-bytes`` bytes per vector in RAM."""

    name = "diskann"
    module = "diskannpy"
    disk_based = True
    # DiskANN documents its SSD-index settings in workflows/SSD_index.md
    # (https://github.com/microsoft/DiskANN/blob/main/workflows/SSD_index.md):
    # -R (max_degree) default 64, "typically between 60 and 150"; -L (Lbuild) default 100,
    # "typical values are between 75 to 200", at least R; -B (search_DRAM_budget) sizes the PQ
    # codes kept in RAM: "to use b byte PQ compressed representation in memory, use
    # B = (n * b) / 2^30" (plus 0.25 GB of node-cache slack once B exceeds 1.25 GB, which the
    # builder subtracts again); -W (beamwidth) default 2, "for the highest query throughput
    # ... use W=1. For best latency, use W=4,8"; its worked example searches -L 10 20 30 40 50
    # 100 with --num_nodes_to_cache 10000 on 100K points (10%). PQ of 32 bytes is the example's
    # budget ("0.003GB search memory budget for 100K vectors implies 32 byte PQ compression").
    # Python names checked against diskannpy 0.7.0: build_disk_index(data, distance_metric,
    # index_directory, complexity, graph_degree, search_memory_maximum,
    # build_memory_maximum, num_threads, pq_disk_bytes=0), StaticDiskIndex(index_directory,
    # num_threads, num_nodes_to_cache, cache_mechanism=1), batch_search(queries, k_neighbors,
    # complexity, num_threads, beam_width=2), search(query, k_neighbors, complexity,
    # beam_width=2).
    sources = {
        "build": "https://github.com/microsoft/DiskANN/blob/main/workflows/SSD_index.md "
                 "(R=64, L=100 defaults; B = n*b/2^30 for b-byte PQ in RAM)",
        "search": "same page: -L search list 10..100 (example), -W beamwidth 1 (throughput), "
                  "2 (default), 4/8 (latency); --num_nodes_to_cache 10000 of 100K points",
        "api": "diskannpy 0.7.0 docstrings (build_disk_index, StaticDiskIndex.batch_search)",
    }
    R, L_BUILD = 64, 100
    L_SEARCH = (10, 20, 30, 40, 50, 70, 100, 150, 200)
    BEAMWIDTHS = (1, 2, 4)

    def __init__(self, workdir: Path, threads: int, pq_bytes: int = 32):
        super().__init__(workdir, threads)
        self.pq_bytes = pq_bytes
        self.index = None

    def build(self, base: np.ndarray) -> dict[str, Any]:
        import diskannpy

        n, d = base.shape
        ram_gb = n * (self.pq_bytes + 0.5) / 2**30   # +0.5 byte: the builder floors B/n
        if ram_gb > 1.0:                              # it keeps 0.25 GB for cached nodes
            ram_gb += 0.25
        out = self.variant_dir("ssd")
        out.mkdir(parents=True, exist_ok=True)
        # On unit vectors l2 ranks exactly as inner product (|q-x|^2 = 2 - 2 q.x); the disk
        # index's "mips" path only adds a zero extra dimension for them.
        t = time.perf_counter()
        diskannpy.build_disk_index(
            base, "l2", str(out), complexity=self.L_BUILD, graph_degree=self.R,
            search_memory_maximum=ram_gb, build_memory_maximum=4.0,
            num_threads=self.threads, pq_disk_bytes=0)
        build_s = time.perf_counter() - t
        hdr = np.fromfile(out / "ann_pq_compressed.bin", dtype=np.int32, count=2)
        if int(hdr[1]) != self.pq_bytes:
            raise RuntimeError(f"DiskANN built {hdr[1]} PQ bytes per vector, asked "
                               f"{self.pq_bytes} (search_memory_maximum={ram_gb})")
        return {"variants": {"ssd": {
            "build_s": build_s, "files": dir_sizes(out),
            "params": {"distance_metric": "l2 (unit vectors: same ranking as inner product)",
                       "graph_degree": self.R, "complexity": self.L_BUILD,
                       "search_memory_maximum_gb": ram_gb, "build_memory_maximum_gb": 4.0,
                       "pq_disk_bytes": 0, "num_threads": self.threads,
                       "pq_bytes_in_ram": int(hdr[1])}}},
            "num_nodes_to_cache": min(250_000, max(1, n // 10))}

    def serving_bytes(self, variant: str) -> int:
        # ann_vectors.bin is the builder's copy of the input: StaticDiskIndex does not read it
        return sum(v for k, v in dir_sizes(self.variant_dir(variant)).items()
                   if k != "ann_vectors.bin")

    def settings(self, build_info):
        return [{"variant": "ssd", "complexity": L, "beam_width": W}
                for W in self.BEAMWIDTHS for L in self.L_SEARCH]

    def load(self, variant, build_info):
        import diskannpy

        self.index = diskannpy.StaticDiskIndex(
            str(self.variant_dir(variant)), num_threads=self.threads,
            num_nodes_to_cache=build_info["num_nodes_to_cache"], cache_mechanism=1)

    def close(self):
        self.index = None

    def batch(self, queries, s):
        return self.index.batch_search(queries, K, s["complexity"], self.threads,
                                       s["beam_width"]).identifiers.astype(np.int64)

    def single(self, q, s):
        return self.index.search(q, K, s["complexity"], s["beam_width"]).identifiers


class ScaNN(Peer):
    """ScaNN: anisotropic-quantization (AH) scoring of every candidate, exact float32
    rescoring ("reorder") of the best ones, optionally behind a k-means tree. In RAM."""

    name = "scann"
    module = "scann"          # its __init__ imports scann_ops_pybind (and TensorFlow)
    # ScaNN documents its configuration in scann/docs/algorithms.md
    # (https://github.com/google-research/google-research/blob/master/scann/docs/algorithms.md):
    # "For a dataset with less than 100k points, score with AH, then rescore"; above, also
    # partition; "num_leaves should be roughly the square root of the number of datapoints";
    # "When scoring with AH, dimensions_per_block should be set to 2"; "Rescoring is highly
    # recommended if AH scoring is used", reordering_num_neighbors > k. The README's example
    # (scann/docs/example.ipynb, linked from scann/README.md) builds
    # builder(normalized_dataset, 10, "dot_product").tree(num_leaves=2000,
    # num_leaves_to_search=100, training_sample_size=250000).score_ah(2,
    # anisotropic_quantization_threshold=0.2).reorder(100) and tunes leaves_to_search and
    # pre_reorder_num_neighbors at search time. Names checked against scann 1.3.4:
    # ScannBuilder.tree(num_leaves, num_leaves_to_search, training_sample_size=100000, ...),
    # score_ah(dimensions_per_block, anisotropic_quantization_threshold, ...),
    # reorder(reordering_num_neighbors), ScannSearcher.search_batched_parallel(queries,
    # final_num_neighbors, pre_reorder_num_neighbors, leaves_to_search, batch_size=256),
    # set_num_threads(n), serialize(dir), scann_ops_pybind.load_searcher(dir).
    sources = {
        "build": "https://github.com/google-research/google-research/blob/master/scann/docs/"
                 "algorithms.md (<100k points: AH + rescore; num_leaves ~ sqrt(n); "
                 "dimensions_per_block=2); scann/docs/example.ipynb (score_ah(2, "
                 "anisotropic_quantization_threshold=0.2).reorder(100), dot_product)",
        "search": "example.ipynb: leaves_to_search, pre_reorder_num_neighbors at search time",
        "api": "scann 1.3.4 scann_ops_pybind / scann_builder signatures",
    }
    AQ_THRESHOLD = 0.2
    REORDER = (20, 40, 60, 100, 150, 250)
    LEAF_FRACTIONS = (0.02, 0.04, 0.07, 0.1, 0.15, 0.25, 0.35, 0.5)

    def __init__(self, workdir: Path, threads: int):
        super().__init__(workdir, threads)
        self.searcher = None

    def build(self, base):
        from scann import scann_ops_pybind

        n = len(base)
        # the rule of thumb's configuration for this n first; the tree is built as well
        # below 100k so that leaves_to_search is in the grid (the README example's form)
        num_leaves = max(2, round(math.sqrt(n)))
        variants = {}
        for v in ("ah", "tree"):
            b = scann_ops_pybind.builder(base, K, "dot_product")
            b.set_n_training_threads(self.threads)
            params = {"distance": "dot_product", "score_ah": {
                "dimensions_per_block": 2,
                "anisotropic_quantization_threshold": self.AQ_THRESHOLD,
                "training_sample_size": n}, "reorder": 100}
            if v == "tree":
                b = b.tree(num_leaves=num_leaves, num_leaves_to_search=max(1, num_leaves // 10),
                           training_sample_size=n)
                params["tree"] = {"num_leaves": num_leaves, "training_sample_size": n}
            b = b.score_ah(2, anisotropic_quantization_threshold=self.AQ_THRESHOLD,
                           training_sample_size=n).reorder(100)
            out = self.variant_dir(v)
            out.mkdir(parents=True, exist_ok=True)
            t = time.perf_counter()
            searcher = b.build()
            searcher.serialize(str(out))
            variants[v] = {"build_s": time.perf_counter() - t, "files": dir_sizes(out),
                           "params": params}
            del searcher
        return {"variants": variants, "num_leaves": num_leaves,
                "rule_of_thumb_variant": "ah" if n < 100_000 else "tree"}

    def settings(self, build_info):
        nl = build_info["num_leaves"]
        leaves = sorted({max(1, round(f * nl)) for f in self.LEAF_FRACTIONS})
        out = [{"variant": "ah", "pre_reorder_num_neighbors": r} for r in self.REORDER]
        out += [{"variant": "tree", "leaves_to_search": lv, "pre_reorder_num_neighbors": r}
                for lv in leaves for r in self.REORDER]
        return out

    def load(self, variant, build_info):
        from scann import scann_ops_pybind

        self.searcher = scann_ops_pybind.load_searcher(str(self.variant_dir(variant)))
        self.searcher.set_num_threads(self.threads)

    def close(self):
        self.searcher = None

    def batch(self, queries, s):
        # one mini-batch per thread (the default 256 would leave a thread idle below 512)
        bs = max(1, min(256, math.ceil(len(queries) / self.threads)))
        ids, _ = self.searcher.search_batched_parallel(
            queries, final_num_neighbors=K,
            pre_reorder_num_neighbors=s["pre_reorder_num_neighbors"],
            leaves_to_search=s.get("leaves_to_search"), batch_size=bs)
        return np.asarray(ids, dtype=np.int64)

    def single(self, q, s):
        return self.searcher.search(q, final_num_neighbors=K,
                                    pre_reorder_num_neighbors=s["pre_reorder_num_neighbors"],
                                    leaves_to_search=s.get("leaves_to_search"))[0]


class LanceDB(Peer):
    """LanceDB (embedded): a Lance table on disk with an IVF_PQ or IVF_RQ (RaBitQ) index;
    refine_factor rereads full vectors from the table's data files."""

    name = "lancedb"
    module = "lancedb"
    disk_based = True
    # LanceDB documents its index settings at https://docs.lancedb.com/indexing/vector-index
    # (lancedb/docs docs/indexing/vector-index.mdx): "num_partitions ... IVF_RQ and IVF_PQ:
    # num_rows // 4096"; "num_sub_vectors: applies to IVF_PQ; start with dimension // 8";
    # nprobes: "Keep auto-tuned nprobes; raise when recall is insufficient"; refine_factor
    # "reads additional candidates and reranks them ... to recover recall lost to
    # quantization". For RaBitQ, https://docs.lancedb.com/indexing/rabitq: "Start with
    # num_bits=5 when recall matters". Names checked against lancedb 0.40.0:
    # lancedb.index.IvfPq(distance_type, num_partitions, num_sub_vectors, num_bits=8, ...),
    # IvfRq(distance_type, num_partitions, num_bits=1, ...), Table.create_index(column,
    # config=...), LanceVectorQueryBuilder.nprobes(n) / refine_factor(r) / distance_type(...)
    # / analyze_plan(). Threads: LANCE_CPU_THREADS and LANCE_IO_THREADS (set to --threads).
    sources = {
        "build": "https://docs.lancedb.com/indexing/vector-index (num_partitions = "
                 "num_rows // 4096 for IVF_PQ/IVF_RQ; num_sub_vectors = dim // 8, or the divisor of "
                 "dim nearest it); "
                 "https://docs.lancedb.com/indexing/rabitq (IVF_RQ num_bits=5)",
        "search": "same page: keep auto-tuned nprobes, raise when recall is insufficient; "
                  "refine_factor reranks with full vectors",
        "api": "lancedb 0.40.0 docstrings (IvfPq, IvfRq, LanceVectorQueryBuilder)",
    }
    NPROBE_FRACTIONS = (0.05, 0.1, 0.2, 0.35, 0.5, 1.0)
    REFINE = (None, 2, 5, 10, 20)
    RQ_BITS = 5

    def __init__(self, workdir: Path, threads: int):
        super().__init__(workdir, threads)
        self.table = None
        self.db = None

    def _connect(self, variant):
        import lancedb

        return lancedb.connect(str(self.variant_dir(variant)))

    def build(self, base):
        import pyarrow as pa
        from lancedb.index import IvfPq, IvfRq

        n, d = base.shape
        parts = max(1, n // 4096)
        # PQ needs num_sub_vectors to divide d: the divisor nearest the documented d // 8 (d=474
        # of the MovieLens fused vectors: 79 sub-vectors of 6 dims, where 59 fails to build)
        subs = min((m for m in range(1, d + 1) if d % m == 0), key=lambda m: (abs(m - d // 8), m))
        variants, skipped = {}, {}
        for v in ("ivf_pq", "ivf_rq"):
            if v == "ivf_rq" and d % 8:
                skipped[v] = f"IVF_RQ needs a dimension divisible by 8 (lancedb refuses d={d})"
                continue
            out = self.variant_dir(v)
            out.mkdir(parents=True, exist_ok=True)
            if v == "ivf_pq":
                cfg = IvfPq(distance_type="dot", num_partitions=parts, num_sub_vectors=subs)
                params = {"index_type": "IVF_PQ", "distance_type": "dot",
                          "num_partitions": parts, "num_sub_vectors": subs, "num_bits": 8}
            else:
                cfg = IvfRq(distance_type="dot", num_partitions=parts, num_bits=self.RQ_BITS)
                params = {"index_type": "IVF_RQ", "distance_type": "dot",
                          "num_partitions": parts, "num_bits": self.RQ_BITS}
            table = pa.table({"id": pa.array(np.arange(n), pa.int64()),
                              "vector": pa.FixedSizeListArray.from_arrays(
                                  pa.array(base.ravel()), d)})
            t = time.perf_counter()
            db = self._connect(v)
            tbl = db.create_table("items", table, mode="overwrite")
            tbl.create_index("vector", config=cfg)
            build_s = time.perf_counter() - t
            idx = tbl.list_indices()[0]
            params["index_details"] = json.loads(json.dumps(
                getattr(idx, "index_details", {}) or {}, default=str))
            variants[v] = {"build_s": build_s, "files": dir_sizes(out), "params": params,
                           "index_size_bytes": getattr(idx, "size_bytes", None)}
            del tbl, db
        return {"variants": variants, "skipped": skipped, "num_partitions": parts}

    def settings(self, build_info):
        parts = build_info["num_partitions"]
        probes = [None, *sorted({max(1, round(f * parts)) for f in self.NPROBE_FRACTIONS})]
        return [{"variant": v, "nprobes": p, "refine_factor": r}
                for v in build_info["variants"] for p in probes for r in self.REFINE]

    def load(self, variant, build_info):
        self.db = self._connect(variant)   # a new connection: a new session, empty caches
        self.table = self.db.open_table("items")

    def close(self):
        self.table = None
        self.db = None

    def _query(self, q, s):
        b = self.table.search(q, vector_column_name="vector").distance_type("dot").limit(K)
        if s["nprobes"] is not None:
            b = b.nprobes(s["nprobes"])
        if s["refine_factor"] is not None:
            b = b.refine_factor(s["refine_factor"])
        return b.select(["id"])

    def batch(self, queries, s):
        # one multi-vector query: LanceDB runs it on its own LANCE_CPU_THREADS pool
        r = self._query(queries, s).to_arrow()
        qi = r.column("query_index").to_numpy()
        ids = r.column("id").to_numpy()
        out = np.full((len(queries), K), -1, dtype=np.int64)
        fill = np.zeros(len(queries), dtype=np.int64)
        for a, b in zip(qi, ids, strict=True):
            if fill[a] < K:
                out[a, fill[a]] = b
                fill[a] += 1
        return out

    def single(self, q, s):
        return self._query(q, s).to_arrow().column("id").to_numpy()

    _UNIT = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9}

    def library_io(self, queries, s):
        """Sum of bytes_read / iops over the plan nodes of analyze_plan(), per query."""
        totals = {"bytes_read": 0.0, "iops": 0.0}
        for q in queries:
            plan = self._query(q, s).analyze_plan()
            for m in re.finditer(r"\b(bytes_read|iops)=([\d.]+)\s?([KMG]?)", plan):
                totals[m.group(1)] += float(m.group(2)) * self._UNIT[m.group(3)]
        return {"source": "LanceVectorQueryBuilder.analyze_plan() metrics, summed over plan "
                          "nodes; taken after the warm runs (Lance counts the bytes it asks "
                          "of the file system, page-cache hits included)",
                "cache": "warm", "queries": len(queries),
                **{f"{k}_per_query": v / len(queries) for k, v in totals.items()}}


class USearch(Peer):
    """usearch HNSW over float32 vectors, inner product, in RAM (restored from its file)."""

    name = "usearch"
    module = "usearch.index"
    # usearch documents its HNSW defaults and their variations in docs/benchmarks.md
    # (https://unum-cloud.github.io/USearch/benchmarks.html): connectivity 16, expansion_add
    # 128, expansion_search 64 by default; connectivity 12/16/32 and expansion_search
    # 32/64/128 in its tables. Names checked against usearch 2.26.6: Index(ndim, metric,
    # dtype, connectivity, expansion_add, expansion_search), Index.add(keys, vectors,
    # threads), Index.search(vectors, count, threads), the .expansion_search property,
    # Index.save(path), Index.restore(path, view=False).
    sources = {
        "build": "https://unum-cloud.github.io/USearch/benchmarks.html (connectivity 16, "
                 "expansion_add 128 defaults; connectivity 32 variant)",
        "search": "same page: expansion_search 64 default, 32..128 in its tables",
        "api": "usearch 2.26.6 docstrings (Index, Index.search)",
    }
    CONNECTIVITY = (16, 32)
    EXPANSION_ADD = 128
    EXPANSION_SEARCH = (16, 24, 32, 48, 64, 96, 128, 192, 256)

    def __init__(self, workdir: Path, threads: int):
        super().__init__(workdir, threads)
        self.index = None

    def build(self, base):
        from usearch.index import Index

        n, d = base.shape
        variants = {}
        for m in self.CONNECTIVITY:
            v = f"hnsw_m{m}"
            out = self.variant_dir(v)
            out.mkdir(parents=True, exist_ok=True)
            t = time.perf_counter()
            idx = Index(ndim=d, metric="ip", dtype="f32", connectivity=m,
                        expansion_add=self.EXPANSION_ADD)
            idx.add(np.arange(n, dtype=np.uint64), base, threads=self.threads)
            idx.save(str(out / "index.usearch"))
            variants[v] = {"build_s": time.perf_counter() - t, "files": dir_sizes(out),
                           "params": {"metric": "ip", "dtype": "f32", "connectivity": m,
                                      "expansion_add": self.EXPANSION_ADD}}
            del idx
        return {"variants": variants}

    def settings(self, build_info):
        return [{"variant": f"hnsw_m{m}", "expansion_search": e}
                for m in self.CONNECTIVITY for e in self.EXPANSION_SEARCH]

    def load(self, variant, build_info):
        from usearch.index import Index

        self.index = Index.restore(str(self.variant_dir(variant) / "index.usearch"), view=False)

    def close(self):
        self.index = None

    def batch(self, queries, s):
        self.index.expansion_search = s["expansion_search"]
        return self.index.search(queries, K, threads=self.threads).keys.astype(np.int64)

    def single(self, q, s):
        self.index.expansion_search = s["expansion_search"]
        return self.index.search(q, K, threads=1).keys


def make_peer(args) -> Peer:
    if args.peer == "diskann":
        return DiskANN(args.workdir, args.threads, args.pq_bytes)
    return {"scann": ScaNN, "lancedb": LanceDB, "usearch": USearch}[args.peer](
        args.workdir, args.threads)


# ---- phases (each in a child process) -----------------------------------------------------
def phase_build(args) -> dict[str, Any]:
    base = np.ascontiguousarray(np.load(args.base).astype(np.float32, copy=False))
    peer = make_peer(args)
    info = peer.build(base)
    info.update({"n": int(base.shape[0]), "d": int(base.shape[1]), "base_norms": unit_norms(base),
                 "peak_rss_mib": proc_status_kib("VmHWM") / 1024})
    for v in info["variants"]:
        info["variants"][v]["serving_bytes"] = peer.serving_bytes(v)
    return info


def setting_key(s: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in s.items())


def phase_tune(args, build_info) -> dict[str, Any]:
    peer = make_peer(args)
    xq = np.ascontiguousarray(np.load(args.tune_queries).astype(np.float32, copy=False))
    gt = np.load(args.tune_gt)
    rows, loaded = [], None
    for s in peer.settings(build_info):
        if s["variant"] != loaded:
            peer.close()
            peer.load(s["variant"], build_info)
            loaded = s["variant"]
            peer.batch(xq[:8], s)                        # first touch outside the timing
        ids, rates = time_batch(lambda q, s=s: peer.batch(q, s), xq, args.repeats,
                                args.min_time)
        per_query = per_query_recall(gt, ids)
        row = {"setting": s, "recall_at_10": recall_at_10(ids, gt), "recall_lower": recall_lower_bound(per_query),
               "qps": float(np.median(rates)), "qps_runs": rates}
        rows.append(row)
        print(f"  tune {setting_key(s)}: recall {row['recall_at_10']:.4f}, "
              f"{row['qps']:,.0f} q/s", file=sys.stderr, flush=True)
    peer.close()
    ok = [r for r in rows if r["recall_lower"] >= args.target]  # the shared pick rule
    chosen = (max(ok, key=lambda r: r["qps"]) if ok
              else max(rows, key=lambda r: (r["recall_at_10"], r["qps"])))
    return {"queries": len(xq), "cache": "warm (index just built / loaded, tuning is never "
            "cold)", "settings": rows, "chosen": chosen["setting"],
            "chosen_tuning": {k: chosen[k] for k in ("recall_at_10", "qps")},
            "target_met": bool(ok)}


def phase_test(args, build_info, setting) -> dict[str, Any]:
    peer = make_peer(args)
    xq = np.ascontiguousarray(np.load(args.test_queries).astype(np.float32, copy=False))
    gt = np.load(args.test_gt)
    variant = setting["variant"]
    vdir = peer.variant_dir(variant)
    peer.preload()
    rss_before = rss_mib()
    anon_before = rss_anon_bytes()
    runs = []

    def held(peak: AnonPeak) -> dict[str, Any]:
        """What the process held while a run ran, measured as the project's contenders are:
        the highest anonymous memory over the one before load, plus the page cache of the
        index's files after the run."""
        cached = cached_bytes_of([vdir])
        return {"peak_anon_bytes": peak.max_bytes - anon_before, "page_cache_bytes": cached,
                "all_in_bytes": peak.max_bytes - anon_before + cached}

    def open_index(cold: bool) -> dict[str, Any]:
        peer.close()
        dropped = drop_page_cache(vdir) if cold else None
        io0 = proc_io()
        t = time.perf_counter()
        peer.load(variant, build_info)
        load_s = time.perf_counter() - t
        # what loading read into the page cache is evicted, as the project's contenders' files
        # are after they open: the page cache then counts what the searches read (or map)
        drop_page_cache(vdir)
        return {"load_s": load_s, "rss_after_load_mib": rss_mib(),
                "load_io": io_delta(io0, proc_io(), 1), "page_cache_dropped": dropped}

    def batch_run(cache: str, repeats: int, opened: dict[str, Any]) -> dict[str, Any]:
        io0 = proc_io()
        with AnonPeak() as peak:
            ids, rates = time_batch(lambda q: peer.batch(q, setting), xq, repeats,
                                    args.min_time if repeats > 1 else 0.0)
        io = io_delta(io0, proc_io(), len(xq) * len(rates))
        return {"cache": cache, "kind": "batch", "threads": args.threads,
                "recall_at_10": recall_at_10(ids, gt), "qps": float(np.median(rates)),
                "qps_runs": rates, "io": io, "memory": held(peak), **opened}

    def latency_run(cache: str, opened: dict[str, Any]) -> dict[str, Any]:
        io0 = proc_io()
        with AnonPeak() as peak:
            lat = time_single(lambda q: peer.single(q, setting), xq)
        return {"cache": cache, "kind": "single-query latency", **lat,
                "io": io_delta(io0, proc_io(), len(xq)), "memory": held(peak), **opened}

    if peer.disk_based:
        opened = open_index(cold=True)
        runs.append(batch_run("cold", 1, opened))
        runs.append(latency_run("cold", open_index(cold=True)))
        # warm: the same index again, its pages and caches now filled by the cold runs
        runs.append(batch_run("warm", args.repeats, {"rss_after_load_mib": opened[
            "rss_after_load_mib"]}))
        runs.append(latency_run("warm", {}))
    else:
        opened = open_index(cold=False)
        runs.append(batch_run("warm (in RAM)", args.repeats, opened))
        runs.append(latency_run("warm (in RAM)", {}))
    lib_io = peer.library_io(xq[: min(20, len(xq))], setting)
    rss_end = rss_mib()
    peer.close()
    return {"queries": len(xq), "setting": setting, "rss_before_load_mib": rss_before,
            "rss_after_load_mib": opened["rss_after_load_mib"],
            "rss_index_delta_mib": opened["rss_after_load_mib"] - rss_before,
            "rss_end_mib": rss_end, "peak_rss_mib": proc_status_kib("VmHWM") / 1024,
            "runs": runs, "library_io": lib_io,
            "recall_at_10": runs[0]["recall_at_10"]}


# ---- orchestration -----------------------------------------------------------------------
def child(args, phase: str, log) -> dict[str, Any]:
    """Run one phase in a fresh interpreter; its result comes back through a JSON file."""
    out = args.workdir / f"{phase}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), args.peer,
           "--base", str(args.base), "--tune-queries", str(args.tune_queries),
           "--test-queries", str(args.test_queries), "--tune-gt", str(args.tune_gt),
           "--test-gt", str(args.test_gt), "--workdir", str(args.workdir),
           "--threads", str(args.threads), "--target", str(args.target), "--out",
           str(args.out), "--repeats", str(args.repeats), "--min-time", str(args.min_time),
           "--pq-bytes", str(args.pq_bytes),
           "--phase", phase]
    t = time.perf_counter()
    rc = subprocess.call(cmd, stdout=log, stderr=log, env=child_env(args.threads))
    if rc != 0 or not out.exists():
        raise SystemExit(f"{args.peer}: {phase} phase failed (rc {rc}); see {log.name}")
    res = json.loads(out.read_text())
    res["phase_wall_s"] = time.perf_counter() - t
    return res


def child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "LANCE_CPU_THREADS", "LANCE_IO_THREADS"):
        env[var] = str(threads)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("peer", choices=PEERS)
    p.add_argument("--base", type=Path, required=True, help="base vectors, n x d float32 .npy")
    p.add_argument("--tune-queries", type=Path, required=True)
    p.add_argument("--test-queries", type=Path, required=True)
    p.add_argument("--tune-gt", type=Path, required=True, help="exact top-10 ids, tuning")
    p.add_argument("--test-gt", type=Path, required=True, help="exact top-10 ids, test")
    p.add_argument("--workdir", type=Path, required=True, help="index files and logs")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--target", type=float, default=0.95, help="recall@10 to reach on tuning")
    p.add_argument("--out", type=Path, required=True, help="JSON result")
    p.add_argument("--repeats", type=int, default=3,
                   help="at least this many batch passes per warm timing (median reported)")
    p.add_argument("--min-time", type=float, default=1.0,
                   help="and at least this many seconds of passes per warm timing")
    p.add_argument("--pq-bytes", type=int, default=32,
                   help="diskann: PQ bytes per vector kept in RAM (sets search_memory_maximum)")
    p.add_argument("--reuse-build", action="store_true",
                   help="skip the build if workdir holds one for the same inputs")
    p.add_argument("--phase", choices=("build", "tune", "test"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.workdir = args.workdir.resolve()
    for name in ("base", "tune_queries", "test_queries", "tune_gt", "test_gt", "out"):
        setattr(args, name, getattr(args, name).resolve())
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.phase:
        build_info = (json.loads((args.workdir / "build.json").read_text())
                      if args.phase != "build" else None)
        if args.phase == "build":
            res = phase_build(args)
        elif args.phase == "tune":
            res = phase_tune(args, build_info)
        else:
            tune = json.loads((args.workdir / "tune.json").read_text())
            res = phase_test(args, build_info, tune["chosen"])
        (args.workdir / f"{args.phase}.json").write_text(json.dumps(res, indent=1))
        return

    args.workdir.mkdir(parents=True, exist_ok=True)
    log_path = args.workdir / "log.txt"
    started = time.time()
    load0 = os.getloadavg()
    with open(log_path, "a") as log:
        stamp = {"base": str(args.base), "size": args.base.stat().st_size,
                 "mtime": args.base.stat().st_mtime, "peer": args.peer,
                 "pq_bytes": args.pq_bytes, "threads": args.threads}
        stamp_path = args.workdir / "build.stamp.json"
        if (args.reuse_build and (args.workdir / "build.json").exists()
                and stamp_path.exists() and json.loads(stamp_path.read_text()) == stamp):
            build = json.loads((args.workdir / "build.json").read_text())
            build["reused"] = True
            print(f"{args.peer}: reusing build in {args.workdir}", file=sys.stderr)
        else:
            print(f"{args.peer}: build", file=sys.stderr, flush=True)
            build = child(args, "build", log)
            stamp_path.write_text(json.dumps(stamp))
        print(f"{args.peer}: tune", file=sys.stderr, flush=True)
        tune = child(args, "tune", log)
        print(f"{args.peer}: test", file=sys.stderr, flush=True)
        test = child(args, "test", log)

    peer_cls = {"diskann": DiskANN, "scann": ScaNN, "lancedb": LanceDB, "usearch": USearch}
    cls = peer_cls[args.peer]
    chosen_variant = build["variants"][tune["chosen"]["variant"]]
    by_cache = {r["cache"] + "/" + r["kind"]: r for r in test["runs"]}
    batch_runs = [r for r in test["runs"] if r["kind"] == "batch"]
    lat_runs = [r for r in test["runs"] if r["kind"] != "batch"]
    summary = {
        "peer": args.peer, "chosen_setting": tune["chosen"], "target_recall": args.target,
        "target_met_on_tuning": tune["target_met"],
        "tuning": tune["chosen_tuning"],
        "test_recall_at_10": test["recall_at_10"],
        "test_qps": {r["cache"]: r["qps"] for r in batch_runs},
        "test_latency_ms": {r["cache"]: {"p50": r["p50_ms"], "p99": r["p99_ms"]}
                            for r in lat_runs},
        "build_s": chosen_variant["build_s"],
        "index_bytes_on_disk": sum(chosen_variant["files"].values()),
        "serving_bytes_on_disk": chosen_variant["serving_bytes"],
        "rss_after_load_mib": test["rss_after_load_mib"],
        "rss_index_delta_mib": test["rss_index_delta_mib"],
        "read_bytes_per_query": {r["cache"] + "/" + r["kind"]: r["io"].get(
            "read_bytes_per_query") for r in test["runs"]},
        "all_in_bytes": {r["cache"] + "/" + r["kind"]: r["memory"]["all_in_bytes"]
                         for r in test["runs"] if "memory" in r},
    }
    result = {
        "summary": summary,
        "peer": args.peer, "disk_based": cls.disk_based,
        "inputs": {k: str(getattr(args, k)) for k in
                   ("base", "tune_queries", "test_queries", "tune_gt", "test_gt")},
        "n": build["n"], "d": build["d"], "threads": args.threads, "target": args.target,
        "versions": versions(args.peer), "python": platform.python_version(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "loadavg_start": load0, "loadavg_end": os.getloadavg()},
        "documented_settings": cls.sources,
        "build": build, "tuning": tune, "test": test, "test_runs_by_cache": list(by_cache),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "wall_s": time.time() - started,
        "notes": ("Tuning on the tuning queries only; the test queries are searched with the "
                  "chosen setting alone. qps: batch of all test queries on --threads threads "
                  "(median of >= --repeats passes and >= --min-time s when warm, one pass when cold). Latency: "
                  "single queries one at a time. rss_index_delta_mib: RSS after load minus "
                  "RSS after imports and query loading. all_in_bytes per run: the highest "
                  "anonymous memory while the run ran over the one before load (sampled every "
                  "0.1 ms), plus the page cache of the index's files after it. read_bytes: "
                  "/proc/self/io."),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
