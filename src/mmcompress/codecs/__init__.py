"""Vector codecs: spec strings, transforms, quantizers, entropy coding and the ``auto`` search.

    from mmcompress.codecs import make_codec, load_codec, pack, unpack
    codec = make_codec("auto", budget_bytes=16, metric="ip").fit(X_train)
    codes = codec.encode(X)                     # uint8 (n, codec.code_size)
    scores, ids = codec.search(codes, queries, 10)
    blob = pack(codes, field_bits=codec.field_bits)   # lossless, for storage

New codec families register spec tokens with :func:`register_quantizer` /
:func:`register_transform` (see :mod:`mmcompress.codecs.spec`).
"""

from mmcompress.codecs import (  # noqa: F401  (register tokens)
    binary,
    faiss_quantizers,
    nonuniform,
    pipeline,
    scalar,
    stack,
    transforms,
)
from mmcompress.codecs.auto import AutoCodec
from mmcompress.codecs.base import Codec, check_codes, check_vectors, chunked_search, exact_search
from mmcompress.codecs.entropy import pack, packed_size, unpack, unpack_block
from mmcompress.codecs.io import load_codec, save_codec
from mmcompress.codecs.spec import (
    SpecContext,
    auto_candidates,
    make_codec,
    register_quantizer,
    register_transform,
    registered_tokens,
    unregister,
)
from mmcompress.codecs.transforms import Transform

__all__ = [
    "AutoCodec",
    "Codec",
    "SpecContext",
    "Transform",
    "auto_candidates",
    "check_codes",
    "check_vectors",
    "chunked_search",
    "exact_search",
    "load_codec",
    "make_codec",
    "pack",
    "packed_size",
    "register_quantizer",
    "register_transform",
    "registered_tokens",
    "save_codec",
    "unpack",
    "unpack_block",
    "unregister",
]
