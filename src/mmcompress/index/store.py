"""On-disk layout of a cascade index: plain .npy arrays (memory-mappable), the exact store's
page-aligned row file and a JSON manifest.

    <dir>/manifest.json        kind, format_version, config, codec specs, per-file size + SHA-256
    <dir>/coarse.npy           uint8 (n, coarse_code_size), rows sorted by coarse cell
    <dir>/fine.npy             uint8 (n, fine_code_size)             (when a fine stage exists)
    <dir>/ids.npy              uint8 (n, w): item id - ids_base, little-endian in w bytes
    <dir>/exact.rows           float32 or float16 (index.exact.dtype) (n, d) exact vectors, no row
                               straddling a 4 KiB page
                               (:mod:`.rowstore`; the manifest's ``exact_store`` names file and
                               layout; format 3. Formats 1-2 kept an ``exact.npy``, still read)
    <dir>/id_sorted.npy, id_order.npy   sorted ids and their rows (binary-search lookup)
    <dir>/offsets.npy, masks.npy, centroids.npy   cell bounds, packed modality bits, IVF centroids
    <dir>/coarse_codec.json(.npz), fine_codec.json(.npz)   codecs, saved by ``codec.save``
    <dir>/titles.json          item id -> title                      (optional)
    <dir>/popular.npy          most popular item ids first (cache warming, optional)

This module is the format only: :class:`SavedIndex` is what it writes and reads back, and the
cascade assembles itself from it (no import of the cascade here).

Opening checks every small file's SHA-256 and each large array's size, .npy header and a
digest of its first and last MiB, so a large index opens in milliseconds yet a truncated or
tampered file is refused; ``verify="full"`` hashes everything.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmcompress.artifacts import atomic_dir, recover_replaced_dir, sha256_file, write_json_atomic
from mmcompress.codecs.base import Codec
from mmcompress.errors import ArtifactError, CodecError
from mmcompress.index.config import CascadeConfig
from mmcompress.index.rerankbound import RerankBound
from mmcompress.index.rowstore import (
    PAGED,
    RowLayout,
    RowReader,
    copy_row_file,
    open_row_store,
    write_rows,
)
from mmcompress.index.segments import PackedIds, Segment

FORMAT_VERSION = 4  # 4: the exact stage's rerank bound; 3: exact store in a page-aligned row file;
# 2: item scales; 1 still loads
KIND = "cascade_index"
MANIFEST = "manifest.json"
EXACT_FILE = "exact.rows"
LEGACY_EXACT_FILE = "exact.npy"
SMALL_FILE_BYTES = 16 << 20
SAMPLE_BYTES = 1 << 20
SUPPORTED_VERSIONS = (1, 2, 3, 4)


@dataclass
class SavedIndex:
    """Everything a saved index holds: what the cascade hands to :func:`write_index` and
    assembles itself from after :func:`read_index`. ``main``: the (compacted) segment;
    ``partition``: the IVF partition's ``get_state()``; ``item_scales``: (gamma, lo, hi);
    ``rerank_bound``: the exact stage's two-wave bound (formats before 4 have none)."""

    config: CascadeConfig
    coarse_codec: Codec
    fine_codec: Codec | None
    fine_shares_coarse: bool
    d: int
    modalities: list[str]
    main: Segment
    partition: tuple[dict[str, Any], dict[str, np.ndarray]] | None = None
    titles: dict[int, str] = field(default_factory=dict)
    popular_item_ids: list[int] = field(default_factory=list)
    item_scales: tuple[float, float, float] | None = None
    cell_weight: float | None = None
    rerank_bound: RerankBound | None = None


def sampled_sha256(path: str | os.PathLike, size: int | None = None) -> str:
    """SHA-256 of the file size, its first and its last ``SAMPLE_BYTES`` bytes."""
    size = os.path.getsize(path) if size is None else size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(SAMPLE_BYTES))
        if size > SAMPLE_BYTES:
            f.seek(max(SAMPLE_BYTES, size - SAMPLE_BYTES))
            h.update(f.read(SAMPLE_BYTES))
    return h.hexdigest()


def manifest_digest(directory: str | os.PathLike) -> str:
    """SHA-256 of a saved index's manifest: changes whenever any file of the index changes."""
    return sha256_file(Path(directory) / MANIFEST)


def write_index(saved: SavedIndex, directory: str | Path) -> Path:
    """Write ``saved`` into ``directory`` atomically (a temporary sibling swapped into place)."""
    directory = Path(directory)
    main = saved.main
    with atomic_dir(directory) as tmp:
        ids = main.ids if isinstance(main.ids, PackedIds) else PackedIds.pack(np.asarray(main.ids))
        arrays: dict[str, np.ndarray] = {"coarse": main.coarse, "ids": ids.data,
                                         "offsets": main.offsets, "masks": main.masks}
        if main.fine is not None:
            arrays["fine"] = main.fine
        if main.scales is not None:
            arrays["scales"] = main.scales
        srt, order = main.lookup()
        arrays["id_sorted"], arrays["id_order"] = np.asarray(srt), np.asarray(order)
        if saved.partition is not None:
            arrays["centroids"] = saved.partition[1]["centroids"]
        for name, arr in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(arr), allow_pickle=False)
        exact_store = (None if main.exact is None else
                       _write_exact(main.exact, main.n, tmp / EXACT_FILE, saved.config.exact.dtype))
        saved.coarse_codec.save(tmp / "coarse_codec.json")
        if saved.fine_codec is not None and not saved.fine_shares_coarse:
            saved.fine_codec.save(tmp / "fine_codec.json")
        if saved.titles:
            write_json_atomic(tmp / "titles.json", {str(k): v for k, v in sorted(saved.titles.items())})
        if saved.popular_item_ids:
            arrays["popular"] = np.asarray(saved.popular_item_ids, dtype=np.int64)
            np.save(tmp / "popular.npy", arrays["popular"], allow_pickle=False)
        files = {}
        for f in sorted(tmp.iterdir()):
            if f.is_file() and f.name != MANIFEST:
                size = f.stat().st_size
                files[f.name] = {"bytes": size, "sha256": sha256_file(f), "sample_sha256": sampled_sha256(f, size)}
        scales = saved.item_scales
        manifest = {
            "kind": KIND, "format_version": FORMAT_VERSION, "created_unix": time.time(),
            "n_items": main.n, "d": saved.d, "metric": saved.config.metric, "ids_base": ids.base,
            "config": saved.config.to_dict(), "modalities": list(saved.modalities),
            "coarse_codec": {"spec": saved.coarse_codec.spec, "file": "coarse_codec.json"},
            "fine_codec": None if saved.fine_codec is None else
            {"spec": saved.fine_codec.spec, "shared_with_coarse": True} if saved.fine_shares_coarse else
            {"spec": saved.fine_codec.spec, "file": "fine_codec.json"},
            "partition": None if saved.partition is None else saved.partition[0],
            "item_scales": None if scales is None else {"gamma": scales[0], "lo": scales[1], "hi": scales[2]},
            "cell_weight": saved.cell_weight,
            "rerank_bound": None if saved.rerank_bound is None else saved.rerank_bound.to_dict(),
            "exact": main.exact is not None,
            "exact_store": exact_store,
            "arrays": {name: {"shape": list(np.shape(a)), "dtype": str(np.asarray(a).dtype)}
                       for name, a in arrays.items()},
            "files": files,
        }
        if main.exact is not None:
            manifest["arrays"]["exact"] = {"shape": [main.n, saved.d], "dtype": exact_store["layout"]["dtype"]}
        write_json_atomic(tmp / MANIFEST, manifest)
    return directory


def _write_exact(reader: RowReader, n: int, path: Path, dtype: str) -> dict[str, Any]:
    """The exact store as a row file of ``dtype`` values at ``path``: the reader's own file
    copied when it already is one holding exactly these rows in that dtype, else written row
    by row. Returns its manifest entry."""
    src = getattr(reader, "path", None)
    layout = getattr(reader, "layout", None)
    if (src is not None and layout is not None and layout.format == PAGED and layout.n == n
            and layout.dtype == dtype and src.exists()):
        copy_row_file(src, path)
    else:
        layout = write_rows(path, reader, dtype=dtype)
    return {"file": path.name, "layout": layout.to_dict()}


def read_manifest(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise ArtifactError(f"not a saved index (no {MANIFEST}): {directory}") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: not valid JSON: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        raise ArtifactError(f"{path}: expected kind {KIND!r}, found "
                            f"{manifest.get('kind') if isinstance(manifest, dict) else type(manifest).__name__!r}")
    if manifest.get("format_version") not in SUPPORTED_VERSIONS:
        raise ArtifactError(f"{path}: unsupported format_version {manifest.get('format_version')!r}; "
                            f"expected one of {SUPPORTED_VERSIONS}")
    return manifest


def verify_files(directory: str | Path, manifest: dict[str, Any], *, full: bool = False) -> None:
    """Refuse missing, extra-sized, truncated or tampered files listed in the manifest."""
    directory = Path(directory)
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ArtifactError(f"{directory / MANIFEST}: no file list")
    for name, meta in files.items():
        path = directory / name
        if not path.is_file():
            raise ArtifactError(f"{path}: listed in the manifest but missing")
        size = path.stat().st_size
        if size != meta["bytes"]:
            raise ArtifactError(f"{path}: size {size} bytes, manifest says {meta['bytes']} (truncated or replaced)")
        if full or size <= SMALL_FILE_BYTES:
            if sha256_file(path) != meta["sha256"]:
                raise ArtifactError(f"{path}: SHA-256 mismatch (file tampered with)")
        elif sampled_sha256(path, size) != meta["sample_sha256"]:
            raise ArtifactError(f"{path}: sampled digest mismatch (file tampered with)")


def read_index(directory: str | Path, *, mmap: bool = True, verify: str = "quick",
               exact_reader: str | None = None, exact_pool_bytes: int | None = None,
               reads_in_flight: int | None = None) -> SavedIndex:
    """Read and check a saved index. Code arrays are memory-mapped when ``mmap``; the exact
    store is opened as the saved config's ``exact`` section says, unless ``exact_reader``,
    ``exact_pool_bytes`` or ``reads_in_flight`` override it (they are kept in the config)."""
    from mmcompress.codecs import load_codec

    if verify not in ("quick", "full"):
        raise ValueError(f"verify must be 'quick' or 'full'; found {verify!r}")
    directory = Path(directory)
    recover_replaced_dir(directory)  # a replace a crash interrupted: the old copy goes back
    manifest = read_manifest(directory)
    verify_files(directory, manifest, full=verify == "full")

    def arr(name: str, required: bool = True) -> np.ndarray | None:
        path = directory / f"{name}.npy"
        if not path.exists():
            if required:
                raise ArtifactError(f"{path}: missing")
            return None
        try:
            a = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise ArtifactError(f"{path}: unreadable .npy: {e}") from e
        want = manifest["arrays"].get(name)
        if want is None or list(a.shape) != want["shape"] or str(a.dtype) != want["dtype"]:
            raise ArtifactError(f"{path}: array {a.dtype} {list(a.shape)} differs from the manifest {want}")
        return a

    try:
        config = CascadeConfig(**{k: v for k, v in manifest["config"].items()})
        for key, value in (("reader", exact_reader), ("pool_bytes", exact_pool_bytes),
                           ("reads_in_flight", reads_in_flight)):
            if value is not None:
                setattr(config.exact, key, value)
        config.validate()
        coarse_codec = load_codec(directory / manifest["coarse_codec"]["file"])
        fine = manifest.get("fine_codec")
        shares = bool(fine and fine.get("shared_with_coarse"))
        part = manifest.get("partition")
        popular = arr("popular", required=False)
        titles_path = directory / "titles.json"
        scales = manifest.get("item_scales")
        weight = manifest.get("cell_weight")
        bound = manifest.get("rerank_bound")
        saved = SavedIndex(
            config=config, coarse_codec=coarse_codec,
            fine_codec=(None if fine is None else coarse_codec if shares else load_codec(directory / fine["file"])),
            fine_shares_coarse=shares, d=int(manifest["d"]), modalities=list(manifest["modalities"]),
            main=Segment(coarse=arr("coarse"), fine=arr("fine", required=fine is not None and not shares),
                         ids=PackedIds(arr("ids"), int(manifest["ids_base"])),
                         exact=_open_exact(directory, manifest, config, in_memory=not mmap),
                         masks=np.array(arr("masks")), offsets=np.array(arr("offsets")),
                         id_sorted=arr("id_sorted"), id_order=arr("id_order"),
                         scales=arr("scales", required=scales is not None)),
            partition=None if part is None else (part, {"centroids": arr("centroids")}),
            titles=({int(k): v for k, v in json.loads(titles_path.read_text()).items()}
                    if titles_path.exists() else {}),
            popular_item_ids=[] if popular is None else [int(i) for i in popular],
            item_scales=None if scales is None else (float(scales["gamma"]), float(scales["lo"]), float(scales["hi"])),
            cell_weight=None if weight is None else float(weight),
            rerank_bound=None if bound is None else _rerank_bound(bound, directory))
    except (KeyError, TypeError) as e:
        raise ArtifactError(f"{directory / MANIFEST}: malformed manifest ({e!r})") from e
    n, main = int(manifest["n_items"]), saved.main
    if not (main.coarse.shape[0] == len(main.ids) == n and int(main.offsets[-1]) == n
            and (main.exact is None or main.exact.n == n)):
        raise ArtifactError(f"{directory}: arrays disagree on the number of items (manifest {n})")
    return saved


def _rerank_bound(entry: Any, directory: Path) -> RerankBound:
    try:
        return RerankBound.from_dict(entry)
    except (CodecError, ValueError) as e:
        raise ArtifactError(f"{directory / MANIFEST}: rerank_bound: {e}") from e


def _open_exact(directory: Path, manifest: dict[str, Any], config: CascadeConfig, *,
                in_memory: bool) -> RowReader | None:
    """The exact store with the configured reader: the row file the manifest names (format 3),
    or the ``exact.npy`` of formats 1-2, read through the same readers."""
    if not manifest["exact"]:
        return None
    entry = manifest.get("exact_store")
    if entry is not None:
        path, layout = directory / entry["file"], RowLayout.from_dict(entry["layout"])
    else:
        path, layout = directory / LEGACY_EXACT_FILE, None
        if not path.exists():
            raise ArtifactError(f"{path}: missing")
    reader = open_row_store(path, reader=config.exact.reader, pool_bytes=config.exact.pool_bytes,
                            reads_in_flight=config.exact.reads_in_flight, in_memory=in_memory, layout=layout)
    want = manifest["arrays"].get("exact")
    dtype = reader.layout.dtype
    if want is not None and (want["shape"] != [reader.n, reader.d] or want["dtype"] != dtype):
        raise ArtifactError(f"{path}: store {dtype} {[reader.n, reader.d]} differs from the manifest {want}")
    return reader
