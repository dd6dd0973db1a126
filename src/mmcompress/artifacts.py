"""Atomic, checksummed artifact writing: data only (arrays + JSON), never pickles.

Every writer goes to a temporary sibling and renames, so a crash or a failed stage never
leaves a half-written file where the last good one was.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mmcompress.errors import ArtifactError


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; swap it into place only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n").encode())


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def save_arrays(path: str | os.PathLike, meta: dict[str, Any], arrays: dict[str, np.ndarray],
                *, kind: str, format_version: int) -> None:
    """Write ``arrays`` as an uncompressed .npz plus a JSON header with a checksum.

    Layout: ``<path>`` is a JSON file; ``<path>.npz`` holds the arrays. The JSON records
    ``kind``, ``format_version`` and the SHA-256 of the .npz, checked on load.
    """
    path = Path(path)
    buf = io.BytesIO()
    np.savez(buf, **{k: np.ascontiguousarray(v) for k, v in arrays.items()})
    blob = buf.getvalue()
    header = {"kind": kind, "format_version": format_version, "arrays_sha256": sha256_bytes(blob),
              "meta": meta}
    write_bytes_atomic(path.with_name(path.name + ".npz"), blob)
    write_json_atomic(path, header)


def load_arrays(path: str | os.PathLike, *, kind: str,
                supported_versions: tuple[int, ...]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read what :func:`save_arrays` wrote; refuse wrong kind, version or checksum."""
    path = Path(path)
    npz_path = path.with_name(path.name + ".npz")
    try:
        header = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise ArtifactError(f"artifact not found: {path}") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"artifact header is not valid JSON: {path}: {e}") from e
    if not isinstance(header, dict) or header.get("kind") != kind:
        raise ArtifactError(f"{path}: expected artifact kind {kind!r}, found {header.get('kind') if isinstance(header, dict) else type(header).__name__!r}")
    if header.get("format_version") not in supported_versions:
        raise ArtifactError(f"{path}: unsupported format_version {header.get('format_version')!r}; expected one of {supported_versions}")
    try:
        blob = npz_path.read_bytes()
    except FileNotFoundError as e:
        raise ArtifactError(f"artifact arrays missing: {npz_path}") from e
    if sha256_bytes(blob) != header.get("arrays_sha256"):
        raise ArtifactError(f"{npz_path}: checksum mismatch (file truncated or tampered with)")
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return header["meta"], arrays
