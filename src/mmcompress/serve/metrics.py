"""Prometheus metrics of one service instance, in its own registry (no global state)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from mmcompress.index.cascade import SearchStats

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
ITEM_BUCKETS = (1, 10, 50, 100, 200, 400, 1000, 5000, 20000, 100000, 1000000)
BYTE_BUCKETS = (0, 4096, 16384, 65536, 262144, 1048576, 4194304)


class ServiceMetrics:
    """Request latency, status counts, cache hit rate and memory, and per-stage work."""

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

    def describe_index(self, bundle: Any) -> None:
        index = bundle.index
        self.index_items.set(index.n_items)
        self.index_bytes_per_item.set(index.bytes_per_item())
        self.index_info.clear()
        self.index_info.labels(version=str(bundle.version)[:16], coarse=index.coarse_codec.spec,
                               fine=index.fine_codec.spec if index.fine_codec is not None else "none").set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
