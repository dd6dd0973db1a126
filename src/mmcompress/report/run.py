"""Reading one pipeline run's outputs under a project root, for the report.

The report reads what the stages wrote (paths relative to the root, the layout the pipeline
uses) and nothing else: every number it shows comes from these files or is recomputed from
the run's own vectors, codecs and codes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmcompress.errors import ArtifactError

TRAIN_REPORT = "reports/train.json"
COMPRESS_REPORT = "reports/compress.json"
EVALUATE_REPORT = "reports/evaluate.json"
PROMOTE_REPORT = "reports/promote.json"
DRIFT_REPORT = "reports/drift/drift.json"
INDEX_METRICS = "metrics/index.json"
CATALOG_DIR = "data/catalog"
FUSED_DIR = "artifacts/fused"
CODECS_DIR = "artifacts/codecs"
CODES_DIR = "artifacts/codes"


@dataclass
class RunRecord:
    """The JSON reports of one run; ``None`` where a stage did not run (optional stages)."""

    root: Path
    train: dict[str, Any]
    evaluate: dict[str, Any]
    compress: dict[str, Any]
    index: dict[str, Any] | None
    promote: dict[str, Any] | None
    drift: dict[str, Any] | None

    @property
    def challenger(self) -> str:
        return str(self.evaluate.get("challenger") or self.train["challenger"])

    @property
    def codec_names(self) -> list[str]:
        """Codecs evaluated in this run, smallest code first."""
        codecs = self.evaluate["codecs"]
        return sorted(codecs, key=lambda n: (codecs[n].get("bytes_per_item", 0.0), n))

    def resolved_spec(self, name: str) -> str:
        entry = self.train.get("codecs", {}).get(name, {})
        return str(entry.get("resolved_spec") or entry.get("spec")
                   or self.evaluate["codecs"][name].get("spec", name))

    def fused_arrays(self) -> dict[str, np.ndarray]:
        """``vectors``, ``item_ids``, ``base_rows``, ``query_rows`` of the fused space."""
        d = self.root / FUSED_DIR
        out = {}
        for name in ("vectors", "item_ids", "base_rows", "query_rows"):
            path = d / f"{name}.npy"
            try:
                out[name] = np.load(path, allow_pickle=False)
            except FileNotFoundError as e:
                raise ArtifactError(f"fused vectors incomplete: {path} not found") from e
            except ValueError as e:
                raise ArtifactError(f"{path}: not a readable .npy array: {e}") from e
        n = len(out["vectors"])
        if out["vectors"].ndim != 2 or len(out["item_ids"]) != n:
            raise ArtifactError(f"{d}: vectors {out['vectors'].shape} and item_ids "
                                f"{out['item_ids'].shape} do not line up")
        for name in ("base_rows", "query_rows"):
            rows = out[name]
            if rows.ndim != 1 or (len(rows) and (rows.min() < 0 or rows.max() >= n)):
                raise ArtifactError(f"{d / (name + '.npy')}: row ids outside 0..{n - 1}")
        return out

    def codes(self, name: str) -> np.ndarray:
        path = self.root / CODES_DIR / f"{name}.npy"
        try:
            return np.load(path, allow_pickle=False)
        except FileNotFoundError as e:
            raise ArtifactError(f"codes of codec {name!r} not found: {path}") from e

    def codec_path(self, name: str) -> Path:
        return self.root / CODECS_DIR / name / "codec.json"


def read_json(path: Path, *, required: bool) -> dict[str, Any] | None:
    """A JSON object from ``path``; ``None`` when optional and absent; ArtifactError when unreadable."""
    try:
        obj = json.loads(Path(path).read_text())
    except FileNotFoundError as e:
        if not required:
            return None
        raise ArtifactError(f"run report not found: {path} (has its stage run?)") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: not valid JSON: {e}") from e
    if not isinstance(obj, dict):
        raise ArtifactError(f"{path}: expected a JSON object, found {type(obj).__name__}")
    return obj


def load_run(root: str | Path) -> RunRecord:
    """The reports of the run under ``root``; train and evaluate are required, the rest optional."""
    root = Path(root)
    train = read_json(root / TRAIN_REPORT, required=True)
    evaluate = read_json(root / EVALUATE_REPORT, required=True)
    for key in ("codecs", "baseline"):
        if key not in evaluate:
            raise ArtifactError(f"{root / EVALUATE_REPORT}: missing key {key!r}")
    if not evaluate["codecs"]:
        raise ArtifactError(f"{root / EVALUATE_REPORT}: no codecs were evaluated")
    record = RunRecord(
        root=root, train=train, evaluate=evaluate,
        compress=read_json(root / COMPRESS_REPORT, required=False) or {},
        index=read_json(root / INDEX_METRICS, required=False),
        promote=read_json(root / PROMOTE_REPORT, required=False),
        drift=read_json(root / DRIFT_REPORT, required=False),
    )
    if record.challenger not in evaluate["codecs"]:
        raise ArtifactError(f"{root / EVALUATE_REPORT}: challenger {record.challenger!r} is not among "
                            f"the evaluated codecs {sorted(evaluate['codecs'])}")
    return record
