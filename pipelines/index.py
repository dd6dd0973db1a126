"""Stage ``index``: build the cascade index (coarse code → challenger codec → exact rerank).

Measures what serving will see on the held-out query items: recall@10 of the cascade against
exact search, single-query latency p50/p99, batch throughput and all-in resident bytes per item.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from mmcompress.artifacts import write_json_atomic
from mmcompress.data import ItemCatalog
from pipelines.config import Layout
from pipelines.stage_runner import main

PROBE_QUERIES = 32


def index_probe(index_dir: Path, index, X: np.ndarray, query_rows: np.ndarray) -> dict:
    """What promote checks the registered copy against: the manifest digest of the index that
    was measured, and the top-10 ids it answered for the first held-out queries."""
    from mmcompress.index.store import manifest_digest

    rows = query_rows[:PROBE_QUERIES]
    _, found = index.search(X[rows], 10)
    return {"manifest_sha256": manifest_digest(index_dir), "query_rows": rows.tolist(), "k": 10,
            "ids": np.asarray(found).tolist()}


def build_index(params: dict, root: Path) -> dict:
    """Write artifacts/index, metrics/index.json and reports/index_probe.json."""
    from mmcompress.codecs import load_codec
    from mmcompress.evaluation.metrics import exact_topk, recall_at_k
    from mmcompress.index import CascadeConfig, CascadeIndex

    root = Path(root)
    L = Layout(root)
    cfg = CascadeConfig.from_params(params["index"])
    X = np.load(L.fused_dir / "vectors.npy")
    ids = np.load(L.fused_dir / "item_ids.npy")
    query_rows = np.load(L.fused_dir / "query_rows.npy")
    catalog = ItemCatalog.load(L.catalog_dir)
    rows = np.array([catalog.row_of()[int(i)] for i in ids])
    attrs = catalog.attributes.iloc[rows]
    challenger = json.loads((L.reports_dir / "train.json").read_text())["challenger"]
    fine = load_codec(L.codecs_dir / challenger / "codec.json") if cfg.fine.codec is None else None
    t0 = time.perf_counter()
    index = CascadeIndex.from_config(
        cfg, X, ids, fine_codec=fine,
        masks={m: catalog.masks[m][rows] for m in catalog.modality_names},
        titles=dict(zip(ids.tolist(), attrs["title"].astype(str).tolist(), strict=True))
        if "title" in attrs else None,
        popularity=attrs["n_ratings"].to_numpy(np.float64) if "n_ratings" in attrs else None,
        progress=True)
    build_s = time.perf_counter() - t0
    index.save(L.index_dir)
    index = CascadeIndex.load(L.index_dir)

    Q = X[query_rows]
    _, I_true = exact_topk(X, Q, 10, cfg.metric)
    _, found, stats = index.search(Q, 10, return_stats=True)
    recall = recall_at_k(ids[I_true], found, 10)
    lat = []
    for q in Q[: min(200, len(Q))]:
        t = time.perf_counter()
        index.search(q[None], 10)
        lat.append((time.perf_counter() - t) * 1e3)
    t = time.perf_counter()
    index.search(Q, 10)
    qps = len(Q) / (time.perf_counter() - t)
    mem = index.memory_report()
    metrics = {"recall_at_10": recall, "latency_p50_ms": float(np.median(lat)),
               "latency_p99_ms": float(np.percentile(lat, 99)), "batch_qps": qps,
               "resident_bytes_per_item": mem["resident_bytes_per_item"],
               "exact_bytes_on_disk": mem["on_disk_bytes"]["exact_vectors"],
               "n_items": index.n_items, "build_seconds": round(build_s, 2),
               **{f"stage.{k}": v for k, v in stats.to_dict().items() if isinstance(v, int | float)}}
    write_json_atomic(L.metrics_dir / "index.json", metrics)
    write_json_atomic(L.reports_dir / "index_probe.json", index_probe(L.index_dir, index, X, query_rows))
    return {"index_dir": str(L.index_dir), **metrics, "describe": index.describe()}


if __name__ == "__main__":
    raise SystemExit(main(build_index))
