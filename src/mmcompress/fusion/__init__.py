"""Fusion of per-modality vectors into one joint, L2-normalised item vector."""

from mmcompress.fusion.diagnostics import modality_contribution, modality_redundancy
from mmcompress.fusion.model import FusionConfig, FusionModel, fit_fusion, load_fusion
from mmcompress.fusion.normalization import ModalityNormalizer, l2_normalize

__all__ = [
    "FusionConfig",
    "FusionModel",
    "ModalityNormalizer",
    "fit_fusion",
    "l2_normalize",
    "load_fusion",
    "modality_contribution",
    "modality_redundancy",
]
