"""One joint item vector from many modalities: ``fit_fusion(catalog, config).transform(catalog)``.

Methods:

- ``weighted_concat``: each modality normalised (:class:`ModalityNormalizer`), scaled by
  ``sqrt(weight)`` and concatenated, then L2-normalised. The joint inner product is the
  weight-averaged cosine of the modalities the two items have. Nothing is learned.
- ``contrastive``: per-modality projection heads trained with cross-modal InfoNCE into one
  ``out_dim`` space; the fused vector is the weighted mean of an item's projections.
- ``attention``: a low-dimensional cross-modal attention block over modality tokens.

Masked modalities contribute nothing. Output rows are L2-normalised float32; an item with no
modality at all is a zero row. Saved models are data: arrays (.npz) + a JSON header with a
format version and checksums (:mod:`mmcompress.artifacts`); nothing is unpickled on load.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from mmcompress.artifacts import atomic_dir, load_arrays, save_arrays
from mmcompress.data.catalog import ItemCatalog
from mmcompress.encoders.threads import torch_threads
from mmcompress.errors import ArtifactError, CatalogError
from mmcompress.fusion.normalization import ModalityNormalizer, l2_normalize

METHODS = ("weighted_concat", "contrastive", "attention")
ARTIFACT_KIND = "fusion"
FORMAT_VERSION = 1
HEADER_NAME = "fusion.json"


@dataclass
class FusionConfig:
    """Knobs of fusion (``fusion`` in params.yaml).

    ``weights`` maps modality → weight; a catalog modality not listed gets ``default_weight``,
    weight 0 leaves it out. ``modalities`` restricts which catalog modalities are used.
    ``num_threads`` is the torch thread count while training/transforming (restored after):
    the networks are small, and one thread is fastest and reproducible on a busy machine.
    """

    method: str = "weighted_concat"
    weights: dict[str, float] = field(default_factory=dict)
    out_dim: int = 128
    epochs: int = 30
    temperature: float = 0.07
    seed: int = 0
    modalities: list[str] | None = None
    default_weight: float = 1.0
    center: bool = True
    scale: str = "none"
    hidden_dim: int = 256
    attention_dim: int = 64
    attention_heads: int = 4
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.1
    patience: int = 5
    min_delta: float = 1e-4
    num_threads: int = 1

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"fusion.method must be one of {METHODS}, found {self.method!r}")
        if any(w < 0 for w in self.weights.values()):
            raise ValueError(f"fusion.weights must be >= 0, found {self.weights}")
        if self.out_dim < 1 or self.epochs < 0 or self.temperature <= 0:
            raise ValueError("fusion.out_dim >= 1, epochs >= 0 and temperature > 0 are required")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"fusion.val_fraction must be in [0, 1), found {self.val_fraction}")
        if self.attention_dim % self.attention_heads:
            raise ValueError("fusion.attention_dim must be divisible by attention_heads")
        self.weights = {str(k): float(v) for k, v in self.weights.items()}

    @classmethod
    def from_dict(cls, params: dict[str, Any]) -> FusionConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"FusionConfig: unknown keys {unknown}; known: {sorted(known)}")
        return cls(**params)


def _coerce_config(config: FusionConfig | dict[str, Any] | None) -> FusionConfig:
    if config is None:
        return FusionConfig()
    return config if isinstance(config, FusionConfig) else FusionConfig.from_dict(config)


class FusionModel:
    """A fitted fusion: per-modality normalisers (+ a trained network for learned methods)."""

    def __init__(self, config: FusionConfig, dims: dict[str, int], weights: dict[str, float],
                 normalizers: dict[str, ModalityNormalizer], network: Any = None,
                 history: dict[str, Any] | None = None) -> None:
        self.config = config
        self.dims = dict(dims)
        self.weights = dict(weights)
        self.normalizers = normalizers
        self.network = network
        self.history = history or {}

    @property
    def modalities(self) -> list[str]:
        return list(self.dims)

    @property
    def dim(self) -> int:
        if self.config.method == "weighted_concat":
            return int(sum(self.dims.values()))
        return self.config.out_dim

    def normalized(self, catalog: ItemCatalog) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Per-modality normalised matrices (masked rows zero) and masks, checked against the fit."""
        Z, masks = {}, {}
        for m, d in self.dims.items():
            if m not in catalog.modalities:
                raise CatalogError("modality missing from the catalog", column=m,
                                   expected=self.modalities, found=catalog.modality_names)
            X = catalog.modalities[m]
            if X.shape[1] != d:
                raise CatalogError(f"modality {m!r} dimension differs from the fitted fusion", column=m,
                                   expected=d, found=X.shape[1])
            masks[m] = catalog.masks[m]
            Z[m] = self.normalizers[m].transform(X, masks[m])
        return Z, masks

    def transform(self, catalog: ItemCatalog, *, batch_size: int = 4096) -> np.ndarray:
        """(n, dim) float32 fused vectors, rows L2-normalised (zero for items with no modality)."""
        Z, masks = self.normalized(catalog)
        if self.config.method == "weighted_concat":
            blocks = [np.sqrt(self.weights[m]) * Z[m] for m in self.dims]
            return l2_normalize(np.concatenate(blocks, axis=1))
        import torch

        out = np.zeros((len(catalog), self.config.out_dim), dtype=np.float32)
        self.network.eval()
        with torch.no_grad(), torch_threads(self.config.num_threads):
            for s in range(0, len(catalog), batch_size):
                xs = {m: torch.from_numpy(np.ascontiguousarray(Z[m][s:s + batch_size])) for m in Z}
                ms = {m: torch.from_numpy(masks[m][s:s + batch_size]) for m in masks}
                out[s:s + batch_size] = self.network(xs, ms).numpy()
        return l2_normalize(out)

    # ---- persistence -------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write ``fusion.json`` (+ ``fusion.json.npz``) into ``directory`` atomically."""
        arrays: dict[str, np.ndarray] = {}
        for m, nz in self.normalizers.items():
            arrays[f"norm.{m}.mean"] = nz.mean_
            arrays[f"norm.{m}.scale"] = nz.scale_
        if self.network is not None:
            for k, v in self.network.state_dict().items():
                arrays[f"param.{k}"] = v.detach().cpu().numpy()
        meta = {"config": asdict(self.config), "modalities": [[m, d] for m, d in self.dims.items()],
                "weights": self.weights, "history": self.history}
        arrays["meta_sha256"] = np.frombuffer(_meta_digest(meta), dtype=np.uint8)
        directory = Path(directory)
        with atomic_dir(directory) as tmp:
            save_arrays(tmp / HEADER_NAME, meta, arrays, kind=ARTIFACT_KIND, format_version=FORMAT_VERSION)
        return directory


def _meta_digest(meta: dict[str, Any]) -> bytes:
    return hashlib.sha256(json.dumps(meta, sort_keys=True, default=float).encode()).digest()


def build_network(config: FusionConfig, dims: dict[str, int], weights: dict[str, float]):
    import torch

    torch.manual_seed(config.seed)
    if config.method == "contrastive":
        from mmcompress.fusion.contrastive import ContrastiveProjection

        return ContrastiveProjection(dims, config.out_dim, config.hidden_dim, weights)
    from mmcompress.fusion.attention import CrossModalAttention

    return CrossModalAttention(dims, config.out_dim, config.attention_dim, config.attention_heads, weights)


def fit_fusion(catalog: ItemCatalog, config: FusionConfig | dict[str, Any] | None = None, *,
               progress: bool = True) -> FusionModel:
    """Fit normalisers (and, for learned methods, the network) on ``catalog``."""
    config = _coerce_config(config)
    names = config.modalities if config.modalities is not None else catalog.modality_names
    missing = [m for m in names if m not in catalog.modalities]
    if missing:
        raise CatalogError("fusion modality missing from the catalog", column=missing[0],
                           expected=list(names), found=catalog.modality_names)
    weights = {m: config.weights.get(m, config.default_weight) for m in names}
    names = [m for m in names if weights[m] > 0]
    if not names:
        raise CatalogError("no modality with a positive fusion weight", expected="weight > 0",
                           found=weights)
    weights = {m: weights[m] for m in names}
    dims = {m: catalog.schema[m].dim for m in names}
    normalizers = {m: ModalityNormalizer(center=config.center, scale=config.scale)
                   .fit(catalog.modalities[m], catalog.masks[m]) for m in names}
    model = FusionModel(config, dims, weights, normalizers)
    if config.method == "weighted_concat":
        return model
    if len(names) < 2:
        raise CatalogError(f"{config.method} fusion needs at least two modalities", expected=">= 2",
                           found=names)
    import torch

    from mmcompress.fusion.training import train_network

    Z, masks = model.normalized(catalog)
    n_present = np.sum([masks[m] for m in names], axis=0)
    rows = np.flatnonzero(n_present >= 2)
    if len(rows) < 4:
        raise CatalogError("too few items with two or more modalities to train fusion",
                           expected=">= 4", found=len(rows))
    rng = np.random.default_rng(config.seed)
    rows = rng.permutation(rows)
    n_val = int(round(config.val_fraction * len(rows)))
    n_val = n_val if len(rows) - n_val >= 2 else 0
    val_rows, train_rows = np.sort(rows[:n_val]), np.sort(rows[n_val:])
    with torch.random.fork_rng(devices=[]), torch_threads(config.num_threads):
        net = build_network(config, dims, weights)
        hist = train_network(net, Z, masks, train_rows, val_rows, epochs=config.epochs,
                             batch_size=config.batch_size, lr=config.lr,
                             weight_decay=config.weight_decay, temperature=config.temperature,
                             patience=config.patience, min_delta=config.min_delta, seed=config.seed,
                             progress=progress)
    model.network = net
    model.history = {"train_loss": hist.train_loss, "val_loss": hist.val_loss,
                     "initial_val_loss": hist.initial_val_loss,
                     "best_epoch": hist.best_epoch, "stopped_early": hist.stopped_early,
                     "n_train": len(train_rows), "n_val": len(val_rows)}
    return model


def load_fusion(directory: str | Path) -> FusionModel:
    """Load a saved :class:`FusionModel`, refusing tampered, truncated or unknown files."""
    path = Path(directory) / HEADER_NAME
    meta, arrays = load_arrays(path, kind=ARTIFACT_KIND, supported_versions=(FORMAT_VERSION,))
    digest = arrays.pop("meta_sha256", None)
    if digest is None or digest.tobytes() != _meta_digest(meta):
        raise ArtifactError(f"{path}: header does not match its arrays (modified header)")
    try:
        config = FusionConfig.from_dict(meta["config"])
        dims = {str(m): int(d) for m, d in meta["modalities"]}
        weights = {str(k): float(v) for k, v in meta["weights"].items()}
        normalizers = {}
        for m, d in dims.items():
            nz = ModalityNormalizer(center=config.center, scale=config.scale)
            nz.mean_, nz.scale_ = arrays[f"norm.{m}.mean"], arrays[f"norm.{m}.scale"]
            if nz.mean_.shape != (d,) or nz.scale_.shape != (d,):
                raise ArtifactError(f"{path}: normaliser of {m!r} has shape {nz.mean_.shape}, expected ({d},)")
            normalizers[m] = nz
        network = None
        if config.method != "weighted_concat":
            import torch

            network = build_network(config, dims, weights)
            state = {k[len("param."):]: torch.from_numpy(np.array(v)) for k, v in arrays.items()
                     if k.startswith("param.")}
            network.load_state_dict(state, strict=True)
            network.eval()
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        if isinstance(e, ArtifactError):
            raise
        raise ArtifactError(f"{path}: invalid fusion artifact: {e}") from e
    return FusionModel(config, dims, weights, normalizers, network, meta.get("history"))
