"""Loading ``params.yaml`` and the fixed layout of stage outputs under a project root."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mmcompress.errors import ConfigError
from pipelines.schema import validate_params


def load_params(path: str | Path = "params.yaml", overrides: dict[str, Any] | None = None) -> dict:
    """Read the params file, apply dotted-key overrides such as ``{"compress.budget_bytes": 32}``
    and validate the result against the schema (:mod:`pipelines.schema`): an unknown key, a
    wrong type or an out-of-range value raises :class:`ConfigError` naming it."""
    path = Path(path)
    try:
        params = yaml.safe_load(path.read_text())
    except FileNotFoundError as e:
        raise FileNotFoundError(f"params file not found: {path}") from e
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, found {type(params).__name__}")
    source = f"{path}" + (f" with overrides {sorted(overrides)}" if overrides else "")
    return validate_params(apply_overrides(params, overrides or {}), source)


def apply_overrides(params: dict, overrides: dict[str, Any]) -> dict:
    """``params`` with dotted keys set; a key whose section or name params does not have is
    refused (a misspelt override must not be ignored), as is a value the schema refuses."""
    params = copy.deepcopy(params)
    for dotted, value in overrides.items():
        keys = dotted.split(".")
        node = params
        for depth, key in enumerate(keys[:-1]):
            if not isinstance(node.get(key), dict):
                where = ".".join(keys[:depth]) or "params"
                raise ConfigError(f"override {dotted!r}: {key!r} is not a section of {where}"
                                  f" (sections: {', '.join(sorted(k for k, v in node.items() if isinstance(v, dict)))})")
            node = node[key]
        node[keys[-1]] = value
    return validate_params(params, f"overrides {sorted(overrides)}") if overrides else params


def require_gate_reason(overrides: dict[str, Any]) -> None:
    """Refuse a trigger's overrides that change the promotion gate (``promote.*``) without a
    non-empty ``promote.override_reason``: loosening the gate must be said, and it is recorded
    on the MLflow run, the registry version and the report."""
    changed = sorted(k for k in overrides if k.startswith("promote.") and k != "promote.override_reason")
    if changed and not str(overrides.get("promote.override_reason") or "").strip():
        raise ConfigError(f"overrides {changed} change the promotion gate: give an override reason "
                          "(form field 'override_reason'); it is recorded on the MLflow run, the "
                          "registry version and the report")


# params keys that name a place on the worker (resolved against the project root)
PATH_KEYS = ("catalog.path", "catalog.raw_dir", "catalog.out_dir", "drift.batch_dir", "validate.out_dir",
             "encoders.text.cache_dir", "tracking.artifact_location")


def confine_paths(root: str, params: dict, allowed_roots: list[str]) -> None:
    """Refuse a trigger whose project root, or any path in its params, lies outside the
    configured roots (``[mmcompress] allowed_roots``): a form must not point a worker at files
    it was not meant to read or write. Local paths are compared after resolving ``..`` and
    symlinks; object-storage roots by URL prefix."""
    def inside(place: str) -> bool:
        if "://" in place:
            return any(place.rstrip("/") == a.rstrip("/") or place.startswith(a.rstrip("/") + "/")
                       for a in allowed_roots if "://" in a)
        p = Path(place).resolve()
        return any(p.is_relative_to(Path(a).resolve()) for a in allowed_roots if "://" not in a)

    allowed = ", ".join(allowed_roots)
    if not inside(root):
        raise ConfigError(f"project_root {root!r} is outside the allowed roots ({allowed}); "
                          "set [mmcompress] allowed_roots to add one")
    for dotted in PATH_KEYS:
        node: Any = params
        for key in dotted.split("."):
            node = node.get(key) if isinstance(node, dict) else None
        if not node or "://" in str(root) and "://" not in str(node):
            continue
        place = str(node) if "://" in str(node) or Path(str(node)).is_absolute() else str(Path(root) / str(node))
        if not inside(place):
            raise ConfigError(f"{dotted} {node!r} resolves to {place!r}, outside the allowed roots ({allowed})")


def codec_slug(spec: str) -> str:
    """A file-system name for a codec spec: ``"OPQ16,PQ16x8"`` → ``"OPQ16_PQ16x8"``."""
    return re.sub(r"[^A-Za-z0-9x]+", "_", spec).strip("_")


@dataclass(frozen=True)
class Layout:
    """Where each stage reads and writes, relative to the project root."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).resolve())

    @property
    def catalog_dir(self) -> Path:
        return self.root / "data" / "catalog"

    @property
    def fusion_dir(self) -> Path:
        return self.root / "artifacts" / "fusion"

    @property
    def fused_dir(self) -> Path:
        return self.root / "artifacts" / "fused"

    @property
    def codecs_dir(self) -> Path:
        return self.root / "artifacts" / "codecs"

    @property
    def codes_dir(self) -> Path:
        return self.root / "artifacts" / "codes"

    @property
    def index_dir(self) -> Path:
        return self.root / "artifacts" / "index"

    @property
    def metrics_dir(self) -> Path:
        return self.root / "metrics"

    @property
    def plots_dir(self) -> Path:
        return self.root / "plots"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    def resolve(self, path: str | Path) -> Path:
        path = Path(path)
        return path if path.is_absolute() else self.root / path
