"""Byte-bounded, thread-safe caches for hot items: W-TinyLFU (frequency-aware) and LRU.

W-TinyLFU (Einziger, Friedman & Manes, "TinyLFU: A Highly Efficient Cache Admission Policy",
2017; the policy of Caffeine) keeps a small LRU *window* for new entries and a segmented-LRU
*main* area. An entry leaving the window enters the main area only if a count-min sketch says
it is accessed more often than the main area's eviction victim, so a burst of one-off keys
cannot flush the popular ones. Counters are 4-bit-capped and halved every ``10 x width``
accesses, so popularity ages.

    cache = make_cache("tinylfu", max_bytes=4_000_000)
    hit = cache.get(key)                      # None on a miss
    cache.put(key, value)                     # numpy arrays, tuples of them, str, numbers
    cache.warm((key, value) for key in most_popular_first)
    cache.stats()                             # hits, misses, hit_rate, evictions, bytes, ...
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

ENTRY_OVERHEAD_BYTES = 96  # key, bookkeeping and dict slot, charged per entry


def value_nbytes(value: Any) -> int:
    """Approximate bytes held by a cached value (arrays by their buffers)."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes) + 112
    if isinstance(value, tuple | list):
        return sys.getsizeof(value) + sum(value_nbytes(v) for v in value)
    if isinstance(value, dict):
        return sys.getsizeof(value) + sum(value_nbytes(k) + value_nbytes(v) for k, v in value.items())
    return sys.getsizeof(value)


@dataclass
class CacheStats:
    policy: str
    max_bytes: int
    bytes: int
    items: int
    hits: int
    misses: int
    evictions: int
    rejected: int

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "hit_rate": self.hit_rate}


class _Base:
    policy = ""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0; found {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = self.rejected = 0

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self.policy, self.max_bytes, self._bytes(), self._items(), self.hits,
                              self.misses, self.evictions, self.rejected)

    def __len__(self) -> int:
        with self._lock:
            return self._items()

    def _bytes(self) -> int:
        raise NotImplementedError

    def _items(self) -> int:
        raise NotImplementedError


class LRUCache(_Base):
    """Least-recently-used eviction under a byte budget (the baseline)."""

    policy = "lru"

    def __init__(self, max_bytes: int) -> None:
        super().__init__(max_bytes)
        self._data: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._used = 0

    def get(self, key: Hashable) -> Any:
        with self._lock:
            hit = self._data.get(key)
            if hit is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return hit[0]

    def put(self, key: Hashable, value: Any, nbytes: int | None = None) -> bool:
        size = (value_nbytes(value) if nbytes is None else nbytes) + ENTRY_OVERHEAD_BYTES
        with self._lock:
            return self._put(key, value, size)

    def _put(self, key: Hashable, value: Any, size: int) -> bool:
        old = self._data.pop(key, None)
        if old is not None:
            self._used -= old[1]
        if size > self.max_bytes:
            self.rejected += 1
            return False
        self._data[key] = (value, size)
        self._used += size
        while self._used > self.max_bytes:
            _, (_, s) = self._data.popitem(last=False)
            self._used -= s
            self.evictions += 1
        return True

    def warm(self, items: Iterable[tuple[Hashable, Any]]) -> int:
        """Insert the most popular entries first; stops when the cache is full."""
        items = list(items)
        n = 0
        with self._lock:
            for key, value in items:
                size = value_nbytes(value) + ENTRY_OVERHEAD_BYTES
                if self._used + size > self.max_bytes:
                    break
                self._put(key, value, size)
                self._data.move_to_end(key, last=False)  # most popular ends up most recent
                n += 1
        return n

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._used = 0

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._data

    def _bytes(self) -> int:
        return self._used

    def _items(self) -> int:
        return len(self._data)


class CountMinSketch:
    """4-row count-min sketch with 4-bit saturating counters, halved every ``sample`` adds."""

    DEPTH = 4

    def __init__(self, width: int) -> None:
        self.width = 1 << max(4, int(width - 1).bit_length())
        self._buf = bytearray(self.DEPTH * self.width)
        self.table = np.frombuffer(self._buf, dtype=np.uint8).reshape(self.DEPTH, self.width)
        self.sample = 10 * self.width
        self.additions = 0
        self._mask = self.width - 1

    def _slots(self, key: Hashable) -> tuple[int, int, int, int]:
        x = ((hash(key) & 0xFFFFFFFFFFFFFFFF) * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        y = ((x ^ (x >> 31)) * 0xFF51AFD7ED558CCD) & 0xFFFFFFFFFFFFFFFF
        m, w = self._mask, self.width
        return (x >> 32) & m, w + (x & m), 2 * w + ((y >> 32) & m), 3 * w + (y & m)

    def increment(self, key: Hashable) -> None:
        buf = self._buf
        added = False
        for i in self._slots(key):
            if buf[i] < 15:
                buf[i] += 1
                added = True
        if added:
            self.additions += 1
            if self.additions >= self.sample:
                self.table >>= 1
                self.additions //= 2

    def estimate(self, key: Hashable) -> int:
        buf = self._buf
        return min(buf[i] for i in self._slots(key))


class TinyLFUCache(_Base):
    """W-TinyLFU: 1% LRU window, segmented-LRU main (20% probation, 80% protected), admission
    of window victims by sketch frequency. ``expected_items`` sizes the sketch."""

    policy = "tinylfu"

    def __init__(self, max_bytes: int, *, window_fraction: float = 0.01,
                 protected_fraction: float = 0.8, expected_items: int | None = None) -> None:
        super().__init__(max_bytes)
        self.window_max = max(1, int(max_bytes * window_fraction))
        self.main_max = max(0, self.max_bytes - self.window_max)
        self.protected_max = int(self.main_max * protected_fraction)
        self.sketch = CountMinSketch(expected_items or max(64, max_bytes // 1024))
        self._window: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._probation: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._protected: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._w_used = self._pb_used = self._pt_used = 0

    def get(self, key: Hashable) -> Any:
        with self._lock:
            self.sketch.increment(key)
            for area in (self._window, self._protected):
                hit = area.get(key)
                if hit is not None:
                    area.move_to_end(key)
                    self.hits += 1
                    return hit[0]
            hit = self._probation.pop(key, None)
            if hit is not None:
                self._pb_used -= hit[1]
                self._protect(key, hit)
                self.hits += 1
                return hit[0]
            self.misses += 1
            return None

    def _protect(self, key: Hashable, entry: tuple[Any, int]) -> None:
        self._protected[key] = entry
        self._pt_used += entry[1]
        while self._pt_used > self.protected_max and self._protected:
            k, e = self._protected.popitem(last=False)
            self._pt_used -= e[1]
            self._probation[k] = e
            self._pb_used += e[1]

    def put(self, key: Hashable, value: Any, nbytes: int | None = None) -> bool:
        size = (value_nbytes(value) if nbytes is None else nbytes) + ENTRY_OVERHEAD_BYTES
        with self._lock:
            self._discard(key)
            if size > self.main_max and size > self.window_max:
                self.rejected += 1
                return False
            self._window[key] = (value, size)
            self._w_used += size
            while self._w_used > self.window_max and self._window:
                k, e = self._window.popitem(last=False)
                self._w_used -= e[1]
                self._admit(k, e)
            return key in self._window or key in self._probation or key in self._protected

    def _discard(self, key: Hashable) -> None:
        for area, attr in ((self._window, "_w_used"), (self._probation, "_pb_used"),
                           (self._protected, "_pt_used")):
            e = area.pop(key, None)
            if e is not None:
                setattr(self, attr, getattr(self, attr) - e[1])

    def _main_used(self) -> int:
        return self._pb_used + self._pt_used

    def _admit(self, key: Hashable, entry: tuple[Any, int]) -> None:
        """A window victim enters probation if it beats the main area's victims on frequency."""
        size = entry[1]
        if size > self.main_max:
            self.rejected += 1
            self.evictions += 1
            return
        if self._main_used() + size <= self.main_max:
            self._probation[key] = entry
            self._pb_used += size
            return
        freq = self.sketch.estimate(key)
        victims, freed = [], 0
        for area in (self._probation, self._protected):
            for k, e in area.items():
                if self._main_used() - freed + size <= self.main_max:
                    break
                victims.append((area, k, e))
                freed += e[1]
        if self._main_used() - freed + size > self.main_max:
            self.rejected += 1
            self.evictions += 1
            return
        if freq <= max(self.sketch.estimate(k) for _, k, _ in victims):
            self.rejected += 1
            self.evictions += 1
            return
        for area, k, e in victims:
            del area[k]
            if area is self._probation:
                self._pb_used -= e[1]
            else:
                self._pt_used -= e[1]
            self.evictions += 1
        self._probation[key] = entry
        self._pb_used += size

    def warm(self, items: Iterable[tuple[Hashable, Any]], *, frequency: int = 4) -> int:
        """Place popular entries (most popular first) straight into the main area, recording
        ``frequency`` accesses each so admission keeps them; stops when the main area is full."""
        n = 0
        with self._lock:
            for key, value in items:
                size = value_nbytes(value) + ENTRY_OVERHEAD_BYTES
                self._discard(key)
                if self._main_used() + size > self.main_max:
                    break
                for _ in range(frequency):
                    self.sketch.increment(key)
                if self._pt_used + size <= self.protected_max:
                    self._protected[key] = (value, size)
                    self._protected.move_to_end(key, last=False)
                    self._pt_used += size
                else:
                    self._probation[key] = (value, size)
                    self._probation.move_to_end(key, last=False)
                    self._pb_used += size
                n += 1
        return n

    def clear(self) -> None:
        with self._lock:
            self._window.clear()
            self._probation.clear()
            self._protected.clear()
            self._w_used = self._pb_used = self._pt_used = 0

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._window or key in self._probation or key in self._protected

    def _bytes(self) -> int:
        return self._w_used + self._pb_used + self._pt_used

    def _items(self) -> int:
        return len(self._window) + len(self._probation) + len(self._protected)


Cache = LRUCache | TinyLFUCache
POLICIES = {"lru": LRUCache, "tinylfu": TinyLFUCache}


def make_cache(policy: str, max_bytes: int, **kwargs: Any) -> LRUCache | TinyLFUCache:
    """A cache by policy name: ``"tinylfu"`` (default in the service) or ``"lru"``."""
    try:
        cls = POLICIES[policy]
    except KeyError:
        raise ValueError(f"unknown cache policy {policy!r}; expected one of {sorted(POLICIES)}") from None
    return cls(max_bytes, **kwargs)
