"""Training checkpoints as data: a safetensors file of tensors plus a JSON manifest.

Layout of a checkpoint directory::

    checkpoint.json                  manifest: format version, tensors file name, its SHA-256, state
    tensors-<epoch>.safetensors      model, best-model, optimizer moments, RNG state

The manifest is written last and names the tensors file it belongs to, so renaming it into
place is the commit point: a crash mid-write leaves the previous checkpoint readable. Loading
parses safetensors (no code execution, the ``weights_only`` guarantee) after the checksum
matches; anything else is refused with :class:`~mmcompress.errors.ArtifactError`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from mmcompress.artifacts import sha256_bytes, write_bytes_atomic, write_json_atomic
from mmcompress.errors import ArtifactError

CHECKPOINT_KIND = "mmcompress.learned.checkpoint"
CHECKPOINT_VERSION = 1
MANIFEST = "checkpoint.json"


def checkpoint_exists(directory: str | os.PathLike) -> bool:
    return (Path(directory) / MANIFEST).is_file()


def save_checkpoint(directory: str | os.PathLike, tensors: dict[str, torch.Tensor],
                    state: dict[str, Any]) -> Path:
    """Write ``tensors`` and JSON-able ``state``; return the manifest path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    blob = st_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})
    step = int(state.get("epoch", 0))
    name = f"tensors-{step:06d}.safetensors"
    write_bytes_atomic(directory / name, blob)
    manifest = {"kind": CHECKPOINT_KIND, "format_version": CHECKPOINT_VERSION,
                "tensors_file": name, "tensors_sha256": sha256_bytes(blob), "state": state}
    write_json_atomic(directory / MANIFEST, manifest)
    for old in directory.glob("tensors-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)
    return directory / MANIFEST


def load_checkpoint(directory: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read what :func:`save_checkpoint` wrote; refuse a wrong kind, version or checksum."""
    path = Path(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise ArtifactError(f"checkpoint manifest not found: {path}") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"checkpoint manifest is not valid JSON: {path}: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("kind") != CHECKPOINT_KIND:
        raise ArtifactError(f"{path}: not a training checkpoint (kind "
                            f"{manifest.get('kind') if isinstance(manifest, dict) else None!r})")
    if manifest.get("format_version") != CHECKPOINT_VERSION:
        raise ArtifactError(f"{path}: unsupported checkpoint format_version "
                            f"{manifest.get('format_version')!r}; expected {CHECKPOINT_VERSION}")
    name = str(manifest.get("tensors_file", ""))
    if not name or Path(name).name != name:
        raise ArtifactError(f"{path}: invalid tensors_file entry {name!r}")
    tpath = path.parent / name
    try:
        blob = tpath.read_bytes()
    except FileNotFoundError as e:
        raise ArtifactError(f"checkpoint tensors missing: {tpath}") from e
    if sha256_bytes(blob) != manifest.get("tensors_sha256"):
        raise ArtifactError(f"{tpath}: checksum mismatch (file truncated or tampered with)")
    try:
        tensors = st_load(blob)
    except Exception as e:  # safetensors raises its own error types
        raise ArtifactError(f"{tpath}: unreadable safetensors data: {e}") from e
    return tensors, manifest["state"]


def optimizer_to_data(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state dict split into named tensors and JSON-able hyper-parameters."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, pstate in sd["state"].items():
        for key, val in pstate.items():
            if torch.is_tensor(val):
                tensors[f"{idx}.{key}"] = val
            else:
                scalars.setdefault(str(idx), {})[key] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_data(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                        meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, val in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = val
    for idx, kv in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(kv)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
