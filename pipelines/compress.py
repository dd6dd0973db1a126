"""Stage ``compress``: encode every item with every fitted codec, in resumable shards, then pack.

Shards are written atomically under ``artifacts/.compress_work/<key>/`` where the key hashes
the codec file and the vectors, so a run killed mid-way resumes with the shards it finished and
produces exactly the codes an uninterrupted run would. Airflow maps ``compress_shard`` over
shards on separate workers and calls ``merge_shards``; DVC calls ``compress``, which does both.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mmcompress.artifacts import (
    atomic_dir,
    atomic_path,
    sha256_bytes,
    sha256_file,
    write_json_atomic,
)
from mmcompress.errors import ConfigError
from pipelines.config import Layout
from pipelines.stage_runner import main


def _work_dir(L: Layout) -> Path:
    return L.root / "artifacts" / ".compress_work"


def _shard_key(codec_dir: Path, vectors_path: Path, n_shards: int) -> str:
    h = sha256_bytes((sha256_file(codec_dir / "codec.json") + sha256_file(vectors_path)
                      + str(n_shards)).encode())
    return h[:16]


def shard_bounds(n: int, shard: int, n_shards: int) -> tuple[int, int]:
    if not 0 <= shard < n_shards:
        raise ConfigError(f"shard {shard} out of range for n_shards={n_shards}")
    edges = np.linspace(0, n, n_shards + 1).astype(int)
    return int(edges[shard]), int(edges[shard + 1])


def compress_shard(params: dict, root: Path, shard: int, n_shards: int) -> str:
    """Encode rows of shard ``shard`` of ``n_shards`` with every codec; return the work dir."""
    from mmcompress.codecs import load_codec

    L = Layout(Path(root))
    vectors_path = L.fused_dir / "vectors.npy"
    X = np.load(vectors_path, mmap_mode="r")
    lo, hi = shard_bounds(len(X), shard, n_shards)
    chunk = int(params["compress"].get("chunk_rows", 4096))
    for codec_dir in sorted(p for p in L.codecs_dir.iterdir() if p.is_dir()):
        out = _work_dir(L) / codec_dir.name / _shard_key(codec_dir, vectors_path, n_shards) / f"shard-{shard:05d}.npy"
        if out.exists():
            continue
        codec = load_codec(codec_dir / "codec.json")
        parts = [codec.encode(np.asarray(X[i:min(i + chunk, hi)]))
                 for i in range(lo, hi, chunk)]
        codes = np.concatenate(parts) if parts else np.zeros((0, codec.code_size), np.uint8)
        with atomic_path(out) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, codes)
    return str(_work_dir(L))


def merge_shards(params: dict, root: Path, n_shards: int) -> dict:
    """Concatenate finished shards into ``artifacts/codes/<codec>.npy`` and entropy-pack them."""
    from mmcompress.codecs import load_codec
    from mmcompress.codecs.entropy import pack, unpack

    L = Layout(Path(root))
    vectors_path = L.fused_dir / "vectors.npy"
    n = len(np.load(vectors_path, mmap_mode="r"))
    method = params["compress"].get("entropy_coder", "rans")
    report: dict[str, dict] = {}
    codec_dirs = sorted(p for p in L.codecs_dir.iterdir() if p.is_dir())
    with atomic_dir(L.codes_dir) as tmp:
        for codec_dir in codec_dirs:
            key_dir = _work_dir(L) / codec_dir.name / _shard_key(codec_dir, vectors_path, n_shards)
            files = [key_dir / f"shard-{s:05d}.npy" for s in range(n_shards)]
            missing = [f.name for f in files if not f.exists()]
            if missing:
                raise RuntimeError(f"codec {codec_dir.name}: shards not encoded yet: {missing}")
            codes = np.concatenate([np.load(f) for f in files])
            if len(codes) != n:
                raise RuntimeError(f"codec {codec_dir.name}: merged {len(codes)} rows, expected {n}")
            np.save(tmp / f"{codec_dir.name}.npy", codes)
            t0 = time.perf_counter()
            field_bits = getattr(load_codec(codec_dir / "codec.json"), "field_bits", None)
            blob = pack(codes, method=method, field_bits=field_bits)
            pack_s = time.perf_counter() - t0
            if not np.array_equal(unpack(blob), codes):
                raise RuntimeError(f"codec {codec_dir.name}: entropy coding round trip differs")
            (tmp / f"{codec_dir.name}.packed").write_bytes(blob)
            report[codec_dir.name] = {
                "code_bytes": int(codes.nbytes), "stored_bytes": len(blob),
                "stored_bytes_per_item": len(blob) / max(n, 1),
                "entropy_saving": 1.0 - len(blob) / max(codes.nbytes, 1),
                "pack_seconds": round(pack_s, 3),
            }
    shutil.rmtree(_work_dir(L), ignore_errors=True)
    write_json_atomic(L.reports_dir / "compress.json", report)
    write_json_atomic(L.metrics_dir / "compress.json",
                      {f"{k}.{m}": v[m] for k, v in report.items()
                       for m in ("stored_bytes_per_item", "entropy_saving")})
    return report


def compress(params: dict, root: Path) -> dict:
    """Encode all items with every codec (resumable shards), then merge and entropy-pack."""
    root = Path(root)
    n_shards = int(params["compress"].get("n_shards", 8))
    t0 = time.perf_counter()
    for s in tqdm(range(n_shards), desc="encode shards"):
        compress_shard(params, root, s, n_shards)
    encode_s = time.perf_counter() - t0
    report = merge_shards(params, root, n_shards)
    return {"encode_seconds": round(encode_s, 2), "codecs": report}


if __name__ == "__main__":
    raise SystemExit(main(compress))
