"""The service side of the serving benchmark on the MovieLens catalog: the hot-item cache
(similar-item requests drawn by rating counts, with and without the cache) and an open-loop
loopback load test of the HTTP service."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


# ---- hot-item cache ----------------------------------------------------------------------
def bench_cache(V: np.ndarray, movie_ids: np.ndarray, *, n_requests: int, workdir: Path) -> dict[str, Any]:
    """Latency of similar-item requests drawn by MovieLens popularity, with and without the cache.

    The four services answer the same stream in interleaved blocks of 200 requests, so load
    from other processes on the machine falls on all of them alike."""
    import pandas as pd

    from mmcompress.index import CascadeConfig, CascadeIndex
    from mmcompress.serve import CallableSource, ServiceSettings, SimilarItemsService

    ratings = pd.read_csv(ROOT / "data" / "raw" / "movielens" / "ratings.csv", usecols=["movieId"])
    counts = ratings["movieId"].value_counts().reindex(movie_ids, fill_value=0).to_numpy().astype(float)
    coarse = "BIN128" if V.shape[1] >= 128 else "BIN128_rr"  # ITQ gives at most d bits
    config = CascadeConfig.from_params({"coarse": {"codec": coarse, "shortlist": 600},
                                        "fine": {"codec": "coarse", "shortlist": 100}})
    index = CascadeIndex.from_config(config, V, movie_ids, exact_vectors_path=workdir / "ml_exact.npy",
                                     popularity=counts)
    index.save(workdir / "movielens_index")
    p = counts / counts.sum()
    stream = np.random.default_rng(7).choice(movie_ids, size=n_requests, p=p)
    variants = [("no cache", "lru", 0, 0), ("LRU", "lru", config.cache_bytes, 0),
                ("W-TinyLFU", "tinylfu", config.cache_bytes, 0),
                ("W-TinyLFU warmed", "tinylfu", config.cache_bytes, 500)]
    services, lat, hits = {}, {}, {}
    for name, policy, nbytes, warm in variants:
        loaded = CascadeIndex.load(workdir / "movielens_index")
        service = SimilarItemsService(CallableSource(lambda loaded=loaded: loaded),
                                      ServiceSettings(cache_policy=policy, cache_bytes=nbytes,
                                                      reload_interval_s=None, warm_items=warm))
        service.reload(force=True)
        services[name], lat[name], hits[name] = service, [], 0
    for start in range(0, n_requests, 200):
        block = stream[start:start + 200]
        for name in np.roll([v[0] for v in variants], start // 200):
            service = services[name]
            for item in block:
                t = time.perf_counter()
                hits[name] += service.similar(int(item), 10)["cached"]
                lat[name].append((time.perf_counter() - t) * 1e3)
    out: dict[str, Any] = {"n_items": len(movie_ids), "n_requests": n_requests, "cache_bytes": config.cache_bytes,
                           "stream": "movieIds drawn in proportion to their MovieLens rating counts"}
    for name, *_ in variants:
        s = services[name].current.cache.stats()
        out[name] = {"p50_ms": float(np.percentile(lat[name], 50)), "p99_ms": float(np.percentile(lat[name], 99)),
                     "mean_ms": float(np.mean(lat[name])), "hit_rate": hits[name] / n_requests,
                     "evictions": s.evictions, "cache_bytes": s.bytes, "cache_items": s.items}
        print(f"  cache {name:<18} p50 {out[name]['p50_ms']:.3f} ms  mean {out[name]['mean_ms']:.3f} ms  "
              f"request hit rate {out[name]['hit_rate']:.3f}", flush=True)
    return out


# ---- loopback load test ------------------------------------------------------------------
def bench_load(index_dir: Path, movie_ids: np.ndarray, V: np.ndarray, *, rate: float, seconds: float) -> dict[str, Any]:
    """Open-loop requests at ``rate``/s for ``seconds`` against uvicorn in a subprocess."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = ("from mmcompress.serve import run_server; "
            f"run_server(port={port}, model={str(index_dir)!r}, log_level='warning')")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise RuntimeError("service did not become healthy")
        return asyncio.run(_drive(port, movie_ids, V, rate, seconds))
    finally:
        server.terminate()
        server.wait(timeout=30)


async def _drive(port: int, movie_ids: np.ndarray, V: np.ndarray, rate: float, seconds: float) -> dict[str, Any]:
    import httpx
    import pandas as pd

    n = int(rate * seconds)
    ratings = pd.read_csv(ROOT / "data" / "raw" / "movielens" / "ratings.csv", usecols=["movieId"])
    counts = ratings["movieId"].value_counts().reindex(movie_ids, fill_value=0).to_numpy().astype(float)
    rng = np.random.default_rng(11)
    items = rng.choice(movie_ids, size=n, p=counts / counts.sum())
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    sem = asyncio.Semaphore(64)
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10, limits=limits) as client:
        async def one(i: int) -> None:
            async with sem:
                t = time.perf_counter()
                try:
                    if i % 5 == 4:
                        r = await client.post("/search", json={"vector": V[i % len(V)].tolist(), "k": 10})
                    else:
                        r = await client.get(f"/items/{int(items[i])}/similar", params={"k": 10})
                    key = str(r.status_code)
                except httpx.HTTPError as e:
                    key = type(e).__name__
                latencies.append((time.perf_counter() - t) * 1e3)
                statuses[key] = statuses.get(key, 0) + 1

        start = time.perf_counter()
        tasks = []
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
        metrics = (await client.get("/metrics")).text
    errors = sum(v for k, v in statuses.items() if k != "200")
    hit = next((float(line.split()[-1]) for line in metrics.splitlines()
                if line.startswith("mmcompress_cache_hit_rate")), float("nan"))
    return {"target_rate": rate, "seconds": seconds, "requests": n, "achieved_rate": n / elapsed,
            "statuses": statuses, "errors": errors, "p50_ms": float(np.percentile(latencies, 50)),
            "p99_ms": float(np.percentile(latencies, 99)), "max_ms": float(np.max(latencies)),
            "server_cache_hit_rate": hit, "mix": "80% GET /items/{id}/similar (movieIds by rating count), 20% POST /search"}
