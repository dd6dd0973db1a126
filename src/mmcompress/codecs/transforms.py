"""Affine transforms applied before a quantizer: centring, PCA, whitening, rotations, OPQ.

Every transform is affine, ``y = (x - mean_) @ A_`` with reconstruction
``x ~ mean_ + y @ B_``, so a chain of them collapses into one matrix pair and an
inner-product query maps into the quantizer's space as ``q @ B.T`` (see
:mod:`mmcompress.codecs.pipeline`).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from mmcompress.codecs.base import check_vectors
from mmcompress.codecs.spec import SpecContext, register_transform
from mmcompress.errors import CodecError


def project(X: np.ndarray, mean: np.ndarray, A: np.ndarray) -> np.ndarray:
    """``(X - mean) @ A`` in float64, returned as float32: a row's result does not depend on
    the batch it came in or on BLAS threading, so sharded encodes equal whole-array ones."""
    return ((np.asarray(X, dtype=np.float64) - mean) @ A.astype(np.float64)).astype(np.float32)


class Transform(ABC):
    """A fitted affine map ``d_in -> d_out`` with its (pseudo-)inverse for reconstruction."""

    kind: ClassVar[str] = ""
    registry: ClassVar[dict[str, type[Transform]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind:
            Transform.registry[cls.kind] = cls

    @property
    @abstractmethod
    def spec(self) -> str: ...

    @abstractmethod
    def _fit(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return (mean (d_in,), A (d_in, d_out), B (d_out, d_in))."""

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "A_")

    def fit(self, X: np.ndarray) -> Transform:
        X = check_vectors(X)
        if len(X) < 2:
            raise CodecError(f"transform {self.spec!r} needs at least 2 training rows; found {len(X)}")
        mean, A, B = self._fit(X)
        self.mean_ = np.asarray(mean, dtype=np.float32)
        self.A_ = np.ascontiguousarray(A, dtype=np.float32)
        self.B_ = np.ascontiguousarray(B, dtype=np.float32)
        return self

    @property
    def d_in(self) -> int:
        return self.A_.shape[0]

    @property
    def d_out(self) -> int:
        return self.A_.shape[1]

    def apply(self, X: np.ndarray) -> np.ndarray:
        return project(X, self.mean_, self.A_)

    def reverse(self, Y: np.ndarray) -> np.ndarray:
        return self.mean_ + Y @ self.B_

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return {"kind": self.kind, "spec": self.spec}, {"mean": self.mean_, "A": self.A_, "B": self.B_}

    def set_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.mean_, self.A_, self.B_ = arrays["mean"], arrays["A"], arrays["B"]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"


def _pca(X: np.ndarray, d_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, top-``d_out`` eigenvectors (d_in, d_out) and eigenvalues of the covariance."""
    mean = X.mean(axis=0, dtype=np.float64)
    Xc = X.astype(np.float64) - mean
    cov = Xc.T @ Xc / max(len(X) - 1, 1)
    evals, evecs = np.linalg.eigh(cov)
    order = np.argsort(evals)[::-1][:d_out]
    V = evecs[:, order]
    V *= np.where(V[np.abs(V).argmax(axis=0), np.arange(V.shape[1])] < 0, -1.0, 1.0)  # sign fix
    return mean, V, np.maximum(evals[order], 0.0)


def _check_d_out(spec: str, d_out: int | None, d_in: int) -> int:
    if d_out is None:
        return d_in
    if not 1 <= d_out <= d_in:
        raise CodecError(f"transform {spec!r} outputs {d_out} dims but the input has d={d_in}")
    return d_out


class Centering(Transform):
    """Subtract the training mean (``C``)."""

    kind = "center"

    @property
    def spec(self) -> str:
        return "C"

    def _fit(self, X):
        eye = np.eye(X.shape[1], dtype=np.float32)
        return X.mean(axis=0, dtype=np.float64), eye, eye


class PCATransform(Transform):
    """Centre and project on the top principal axes (``PCA<d>``), optionally whitened (``PCAW<d>``)."""

    kind = "pca"

    def __init__(self, d_out: int | None = None, whiten: bool = False) -> None:
        self.d_out_spec = d_out
        self.whiten = whiten

    @property
    def spec(self) -> str:
        if self.whiten:
            return "W" if self.d_out_spec is None else f"PCAW{self.d_out_spec}"
        return "PCA" if self.d_out_spec is None else f"PCA{self.d_out_spec}"

    def _fit(self, X):
        d_out = _check_d_out(self.spec, self.d_out_spec, X.shape[1])
        mean, V, evals = _pca(X, d_out)
        if not self.whiten:
            return mean, V, V.T
        scale = np.sqrt(np.maximum(evals, evals.max() * 1e-6 + 1e-12))
        return mean, V / scale, (V * scale).T


class RandomRotation(Transform):
    """A random orthogonal rotation (``RR``): spreads variance evenly over dimensions."""

    kind = "random_rotation"

    def __init__(self, random_state: int = 0) -> None:
        self.random_state = random_state

    @property
    def spec(self) -> str:
        return "RR"

    def _fit(self, X):
        d = X.shape[1]
        Q = random_orthogonal(d, self.random_state)
        return np.zeros(d), Q, Q.T


def random_orthogonal(d: int, random_state: int) -> np.ndarray:
    """A Haar-random orthogonal (d, d) matrix, deterministic for a seed."""
    rng = np.random.default_rng(random_state)
    Q, R = np.linalg.qr(rng.standard_normal((d, d)))
    return Q * np.sign(np.diag(R))


class OPQRotation(Transform):
    """faiss OPQ rotation (``OPQ<M>`` / ``OPQ<M>_<d>``) that balances variance over ``M`` sub-spaces."""

    kind = "opq"

    def __init__(self, M: int, d_out: int | None = None, niter: int = 25, max_train_rows: int = 20000,
                 random_state: int = 0) -> None:
        self.M = M
        self.d_out_spec = d_out
        self.niter = niter
        self.max_train_rows = max_train_rows
        self.random_state = random_state

    @property
    def spec(self) -> str:
        return f"OPQ{self.M}" if self.d_out_spec is None else f"OPQ{self.M}_{self.d_out_spec}"

    def _fit(self, X):
        import faiss

        d_in = X.shape[1]
        d_out = _check_d_out(self.spec, self.d_out_spec, d_in)
        if d_out % self.M:
            raise CodecError(f"transform {self.spec!r}: output dim {d_out} is not a multiple of M={self.M}")
        nbits = 8 if len(X) >= 256 * 4 else max(1, int(np.log2(len(X) // 4)))
        if len(X) < max(16, d_in):
            # faiss's OPQ training corrupts memory (abort) with fewer rows than dimensions
            raise CodecError(f"transform {self.spec!r} needs at least max(16, d={d_in}) training rows; "
                             f"found {len(X)}")
        if len(X) > self.max_train_rows:
            rng = np.random.default_rng(self.random_state)
            X = X[np.sort(rng.choice(len(X), self.max_train_rows, replace=False))]
        opq = faiss.OPQMatrix(d_in, self.M, d_out)
        opq.niter = self.niter
        opq.pq = faiss.ProductQuantizer(d_out, self.M, nbits)
        opq.pq.cp.min_points_per_centroid = 1
        opq.pq.cp.seed = self.random_state
        opq.verbose = False
        opq.train(np.ascontiguousarray(X))
        A = faiss.vector_to_array(opq.A).reshape(d_out, d_in)
        return np.zeros(d_in), A.T, A


def _build_pca(m: re.Match[str], ctx: SpecContext) -> Transform:
    d_out = int(m["d"]) if m["d"] else None
    return PCATransform(d_out, whiten=m["w"] is not None)


def _build_opq(m: re.Match[str], ctx: SpecContext) -> Transform:
    return OPQRotation(int(m["M"]), int(m["d"]) if m["d"] else None,
                       niter=int(ctx.options.get("opq_niter", 25)),
                       max_train_rows=int(ctx.options.get("max_train_rows", 20000)),
                       random_state=ctx.random_state)


register_transform(r"C", lambda m, ctx: Centering())
register_transform(r"W", lambda m, ctx: PCATransform(None, whiten=True))
register_transform(r"PCA(?P<w>W)?(?P<d>\d+)?", _build_pca)
register_transform(r"RR", lambda m, ctx: RandomRotation(ctx.random_state))
register_transform(r"OPQ(?P<M>\d+)(?:_(?P<d>\d+))?", _build_opq)
