"""Distance-preserving learned scalar quantizer: ``NSQ<p>x<b>``.

A learned projection to ``p`` dimensions, ``b``-bit uniform codes per dimension with a learned
step and offset, and a learned linear decoder, trained so each item keeps its neighbours:

- loss: squared error, or the anisotropic (ScaNN) error for inner-product search, plus
  listwise neighbour distillation;
- quantization-aware training: the forward pass rounds to the code grid and gradients pass
  straight through (STE), so the projection learns what survives quantization; with
  ``qat=False`` it trains unquantized and is rounded afterwards (post-training quantization);
- calibration: on a held-out split, each dimension's step/offset and then the decoder are
  refitted by least squares to the integer codes actually produced.

The projection starts from PCA followed by a random rotation, which spreads variance evenly
over the equally-sized per-dimension codes.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from torch import nn

from mmcompress.codecs.base import Codec, chunked_search
from mmcompress.codecs.learned.bits import field_bits, pack_fields, packed_size, unpack_fields
from mmcompress.codecs.learned.losses import anisotropic_error, listwise_distillation, ste_round
from mmcompress.codecs.learned.training import (
    TrainConfig,
    TrainResult,
    run_training,
    split_train_val,
)
from mmcompress.codecs.spec import SpecContext
from mmcompress.codecs.transforms import _pca, random_orthogonal
from mmcompress.errors import CodecError


class ScalarQuantNet(nn.Module):
    def __init__(self, mean: np.ndarray, A: np.ndarray, B: np.ndarray, lo: np.ndarray,
                 step: np.ndarray, levels: int) -> None:
        super().__init__()
        self.levels = levels
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.A = nn.Parameter(torch.as_tensor(A, dtype=torch.float32))
        self.B = nn.Parameter(torch.as_tensor(B, dtype=torch.float32))
        self.lo = nn.Parameter(torch.as_tensor(lo, dtype=torch.float32))
        self.log_step = nn.Parameter(torch.as_tensor(np.log(step), dtype=torch.float32))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) @ self.A

    def quantize(self, y: torch.Tensor, hard: bool = True) -> torch.Tensor:
        """Dequantized ``y``: rounded with a straight-through gradient when ``hard``."""
        step = self.log_step.exp()
        t = ((y - self.lo) / step).clamp(0, self.levels - 1)
        if hard:
            t = ste_round(t)
        return self.lo + t * step

    def reconstruct(self, y_hat: torch.Tensor) -> torch.Tensor:
        return self.mean + y_hat @ self.B


class _ScalarObjective:
    def __init__(self, c: LearnedScalarQuantizer) -> None:
        self.c = c

    def _loss(self, model: ScalarQuantNet, x: torch.Tensor, hard: bool) -> torch.Tensor:
        c = self.c
        y = model.project(x)
        x_hat = model.reconstruct(model.quantize(y) if hard else y)
        err = (anisotropic_error(x, x_hat, c.eta) if c.eta != 1.0
               else (x - x_hat).pow(2).sum(-1).mean())
        loss = err * c.scale_
        if c.distill > 0:
            loss = loss + c.distill * listwise_distillation(x, x_hat, c.temperature, c.metric)
        return loss

    def batch_loss(self, model: ScalarQuantNet, xb: torch.Tensor, epoch: int) -> torch.Tensor:
        return self._loss(model, xb, hard=self.c.qat)

    def val_loss(self, model: ScalarQuantNet, xv: torch.Tensor, epoch: int) -> float:
        return float(self._loss(model, xv, hard=self.c.qat))


class LearnedScalarQuantizer(Codec):
    """``NSQ<p>x<b>``: ``p`` learned dimensions of ``b`` bits each, ``ceil(p*b/8)`` bytes.

    Parameters
    ----------
    qat : train through the rounding (straight-through) instead of rounding afterwards.
    calibrate : least-squares refit of steps/offsets and decoder on the validation split.
    eta : anisotropic weight of the error along each item (1 = squared error).
    distill, temperature : listwise neighbour distillation weight and temperature.
    """

    kind = "learned_scalar"

    def __init__(self, p: int, nbits: int = 4, *, qat: bool = True, calibrate: bool = True,
                 eta: float = 1.0, distill: float = 1.0, temperature: float = 0.05,
                 metric: str = "ip", train: TrainConfig | dict[str, Any] | None = None,
                 max_train_rows: int | None = 20000, random_state: int = 0,
                 num_threads: int | None = None, progress: bool = False) -> None:
        super().__init__(metric)
        if p < 1 or not 1 <= nbits <= 8:
            raise CodecError(f"NSQ needs p >= 1 and 1 <= nbits <= 8; found p={p}, nbits={nbits}")
        if eta < 1.0 or distill < 0:
            raise CodecError(f"NSQ needs eta >= 1 and distill >= 0; found {eta}, {distill}")
        self.p, self.nbits = p, nbits
        self.qat, self.calibrate = qat, calibrate
        self.eta, self.distill, self.temperature = float(eta), float(distill), float(temperature)
        self.train = train if isinstance(train, TrainConfig) else TrainConfig.from_dict(
            {"epochs": 30, "batch_size": 512, "lr": 2e-3, **(train or {})})
        self.max_train_rows = max_train_rows
        self.random_state, self.num_threads, self.progress = random_state, num_threads, progress

    @property
    def spec(self) -> str:
        return f"NSQ{self.p}x{self.nbits}"

    @property
    def code_size(self) -> int:
        return packed_size(self.p, self.nbits)

    @property
    def field_bits(self) -> list[int]:
        return field_bits(self.p, self.nbits)

    def _fit(self, X: np.ndarray) -> None:
        n, d = X.shape
        if self.p > d:
            raise CodecError(f"{self.spec}: p={self.p} exceeds the input dimension d={d}")
        if n < 2:
            raise CodecError(f"{self.spec} needs at least 2 training rows; found {n}")
        if self.max_train_rows is not None and n > self.max_train_rows:
            rng = np.random.default_rng(self.random_state)
            X = X[np.sort(rng.choice(n, self.max_train_rows, replace=False))]
        cfg = TrainConfig(**asdict(self.train))
        cfg.seed = self.random_state if self.train.seed == 0 else self.train.seed
        cfg.progress = cfg.progress or self.progress
        if cfg.num_threads is None:
            cfg.num_threads = self.num_threads
        mean, V, _ = _pca(X, self.p)
        A = V @ random_orthogonal(self.p, cfg.seed)
        Y = (X - mean) @ A
        levels = 1 << self.nbits
        lo, hi = np.quantile(Y, 0.005, axis=0), np.quantile(Y, 0.995, axis=0)
        step = np.maximum((hi - lo) / max(levels - 1, 1), 1e-8)
        self.scale_ = 1.0 / max(float(((X - mean) ** 2).sum(1).mean()), 1e-12)
        self.net_ = ScalarQuantNet(mean, A, A.T, lo, step, levels)
        Xt = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
        Xtr, Xval = split_train_val(Xt, cfg)
        self.train_result_: TrainResult = run_training(self.net_, _ScalarObjective(self), Xtr, Xval,
                                                       cfg, name=self.spec)
        with torch.no_grad():
            self.net_.eval()
            self.mean_ = self.net_.mean.numpy().copy()
            self.A_ = self.net_.A.detach().numpy().copy()
            self.B_ = self.net_.B.detach().numpy().copy()
            self.lo_ = self.net_.lo.detach().numpy().copy()
            self.step_ = self.net_.log_step.exp().detach().numpy().copy()
        self.levels_ = np.arange(levels, dtype=np.float32)[None, :] * self.step_[:, None] + self.lo_[:, None]
        self.offset_ = self.mean_.copy()
        if self.calibrate:
            cal = Xval.numpy() if len(Xval) >= 4 * self.p else Xtr.numpy()
            self._calibrate(cal)

    def _calibrate(self, X: np.ndarray) -> None:
        """Least squares: per-dimension level values, then the decoder, on real codes."""
        y = (X - self.mean_) @ self.A_
        q = self._codes_int(X)
        for j in range(self.p):
            counts = np.bincount(q[:, j], minlength=len(self.levels_[j]))
            sums = np.bincount(q[:, j], weights=y[:, j], minlength=len(self.levels_[j]))
            used = counts > 0
            self.levels_[j, used] = (sums[used] / counts[used]).astype(np.float32)
        y_hat = self._dequant(q)
        design = np.concatenate([y_hat, np.ones((len(y_hat), 1), np.float32)], axis=1).astype(np.float64)
        ridge = 1e-3 * len(design) * np.eye(design.shape[1])
        sol = np.linalg.solve(design.T @ design + ridge, design.T @ (X - self.mean_).astype(np.float64))
        self.B_ = sol[:-1].astype(np.float32)
        self.offset_ = (self.mean_ + sol[-1]).astype(np.float32)

    def _codes_int(self, X: np.ndarray) -> np.ndarray:
        y = (X - self.mean_) @ self.A_
        t = np.rint((y - self.lo_) / self.step_)
        return np.clip(t, 0, (1 << self.nbits) - 1).astype(np.int64)

    def _dequant(self, q: np.ndarray) -> np.ndarray:
        return self.levels_[np.arange(self.p), q]

    def _encode(self, X: np.ndarray) -> np.ndarray:
        return pack_fields(self._codes_int(X), self.nbits)

    def _decode(self, codes: np.ndarray) -> np.ndarray:
        return self.offset_ + self._dequant(unpack_fields(codes, self.p, self.nbits)) @ self.B_

    def _search(self, codes: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return chunked_search(self._decode, codes, queries, k, self.metric)

    def _get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        meta = {"p": self.p, "nbits": self.nbits, "qat": self.qat, "calibrate": self.calibrate,
                "eta": self.eta, "distill": self.distill, "temperature": self.temperature,
                "train": asdict(self.train),
                "train_result": {k: v for k, v in asdict(self.train_result_).items() if k != "history"}}
        arrays = {"mean": self.mean_, "A": self.A_, "B": self.B_, "lo": self.lo_,
                  "step": self.step_, "levels": self.levels_, "offset": self.offset_}
        return meta, arrays

    def _set_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.qat, self.calibrate = bool(meta["qat"]), bool(meta["calibrate"])
        self.eta, self.distill = float(meta["eta"]), float(meta["distill"])
        self.temperature = float(meta["temperature"])
        self.train = TrainConfig.from_dict(meta["train"])
        self.train_result_ = TrainResult(**meta["train_result"])
        for key in ("mean", "A", "B", "lo", "step", "levels", "offset"):
            setattr(self, f"{key}_", arrays[key])
        if self.A_.shape[1] != self.p or self.levels_.shape != (self.p, 1 << self.nbits):
            raise CodecError(f"{self.spec}: saved arrays do not match p={self.p}, nbits={self.nbits}")


def build_nsq(m: re.Match[str], ctx: SpecContext) -> Codec:
    o = ctx.options
    kwargs = {k: o[f"nsq_{k}"] for k in ("qat", "calibrate", "eta", "distill", "temperature")
              if f"nsq_{k}" in o}
    train = {k: v for k, v in dict(o.get("train", {}) or {}).items()
             if k in TrainConfig.__dataclass_fields__}
    return LearnedScalarQuantizer(int(m["p"]), int(m["nbits"] or 4), metric=ctx.metric,
                                  random_state=ctx.random_state, progress=ctx.progress,
                                  num_threads=o.get("num_threads"), train=train or None, **kwargs)


NSQ_PATTERN = r"NSQ(?P<p>\d+)(?:x(?P<nbits>\d+))?"
