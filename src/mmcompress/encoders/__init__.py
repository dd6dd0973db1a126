"""Modality encoders: text, collaborative, structured and image item vectors.

Each module imports its heavy dependency (sentence-transformers, torch) only when used.
"""

from mmcompress.encoders.collaborative import CollaborativeConfig, collaborative_factors
from mmcompress.encoders.image import ImageEncoder, ImageEncoderConfig
from mmcompress.encoders.structured import StructuredConfig, StructuredEncoder, parse_year
from mmcompress.encoders.text import TextEncoder, TextEncoderConfig

__all__ = [
    "CollaborativeConfig",
    "ImageEncoder",
    "ImageEncoderConfig",
    "StructuredConfig",
    "StructuredEncoder",
    "TextEncoder",
    "TextEncoderConfig",
    "collaborative_factors",
    "parse_year",
]
