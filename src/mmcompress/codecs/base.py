"""The codec contract every compressor follows (scikit-learn estimator shape).

    codec = make_codec("PCA128,OPQ16,PQ16x8", metric="ip").fit(X_train)
    codes = codec.encode(X)            # uint8, (n, codec.code_size)
    X_hat = codec.decode(codes)        # float32, (n, d)
    D, ids = codec.search(codes, xq, k)  # asymmetric: float queries vs codes
    codec.save(path); load_codec(path)

A subclass implements ``_fit``, ``_encode``, ``_decode`` (or ``_search``) and the state hooks
``_get_state`` / ``_set_state`` that turn its fitted attributes into JSON metadata plus numpy
arrays. Saving goes through :mod:`mmcompress.artifacts`: data only, versioned, checksummed.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from mmcompress.errors import CodecError

METRICS = ("ip", "l2")


def check_vectors(X: np.ndarray, *, d: int | None = None, name: str = "X") -> np.ndarray:
    """Validate a float matrix: 2-D, finite, of dimension ``d`` when given; return float32."""
    X = np.asarray(X)
    if X.ndim != 2:
        raise CodecError(f"{name} must be a 2-D array (n, d); found shape {X.shape}")
    if not np.issubdtype(X.dtype, np.number):
        raise CodecError(f"{name} must be numeric; found dtype {X.dtype}")
    if d is not None and X.shape[1] != d:
        raise CodecError(f"{name} has dimension {X.shape[1]}; the codec was fitted on d={d}")
    X = np.ascontiguousarray(X, dtype=np.float32)
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise CodecError(f"{name} has non-finite values (NaN/inf) in {len(rows)} rows, "
                         f"first at row {int(rows[0])}")
    return X


def squared_norms(decode: Callable[[np.ndarray], np.ndarray], codes: np.ndarray,
                  chunk: int = 65536) -> np.ndarray:
    """``|decode(code)|^2`` per code (float64), decoding ``chunk`` rows at a time."""
    out = np.empty(len(codes), dtype=np.float64)
    for s in range(0, len(codes), chunk):
        X = decode(codes[s:s + chunk]).astype(np.float64)
        out[s:s + len(X)] = (X * X).sum(axis=1)
    return out


def check_codes(codes: np.ndarray, code_size: int) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] != code_size:
        raise CodecError(f"codes must be uint8 of shape (n, {code_size}); "
                         f"found {codes.dtype} {codes.shape}")
    return np.ascontiguousarray(codes)


def exact_search(xb: np.ndarray, xq: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Exhaustive float search; scores are inner products, or negative squared L2 distances."""
    import faiss

    k = min(k, len(xb))
    index = faiss.IndexFlatIP(xb.shape[1]) if metric == "ip" else faiss.IndexFlatL2(xb.shape[1])
    index.add(np.ascontiguousarray(xb, dtype=np.float32))
    D, ids = index.search(np.ascontiguousarray(xq, dtype=np.float32), k)
    return (D if metric == "ip" else -D), ids


def chunked_search(decode: Callable[[np.ndarray], np.ndarray], codes: np.ndarray, xq: np.ndarray,
                   k: int, metric: str, chunk_rows: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """Exact search over ``decode(codes)`` one chunk of rows at a time (bounded memory).

    For codecs whose fastest scan is "decode a block, then BLAS": decoding costs once per
    call, not per query, and the matrix product runs at full BLAS speed.
    """
    k = min(k, len(codes))
    best_D = best_ids = None
    for start in range(0, len(codes), chunk_rows):
        D, ids = exact_search(decode(codes[start:start + chunk_rows]), xq, k, metric)
        ids = ids + start
        if best_D is None:
            best_D, best_ids = D, ids
            continue
        D = np.concatenate([best_D, D], axis=1)
        ids = np.concatenate([best_ids, ids], axis=1)
        top = np.argsort(-D, axis=1, kind="stable")[:, :k]
        best_D, best_ids = np.take_along_axis(D, top, 1), np.take_along_axis(ids, top, 1)
    return best_D, best_ids


class Codec(ABC):
    """A fitted, fixed-length vector compressor. Subclasses register a ``kind`` name."""

    kind: ClassVar[str] = ""
    format_version: ClassVar[int] = 1
    registry: ClassVar[dict[str, type[Codec]]] = {}
    #: True for sign-bit codes that also offer a Hamming scan (``search_hamming``).
    is_binary: ClassVar[bool] = False
    #: True when ``fit`` may tune the norm weight of inner-product scoring (see ``_scan``).
    supports_norm_weight: ClassVar[bool] = False
    #: Fixed norm weight for inner-product scoring; None tunes it at fit on unit-norm data.
    norm_weight: float | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind:
            Codec.registry[cls.kind] = cls

    def __init__(self, metric: str = "ip") -> None:
        if metric not in METRICS:
            raise CodecError(f"unknown metric {metric!r}; expected one of {METRICS}")
        self.metric = metric

    # ---- contract ------------------------------------------------------------------------
    @property
    @abstractmethod
    def spec(self) -> str:
        """The resolved spec string that rebuilds this codec with ``make_codec``."""

    @property
    @abstractmethod
    def code_size(self) -> int:
        """Bytes per item of the fixed-length code."""

    @property
    def field_bits(self) -> list[int]:
        """Bit widths of the fields packed MSB-first in each code row (sums to 8 * code_size).

        The entropy coder models each field separately; codecs whose fields are not whole
        bytes (4-bit PQ, variable-width scalar codes) override this.
        """
        return [8] * self.code_size

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "d_")

    def fit(self, X: np.ndarray, y: Any = None) -> Codec:
        X = check_vectors(X)
        self._fit(X)
        self.d_ = X.shape[1]
        self.norm_weight_ = 0.0
        if self.metric == "ip" and self.supports_norm_weight:
            if self.norm_weight is not None:
                self.norm_weight_ = float(self.norm_weight)
            else:
                from mmcompress.codecs.calibration import tune_norm_weight

                self.norm_weight_ = tune_norm_weight(self, X, random_state=getattr(self, "random_state", 0))
        return self

    def encode(self, X: np.ndarray) -> np.ndarray:
        self._check_fitted()
        X = check_vectors(X, d=self.d_)
        codes = self._encode(X)
        assert codes.dtype == np.uint8 and codes.shape == (len(X), self.code_size), (codes.dtype, codes.shape)
        return codes

    def decode(self, codes: np.ndarray) -> np.ndarray:
        self._check_fitted()
        return self._decode(check_codes(codes, self.code_size)).astype(np.float32, copy=False)

    def search(self, codes: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows of ``codes`` for each float query: (scores, ids), higher score = closer."""
        self._check_fitted()
        codes = check_codes(codes, self.code_size)
        queries = check_vectors(queries, d=self.d_, name="queries")
        if not 1 <= k:
            raise CodecError(f"k must be >= 1; found {k}")
        if len(codes) == 0:
            raise CodecError("cannot search an empty code array")
        return self._search(codes, queries, min(k, len(codes)))

    def search_tables(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, float] | None:
        """The :meth:`search` score as look-up tables, for codecs whose score is one per code byte
        plus a norm term: ``(tables (nq, code_size * 256), const (nq,), norm_coef)`` with

            score(q, code) = sum_j tables[q, 256 j + code[j]] + const[q] - norm_coef * scan_norms(code)

        so an index that stores each item's :meth:`scan_norms` once scores any shortlist by
        gathers. None where the score is not of that form (learned, non-additive codes).
        """
        self._check_fitted()
        queries = check_vectors(queries, d=self.d_, name="queries")
        w = 0.5 if self.metric == "l2" else float(getattr(self, "norm_weight_", 0.0))
        got = self._scan_tables(queries, w)
        if got is None:
            return None
        tables, const = got
        if self.metric == "l2":  # 2 (q.x - |x|^2 / 2) - |q|^2
            return 2 * tables, 2 * const - (queries * queries).sum(axis=1), 1.0
        return tables, const + np.float32(w), w

    def scan_norms(self, codes: np.ndarray) -> np.ndarray:
        """Per code, the squared norm the scan's norm term uses (float32, (n,))."""
        self._check_fitted()
        return self._scan_norms(check_codes(codes, self.code_size))

    def save(self, path: str | os.PathLike) -> None:
        """Write the fitted codec as data (JSON header + .npz arrays, versioned, checksummed)."""
        from mmcompress.codecs.io import save_codec

        save_codec(self, path)

    @classmethod
    def _from_state(cls, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> Codec:
        """Rebuild a fitted codec from a saved header: ``make_codec(spec)`` then ``_set_state``."""
        from mmcompress.codecs.spec import make_codec
        from mmcompress.errors import ArtifactError

        codec = make_codec(header["spec"], metric=header["metric"])
        if type(codec) is not cls:
            raise ArtifactError(f"spec {header['spec']!r} builds {type(codec).__name__}, "
                                f"but the file says {cls.__name__}")
        codec._set_state(header["state"], arrays)
        codec.d_ = int(header["d"])
        codec.norm_weight_ = float(header.get("norm_weight", 0.0))
        return codec

    # ---- subclass hooks ------------------------------------------------------------------
    @abstractmethod
    def _fit(self, X: np.ndarray) -> None: ...

    @abstractmethod
    def _encode(self, X: np.ndarray) -> np.ndarray: ...

    def _decode(self, codes: np.ndarray) -> np.ndarray:
        raise CodecError(f"codec {self.spec!r} does not reconstruct vectors")

    def _search(self, codes: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Rank by ``_scan``: L2 exactly; inner product with the fitted norm weight ``w``.

        For ``metric="ip"`` the score is ``q.x_hat + w * (1 - |x_hat|^2)``: with unit-norm
        items, ``w > 0`` corrects the shrinkage of reconstructions (``w = 1/2`` is the L2
        ranking, ``w = 0`` the plain inner product); ``fit`` picks ``w`` by validation recall.
        """
        if self.metric == "l2":
            D, ids = self._scan(codes, queries, k, 0.5)
            return 2.0 * D - (queries * queries).sum(axis=1, dtype=np.float32)[:, None], ids
        w = float(getattr(self, "norm_weight_", 0.0))
        D, ids = self._scan(codes, queries, k, w)
        return D + np.float32(w), ids

    def _scan(self, codes: np.ndarray, queries: np.ndarray, k: int,
              norm_weight: float) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` of ``q . x_hat - norm_weight * |x_hat|^2``; default decodes chunks of rows.

        Codecs with look-up-table scans override this; both metrics derive from it.
        """
        if norm_weight == 0.0:
            return chunked_search(self._decode, codes, queries, k, "ip")
        aug_q = np.hstack([queries, np.full((len(queries), 1), -norm_weight, dtype=np.float32)])

        def decode_aug(c: np.ndarray) -> np.ndarray:
            X = self._decode(c).astype(np.float32, copy=False)
            return np.hstack([X, (X * X).sum(axis=1, keepdims=True)])

        return chunked_search(decode_aug, codes, aug_q, k, "ip")

    def _scan_tables(self, queries: np.ndarray, norm_weight: float) -> tuple[np.ndarray, np.ndarray] | None:
        """``(tables, const)`` with ``_scan``'s score ``= sum_j tables[256 j + code_j] + const
        - norm_weight * _scan_norms(code)``; None (the default) where the scan is not separable."""
        return None

    def _scan_norms(self, codes: np.ndarray) -> np.ndarray:
        return squared_norms(self._decode, codes).astype(np.float32)

    @abstractmethod
    def _get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Fitted state as (JSON-able metadata, named arrays)."""

    @abstractmethod
    def _set_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None: ...

    def _check_fitted(self) -> None:
        if not self.is_fitted:
            raise CodecError(f"codec {type(self).__name__} is not fitted; call fit(X) first")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(spec={self.spec!r}, metric={self.metric!r})"
