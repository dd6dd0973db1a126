"""On-disk layout of a cascade index: plain .npy arrays (memory-mappable) + a JSON manifest.

    <dir>/manifest.json        kind, format_version, config, codec specs, per-file size + SHA-256
    <dir>/coarse.npy           uint8 (n, coarse_code_size), rows sorted by coarse cell
    <dir>/fine.npy             uint8 (n, fine_code_size)             (when a fine stage exists)
    <dir>/ids.npy              uint8 (n, w): item id - ids_base, little-endian in w bytes
    <dir>/exact.npy            float32 (n, d) exact vectors          (when exact rerank is on)
    <dir>/id_sorted.npy, id_order.npy   sorted ids and their rows (binary-search lookup)
    <dir>/offsets.npy, masks.npy, centroids.npy   cell bounds, packed modality bits, IVF centroids
    <dir>/coarse_codec.json(.npz), fine_codec.json(.npz)   codecs, saved by ``codec.save``
    <dir>/titles.json          item id -> title                      (optional)
    <dir>/popular.npy          most popular item ids first (cache warming, optional)

Opening checks every small file's SHA-256 and each large array's size, .npy header and a
digest of its first and last MiB, so a large index opens in milliseconds yet a truncated or
tampered file is refused; ``verify="full"`` hashes everything.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmcompress.artifacts import atomic_dir, sha256_file, write_json_atomic
from mmcompress.errors import ArtifactError
from mmcompress.index.config import CascadeConfig

if TYPE_CHECKING:
    from mmcompress.index.cascade import CascadeIndex

MANIFEST = "manifest.json"
SMALL_FILE_BYTES = 16 << 20
SAMPLE_BYTES = 1 << 20
SUPPORTED_VERSIONS = (1, 2)


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


def save_index(index: CascadeIndex, directory: str | Path, *, progress: bool = False) -> Path:
    from mmcompress.index.cascade import FORMAT_VERSION, KIND, PackedIds, _write_npy_rows

    directory = Path(directory)
    st = index._state
    main = index._compacted(st)
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
        if index.partition is not None:
            arrays["centroids"] = index.partition.centroids_
        for name, arr in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(arr), allow_pickle=False)
        if main.exact is not None:
            src = getattr(main.exact, "filename", None)
            if (src is not None and isinstance(main.exact, np.memmap) and main.exact.offset == _npy_offset(src)
                    and main.exact.shape[0] == np.load(src, mmap_mode="r").shape[0]):
                shutil.copyfile(src, tmp / "exact.npy")
            else:
                _write_npy_rows(tmp / "exact.npy", main.exact, np.arange(main.n))
        index.coarse_codec.save(tmp / "coarse_codec.json")
        if index.fine_codec is not None and not index.fine_shares_coarse:
            index.fine_codec.save(tmp / "fine_codec.json")
        if index.titles:
            write_json_atomic(tmp / "titles.json", {str(k): v for k, v in sorted(index.titles.items())})
        if index.popular_item_ids:
            arrays["popular"] = np.asarray(index.popular_item_ids, dtype=np.int64)
            np.save(tmp / "popular.npy", arrays["popular"], allow_pickle=False)
        files = {}
        for f in sorted(tmp.iterdir()):
            if f.is_file() and f.name != MANIFEST:
                size = f.stat().st_size
                files[f.name] = {"bytes": size, "sha256": sha256_file(f), "sample_sha256": sampled_sha256(f, size)}
        manifest = {
            "kind": KIND, "format_version": FORMAT_VERSION, "created_unix": time.time(),
            "n_items": main.n, "d": index.d_, "metric": index.config.metric, "ids_base": ids.base,
            "config": index.config.to_dict(), "modalities": list(index.modalities),
            "coarse_codec": {"spec": index.coarse_codec.spec, "file": "coarse_codec.json"},
            "fine_codec": None if index.fine_codec is None else
            {"spec": index.fine_codec.spec, "shared_with_coarse": True} if index.fine_shares_coarse else
            {"spec": index.fine_codec.spec, "file": "fine_codec.json"},
            "partition": None if index.partition is None else index.partition.get_state()[0],
            "item_scales": None if main.scales is None else
            {"gamma": index.scale_gamma_, "lo": index.scale_range_[0], "hi": index.scale_range_[1]},
            "cell_weight": index.cell_weight_,
            "exact": main.exact is not None,
            "arrays": {name: {"shape": list(np.shape(a)), "dtype": str(np.asarray(a).dtype)}
                       for name, a in list(arrays.items()) + ([("exact", main.exact)] if main.exact is not None else [])},
            "files": files,
        }
        write_json_atomic(tmp / MANIFEST, manifest)
    return directory


def _npy_offset(path: str | os.PathLike) -> int:
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            np.lib.format.read_array_header_1_0(f)
        else:
            np.lib.format.read_array_header_2_0(f)
        return f.tell()


def read_manifest(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise ArtifactError(f"not a saved index (no {MANIFEST}): {directory}") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: not valid JSON: {e}") from e
    from mmcompress.index.cascade import KIND

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


def load_index(directory: str | Path, *, mmap: bool = True, verify: str = "quick") -> CascadeIndex:
    from mmcompress.codecs import load_codec
    from mmcompress.index.cascade import CascadeIndex, PackedIds, _Segment, _State
    from mmcompress.index.partition import CoarsePartition

    if verify not in ("quick", "full"):
        raise ValueError(f"verify must be 'quick' or 'full'; found {verify!r}")
    directory = Path(directory)
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
        index = CascadeIndex(config)
        index.coarse_codec = load_codec(directory / manifest["coarse_codec"]["file"])
        fine = manifest.get("fine_codec")
        index.fine_shares_coarse = bool(fine and fine.get("shared_with_coarse"))
        index.fine_codec = (None if fine is None else index.coarse_codec if index.fine_shares_coarse
                            else load_codec(directory / fine["file"]))
        index.d_ = int(manifest["d"])
        index.modalities = list(manifest["modalities"])
        part = manifest.get("partition")
        index.partition = None if part is None else CoarsePartition.from_state(
            part, {"centroids": arr("centroids")}, projection=index._routing_projection())
        titles_path = directory / "titles.json"
        index.titles = ({int(k): v for k, v in json.loads(titles_path.read_text()).items()}
                        if titles_path.exists() else {})
        popular = arr("popular", required=False)
        index.popular_item_ids = [] if popular is None else [int(i) for i in popular]
        main = _Segment(coarse=arr("coarse"), fine=arr("fine", required=fine is not None and not index.fine_shares_coarse),
                        ids=PackedIds(arr("ids"), int(manifest["ids_base"])),
                        exact=arr("exact", required=bool(manifest["exact"])),
                        masks=np.array(arr("masks")), offsets=np.array(arr("offsets")),
                        id_sorted=arr("id_sorted"), id_order=arr("id_order"),
                        scales=arr("scales", required=manifest.get("item_scales") is not None))
        weight = manifest.get("cell_weight")
        index.cell_weight_ = None if weight is None else float(weight)
        scales = manifest.get("item_scales")
        if scales is not None:
            index.scale_gamma_ = float(scales["gamma"])
            index.scale_range_ = (float(scales["lo"]), float(scales["hi"]))
    except (KeyError, TypeError) as e:
        raise ArtifactError(f"{directory / MANIFEST}: malformed manifest ({e!r})") from e
    n = int(manifest["n_items"])
    if not (main.coarse.shape[0] == len(main.ids) == n and int(main.offsets[-1]) == n):
        raise ArtifactError(f"{directory}: arrays disagree on the number of items (manifest {n})")
    index._init_runtime(_State(main=main, delta=None, dead=None))
    return index
