"""What a search touched, stage by stage: per-query means, merged across chunks and calls."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class SearchStats:
    """Per-query means of what each stage touched (items), of the row bytes the exact stage
    asked for (``disk_bytes``) and of the 4 KiB pages that cost: read from below the exact
    store's buffer pool (``exact_pages``: the disk, or the page cache for a memory-mapped
    store) or found in the pool (``exact_pool_hits``). Seconds are totals per stage."""

    n_queries: int = 0
    coarse_scanned: float = 0.0
    coarse_shortlist: float = 0.0
    fine_shortlist: float = 0.0
    exact_reranked: float = 0.0
    disk_bytes: float = 0.0
    exact_pages: float = 0.0
    exact_pool_hits: float = 0.0
    seconds: dict[str, float] = field(default_factory=lambda: {"coarse": 0.0, "fine": 0.0, "exact": 0.0})

    def merge(self, other: SearchStats) -> SearchStats:
        n = self.n_queries + other.n_queries
        if n == 0:
            return SearchStats()
        a, b = self.n_queries / n, other.n_queries / n  # written out: this runs once per search call
        seconds = dict(self.seconds)
        for k, v in other.seconds.items():
            seconds[k] = seconds.get(k, 0.0) + v
        return SearchStats(n, a * self.coarse_scanned + b * other.coarse_scanned,
                           a * self.coarse_shortlist + b * other.coarse_shortlist,
                           a * self.fine_shortlist + b * other.fine_shortlist,
                           a * self.exact_reranked + b * other.exact_reranked,
                           a * self.disk_bytes + b * other.disk_bytes,
                           a * self.exact_pages + b * other.exact_pages,
                           a * self.exact_pool_hits + b * other.exact_pool_hits, seconds)

    def to_dict(self) -> dict[str, Any]:
        return {"n_queries": self.n_queries, "coarse_scanned": self.coarse_scanned,
                "coarse_shortlist": self.coarse_shortlist, "fine_shortlist": self.fine_shortlist,
                "exact_reranked": self.exact_reranked, "disk_bytes_per_query": self.disk_bytes,
                "exact_pages_per_query": self.exact_pages, "exact_pool_hits_per_query": self.exact_pool_hits,
                "seconds": dict(self.seconds)}
