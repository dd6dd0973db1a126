"""Sign-bit codes: ``BIN<bits>`` (PCA + ITQ rotation) and ``BIN<bits>_rr`` (random rotation);
a ``_f16`` suffix keeps the (d, bits) projection in float16, ``_i8`` in int8 times one scale.

One bit per projected dimension, packed MSB-first, ``bits / 8`` bytes per item: the
ultra-compact coarse tier of the cascade index. Two scans:

- :meth:`BinaryCodec.search` is asymmetric: the float query meets each code's reconstruction
  ``mean + (alpha * sign) @ W.T``. Every byte of the code is a choice among 256 sign patterns
  of 8 dimensions, so the scan is a product-quantizer look-up table (faiss ``IndexPQ`` with
  the sign patterns as centroids): 256 entries per byte, one add per byte per item.
- :meth:`BinaryCodec.search_hamming` binarizes the query too and ranks by popcount distance
  (faiss ``IndexBinaryFlat``) - the cheapest scan, for shortlists that get reranked.

The projection is the codec's one table, ``d * bits`` floats: on a catalog of a few thousand
items it outweighs the codes (474 x 256 float32 is 59 bytes per item over 8,242 items). With
``_f16`` it is rounded to float16 *before* anything is encoded, so codes, scans and decode all
use the same (rounded) projection and nothing is approximated later; products widen it per call.
With ``_i8`` it is ``scale * W8``, ``W8`` int8 and one float for the whole matrix (a quarter of
float32; the entries of an orthonormal projection share one range, so no per-column scales):
the signs of ``x W`` are the signs of ``x W8``, and a uniform scale changes no ranking of code
space routing; the scale folds into the sign weights ``alpha``.
"""

from __future__ import annotations

import re
import threading
from typing import Any

import numpy as np

from mmcompress.codecs.base import Codec, check_codes, check_vectors
from mmcompress.codecs.faiss_quantizers import subsample_rows
from mmcompress.codecs.halfmath import matmul_half
from mmcompress.codecs.spec import SpecContext, register_quantizer
from mmcompress.codecs.transforms import _pca, random_orthogonal
from mmcompress.errors import CodecError


def itq_rotation(V: np.ndarray, n_iter: int = 50, random_state: int = 0) -> np.ndarray:
    """Iterative quantization (Gong & Lazebnik): the rotation that best aligns V with its signs."""
    R = random_orthogonal(V.shape[1], random_state)
    for _ in range(n_iter):
        B = np.where(V @ R >= 0, 1.0, -1.0)
        S, _, Wt = np.linalg.svd(V.T @ B)
        R = S @ Wt
    return R


def sign_patterns(alpha: np.ndarray) -> np.ndarray:
    """(bits/8, 256, 8) centroids: byte value -> its 8 signs (MSB first) times ``alpha``."""
    signs = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).astype(np.float32) * 2 - 1
    return signs[None, :, :] * alpha.reshape(-1, 1, 8).astype(np.float32)


class BinaryCodec(Codec):
    """Sign bits of a learned (ITQ) or random rotation, with asymmetric and Hamming scans."""

    kind = "binary"
    is_binary = True
    supports_norm_weight = True

    def __init__(self, bits: int, rotation: str = "itq", metric: str = "ip",
                 max_train_rows: int | None = 20000, random_state: int = 0, half: bool = False,
                 int8: bool = False) -> None:
        super().__init__(metric)
        if bits < 8 or bits % 8:
            raise CodecError(f"BIN needs a positive multiple of 8 bits; found {bits}")
        if rotation not in ("itq", "rr"):
            raise CodecError(f"BIN rotation must be 'itq' or 'rr'; found {rotation!r}")
        self.bits = bits
        self.rotation = rotation
        self.max_train_rows = max_train_rows
        self.random_state = random_state
        if half and int8:
            raise CodecError("BIN: a projection is held in float16 (_f16) or in int8 (_i8), not both")
        self.half = half
        self.int8 = int8
        self._lock = threading.Lock()

    @property
    def spec(self) -> str:
        return (f"BIN{self.bits}" + ("_rr" if self.rotation == "rr" else "") + ("_f16" if self.half else "")
                + ("_i8" if self.int8 else ""))

    @property
    def code_size(self) -> int:
        return self.bits // 8

    def _fit(self, X: np.ndarray) -> None:
        n, d = X.shape
        if n < 2:
            raise CodecError(f"{self.spec} needs at least 2 training rows; found {n}")
        if self.rotation == "itq" and self.bits > d:
            raise CodecError(f"{self.spec}: ITQ gives at most d={d} bits; use BIN{self.bits}_rr")
        Xs = subsample_rows(X, self.max_train_rows, self.random_state).astype(np.float64)
        mean = Xs.mean(axis=0)
        if self.rotation == "itq":
            _, V, _ = _pca(Xs, self.bits)
            W = V @ itq_rotation((Xs - mean) @ V, random_state=self.random_state)
        else:
            reps = -(-self.bits // d)
            W = np.concatenate([random_orthogonal(d, self.random_state + r) for r in range(reps)],
                               axis=1)[:, :self.bits]
        scale = 1.0
        if self.half:
            W = W.astype(np.float16).astype(np.float64)
        elif self.int8:
            scale = max(float(np.abs(W).max()) / 127, 1e-30)
            W = np.clip(np.rint(W / scale), -127, 127)  # the stored int8 values, in float64
        proj = (Xs - mean) @ (W * scale)
        alpha = np.maximum(np.abs(proj).mean(axis=0), 1e-12)
        self._set_params(mean, W, alpha, scale)

    def _set_params(self, mean: np.ndarray, W: np.ndarray, alpha: np.ndarray, scale: float = 1.0) -> None:
        self.mean_ = np.asarray(mean, dtype=np.float32)
        self.W_ = np.ascontiguousarray(W, dtype=np.float16 if self.half else np.int8 if self.int8 else np.float32)
        self.alpha_ = np.asarray(alpha, dtype=np.float32)
        self.wscale_ = float(scale)  # the projection is wscale_ * W_ (1 but for _i8)
        W32 = self.W_.astype(np.float32) * np.float32(scale)
        # float16 rounding (relative 2^-11 per entry) moves the Gram matrix by about 1e-4; int8
        # rounding (|error| <= scale / 2 per entry) by at most scale * sqrt(d) + d scale^2 / 4 per
        # entry, the bound for unit columns: an orthonormal projection stays one up to its rounding
        d = W32.shape[0]
        atol = 2e-3 if self.half else (scale * np.sqrt(d) + d * scale * scale / 4 + 1e-4) if self.int8 else 1e-4
        self._orthonormal = bool(np.allclose(W32.T @ W32, np.eye(self.bits), atol=atol))
        # the sign weights in the stored projection's units: x W = wscale_ (x W_)
        self._alpha_w = (self.alpha_ * np.float32(scale)).astype(np.float32)
        # a view where W is orthonormal: a second (d, bits) copy would double the codec's RAM
        # (int8: widened per decode instead, decode not being on a search path)
        self._recon = (None if self.int8 else self.W_.T) if self._orthonormal \
            else np.linalg.pinv(W32).astype(np.float32)
        self._scan_index = None  # built by the first scan (see _sign_pq)

    def _sign_pq(self) -> Any:
        """The faiss product quantizer whose codebooks are the sign patterns, for :meth:`_scan`;
        built on first use: its tables (8 floats for each of 256 values of each code byte,
        ``8 * bits`` KiB) serve this codec's own scan only, so an index that scores the codes
        with its own kernels never holds them. Call under ``self._lock``."""
        import faiss

        if self._scan_index is None:
            index = faiss.IndexPQ(self.bits, self.bits // 8, 8, faiss.METRIC_INNER_PRODUCT)
            faiss.copy_array_to_vector(sign_patterns(self._alpha_w).ravel(), index.pq.centroids)
            index.is_trained = True
            self._scan_index = index
        return self._scan_index

    def _project(self, X: np.ndarray) -> np.ndarray:
        return matmul_half(X - self.mean_, self.W_)

    def _encode(self, X: np.ndarray) -> np.ndarray:
        return np.packbits(self._project(X) > 0, axis=1)

    def _decode(self, codes: np.ndarray) -> np.ndarray:
        signs = np.unpackbits(codes, axis=1).astype(np.float32) * 2 - 1
        if not self._orthonormal:  # the pseudo-inverse of the projection itself (scale included)
            return self.mean_ + (signs * self.alpha_) @ self._recon
        recon = self.W_.T.astype(np.float32) if self._recon is None else self._recon
        return self.mean_ + (signs * self._alpha_w) @ recon

    def _scan(self, codes: np.ndarray, queries: np.ndarray, k: int,
              norm_weight: float) -> tuple[np.ndarray, np.ndarray]:
        """Sign-pattern look-up tables. With orthonormal projections every code has the same
        ``|y_hat|``, so the norm term is linear in the code and folds into the query."""
        if not self._orthonormal:
            return super()._scan(codes, queries, k, norm_weight)
        mapped = matmul_half(queries - 2.0 * norm_weight * self.mean_, self.W_)
        const = queries @ self.mean_ - norm_weight * float(self.mean_ @ self.mean_ + self.alpha_ @ self.alpha_)
        with self._lock:
            index = self._sign_pq()
            index.reset()
            try:
                index.add_sa_codes(codes)
                D, ids = index.search(np.ascontiguousarray(mapped, dtype=np.float32), k)
            finally:
                index.reset()
        return D + const[:, None].astype(np.float32), ids

    def sign_projection(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """``(mean, W, alpha)`` with ``decode(code) = mean + (signs * alpha) @ W.T``, where the
        projection is orthonormal (else the reconstruction uses a pseudo-inverse: None). ``W`` is
        the stored projection (float16 or int8 for ``_f16`` / ``_i8``); an ``_i8`` scale is in
        ``alpha``."""
        self._check_fitted()
        return (self.mean_, self.W_, self._alpha_w) if self._orthonormal else None

    def encode_queries(self, queries: np.ndarray) -> np.ndarray:
        """Sign codes of float queries, for :meth:`search_hamming` or external popcount scans."""
        self._check_fitted()
        return self._encode(check_vectors(queries, d=self.d_, name="queries"))

    def search_hamming(self, codes: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Rank by Hamming distance between sign codes; scores are ``-distance`` (higher = closer)."""
        import faiss

        codes = check_codes(codes, self.code_size)
        qcodes = self.encode_queries(queries)
        k = min(k, len(codes))
        index = faiss.IndexBinaryFlat(self.bits)
        index.add(codes)
        D, ids = index.search(qcodes, k)
        return -D.astype(np.float32), ids

    def _get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return ({"wscale": self.wscale_} if self.int8 else {}), {"mean": self.mean_, "W": self.W_,
                                                                  "alpha": self.alpha_}

    def _set_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        if arrays["W"].shape[1] != self.bits:
            raise CodecError(f"{self.spec}: saved projection has {arrays['W'].shape[1]} columns")
        want = np.float16 if self.half else np.int8 if self.int8 else np.float32
        if arrays["W"].dtype != want:
            raise CodecError(f"{self.spec}: saved projection is {arrays['W'].dtype}; expected {np.dtype(want)}")
        scale = meta.get("wscale") if self.int8 else 1.0  # an _i8 file without its scale is refused
        if self.int8 and not (isinstance(scale, float) and np.isfinite(scale) and scale > 0):
            raise CodecError(f"{self.spec}: saved projection scale 'wscale' must be a positive float; found {scale!r}")
        self._set_params(arrays["mean"], arrays["W"], arrays["alpha"], scale)


def _build_bin(m: re.Match[str], ctx: SpecContext) -> Codec:
    return BinaryCodec(int(m["bits"]), "rr" if m["rr"] else "itq", ctx.metric,
                       random_state=ctx.random_state, half=m["prec"] == "_f16", int8=m["prec"] == "_i8")


register_quantizer(r"BIN(?P<bits>\d+)(?P<rr>_rr)?(?P<prec>_f16|_i8)?", _build_bin)
