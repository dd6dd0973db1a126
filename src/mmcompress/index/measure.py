"""What a built index delivers: recall against exact search, latency, throughput, memory, and
the work of each stage - the numbers the pipeline's index stage records."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from mmcompress.index.cascade import CascadeIndex


def measure_index(index: CascadeIndex, queries: np.ndarray, true_ids: np.ndarray, *, k: int = 10,
                  n_latency: int = 200, threads: int = 1) -> dict[str, Any]:
    """Recall@k of ``index.search`` against ``true_ids`` (item ids of the exact top-k, one row
    per query), p50/p99 latency of single queries, batch queries/s, bytes and stage work."""
    from mmcompress.evaluation.metrics import recall_at_k

    assert queries.ndim == 2 and true_ids.shape[0] == len(queries) and true_ids.shape[1] >= k, (
        queries.shape, true_ids.shape, k)
    index.search(queries[:4], k)
    t = time.perf_counter()
    _, found, stats = index.search(queries, k, threads=threads, return_stats=True)
    batch_s = time.perf_counter() - t
    lat = []
    for q in queries[:n_latency]:
        t = time.perf_counter()
        index.search(q[None, :], k)
        lat.append((time.perf_counter() - t) * 1e3)
    mem = index.memory_report()
    return {
        f"recall_at_{k}": recall_at_k(true_ids, found, k),
        "latency_p50_ms": float(np.percentile(lat, 50)),
        "latency_p99_ms": float(np.percentile(lat, 99)),
        "queries_per_s": len(queries) / batch_s,
        "resident_bytes_per_item": mem["resident_bytes_per_item"],
        "resident_bytes": mem["resident_bytes"],
        "on_disk_bytes": mem["on_disk_bytes"],
        "n_items": mem["n_items"],
        "stages": stats.to_dict(),
        "index": index.describe(),
    }


def exact_top_ids(vectors: np.ndarray, item_ids: np.ndarray, queries: np.ndarray, k: int = 10,
                  metric: str = "ip") -> np.ndarray:
    """Item ids of the exact top-k of each query over ``vectors`` (the recall reference)."""
    from mmcompress.evaluation.metrics import exact_topk

    _, rows = exact_topk(vectors, queries, k, metric)
    return np.asarray(item_ids)[rows]
