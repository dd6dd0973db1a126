"""ScaNN's anisotropic quantization as a codec row of the codec benchmark (``bench_codecs``).

Standalone: run it with the peers venv (``make venv-peers``), never the project's; it does not
import mmcompress (ScaNN pins TensorFlow). ``benchmarks/bench_codecs.py`` calls it once per
dataset with every budget:

    .venv-peers/bin/python benchmarks/peers/scann_codec.py --base base.npy --queries q.npy \\
        --gt gt.npy --metric ip --budgets 8 16 32 64 --out scann.json

Per budget: brute-force asymmetric hashing (``builder(...).score_ah(dims_per_block,
anisotropic_quantization_threshold=0.2)``, no tree, no reorder), so every item is scored from
its code alone, as the project's codecs are. ScaNN's AH uses 16 centres per block (LUT16, 4 bits
per block), so a code takes ``ceil(ceil(d / dims_per_block) / 2)`` bytes; ``dims_per_block`` is
the smallest that fits the budget. The anisotropic threshold 0.2 is the one ScaNN's README
example and ``scann/docs/algorithms.md`` use for dot-product search; for squared L2 it is left
at the builder's default (NaN: no anisotropic weighting), which is what ScaNN documents the
threshold for. Training uses every base row (``training_sample_size = n``).

Output JSON: ``rows`` (budget, spec, code_bytes, dims_per_block, recall@10, 1-recall@1, build
seconds, queries/s as the median of ``--repeats`` batch passes), ``scann_version`` and
``skipped`` (budgets no block size fits, with why).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

K = 10
AQ_THRESHOLD = 0.2
DISTANCES = {"ip": "dot_product", "l2": "squared_l2"}


def ah_code_bytes(d: int, dims_per_block: int) -> int:
    """Bytes of one LUT16 AH code: 4 bits per block of ``dims_per_block`` dimensions."""
    return math.ceil(math.ceil(d / dims_per_block) / 2)


def dims_per_block_for(d: int, budget: int) -> int | None:
    """The smallest block size (the most blocks, the finest code) whose code fits ``budget``."""
    for dpb in range(1, d + 1):
        if ah_code_bytes(d, dpb) <= budget:
            return dpb
    return None


def recall_at_10(found: np.ndarray, truth: np.ndarray) -> float:
    found, truth = np.asarray(found)[:, :K], np.asarray(truth)[:, :K]
    return sum(len(np.intersect1d(f[f >= 0], t)) for f, t in zip(found, truth, strict=True)) / (K * len(truth))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", type=Path, required=True)
    p.add_argument("--queries", type=Path, required=True)
    p.add_argument("--gt", type=Path, required=True)
    p.add_argument("--metric", choices=sorted(DISTANCES), default="ip")
    p.add_argument("--budgets", type=int, nargs="+", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)

    from scann import scann_ops_pybind

    base = np.ascontiguousarray(np.load(args.base), dtype=np.float32)
    xq = np.ascontiguousarray(np.load(args.queries), dtype=np.float32)
    gt = np.load(args.gt)
    n, d = base.shape
    rows, skipped = [], []
    for budget in args.budgets:
        dpb = dims_per_block_for(d, budget)
        if dpb is None:
            skipped.append(f"{budget} B: no block size fits")
            continue
        b = scann_ops_pybind.builder(base, K, DISTANCES[args.metric])
        b.set_n_training_threads(args.threads)
        ah = {"training_sample_size": n}
        if args.metric == "ip":
            ah["anisotropic_quantization_threshold"] = AQ_THRESHOLD
        t0 = time.perf_counter()
        searcher = b.score_ah(dpb, **ah).build()
        build_s = time.perf_counter() - t0
        times, ids = [], None
        for _ in range(max(1, args.repeats)):
            t0 = time.perf_counter()
            ids, _ = searcher.search_batched(xq, final_num_neighbors=K)
            times.append(time.perf_counter() - t0)
        ids = np.asarray(ids, dtype=np.int64)
        threshold = AQ_THRESHOLD if args.metric == "ip" else "default (NaN)"
        rows.append({"budget": budget, "code_bytes": ah_code_bytes(d, dpb), "dims_per_block": dpb,
                     "spec": f"AH dims_per_block={dpb}, 16 centres/block, threshold {threshold}, no reorder",
                     "recall_at_10": recall_at_10(ids, gt), "one_recall_at_1": float(np.mean(ids[:, 0] == gt[:, 0])),
                     "build_seconds": round(build_s, 2), "search_qps": round(len(xq) / statistics.median(times), 1)})
        print(f"ScaNN AH {budget} B: dims_per_block={dpb} recall@10 {rows[-1]['recall_at_10']:.3f}",
              file=sys.stderr, flush=True)
    try:
        version = metadata.version("scann")
    except metadata.PackageNotFoundError:
        version = None
    args.out.write_text(json.dumps({"rows": rows, "skipped": skipped, "scann_version": version,
                                    "n": n, "d": d, "metric": args.metric}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
