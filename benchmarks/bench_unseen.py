"""Codecs on items they were not fitted on: the codec benchmark's rows, with the fit held apart.

    python -m benchmarks.bench_unseen [--datasets fused text debian] [--vectors NAME=PATH.npy ...]
                                      [--budgets 16] [--holdout 0.2] [--out benchmarks/results]
                                      [--only LABEL ...] [--resume]

The codec benchmark (:mod:`benchmarks.bench_codecs`) fits every codec on the catalog it then
encodes, as a catalog compressor is used. On a catalog of a few thousand items that rewards
memorising it: 16 residual codebooks of 256 entries hold 4,096 codewords of d floats for 8,742
fused MovieLens items, and joint refinement fits them to those very rows. Items added after the
fit (the index's delta segments, a re-encode after drift) meet codebooks that never saw them.

Here, per dataset (the codec benchmark's split: same held-out queries, seed and item cap), a
``--holdout`` share of the catalog is set apart; each codec is fitted on the rest (capped at
``--max-train`` rows, as there), then both parts are encoded and searched separately with the
test queries: recall@10 against exact top-10 *within that part*, and reconstruction MSE. The
fitted part is what the codec benchmark measures (on a smaller catalog); the unseen part is
what new items get. Codecs: ``auto`` at the budget (refitted on all fitted rows, as shipped),
the residual quantizers it chooses between (``RQ<B>x8_b2`` plain, ``RQ<B>x8_r4`` refined), and
faiss's residual quantizer plain and refined (``RQ<B>x8``, ``RQ<B>x8,refine``: the best faiss
rows of at most B bytes on these catalogs in the codec benchmark), each with its own scan; the
better of the two on the unseen part is the reference. ``--only`` runs some of them and
``--resume`` keeps the rows already in ``unseen.json``. Outputs ``unseen.json`` and
``unseen.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import benchmarks.common as common  # first: sets the OpenMP wait policy before faiss loads
from benchmarks.bench_codecs import FaissCodec, load_inputs
from mmcompress.artifacts import write_bytes_atomic, write_json_atomic
from mmcompress.codecs import exact_search, make_codec
from mmcompress.codecs.faiss_quantizers import subsample_rows


def codecs_for(budget: int) -> list[tuple[str, str, str]]:
    """(label, source, spec) of the codecs compared at a budget."""
    return [("auto", "project", "auto"),
            ("RQ (plain)", "project", f"RQ{budget}x8_b2"),
            ("RQ+refine", "project", f"RQ{budget}x8_r4"),
            ("faiss RQ", "faiss", f"RQ{budget}x8"),
            ("faiss RQ+refine", "faiss", f"RQ{budget}x8,refine")]


def split_fit(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted row ids (fitted, unseen) of a catalog of ``n`` rows."""
    perm = np.random.default_rng(seed + 1).permutation(n)
    cut = n - max(1, int(round(holdout * n)))
    return np.sort(perm[:cut]), np.sort(perm[cut:])


def part_scores(codec: Any, X: np.ndarray, xq: np.ndarray, metric: str) -> dict[str, float]:
    """recall@10 of the test queries within ``X`` encoded by ``codec``, and its reconstruction MSE."""
    codes = codec.encode(X)
    _, found = codec.search(codes, xq, 10)
    _, truth = exact_search(X, xq, 10, metric)
    mse = float(((codec.decode(codes) - X) ** 2).sum(axis=1).mean())
    return {"recall_at_10": common.recall_at(found, truth, 10), "mse": mse}


def run(ds: common.Dataset, budget: int, fitted: np.ndarray, unseen: np.ndarray, max_train: int,
        seed: int, only: list[str] | None = None) -> list[dict[str, Any]]:
    xf, xu = ds.xb[fitted], ds.xb[unseen]
    xt = subsample_rows(xf, max_train, seed)
    rows = []
    for label, source, spec in codecs_for(budget):
        if only and label not in only:
            continue
        print(f"[{ds.name} {budget}B] {label}: {spec}", file=sys.stderr, flush=True)
        t = time.perf_counter()
        if source == "faiss":
            codec = FaissCodec(spec, ds.d, ds.metric).fit(xt)
        else:
            codec = make_codec(spec, metric=ds.metric, budget_bytes=budget if spec == "auto" else None,
                               random_state=seed, max_train_rows=len(xt)).fit(xt)
        fit_s = time.perf_counter() - t
        row = {"dataset": ds.name, "budget": budget, "label": label, "source": source,
               "spec": getattr(codec, "spec", spec), "code_bytes": int(codec.encode(xf[:1]).shape[1]),
               "fit_seconds": round(fit_s, 1), "fitted": part_scores(codec, xf, ds.xq, ds.metric),
               "unseen": part_scores(codec, xu, ds.xq, ds.metric)}
        rows.append(row)
    return rows


def markdown(result: dict[str, Any]) -> str:
    lines = ["# Codecs on items they were not fitted on", "",
             f"Machine: {result['machine']}. Each dataset's catalog (the codec benchmark's split: "
             f"{result['args']['n_queries']} held-out test queries, seed {result['args']['seed']}) is cut in "
             f"two: {100 - round(100 * result['args']['holdout'])}% fitted on, "
             f"{round(100 * result['args']['holdout'])}% set apart (unseen); each codec is fitted on the "
             "first part, then each part is encoded and searched on its own with the test queries "
             "(recall@10 against exact top-10 within the part; MSE of the part's reconstructions). "
             "`gap` = recall on the fitted part minus recall on the unseen part: what memorising the "
             "fitted rows adds. `vs faiss` = the row's unseen recall minus the best faiss row's there.", ""]
    for name, meta in result["datasets"].items():
        for budget in result["args"]["budgets"]:
            rows = [r for r in result["rows"] if r["dataset"] == name and r["budget"] == budget]
            if not rows:
                continue
            faiss_rows = [r for r in rows if r["source"] == "faiss"]
            ref = max(faiss_rows, key=lambda r: r["unseen"]["recall_at_10"]) if faiss_rows else None
            lines += [f"## {name}, {budget} bytes", "",
                      f"Data: {meta['data']}; fitted part {meta['n_fitted']:,} items, unseen part "
                      f"{meta['n_unseen']:,} items, {meta['n_queries']:,} test queries.", "",
                      "| codec | spec | code B | recall@10 fitted | recall@10 unseen | gap | vs faiss (unseen) "
                      "| MSE fitted | MSE unseen | fit s |",
                      "|---|---|---|---|---|---|---|---|---|---|"]
            for r in rows:
                vs = "" if ref is None else f"{r['unseen']['recall_at_10'] - ref['unseen']['recall_at_10']:+.3f}"
                lines.append(f"| {r['label']} | `{r['spec']}` | {r['code_bytes']} | "
                             f"{r['fitted']['recall_at_10']:.3f} | {r['unseen']['recall_at_10']:.3f} | "
                             f"{r['fitted']['recall_at_10'] - r['unseen']['recall_at_10']:+.3f} | {vs} | "
                             f"{r['fitted']['mse']:.4f} | {r['unseen']['mse']:.4f} | {r['fit_seconds']:.0f} |")
            lines.append("")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vectors", nargs="*", default=[], metavar="NAME=PATH.npy",
                   help="inner-product datasets instead of the defaults (rows L2-normalised)")
    p.add_argument("--datasets", nargs="*", default=None, metavar="NAME",
                   help="the datasets to run (default: fused, text and debian, or every --vectors one)")
    p.add_argument("--budgets", nargs="*", type=int, default=[16])
    p.add_argument("--holdout", type=float, default=0.2, help="share of the catalog set apart")
    p.add_argument("--n-queries", type=int, default=1000)
    p.add_argument("--max-items", type=int, default=10000, help="cap on catalog rows per dataset")
    p.add_argument("--max-train", type=int, default=20000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--only", nargs="*", default=None, metavar="LABEL", help="codecs to run (e.g. 'faiss RQ')")
    p.add_argument("--resume", action="store_true", help="keep the rows already in OUT/unseen.json")
    args = p.parse_args(argv)
    if not 0 < args.holdout < 1:
        p.error(f"--holdout must be between 0 and 1; found {args.holdout}")
    args.l2_vectors = []  # the catalogs compared here are the inner-product ones
    if args.datasets is None and not args.vectors:
        args.datasets = ["fused", "text", "debian"]
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"machine": common.machine_info(), "datasets": {}, "rows": [],
                              "args": {"budgets": args.budgets, "holdout": args.holdout, "seed": args.seed,
                                       "n_queries": args.n_queries, "max_items": args.max_items,
                                       "max_train": args.max_train}}
    json_path = args.out / "unseen.json"
    if args.resume and json_path.exists():
        old = json.loads(json_path.read_text())
        result["rows"], result["datasets"] = old["rows"], old["datasets"]
    for name, (X, metric) in load_inputs(args).items():
        ds = common.split_queries(name, X, args.n_queries, args.seed, args.max_items, metric=metric)
        fitted, unseen = split_fit(len(ds.xb), args.holdout, args.seed)
        kind = "" if args.vectors else ", real"  # the default catalogs are real; given files are what they are
        result["datasets"][name] = {"data": f"{name} ({len(ds.xb):,} x {ds.d}, {metric}{kind})",
                                    "n_fitted": len(fitted), "n_unseen": len(unseen), "n_queries": len(ds.xq)}
        for budget in args.budgets:
            new = run(ds, budget, fitted, unseen, args.max_train, args.seed, args.only)
            labels = {r["label"] for r in new}
            result["rows"] = [r for r in result["rows"]
                              if not (r["dataset"] == name and r["budget"] == budget and r["label"] in labels)] + new
            result["rows"].sort(key=lambda r: (list(result["datasets"]).index(r["dataset"]), r["budget"],
                                               [c[0] for c in codecs_for(r["budget"])].index(r["label"])))
            write_json_atomic(json_path, result)
            write_bytes_atomic(args.out / "unseen.md", markdown(result).encode())
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
