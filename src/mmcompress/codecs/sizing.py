"""Bytes per item a codec spec will produce, known before anything is fitted.

A pipeline refuses a challenger over its byte budget when its parameters are read, not after
minutes of training: most specs fix their code size (``PQ16`` is 16 bytes, ``BIN256`` 32),
and a scalar quantizer behind a transform that fixes the dimension (``PCA64,SQ4``) does too.
Only a scalar quantizer on the raw input (``SQ8``) and ``auto`` (at most its budget) wait for
the data.
"""

from __future__ import annotations

from mmcompress.codecs.spec import _static_code_size, make_codec


def planned_code_size(spec: str, d: int | None = None, metric: str = "ip") -> int | None:
    """Bytes per item ``spec`` makes for ``d``-dimensional input (``d``: None where unknown),
    or None where only fitting tells. Raises :class:`CodecError` for a spec that does not parse."""
    if isinstance(spec, str) and spec.strip().lower() == "auto":
        return None
    codec = make_codec(spec, metric=metric)
    size = _static_code_size(codec)
    if size is not None:
        return int(size)
    from mmcompress.codecs.pipeline import TransformedCodec
    from mmcompress.codecs.scalar import ScalarQuantizer

    quantizer, dim = codec, d
    if isinstance(codec, TransformedCodec):
        quantizer = codec.quantizer
        for t in codec.transforms:
            dim = getattr(t, "d_out_spec", None) or dim
    if isinstance(quantizer, ScalarQuantizer) and dim is not None:
        return -(-dim * quantizer.bits // 8)
    return None
