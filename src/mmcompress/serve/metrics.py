"""Prometheus metrics of one service instance, in its own registry (no global state).

The exact store's reads (``mmcompress_exact_store_*``) come from the served index's reader
counters (:meth:`CascadeIndex.exact_store_stats`), which start from zero with each loaded
index. They are exported as Prometheus counters by adding, at each scrape, what the counters
grew since the last one, so a hot reload never makes them go backwards: the index being
replaced is read one last time when it is retired, and the new one counts from its zero.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from mmcompress.index.cascade import SearchStats
from mmcompress.index.rowstore import PAGE_BYTES

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
ITEM_BUCKETS = (1, 10, 50, 100, 200, 400, 1000, 5000, 20000, 100000, 1000000)
BYTE_BUCKETS = (0, 4096, 16384, 65536, 262144, 1048576, 4194304)
# exact_store_stats() counter -> help of the Prometheus counter mmcompress_exact_store_<key>_total
EXACT_STORE_COUNTERS = {
    "calls": "Read calls the exact rerank made to the exact store",
    "rows": "Float32 rows the exact rerank asked the exact store for",
    "pages_read": "4 KiB exact-store pages read from below the buffer pool (disk; page cache when memory-mapped)",
    "pool_hits": "Exact-store pages found in the buffer pool",
    "pool_misses": "Exact-store pages not found in the buffer pool (read from below it)",
    "bytes_read": "Bytes read from below the exact store's buffer pool",
    "reads": "Read system calls issued by the exact store (adjacent pages coalesced)",
}


class ServiceMetrics:
    """Request latency, status counts, cache hit rate and memory, per-stage work, and the
    exact store's page reads and buffer pool."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.latency = Histogram("mmcompress_request_seconds", "Request latency", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.requests = Counter("mmcompress_requests", "Requests answered", ["endpoint", "status"], registry=r)
        self.cache_lookups = Counter("mmcompress_cache_lookups", "Result-cache lookups", ["result"], registry=r)
        self.cache_hit_rate = Gauge("mmcompress_cache_hit_rate",
                                    "Share of similar-item requests answered from the cache", registry=r)
        self._hits = self._misses = 0
        self.cache_bytes = Gauge("mmcompress_cache_bytes", "Bytes held by the hot-item cache", registry=r)
        self.cache_items = Gauge("mmcompress_cache_items", "Entries in the hot-item cache", registry=r)
        self.cache_evictions = Gauge("mmcompress_cache_evictions", "Cache evictions since load", registry=r)
        self.stage_items = Histogram("mmcompress_stage_items", "Items touched per query by each stage",
                                     ["stage"], buckets=ITEM_BUCKETS, registry=r)
        self.disk_bytes = Histogram("mmcompress_exact_bytes_read", "Bytes read from the exact store per query",
                                    buckets=BYTE_BUCKETS, registry=r)
        self.index_items = Gauge("mmcompress_index_items", "Searchable items in the served index", registry=r)
        self.index_bytes_per_item = Gauge("mmcompress_index_resident_bytes_per_item",
                                          "All-in resident bytes per item of the served index", registry=r)
        self.index_info = Gauge("mmcompress_index_info", "The served index (value 1)",
                                ["version", "coarse", "fine"], registry=r)
        self.reloads = Counter("mmcompress_index_reloads", "Index (re)loads", ["result"], registry=r)
        self.failed_versions = Gauge("mmcompress_index_failed_versions",
                                     "Index versions that failed to load and wait out a back-off", registry=r)
        self.exact_store = {key: Counter(f"mmcompress_exact_store_{key}", text, registry=r)
                            for key, text in EXACT_STORE_COUNTERS.items()}
        self.exact_pool_hit_rate = Gauge("mmcompress_exact_store_pool_hit_rate",
                                         "Share of exact-store pages found in the buffer pool, served index "
                                         "since it loaded", registry=r)
        self.exact_pool_held_bytes = Gauge("mmcompress_exact_store_pool_held_bytes",
                                           "Bytes of exact-store pages the buffer pool holds now", registry=r)
        self.exact_pool_capacity_bytes = Gauge("mmcompress_exact_store_pool_capacity_bytes",
                                               "Size of the exact store's buffer pool (0: none)", registry=r)
        self.exact_reader_info = Gauge("mmcompress_exact_store_reader_info",
                                       "How the served index reads its exact store (value 1): reader as "
                                       "configured, mode as running (o_direct, pread_dontneed, mmap, memory)",
                                       ["reader", "mode"], registry=r)
        self._exact_lock = threading.Lock()
        self._exact_index: weakref.ref | None = None  # the index whose counters were exported last
        self._exact_seen: dict[str, int] = {}  # its counters then
        self._exact_retired: weakref.WeakSet = weakref.WeakSet()  # replaced indexes: never exported again

    def observe_stages(self, stats: SearchStats) -> None:
        self.stage_items.labels(stage="coarse_scanned").observe(stats.coarse_scanned)
        self.stage_items.labels(stage="coarse_shortlist").observe(stats.coarse_shortlist)
        self.stage_items.labels(stage="fine_shortlist").observe(stats.fine_shortlist)
        self.stage_items.labels(stage="exact_reranked").observe(stats.exact_reranked)
        self.disk_bytes.observe(stats.disk_bytes)

    def observe_cache(self, cache: Any, hit: bool) -> None:
        self.cache_lookups.labels(result="hit" if hit else "miss").inc()
        if hit:
            self._hits += 1
        else:
            self._misses += 1

    @property
    def request_hit_rate(self) -> float:
        total = self._hits + self._misses
        return self._hits / total if total else 0.0

    def refresh_cache(self, cache: Any) -> None:
        s = cache.stats()
        self.cache_hit_rate.set(self.request_hit_rate)
        self.cache_bytes.set(s.bytes)
        self.cache_items.set(s.items)
        self.cache_evictions.set(s.evictions)

    def refresh_exact_store(self, index: Any) -> None:
        """Export the served ``index``'s exact-store counters (before each scrape): add to each
        Prometheus counter what the index's counter grew since the last export; set the pool
        gauges and the reader info. A counter found lower than last time was reset (the reader
        reopened or ``reset_exact_store_stats``): all it holds now is new. An index already
        retired (a scrape that read the service's index just before a reload) is skipped, so
        nothing is counted twice. The counters are read under the lock: a read from a slower
        concurrent scrape, older than the last export, would look like a reset."""
        with self._exact_lock:
            if index in self._exact_retired:
                return
            stats = index.exact_store_stats()
            tracked = self._exact_index() if self._exact_index is not None else None
            if tracked is not index:
                self._exact_index, self._exact_seen = weakref.ref(index), {}
            self._export_growth(stats)
            self.exact_pool_hit_rate.set(float(stats.get("pool_hit_rate", 0.0)))
            self.exact_pool_held_bytes.set(int(stats.get("pool_pages_held", 0)) * PAGE_BYTES)
            self.exact_pool_capacity_bytes.set(int(stats.get("pool_bytes", 0)))
            self.exact_reader_info.clear()
            self.exact_reader_info.labels(reader=index.config.exact.reader,
                                          mode=str(stats.get("mode", "none"))).set(1)

    def retire_exact_store(self, index: Any) -> None:
        """A reload replaced ``index``: export what its counters grew since the last scrape and
        stop following it (the next scrape starts the new index from zero)."""
        with self._exact_lock:
            self._exact_retired.add(index)
            tracked = self._exact_index() if self._exact_index is not None else None
            if tracked is index:
                self._export_growth(index.exact_store_stats())
                self._exact_index, self._exact_seen = None, {}

    def _export_growth(self, stats: dict[str, Any]) -> None:
        """Add each counter's growth since ``_exact_seen`` (under ``_exact_lock``)."""
        for key, counter in self.exact_store.items():
            now, before = int(stats.get(key, 0)), self._exact_seen.get(key, 0)
            counter.inc(now - before if now >= before else now)
            self._exact_seen[key] = now

    def describe_index(self, bundle: Any) -> None:
        index = bundle.index
        self.index_items.set(index.n_items)
        self.index_bytes_per_item.set(index.bytes_per_item())
        self.index_info.clear()
        self.index_info.labels(version=str(bundle.version)[:16], coarse=index.coarse_codec.spec,
                               fine=index.fine_codec.spec if index.fine_codec is not None else "none").set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
