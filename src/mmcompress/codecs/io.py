"""Saving and loading fitted codecs as data: a JSON header plus an .npz of arrays.

The header records the codec kind, its resolved spec, metric, input dimension and the
codec's own state; :mod:`mmcompress.artifacts` adds the format version and a SHA-256 of the
arrays, so a truncated or edited file is refused with :class:`ArtifactError`. faiss objects
travel as ``faiss.serialize_index`` byte arrays, never as pickles.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from mmcompress.artifacts import load_arrays, save_arrays
from mmcompress.codecs.base import Codec
from mmcompress.errors import ArtifactError, CodecError

ARTIFACT_KIND = "mmcompress.codec"
FORMAT_VERSION = 1


def save_codec(codec: Codec, path: str | os.PathLike) -> None:
    """Write a fitted codec to ``path`` (JSON) and ``path.npz`` atomically."""
    if not codec.is_fitted:
        raise CodecError(f"cannot save unfitted codec {codec!r}; call fit(X) first")
    state, arrays = codec._get_state()
    header: dict[str, Any] = {
        "codec_kind": codec.kind,
        "codec_format_version": codec.format_version,
        "spec": codec.spec,
        "metric": codec.metric,
        "d": int(codec.d_),
        "code_size": int(codec.code_size),
        "norm_weight": float(getattr(codec, "norm_weight_", 0.0)),
        "state": state,
    }
    save_arrays(path, header, arrays, kind=ARTIFACT_KIND, format_version=FORMAT_VERSION)


def load_codec(path: str | os.PathLike) -> Codec:
    """Read a codec written by :func:`save_codec`; refuse unknown kinds, versions or checksums."""
    header, arrays = load_arrays(path, kind=ARTIFACT_KIND, supported_versions=(FORMAT_VERSION,))
    try:
        kind = header["codec_kind"]
        cls = Codec.registry.get(kind)
        if cls is None:
            from mmcompress.codecs import spec as spec_module

            spec_module._load_plugins()
            cls = Codec.registry.get(kind)
        if cls is None:
            raise ArtifactError(f"{path}: unknown codec kind {kind!r}; known: {sorted(Codec.registry)}")
        if header["codec_format_version"] != cls.format_version:
            raise ArtifactError(f"{path}: codec {kind!r} format_version {header['codec_format_version']} "
                                f"is not the supported {cls.format_version}")
        codec = cls._from_state(header, arrays)
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, ArtifactError):
            raise
        raise ArtifactError(f"{path}: codec header or arrays are malformed: {e!r}") from e
    if codec.code_size != header["code_size"]:
        raise ArtifactError(f"{path}: restored code_size {codec.code_size} != saved {header['code_size']}")
    return codec


def index_to_array(index: Any) -> np.ndarray:
    """A faiss index as a uint8 array (``faiss.serialize_index``)."""
    import faiss

    return faiss.serialize_index(index)


def index_from_array(blob: np.ndarray) -> Any:
    import faiss

    try:
        return faiss.deserialize_index(np.ascontiguousarray(blob, dtype=np.uint8))
    except RuntimeError as e:
        raise ArtifactError(f"cannot deserialize faiss index: {e}") from e
