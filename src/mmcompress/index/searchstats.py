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

    _MEANS = ("coarse_scanned", "coarse_shortlist", "fine_shortlist", "exact_reranked", "disk_bytes",
              "exact_pages", "exact_pool_hits")

    def merge(self, other: SearchStats) -> SearchStats:
        n = self.n_queries + other.n_queries
        if n == 0:
            return SearchStats()
        means = {k: (getattr(self, k) * self.n_queries + getattr(other, k) * other.n_queries) / n
                 for k in self._MEANS}
        return SearchStats(n_queries=n, **means,
                           seconds={k: self.seconds.get(k, 0.0) + other.seconds.get(k, 0.0)
                                    for k in set(self.seconds) | set(other.seconds)})

    def to_dict(self) -> dict[str, Any]:
        return {"n_queries": self.n_queries, "coarse_scanned": self.coarse_scanned,
                "coarse_shortlist": self.coarse_shortlist, "fine_shortlist": self.fine_shortlist,
                "exact_reranked": self.exact_reranked, "disk_bytes_per_query": self.disk_bytes,
                "exact_pages_per_query": self.exact_pages, "exact_pool_hits_per_query": self.exact_pool_hits,
                "seconds": dict(self.seconds)}
