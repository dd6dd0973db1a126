"""The similar-items service without HTTP: current index + hot-item cache, hot reload.

Requests read ``self.current`` once and use that snapshot to the end, and a reload builds the
new index and its cache completely before one attribute assignment swaps them in, so a swap
never fails or mixes two indexes within a request. A version that failed to load (download,
verification, opening) is remembered and tried again only after an exponential back-off
(tenacity's policy), while the old index keeps answering; failures are counted on /metrics and
logged with their cause, and clients see only the status.
"""

from __future__ import annotations

import logging
import math
import shutil
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
from tenacity import wait_exponential

from mmcompress.index.cache import LRUCache, TinyLFUCache, make_cache
from mmcompress.index.cascade import SearchStats
from mmcompress.index.config import check_exact_reader, check_waves
from mmcompress.serve.metrics import ServiceMetrics
from mmcompress.serve.source import IndexBundle, IndexSource

log = logging.getLogger("mmcompress.serve")


@dataclass
class ServiceSettings:
    """Limits and knobs of the service (``cache_bytes=None``: the index config's value).

    ``exact_reader`` / ``exact_pool_bytes`` / ``exact_reads_in_flight``: how every index the
    service loads (the first and each hot reload) reads its exact float32 store
    (``index.exact`` of params.yaml: ``"mmap"``, ``"direct"`` with a buffer pool of
    ``exact_pool_bytes``, or ``"pread"``). None keeps what the index was saved with, so the
    pipeline's choice serves unless a replica says otherwise (e.g. a disk-resident replica
    with a small pool where the build machine memory-mapped). ``exact_first_wave`` /
    ``exact_confidence``: the exact stage's two-wave reading (``index.exact.first_wave`` /
    ``confidence``), None keeping the index's; an index without a fitted rerank bound refuses
    ``exact_first_wave > 0`` when it loads, and the service keeps the index it had."""

    max_k: int = 1000
    default_k: int = 10
    max_body_bytes: int = 1 << 20
    cache_policy: str | None = None
    cache_bytes: int | None = None
    reload_interval_s: float | None = 10.0
    reload_backoff_max_s: float = 600.0
    warm_items: int = 200
    exact_reader: str | None = None
    exact_pool_bytes: int | None = None
    exact_reads_in_flight: int | None = None
    exact_first_wave: int | None = None
    exact_confidence: float | None = None

    def __post_init__(self) -> None:
        check_exact_reader(self.exact_reader, self.exact_pool_bytes, self.exact_reads_in_flight,
                           names=("exact_reader", "exact_pool_bytes", "exact_reads_in_flight"), allow_none=True)
        check_waves(self.exact_first_wave, self.exact_confidence, names=("exact_first_wave", "exact_confidence"),
                    allow_none=True)

    @property
    def overrides_exact_reader(self) -> bool:
        return (self.exact_reader, self.exact_pool_bytes, self.exact_reads_in_flight) != (None, None, None)


class ServiceError(Exception):
    """A request the service refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Loaded:
    bundle: IndexBundle
    cache: LRUCache | TinyLFUCache

    @property
    def index(self) -> Any:
        return self.bundle.index


class SimilarItemsService:
    """Answers similar-item and vector queries from the current index; swaps in new ones."""

    def __init__(self, source: IndexSource, settings: ServiceSettings | None = None,
                 metrics: ServiceMetrics | None = None) -> None:
        self.source = source
        self.settings = settings or ServiceSettings()
        self.metrics = metrics or ServiceMetrics()
        self.current: Loaded | None = None
        self.last_error: str | None = None
        self._reload_lock = threading.Lock()
        self._failed: dict[str, tuple[int, float]] = {}  # version -> (failures, monotonic retry time)
        base = self.settings.reload_interval_s or 10.0
        self._backoff = wait_exponential(multiplier=base, min=base, max=self.settings.reload_backoff_max_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- loading ---------------------------------------------------------------------------
    def _prepare(self, bundle: IndexBundle) -> Loaded:
        """The new index read as the settings say, with its own cache, warmed (through the
        chosen reader, so a buffer pool starts with the popular items' pages)."""
        s = self.settings
        if s.overrides_exact_reader:
            bundle.index.reopen_exact(s.exact_reader, pool_bytes=s.exact_pool_bytes,
                                      reads_in_flight=s.exact_reads_in_flight)
        if s.exact_first_wave is not None or s.exact_confidence is not None:
            bundle.index.set_exact_waves(s.exact_first_wave, s.exact_confidence)
        cfg = bundle.index.config
        policy = self.settings.cache_policy or cfg.cache_policy
        nbytes = self.settings.cache_bytes if self.settings.cache_bytes is not None else cfg.cache_bytes
        loaded = Loaded(bundle=bundle, cache=make_cache(policy, nbytes))
        if self.settings.warm_items and bundle.popular_item_ids:
            self._warm(loaded, bundle.popular_item_ids[:self.settings.warm_items], self.settings.default_k)
        return loaded

    def reload(self, *, force: bool = False) -> bool:
        """Load the source's index if its version changed (or ``force``); True if swapped."""
        with self._reload_lock:
            version = None
            try:
                version = self.source.version()
                cur = self.current
                if version is None or (not force and cur is not None and cur.bundle.version == version):
                    return False
                failures, retry_at = self._failed.get(version, (0, 0.0))
                if not force and time.monotonic() < retry_at:
                    return False  # this version failed: wait out its back-off
                loaded = self._prepare(self.source.load())
            except Exception as e:  # keep serving the old index
                self.last_error = f"{type(e).__name__}: {e}"
                self.metrics.reloads.labels(result="failed").inc()
                if version is not None:
                    failures = self._failed.get(version, (0, 0.0))[0] + 1
                    delay = self._backoff(SimpleNamespace(attempt_number=failures))
                    self._failed[version] = (failures, time.monotonic() + delay)
                    self.metrics.failed_versions.set(len(self._failed))
                    log.warning("index %s failed to load (%d times), keeping the current index; next "
                                "try in %.0f s: %s", version, failures, delay, self.last_error)
                else:
                    log.warning("index source unreachable, keeping the current index: %s", self.last_error)
                return False
            self._failed.pop(version, None)
            self.metrics.failed_versions.set(len(self._failed))
            old, self.current = self.current, loaded
            self.last_error = None
            if old is not None and old.index is not loaded.index:
                self.metrics.retire_exact_store(old.index)
            self.metrics.reloads.labels(result="ok").inc()
            self.metrics.describe_index(loaded.bundle)
            log.info("serving index %s from %s (%d items)", loaded.bundle.version,
                     loaded.bundle.origin, loaded.index.n_items)
            if old is not None and old.bundle.cleanup_dir is not None:
                shutil.rmtree(old.bundle.cleanup_dir, ignore_errors=True)
            return True

    def start(self) -> None:
        """Poll the source every ``reload_interval_s`` in a daemon thread."""
        interval = self.settings.reload_interval_s
        if interval is None or self._thread is not None:
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(interval):
                self.reload()

        self._thread = threading.Thread(target=loop, name="index-reload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _require(self) -> Loaded:
        cur = self.current
        if cur is None:
            raise ServiceError(503, "no index loaded yet")  # the cause is in the log, not for clients
        return cur

    # ---- queries ---------------------------------------------------------------------------
    def check_k(self, k: int) -> int:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.settings.max_k:
            raise ServiceError(422, f"k must be an integer in [1, {self.settings.max_k}]; found {k!r}")
        return k

    def _check_modality(self, cur: Loaded, modality: str | None) -> None:
        if modality is not None and modality not in cur.index.modalities:
            raise ServiceError(422, f"unknown modality {modality!r}; this index knows "
                                    f"{list(cur.index.modalities)}")

    def similar(self, item_id: int, k: int, modality: str | None = None) -> dict[str, Any]:
        """The ``k`` items most similar to a catalog item (itself excluded)."""
        cur = self._require()
        k = self.check_k(k)
        self._check_modality(cur, modality)
        key = ("similar", int(item_id), k, modality)
        hit = cur.cache.get(key)
        cached = hit is not None
        if hit is None:
            scores, ids = self._similar_uncached(cur, int(item_id), k, modality)
            cur.cache.put(key, (scores, ids))
        else:
            scores, ids = hit
        self.metrics.observe_cache(cur.cache, cached)
        return self._response(cur, scores, ids, k=k, modality=modality, cached=cached,
                              query={"item_id": int(item_id), "title": cur.bundle.titles.get(int(item_id))})

    def _similar_uncached(self, cur: Loaded, item_id: int, k: int,
                          modality: str | None) -> tuple[np.ndarray, np.ndarray]:
        index = cur.index
        vkey = ("vector", item_id)
        vec = cur.cache.get(vkey)
        if vec is None:
            try:
                vec = index.vector_of(item_id)
            except KeyError:
                raise ServiceError(404, f"unknown item id {item_id}") from None
            cur.cache.put(vkey, vec)
        scores, ids, stats = index.search(vec[None, :], k + 1, modality=modality, return_stats=True)
        self.metrics.observe_stages(stats)
        keep = ids[0] != item_id
        return scores[0][keep][:k], ids[0][keep][:k]

    def search_vector(self, vector: Sequence[float], k: int, modality: str | None = None) -> dict[str, Any]:
        """The ``k`` items nearest to a query vector."""
        cur = self._require()
        k = self.check_k(k)
        self._check_modality(cur, modality)
        d = cur.index.d_
        try:
            q = np.asarray(vector, dtype=np.float32)
        except (TypeError, ValueError):
            raise ServiceError(422, "vector must be a list of numbers") from None
        if q.ndim != 1 or len(q) != d:
            raise ServiceError(422, f"vector has length {q.shape[0] if q.ndim == 1 else q.shape}; "
                                    f"this index expects {d}")
        bad = ~np.isfinite(q)
        if bad.any():
            raise ServiceError(422, f"vector has {int(bad.sum())} non-finite values (NaN/inf), "
                                    f"first at position {int(np.flatnonzero(bad)[0])}")
        scores, ids, stats = cur.index.search(q[None, :], k, modality=modality, return_stats=True)
        self.metrics.observe_stages(stats)
        return self._response(cur, scores[0], ids[0], k=k, modality=modality, cached=False, query=None)

    def _response(self, cur: Loaded, scores: np.ndarray, ids: np.ndarray, *, k: int,
                  modality: str | None, cached: bool, query: dict[str, Any] | None) -> dict[str, Any]:
        titles = cur.bundle.titles
        results = [{"item_id": int(i), "score": float(s) if math.isfinite(s) else None,
                    "title": titles.get(int(i))}
                   for s, i in zip(scores.tolist(), ids.tolist(), strict=True) if i >= 0]
        out: dict[str, Any] = {"k": k, "modality": modality, "index_version": cur.bundle.version,
                               "cached": cached, "results": results}
        if query is not None:
            out["query"] = query
        return out

    # ---- cache warming ---------------------------------------------------------------------
    def warm(self, popular_item_ids: Iterable[int], k: int | None = None) -> int:
        """Precompute results for popular items (most popular first) into the current cache."""
        cur = self._require()
        return self._warm(cur, popular_item_ids, k or self.settings.default_k)

    def _warm(self, cur: Loaded, popular_item_ids: Iterable[int], k: int) -> int:
        entries = []
        for item_id in popular_item_ids:
            try:
                entries.append((("similar", int(item_id), k, None),
                                self._similar_uncached(cur, int(item_id), k, None)))
            except ServiceError:
                continue
        return cur.cache.warm(entries)

    def health(self) -> dict[str, Any]:
        cur = self.current
        failing = {"last_reload": "failed" if self.last_error else "ok", "failed_versions": len(self._failed)}
        if cur is None:
            return {"status": "unavailable", **failing}
        return {"status": "ok", "index_version": cur.bundle.version, "n_items": cur.index.n_items,
                "loaded_at": cur.bundle.loaded_at, "uptime_s": time.time() - cur.bundle.loaded_at,
                **failing, "index": cur.index.describe()}


__all__ = ["Loaded", "ServiceError", "ServiceSettings", "SimilarItemsService", "SearchStats"]
