"""Retrieval over compressed item codes: the cascade index and the hot-item cache.

    from mmcompress.codecs import make_codec
    from mmcompress.index import CascadeConfig, CascadeIndex

    config = CascadeConfig.from_params(params["index"])
    index = CascadeIndex.build(make_codec(config.coarse.codec), fine_codec, X, item_ids,
                               config=config, masks=catalog.masks, titles=titles)
    scores, ids = index.search(queries, k=10)
    index.save("artifacts/index"); index = CascadeIndex.load("artifacts/index")
    measure_index(index, queries, exact_top_ids(X, item_ids, queries))   # recall, latency, bytes

    # the exact store read as a disk-resident index reads it; pages and pool hits counted
    index = CascadeIndex.load("artifacts/index", exact_reader="direct", exact_pool_bytes=64 << 20)
    index.exact_store_stats()            # pages_read, pool_hits, pool_hit_rate, bytes_read, mode
    reader = open_row_store("artifacts/index/exact.rows", reader="direct")   # for a peer's rerank
    rows, scores = exact_rerank(reader, queries, candidate_rows, keep=10)
"""

from mmcompress.index.cache import CacheStats, LRUCache, TinyLFUCache, make_cache
from mmcompress.index.cascade import CascadeIndex, SearchStats, recommended_nlist
from mmcompress.index.config import (
    CascadeConfig,
    CoarseStageConfig,
    ExactStageConfig,
    FineStageConfig,
)
from mmcompress.index.hamming import hamming_distances
from mmcompress.index.measure import exact_top_ids, measure_index
from mmcompress.index.partition import CoarsePartition
from mmcompress.index.rerank import exact_rerank
from mmcompress.index.rowstore import RowReader, open_row_store, write_rows
from mmcompress.index.store import manifest_digest, read_manifest

__all__ = [
    "CacheStats",
    "CascadeConfig",
    "CascadeIndex",
    "CoarsePartition",
    "CoarseStageConfig",
    "ExactStageConfig",
    "FineStageConfig",
    "LRUCache",
    "RowReader",
    "SearchStats",
    "TinyLFUCache",
    "exact_rerank",
    "exact_top_ids",
    "hamming_distances",
    "make_cache",
    "manifest_digest",
    "measure_index",
    "open_row_store",
    "read_manifest",
    "recommended_nlist",
    "write_rows",
]
