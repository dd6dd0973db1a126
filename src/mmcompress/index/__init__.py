"""Retrieval over compressed item codes: the cascade index and the hot-item cache.

    from mmcompress.codecs import make_codec
    from mmcompress.index import CascadeConfig, CascadeIndex

    config = CascadeConfig.from_params(params["index"])
    index = CascadeIndex.build(make_codec(config.coarse.codec), fine_codec, X, item_ids,
                               config=config, masks=catalog.masks, titles=titles)
    scores, ids = index.search(queries, k=10)
    index.save("artifacts/index"); index = CascadeIndex.load("artifacts/index")
    measure_index(index, queries, exact_top_ids(X, item_ids, queries))   # recall, latency, bytes
"""

from mmcompress.index.cache import CacheStats, LRUCache, TinyLFUCache, make_cache
from mmcompress.index.cascade import CascadeIndex, SearchStats, recommended_nlist
from mmcompress.index.config import CascadeConfig, CoarseStageConfig, FineStageConfig
from mmcompress.index.hamming import hamming_distances
from mmcompress.index.measure import exact_top_ids, measure_index
from mmcompress.index.partition import CoarsePartition
from mmcompress.index.store import manifest_digest, read_manifest

__all__ = [
    "CacheStats",
    "CascadeConfig",
    "CascadeIndex",
    "CoarsePartition",
    "CoarseStageConfig",
    "FineStageConfig",
    "LRUCache",
    "SearchStats",
    "TinyLFUCache",
    "exact_top_ids",
    "hamming_distances",
    "make_cache",
    "manifest_digest",
    "measure_index",
    "read_manifest",
    "recommended_nlist",
]
