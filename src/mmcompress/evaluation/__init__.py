"""Search quality (recall@k, 1-recall@R, nDCG, rank stability), reconstruction error, size, and
downstream recommendation quality (HR@10 / nDCG@10 on held-out ratings)."""

from mmcompress.evaluation.downstream import Holdout, downstream_metrics, make_holdout
from mmcompress.evaluation.metrics import (
    bytes_per_item,
    compression_ratio,
    evaluate_codec,
    exact_topk,
    flatten_metrics,
    ndcg_at_k,
    one_recall_at_1,
    rank_stability,
    recall_at_k,
    reconstruction_mse,
    time_call,
)

__all__ = [
    "Holdout", "bytes_per_item", "compression_ratio", "downstream_metrics", "evaluate_codec",
    "exact_topk", "flatten_metrics", "make_holdout", "ndcg_at_k", "one_recall_at_1", "rank_stability", "recall_at_k",
    "reconstruction_mse", "time_call",
]
