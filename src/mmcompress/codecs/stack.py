"""Residual stacks of quantizers: ``RQ16x8+PQ16x8`` quantizes what the first stage missed.

Each stage encodes the residual of the stages before it; the code is the stages' codes side
by side and the reconstruction their sum. A few beam-searched residual codebooks capture most
of the structure; a product quantizer on the residual adds bytes at a fraction of the encoding
cost of more residual codebooks. When every stage is additive with 8-bit codebooks (PQ, RQ,
LSQ), search is one look-up-table scan over all codebooks (:class:`AdditiveScan`).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from mmcompress.codecs.base import Codec
from mmcompress.codecs.faiss_quantizers import AdditiveScan, _NormCache
from mmcompress.codecs.spec import SpecContext, parse_spec, register_quantizer
from mmcompress.errors import ArtifactError, CodecError


class ResidualStack(Codec):
    """Quantizers applied in turn to the running residual."""

    kind = "residual_stack"
    supports_norm_weight = True

    def __init__(self, stages: list[Codec], metric: str = "ip") -> None:
        super().__init__(metric)
        if len(stages) < 2:
            raise CodecError("a residual stack needs at least two stages")
        for stage in stages:
            stage.norm_weight = 0.0  # the stack scores the sum, not each stage
        self.stages = stages

    @property
    def spec(self) -> str:
        return "+".join(s.spec for s in self.stages)

    @property
    def code_size(self) -> int:
        return sum(s.code_size for s in self.stages)

    @property
    def field_bits(self) -> list[int]:
        return [b for s in self.stages for b in s.field_bits]

    def _split(self, codes: np.ndarray) -> list[np.ndarray]:
        bounds = np.cumsum([s.code_size for s in self.stages])[:-1]
        return np.split(codes, bounds, axis=1)

    def _fit(self, X: np.ndarray) -> None:
        R = X
        for i, stage in enumerate(self.stages):
            stage.fit(R)
            if i + 1 < len(self.stages):
                R = R - stage._decode(stage._encode(R))
        self._ready()

    def _ready(self) -> None:
        books = [getattr(s, "additive_codebooks", lambda: None)() for s in self.stages]
        self._scanner = AdditiveScan(np.concatenate(books)) if all(b is not None for b in books) else None
        self._norms = _NormCache()

    def _encode(self, X: np.ndarray) -> np.ndarray:
        parts, R = [], X
        for i, stage in enumerate(self.stages):
            codes = stage._encode(np.ascontiguousarray(R, dtype=np.float32))
            parts.append(codes)
            if i + 1 < len(self.stages):
                R = R - stage._decode(codes)
        return np.hstack(parts)

    def _decode(self, codes: np.ndarray) -> np.ndarray:
        parts = self._split(codes)
        out = self.stages[0]._decode(np.ascontiguousarray(parts[0])).astype(np.float32)
        for stage, part in zip(self.stages[1:], parts[1:], strict=True):
            out += stage._decode(np.ascontiguousarray(part))
        return out

    def _scan(self, codes: np.ndarray, queries: np.ndarray, k: int,
              norm_weight: float) -> tuple[np.ndarray, np.ndarray]:
        if self._scanner is None:
            return super()._scan(codes, queries, k, norm_weight)
        norms = self._norms.get(codes, self._decode) if norm_weight else None
        return self._scanner.search(codes, queries, k, norm_weight, norms)

    def _scan_tables(self, queries: np.ndarray, norm_weight: float) -> tuple[np.ndarray, np.ndarray] | None:
        return None if self._scanner is None else self._scanner.scan_tables(queries)

    def _get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        metas, arrays = [], {}
        for i, stage in enumerate(self.stages):
            meta, arrs = stage._get_state()
            metas.append({"state": meta, "d": stage.d_})
            arrays.update({f"s{i}.{k}": v for k, v in arrs.items()})
        return {"stages": metas}, arrays

    def _set_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        if len(meta["stages"]) != len(self.stages):
            raise ArtifactError("saved residual stack has a different number of stages than its spec")
        for i, (stage, m) in enumerate(zip(self.stages, meta["stages"], strict=True)):
            prefix = f"s{i}."
            stage._set_state(m["state"], {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)})
            stage.d_ = int(m["d"])
            stage.norm_weight_ = 0.0
        self._ready()


def _build_stack(m: re.Match[str], ctx: SpecContext) -> Codec:
    stages = []
    for token in m[0].split("+"):
        transforms, (entry, match) = parse_spec(token)
        if transforms or entry.factory is _build_stack:
            raise CodecError(f"residual stack stage {token!r} must be a single quantizer token")
        stages.append(entry.factory(match, ctx))
    return ResidualStack(stages, metric=ctx.metric)


def _stack_candidates(budget: int, d: int, metric: str) -> list[str]:
    rest = budget - 16
    if rest < 8 or d < rest:
        return []
    dp = d - d % rest
    stack = f"RQ16x8+PQ{rest}x8"
    return [stack if dp == d else f"PCA{dp},{stack}"]


register_quantizer(r"[^,+]+(?:\+[^,+]+)+", _build_stack, auto_candidates=_stack_candidates)
