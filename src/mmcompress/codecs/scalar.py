"""Uniform scalar codes with per-dimension ranges: ``FP16``, ``SQ8``, ``SQ6``, ``SQ4``.

Backed by faiss ``ScalarQuantizer`` (min/max range per dimension), whose SIMD scanners
compute distances straight from the codes.
"""

from __future__ import annotations

import re
import threading
from typing import Any

import numpy as np

from mmcompress.codecs.base import Codec
from mmcompress.codecs.faiss_quantizers import FaissCodesCodec, subsample_rows
from mmcompress.codecs.spec import SpecContext, register_quantizer
from mmcompress.errors import CodecError

_BITS = {"FP16": 16, "SQ8": 8, "SQ6": 6, "SQ4": 4}


class ScalarQuantizer(FaissCodesCodec):
    """One uniform level grid per dimension; ``bits`` per component (16 = half floats)."""

    kind = "sq"

    def __init__(self, token: str, metric: str = "ip", max_train_rows: int | None = 100000,
                 random_state: int = 0) -> None:
        if token not in _BITS:
            raise CodecError(f"unknown scalar quantizer {token!r}; expected one of {sorted(_BITS)}")
        Codec.__init__(self, metric)
        self.token = token
        self.bits = _BITS[token]
        self.max_train_rows = max_train_rows
        self.random_state = random_state
        self._lock = threading.Lock()

    @property
    def spec(self) -> str:
        return self.token

    @property
    def code_size(self) -> int:
        if not hasattr(self, "index_"):
            raise CodecError(f"{self.token} code size depends on the input dimension; fit first")
        return self.index_.sa_code_size()

    @property
    def field_bits(self) -> list[int]:
        return [4] * (2 * self.code_size) if self.bits == 4 else [8] * self.code_size

    def _expected_code_size(self, index: Any) -> int:
        return -(-index.d * self.bits // 8)

    def _fit(self, X: np.ndarray) -> None:
        import faiss

        qtype = {16: faiss.ScalarQuantizer.QT_fp16, 8: faiss.ScalarQuantizer.QT_8bit,
                 6: faiss.ScalarQuantizer.QT_6bit, 4: faiss.ScalarQuantizer.QT_4bit}[self.bits]
        index = faiss.IndexScalarQuantizer(X.shape[1], qtype, self.faiss_metric)
        index.train(subsample_rows(X, self.max_train_rows, self.random_state))
        self.index_ = index


def _build_sq(m: re.Match[str], ctx: SpecContext) -> Codec:
    return ScalarQuantizer(m[0], ctx.metric, random_state=ctx.random_state)


def _sq_candidates(budget: int, d: int, metric: str) -> list[str]:
    specs = []
    for token, bits in (("SQ8", 8), ("SQ4", 4)):
        dims = budget * 8 // bits
        if dims <= d:
            specs.append(f"PCA{dims},{token}" if dims < d else token)
    return specs


register_quantizer(r"FP16|SQ8|SQ6|SQ4", _build_sq, auto_candidates=_sq_candidates)
