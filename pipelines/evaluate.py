"""Stage ``evaluate``: what each codec does to neighbours and to recommendations.

Vector metrics compare each codec's compressed search with exact search of the fused vectors
(held-out query items against the rest); the downstream metric recommends held-out MovieLens
ratings from item similarity with uncompressed vectors (the baseline) and with each codec.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from mmcompress.artifacts import atomic_path, write_json_atomic
from pipelines.config import Layout
from pipelines.stage_runner import main

SUMMARY_KEYS = ("recall_at_10", "one_recall_at_1", "ndcg_at_10", "rank_stability_at_50", "mse",
                "bytes_per_item", "compression_ratio", "search_qps")


def _ratings(params: dict, root: Path) -> pd.DataFrame | None:
    raw = Layout(root).resolve(params["catalog"]["raw_dir"]) / "ratings.csv"
    if params["catalog"]["source"] != "movielens" or not raw.exists():
        return None
    return pd.read_csv(raw)


def evaluate(params: dict, root: Path) -> dict:
    """Write metrics/evaluate.json, plots/recall_vs_bytes.csv and reports/evaluate.json."""
    from mmcompress.codecs import load_codec
    from mmcompress.evaluation.downstream import downstream_metrics, make_holdout
    from mmcompress.evaluation.faiss_baselines import (
        default_factory_strings,
        evaluate_faiss_baselines,
    )
    from mmcompress.evaluation.metrics import evaluate_codec, exact_topk

    root = Path(root)
    L = Layout(root)
    ep = params["evaluate"]
    X = np.load(L.fused_dir / "vectors.npy")
    ids = np.load(L.fused_dir / "item_ids.npy")
    base_rows, query_rows = np.load(L.fused_dir / "base_rows.npy"), np.load(L.fused_dir / "query_rows.npy")
    Xb, Xq = X[base_rows], X[query_rows]
    ks = tuple(ep.get("ks", (1, 10, 50)))
    gt = exact_topk(Xb, Xq, max(ks), "ip")
    compress_report = _read_json(L.reports_dir / "compress.json") or {}

    dp = ep["downstream"]
    ratings = _ratings(params, root)
    holdout = None
    if ratings is not None:
        holdout = make_holdout(ratings, ids, like_threshold=dp["like_threshold"],
                               holdout_per_user=dp["holdout_per_user"], history=dp["history"],
                               seed=ep.get("seed", 0))
    baseline = {"spec": "Flat (float32)", "recall_at_10": 1.0, "one_recall_at_1": 1.0, "ndcg_at_10": 1.0,
                "bytes_per_item": 4 * X.shape[1], "compression_ratio": 1.0}
    if holdout is not None:
        baseline["downstream"] = downstream_metrics(holdout, X, k=dp["k"])
        baseline["hr_at_10"] = baseline["downstream"][f"hr_at_{dp['k']}"]

    results: dict[str, dict] = {}
    codec_dirs = sorted(p for p in L.codecs_dir.iterdir() if p.is_dir())
    for codec_dir in tqdm(codec_dirs, desc="evaluate codecs"):
        name = codec_dir.name
        codec = load_codec(codec_dir / "codec.json")
        codes = np.load(L.codes_dir / f"{name}.npy")
        m = evaluate_codec(codec, Xb, Xq, codes=codes[base_rows], ks=ks, ground_truth=gt, timing=True)
        packed = L.codes_dir / f"{name}.packed"
        if packed.exists():
            m["stored_bytes_per_item"] = packed.stat().st_size / len(codes)
        m.update({k: v for k, v in compress_report.get(name, {}).items() if k == "entropy_saving"})
        if holdout is not None:
            m["downstream"] = downstream_metrics(
                holdout, X, k=dp["k"], search_fn=lambda q, k, c=codec, cc=codes: c.search(cc, q, k))
            m["hr_at_10"] = m["downstream"][f"hr_at_{dp['k']}"]
            m["hr_drop_vs_baseline"] = baseline["hr_at_10"] - m["hr_at_10"]
        results[name] = m

    challenger = _read_json(L.reports_dir / "train.json")["challenger"]
    index_eval = None
    if holdout is not None and (L.index_dir / "manifest.json").exists():
        index_eval = {"downstream": downstream_metrics(holdout, X, k=dp["k"],
                                                       search_fn=index_search_fn(L.index_dir, ids))}
        index_eval["hr_at_10"] = index_eval["downstream"][f"hr_at_{dp['k']}"]
    faiss_baselines = evaluate_faiss_baselines(
        Xb, Xq, gt[1], ep.get("faiss_baselines") or default_factory_strings(X.shape[1], ep.get("faiss_budgets", (8, 16))),
        max_train_rows=ep.get("faiss_max_train_rows", 5000), seed=ep.get("seed", 0))
    summary = {"baseline": {k: baseline.get(k) for k in ("recall_at_10", "hr_at_10", "bytes_per_item")},
               "challenger": challenger,
               "codecs": {n: {k: m.get(k) for k in (*SUMMARY_KEYS, "hr_at_10", "stored_bytes_per_item")
                              if m.get(k) is not None} for n, m in results.items()}}
    write_json_atomic(L.metrics_dir / "evaluate.json", summary)
    write_json_atomic(L.reports_dir / "evaluate.json",
                      {"baseline": baseline, "codecs": results, "challenger": challenger,
                       "index": index_eval,
                       "faiss_baselines": faiss_baselines})
    with atomic_path(L.plots_dir / "recall_vs_bytes.csv") as tmp:
        pd.DataFrame([{"codec": n, "bytes_per_item": m["bytes_per_item"],
                       "recall_at_10": m["recall_at_10"], "hr_at_10": m.get("hr_at_10")}
                      for n, m in sorted(results.items(), key=lambda kv: kv[1]["bytes_per_item"])]
                     ).to_csv(tmp, index=False)
    return summary


def index_search_fn(index_dir: Path, ids: np.ndarray):
    """The saved cascade index as a ``search_fn`` over catalog rows (what serving answers)."""
    from mmcompress.index import CascadeIndex

    index = CascadeIndex.load(index_dir)
    order = np.argsort(ids)
    sorted_ids = ids[order]

    def search(q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, found = index.search(q, k)
        pos = np.clip(np.searchsorted(sorted_ids, found), 0, len(ids) - 1)
        rows = np.where((found >= 0) & (sorted_ids[pos] == found), order[pos], -1)
        return scores, rows

    return search


def _read_json(path: Path) -> dict | None:
    import json

    return json.loads(path.read_text()) if path.exists() else None


if __name__ == "__main__":
    raise SystemExit(main(evaluate))
