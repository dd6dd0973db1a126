"""Atomic, durable, checksummed artifact writing: data only (arrays + JSON), never pickles.

Every writer goes to a temporary sibling, fsyncs it, renames it into place and fsyncs the
directory, so a crash or a failed stage never leaves a half-written file where the last good
one was, and a completed write survives a power loss. A directory is replaced by an atomic
exchange (``renameat2(RENAME_EXCHANGE)``) where the kernel and filesystem offer it; elsewhere
by two renames whose interrupted state (``.<name>.old`` present, ``<name>`` missing) is
repaired by :func:`recover_replaced_dir` on the next write or open. A saved codec or fusion
model has one commit point: its JSON header, which names the arrays file it checked.
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


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's or a directory's contents to the device (a no-op where a directory
    cannot be opened for it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if Path(path).is_dir():
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not Path(path).is_dir():
            raise
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file below ``root``, then every directory bottom-up (their entries)."""
    root = Path(root)
    dirs = [root]
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            fsync_path(Path(dirpath) / name)
        dirs += [Path(dirpath) / d for d in dirnames]
    for d in reversed(dirs):
        fsync_path(d)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it, rename it into place and
    fsync the directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        fsync_path(tmp_path)
        os.replace(tmp_path, path)
        fsync_path(path.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (``renameat2(RENAME_EXCHANGE)``); False where the
    platform, libc or filesystem does not offer it. Our own ctypes call: the standard library
    has no wrapper for it."""
    import ctypes
    import errno

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"renameat2({a}, {b}, RENAME_EXCHANGE): {os.strerror(err)}")


def recover_replaced_dir(path: str | os.PathLike) -> bool:
    """Finish or undo a directory replace that a crash interrupted: ``<name>`` missing with
    ``.<name>.old`` present puts the old copy back (True when it did)."""
    path = Path(path)
    old = path.with_name(f".{path.name}.old")
    if not path.exists() and old.is_dir():
        os.replace(old, path)
        fsync_path(path.parent)
        return True
    return False


def replace_dir(new: str | os.PathLike, path: str | os.PathLike) -> None:
    """Put directory ``new`` (fsynced) at ``path``, with no moment at which neither the old
    nor the new copy is at ``path`` where the kernel can exchange them."""
    new, path = Path(new), Path(path)
    recover_replaced_dir(path)
    fsync_tree(new)
    if path.exists() and _exchange(new, path):
        fsync_path(path.parent)
        shutil.rmtree(new, ignore_errors=True)  # now the old copy
        return
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(path, old)  # a crash here is repaired by recover_replaced_dir
    os.replace(new, path)
    fsync_path(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success swap it into place
    (:func:`replace_dir`), else remove it and leave ``path`` as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        replace_dir(tmp, path)
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

    Layout: ``<path>`` is a JSON file recording ``kind``, ``format_version``, the arrays file's
    name and its SHA-256; the arrays are in ``<path>.<sha256[:16]>.npz`` beside it. The arrays
    file is written (and fsynced) first under its own content-addressed name, then the header
    replaces the old one: that rename is the save's one commit point, so a crash leaves the
    previous save or this one, never a header with the other save's arrays. Arrays files of
    earlier saves under the same name are removed after it.
    """
    path = Path(path)
    buf = io.BytesIO()
    np.savez(buf, **{k: np.ascontiguousarray(v) for k, v in arrays.items()})
    blob = buf.getvalue()
    digest = sha256_bytes(blob)
    arrays_name = f"{path.name}.{digest[:16]}.npz"
    header = {"kind": kind, "format_version": format_version, "arrays_sha256": digest,
              "arrays_file": arrays_name, "meta": meta}
    write_bytes_atomic(path.with_name(arrays_name), blob)
    write_json_atomic(path, header)
    for stale in [*path.parent.glob(f"{path.name}.*.npz"), path.with_name(path.name + ".npz")]:
        if stale.name != arrays_name and stale.exists():
            stale.unlink()


def arrays_path(path: str | os.PathLike, header: dict[str, Any]) -> Path:
    """Where the arrays of the header at ``path`` are (``<path>.npz`` for saves before the
    content-addressed name); a name that leaves the header's directory is refused."""
    path = Path(path)
    name = header.get("arrays_file", path.name + ".npz")
    if not isinstance(name, str) or Path(name).name != name or not name.endswith(".npz"):
        raise ArtifactError(f"{path}: arrays_file must be a .npz file name beside it; found {name!r}")
    return path.with_name(name)


def load_arrays(path: str | os.PathLike, *, kind: str,
                supported_versions: tuple[int, ...]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read what :func:`save_arrays` wrote; refuse wrong kind, version or checksum."""
    path = Path(path)
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
    npz_path = arrays_path(path, header)
    try:
        blob = npz_path.read_bytes()
    except FileNotFoundError as e:
        raise ArtifactError(f"artifact arrays missing: {npz_path}") from e
    if sha256_bytes(blob) != header.get("arrays_sha256"):
        raise ArtifactError(f"{npz_path}: checksum mismatch (file truncated or tampered with)")
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return header["meta"], arrays
