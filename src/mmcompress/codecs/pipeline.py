"""A quantizer behind a chain of affine transforms ("PCA128,OPQ16,PQ16x8").

The chain collapses to ``y = (x - c) @ B.T``-like maps: encoding applies the transforms then
the quantizer; decoding reverses them. Search stays in the compressed domain:
with ``B`` having orthonormal rows (centring, PCA, rotations, OPQ) the score
``q.x_hat - w|x_hat|^2`` becomes the quantizer's own scan of ``(q - 2wc) @ B.T`` plus a
per-query constant. Only whitened chains fall back to decoding blocks of rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mmcompress.codecs.base import Codec
from mmcompress.codecs.transforms import Transform
from mmcompress.errors import ArtifactError, CodecError


class TransformedCodec(Codec):
    """Transforms followed by one quantizer codec; itself a :class:`Codec`."""

    kind = "pipeline"

    def __init__(self, transforms: list[Transform], quantizer: Codec, metric: str = "ip") -> None:
        super().__init__(metric)
        if quantizer.metric != metric:
            raise CodecError(f"quantizer metric {quantizer.metric!r} differs from codec metric {metric!r}")
        self.transforms = list(transforms)
        self.quantizer = quantizer
        self.quantizer.norm_weight = 0.0  # the pipeline scores in the input space
        self.supports_norm_weight = quantizer.supports_norm_weight  # type: ignore[misc]

    @property
    def spec(self) -> str:
        return ",".join([t.spec for t in self.transforms] + [self.quantizer.spec])

    @property
    def code_size(self) -> int:
        return self.quantizer.code_size

    @property
    def field_bits(self) -> list[int]:
        return self.quantizer.field_bits

    @property
    def is_binary(self) -> bool:  # type: ignore[override]
        return self.quantizer.is_binary

    def _fit(self, X: np.ndarray) -> None:
        Y = X
        for t in self.transforms:
            t.fit(Y)
            Y = t.apply(Y)
        self.quantizer.fit(Y)
        self._compose()

    def _compose(self) -> None:
        """Collapse the chain to ``y = x @ A - b`` and ``x ~ c + y @ B``."""
        A = np.eye(self.transforms[0].d_in, dtype=np.float64)
        b = np.zeros(A.shape[0])
        for t in self.transforms:
            b = (b + t.mean_.astype(np.float64)) @ t.A_
            A = A @ t.A_
        c = np.zeros(self.transforms[-1].d_out)
        B = np.eye(self.transforms[-1].d_out, dtype=np.float64)
        for t in reversed(self.transforms):
            c = t.mean_ + c @ t.B_
            B = B @ t.B_
        self._A64, self._b64 = A, b
        self._B = B.astype(np.float32)
        self._c = c.astype(np.float32)
        self._orthonormal = bool(np.allclose(B @ B.T, np.eye(B.shape[0]), atol=1e-4))

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Map vectors into the quantizer's input space.

        Computed in float64 and rounded to float32, so a row's code does not depend on the
        batch it is encoded in or on BLAS threading (sharded encodes equal whole-array ones)."""
        self._check_fitted()
        return (np.asarray(X, dtype=np.float64) @ self._A64 - self._b64).astype(np.float32)

    def _encode(self, X: np.ndarray) -> np.ndarray:
        return self.quantizer.encode(self.transform(X))

    def _decode(self, codes: np.ndarray) -> np.ndarray:
        return self._c + self.quantizer.decode(codes) @ self._B

    def _scan(self, codes: np.ndarray, queries: np.ndarray, k: int,
              norm_weight: float) -> tuple[np.ndarray, np.ndarray]:
        """``q.x_hat - w|x_hat|^2`` with ``x_hat = c + y_hat B``: the quantizer's own scan when
        ``B`` has orthonormal rows, since then ``|y_hat B| = |y_hat|``."""
        if not self._orthonormal:
            return super()._scan(codes, queries, k, norm_weight)
        mapped = np.ascontiguousarray((queries - 2.0 * norm_weight * self._c) @ self._B.T, dtype=np.float32)
        D, ids = self.quantizer._scan(codes, mapped, k, norm_weight)
        const = queries @ self._c - norm_weight * float(self._c @ self._c)
        return D + const[:, None].astype(np.float32), ids

    def _scan_tables(self, queries: np.ndarray, norm_weight: float) -> tuple[np.ndarray, np.ndarray] | None:
        """The quantizer's tables for the mapped queries, as :meth:`_scan` maps them."""
        if not self._orthonormal:
            return None
        mapped = np.ascontiguousarray((queries - 2.0 * norm_weight * self._c) @ self._B.T, dtype=np.float32)
        got = self.quantizer._scan_tables(mapped, norm_weight)
        if got is None:
            return None
        const = queries @ self._c - norm_weight * float(self._c @ self._c)
        return got[0], got[1] + const.astype(np.float32)

    def _scan_norms(self, codes: np.ndarray) -> np.ndarray:
        if not self._orthonormal:
            return super()._scan_norms(codes)
        return self.quantizer._scan_norms(codes)

    def search_hamming(self, codes: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Hamming scan of a binary quantizer with the queries mapped through the transforms."""
        if not self.is_binary:
            raise CodecError(f"codec {self.spec!r} is not binary; use search()")
        self._check_fitted()
        from mmcompress.codecs.base import check_vectors

        queries = check_vectors(queries, d=self.d_, name="queries")
        mapped = queries @ self._B.T if self.metric == "ip" else (queries - self._c) @ self._B.T
        return self.quantizer.search_hamming(codes, mapped, k)

    def _get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        metas, arrays = [], {}
        for i, t in enumerate(self.transforms):
            meta, arrs = t.get_state()
            metas.append(meta)
            arrays.update({f"t{i}.{k}": v for k, v in arrs.items()})
        q_meta, q_arrs = self.quantizer._get_state()
        arrays.update({f"q.{k}": v for k, v in q_arrs.items()})
        return {"transforms": metas, "quantizer": q_meta, "quantizer_d": self.quantizer.d_}, arrays

    def _set_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        if len(meta["transforms"]) != len(self.transforms):
            raise ArtifactError("saved pipeline has a different number of transforms than its spec")
        for i, (t, t_meta) in enumerate(zip(self.transforms, meta["transforms"], strict=True)):
            prefix = f"t{i}."
            t.set_state(t_meta, {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)})
        self.quantizer._set_state(meta["quantizer"], {k[2:]: v for k, v in arrays.items() if k.startswith("q.")})
        self.quantizer.d_ = int(meta["quantizer_d"])
        self._compose()
