"""Non-uniform scalar quantization with greedy bit allocation: ``NUQ<B>`` / ``NUQ<B>_e<lambda>``.

Each dimension gets its own Lloyd-Max level set (1-D k-means on the training values, all
dimensions fitted at once on sorted columns with prefix sums). Bits go to dimensions one at a
time by greedy marginal allocation: the next bit goes where it removes the most weighted
error, the weight being the dimension's share of inner-product error (its second moment, since
``E[<q, e>^2] = sum_i E[q_i^2] E[e_i^2]`` for independent errors) or 1 for L2. Dimensions that
never win a bit are stored as their mean. Exactly ``8 * B`` bits are spent and packed MSB-first.

``lambda > 0`` makes the code entropy-aware: one bit of code entropy (what
:func:`mmcompress.codecs.entropy.pack` stores) is priced at ``lambda`` times the error the last
fixed-rate bit removes (the slope of the rate-distortion curve at the budget). Every dimension
and bit depth gets entropy-constrained Lloyd levels at several strengths (frequent cells grow,
so their fields are skewed), and the allocation minimises ``weighted error + price * entropy``
over bit depths and strengths together, under the same exact ``8 * B`` bits. Larger ``lambda``
stores fewer bytes for more error; at 1-1.5 on embedding catalogs packing saves 20-35% of the
stored bytes and beats plain NUQ in recall per stored byte.
Put a ``PCA`` transform in front: decorrelated, energy-sorted inputs are what scalar codes and
bit allocation are designed for.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from mmcompress.codecs.base import Codec, chunked_search
from mmcompress.codecs.faiss_quantizers import subsample_rows
from mmcompress.codecs.spec import SpecContext, register_quantizer
from mmcompress.errors import CodecError


class _SortedColumns:
    """Sorted rows laid end to end with offsets, so one ``searchsorted`` serves every row."""

    def __init__(self, cols: np.ndarray) -> None:
        self.u, self.n = cols.shape
        self.lo, self.hi = cols.min(axis=1), cols.max(axis=1)
        span = float((self.hi - self.lo).max()) + 1.0
        self.shift = (np.arange(self.u) * span - self.lo)[:, None]
        self.flat = (cols + self.shift).ravel()

    def positions(self, values: np.ndarray) -> np.ndarray:
        """Per row, how many sorted entries are <= each value."""
        v = np.clip(values, self.lo[:, None], self.hi[:, None]) + self.shift
        pos = np.searchsorted(self.flat, v.ravel(), side="right").reshape(values.shape)
        return pos - (np.arange(self.u) * self.n)[:, None]


def lloyd_max(cols: np.ndarray, n_levels: int, entropy_weight: float = 0.0, iters: int = 30,
              scale: np.ndarray | None = None,
              init: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """1-D (entropy-constrained) Lloyd-Max quantizers for every row of ``cols`` (u, n), sorted.

    With ``entropy_weight`` > 0 a value goes to the level minimising
    ``(x - c)^2 + entropy_weight * scale * log2(1 / p(c))``; ``scale`` (u,) is each row's
    distortion unit (its fixed-rate MSE, so the weight means the same at every bit depth).
    Returns levels (u, L), thresholds (u, L-1), mean squared error (u,) and entropy in bits (u,).
    """
    u, n = cols.shape
    index = _SortedColumns(cols)
    P1 = np.concatenate([np.zeros((u, 1)), np.cumsum(cols, axis=1)], axis=1)
    P2 = np.concatenate([np.zeros((u, 1)), np.cumsum(cols * cols, axis=1)], axis=1)
    var = cols.var(axis=1)[:, None] + 1e-30
    unit = var if scale is None else np.maximum(scale, 1e-30)[:, None]
    qpos = ((np.arange(n_levels) + 0.5) / n_levels * n).astype(int)
    levels = cols[:, qpos].copy() if init is None else init.copy()
    counts = np.full((u, n_levels), n / n_levels)
    bounds = np.zeros((u, n_levels + 1), dtype=np.int64)
    for _ in range(iters):
        thr = _thresholds(levels, counts, n, entropy_weight, unit)
        bounds[:, 1:-1] = index.positions(thr)
        bounds[:, -1] = n
        counts = np.diff(bounds, axis=1).astype(np.float64)
        S1 = np.diff(np.take_along_axis(P1, bounds, axis=1), axis=1)
        new = np.where(counts > 0, S1 / np.maximum(counts, 1), levels)
        if np.allclose(new, levels, rtol=0, atol=1e-9 * np.sqrt(var)):
            levels = new
            break
        levels = np.maximum.accumulate(new, axis=1)
    thr = _thresholds(levels, counts, n, entropy_weight, unit)
    bounds[:, 1:-1] = index.positions(thr)
    counts = np.diff(bounds, axis=1).astype(np.float64)
    S1 = np.diff(np.take_along_axis(P1, bounds, axis=1), axis=1)
    S2 = np.diff(np.take_along_axis(P2, bounds, axis=1), axis=1)
    mse = np.maximum((S2 - 2 * levels * S1 + levels * levels * counts).sum(axis=1) / n, 0.0)
    p = counts / n
    entropy = -(p * np.log2(np.where(p > 0, p, 1.0))).sum(axis=1)
    return levels, thr, mse, entropy


def _thresholds(levels: np.ndarray, counts: np.ndarray, n: int, lam: float, unit: np.ndarray) -> np.ndarray:
    thr = 0.5 * (levels[:, 1:] + levels[:, :-1])
    if lam > 0:
        cost = -np.log2(np.maximum(counts, 0.5) / n)
        gap = np.maximum(levels[:, 1:] - levels[:, :-1], 1e-9 * np.sqrt(unit))
        thr = thr + lam * unit * (cost[:, 1:] - cost[:, :-1]) / (2 * gap)
    return np.maximum.accumulate(thr, axis=1)


def marginal_gain(distortion: np.ndarray, bits: np.ndarray) -> float:
    """The error the last allocated bit removed (the slope of the rate-distortion curve at the
    budget): what one bit is worth to this allocation."""
    D = np.minimum.accumulate(distortion, axis=1)
    used = np.flatnonzero(bits)
    if len(used) == 0:
        return 0.0
    b = bits[used]
    return float((D[used, b - 1] - D[used, b]).min())


def allocate_bits(cost: np.ndarray, total_bits: int) -> np.ndarray:
    """Greedy marginal allocation of ``total_bits`` over dims; ``cost`` (d, max_bits + 1) is
    each dimension's (already weighted) error, or error plus priced entropy, per bit depth."""
    d, width = cost.shape
    D = np.minimum.accumulate(cost, axis=1)
    bits = np.zeros(d, dtype=np.int64)
    rows = np.arange(d)
    for _ in range(total_bits):
        room = bits < width - 1
        gain = np.where(room, D[rows, bits] - D[rows, np.minimum(bits + 1, width - 1)], -np.inf)
        bits[int(np.argmax(gain))] += 1
    return bits


# Entropy-constrained Lloyd weights tried for every (dimension, bit depth) of an entropy-aware fit.
_LLOYD_ENTROPY_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)


class NonUniformQuantizer(Codec):
    """Per-dimension Lloyd-Max levels with greedy bit allocation into exactly ``budget_bytes``."""

    kind = "nuq"
    supports_norm_weight = True

    def __init__(self, budget_bytes: int, entropy_weight: float = 0.0, max_bits: int = 8,
                 metric: str = "ip", max_train_rows: int | None = 16384, lloyd_iters: int = 30,
                 random_state: int = 0) -> None:
        super().__init__(metric)
        if budget_bytes < 1:
            raise CodecError(f"NUQ budget must be >= 1 byte; found {budget_bytes}")
        if not 1 <= max_bits <= 8:
            raise CodecError(f"NUQ max_bits must be in 1..8; found {max_bits}")
        if entropy_weight < 0:
            raise CodecError(f"NUQ entropy weight must be >= 0; found {entropy_weight}")
        self.budget_bytes = budget_bytes
        self.entropy_weight = entropy_weight
        self.max_bits = max_bits
        self.max_train_rows = max_train_rows
        self.lloyd_iters = lloyd_iters
        self.random_state = random_state

    @property
    def spec(self) -> str:
        return f"NUQ{self.budget_bytes}" + (f"_e{self.entropy_weight:g}" if self.entropy_weight else "")

    @property
    def code_size(self) -> int:
        return self.budget_bytes

    @property
    def field_bits(self) -> list[int]:
        self._check_fitted()
        return [int(b) for b in self.bits_[self.used_]]

    # ---- fitting ---------------------------------------------------------------------------
    def _fit(self, X: np.ndarray) -> None:
        n, d = X.shape
        total = 8 * self.budget_bytes
        if d * self.max_bits < total:
            raise CodecError(f"{self.spec}: {total} bits do not fit in d={d} dims at <= {self.max_bits} "
                             f"bits each; use a smaller budget or more dimensions")
        Xs = subsample_rows(X, self.max_train_rows, self.random_state).astype(np.float64)
        max_bits = min(self.max_bits, int(np.floor(np.log2(max(len(Xs), 2)))))
        if d * max_bits < total:
            raise CodecError(f"{self.spec}: {len(Xs)} training rows are too few for {total} bits over "
                             f"d={d} dims (at most {max_bits} bits per dim)")
        self.mean_ = Xs.mean(axis=0)
        options = (0.0,) if self.entropy_weight == 0 else _LLOYD_ENTROPY_WEIGHTS
        distortion = np.empty((d, max_bits + 1, len(options)))
        distortion[:, 0, :] = Xs.var(axis=0)[:, None]
        entropy = np.zeros((d, max_bits + 1, len(options)))
        tables: dict[tuple[int, int], list[tuple[np.ndarray, np.ndarray]]] = {}
        for start in range(0, d, 128):  # blocks of dimensions bound the memory of sorted columns
            cols = np.sort(Xs[:, start:start + 128].T, axis=1)
            rows = slice(start, start + len(cols))
            for b in range(1, max_bits + 1):
                lev0, thr0, mse0, ent0 = lloyd_max(cols, 1 << b, 0.0, self.lloyd_iters)
                for j, lam in enumerate(options):
                    lev, thr, mse, ent = (lev0, thr0, mse0, ent0) if lam == 0 else lloyd_max(
                        cols, 1 << b, lam, self.lloyd_iters, scale=mse0, init=lev0)
                    distortion[rows, b, j], entropy[rows, b, j] = mse, ent
                    tables.setdefault((b, j), []).append((lev, thr))
        fitted = {key: (np.concatenate([t[0] for t in v]), np.concatenate([t[1] for t in v]))
                  for key, v in tables.items()}
        weights = (Xs * Xs).mean(axis=0) if self.metric == "ip" else np.ones(d)
        weighted = weights[:, None, None] * distortion
        bits = allocate_bits(weighted[:, :, 0], total)
        if self.entropy_weight > 0:
            price = self.entropy_weight * marginal_gain(weighted[:, :, 0], bits)
            cost = weighted + price * entropy
            bits = allocate_bits(cost.min(axis=2), total)
            choice = cost.argmin(axis=2)[np.arange(d), bits]
        else:
            choice = np.zeros(d, dtype=np.int64)
        pick = {i: fitted[(int(b), int(choice[i]))] for i, b in enumerate(bits) if b}
        self._set_tables(bits, self.mean_, {i: v[0][i] for i, v in pick.items()},
                         {i: v[1][i] for i, v in pick.items()})
        self.expected_bits_ = float(entropy[np.arange(d), bits, choice].sum())
        self.weighted_error_ = float(weighted[np.arange(d), bits, choice].sum())

    def _set_tables(self, bits: np.ndarray, mean: np.ndarray, levels: dict[int, np.ndarray],
                    thresholds: dict[int, np.ndarray]) -> None:
        self.bits_ = np.asarray(bits, dtype=np.int64)
        self.mean_ = np.asarray(mean, dtype=np.float64)
        self.used_ = np.flatnonzero(self.bits_)
        used = self.used_
        L = 1 << self.bits_[used]
        self._level_start = np.concatenate([[0], np.cumsum(L)[:-1]]).astype(np.int64)
        self.levels_ = np.concatenate([levels[i] for i in used]).astype(np.float32)
        self.thresholds_ = np.concatenate([thresholds[i] for i in used]).astype(np.float64)
        self._thr_start = np.concatenate([[0], np.cumsum(L - 1)[:-1]]).astype(np.int64)
        thr_rows = [thresholds[i] for i in used]
        self._lo = np.array([t[0] for t in thr_rows]) - 1.0
        self._hi = np.array([t[-1] for t in thr_rows]) + 1.0
        self._span = float((self._hi.max() - self._lo.min()) + 1.0)
        self._shift = np.arange(len(used)) * self._span
        self._shifted_thr = np.concatenate([t + s for t, s in zip(thr_rows, self._shift, strict=True)])
        # bit positions of each field inside an unpacked uint8 (MSB-first), for packing
        b_used = self.bits_[used]
        self._pick = np.concatenate([i * 8 + np.arange(8 - b, 8) for i, b in enumerate(b_used)])
        self._field_start = np.concatenate([[0], np.cumsum(b_used)[:-1]]).astype(np.int64)
        self._bit_weight = np.concatenate([1 << np.arange(b - 1, -1, -1) for b in b_used]).astype(np.uint16)
        self._const = self.mean_.copy()
        self._const[used] = 0.0

    # ---- coding ----------------------------------------------------------------------------
    def _encode(self, X: np.ndarray) -> np.ndarray:
        out = np.empty((len(X), self.code_size), dtype=np.uint8)
        for start in range(0, len(X), 16384):
            Y = X[start:start + 16384, self.used_].astype(np.float64)
            Y = np.clip(Y, self._lo, self._hi) + self._shift
            idx = np.searchsorted(self._shifted_thr, Y, side="right") - self._thr_start
            fields = np.unpackbits(idx.astype(np.uint8)[:, :, None], axis=2).reshape(len(Y), -1)
            out[start:start + len(Y)] = np.packbits(fields[:, self._pick], axis=1)
        return out

    def field_values(self, codes: np.ndarray) -> np.ndarray:
        """The level index of every used dimension, (n, n_used) uint8."""
        bits = np.unpackbits(codes, axis=1).astype(np.uint16) * self._bit_weight
        return np.add.reduceat(bits, self._field_start, axis=1).astype(np.uint8)

    def _decode_used(self, codes: np.ndarray) -> np.ndarray:
        return self.levels_[self._level_start + self.field_values(codes)]

    def _decode(self, codes: np.ndarray) -> np.ndarray:
        out = np.repeat(self.mean_.astype(np.float32)[None, :], len(codes), axis=0)
        out[:, self.used_] = self._decode_used(codes)
        return out

    def _scan(self, codes: np.ndarray, queries: np.ndarray, k: int,
              norm_weight: float) -> tuple[np.ndarray, np.ndarray]:
        """Decode only the dimensions that carry bits (blocks of rows, then BLAS); dimensions
        stored as their mean add a per-query constant."""
        q_used = queries[:, self.used_]
        if norm_weight:
            q_used = np.hstack([q_used, np.full((len(q_used), 1), -norm_weight, dtype=np.float32)])

            def decode(c: np.ndarray) -> np.ndarray:
                Y = self._decode_used(c)
                return np.hstack([Y, (Y * Y).sum(axis=1, keepdims=True)])
        else:
            decode = self._decode_used
        D, ids = chunked_search(decode, codes, np.ascontiguousarray(q_used, dtype=np.float32), k, "ip")
        const = queries.astype(np.float64) @ self._const - norm_weight * float(self._const @ self._const)
        return (D + const[:, None]).astype(np.float32), ids

    # ---- state -----------------------------------------------------------------------------
    def _get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        meta = {"expected_bits": self.expected_bits_, "weighted_error": self.weighted_error_}
        return meta, {"bits": self.bits_, "mean": self.mean_, "levels": self.levels_,
                      "thresholds": self.thresholds_}

    def _set_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        bits = arrays["bits"].astype(np.int64)
        if int(bits.sum()) != 8 * self.budget_bytes:
            raise CodecError(f"{self.spec}: saved allocation spends {int(bits.sum())} bits, "
                             f"not {8 * self.budget_bytes}")
        used = np.flatnonzero(bits)
        L = 1 << bits[used]
        lev = np.split(arrays["levels"], np.cumsum(L)[:-1])
        thr = np.split(arrays["thresholds"], np.cumsum(L - 1)[:-1])
        self._set_tables(bits, arrays["mean"], dict(zip(used, lev, strict=True)),
                         dict(zip(used, thr, strict=True)))
        self.expected_bits_ = float(meta["expected_bits"])
        self.weighted_error_ = float(meta["weighted_error"])


def _build_nuq(m: re.Match[str], ctx: SpecContext) -> Codec:
    lam = float(m["lam"]) if m["lam"] else float(ctx.options.get("entropy_weight", 0.0))
    return NonUniformQuantizer(int(m["B"]), lam, metric=ctx.metric, random_state=ctx.random_state)


def _nuq_candidates(budget: int, d: int, metric: str) -> list[str]:
    return [f"PCA,NUQ{budget}"] if d * 8 >= 8 * budget else []


register_quantizer(r"NUQ(?P<B>\d+)(?:_e(?P<lam>\d*\.?\d+))?", _build_nuq, auto_candidates=_nuq_candidates)
