"""Learned binary hashing: ``HASH<bits>``.

Starts from ITQ (PCA + the rotation that best aligns the projection with its signs, the
classical baseline also available as ``BIN<bits>``), then trains the projection ``W`` and a
linear decoder ``D`` (bits -> d) end to end:

- similarity preservation: listwise distillation between each item's softmaxed similarity row
  over the batch and the same row scored against the decoded soft codes (what the asymmetric
  search computes), plus a symmetric term on the code-to-code similarities (what a Hamming
  scan computes);
- a temperature schedule: soft bits ``tanh(beta * (x - mean) W)`` with ``beta`` rising
  geometrically from ``beta_start`` to ``beta_end``, so training ends near the hard signs;
- bit balance and decorrelation terms, so no bit collapses to a constant or copies another.

After training, a scale per bit and the output offset are refitted by least squares to the hard
bits of the validation split (calibration).
``bit_entropy_`` holds each bit's usage entropy (1 = used half the time). Search is
asymmetric (float query against decoded bits); :meth:`search_hamming` binarises the query too.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from torch import nn

from mmcompress.codecs.base import Codec, chunked_search
from mmcompress.codecs.learned.losses import (
    bit_balance,
    bit_decorrelation,
    listwise_distillation,
    ste_sign,
)
from mmcompress.codecs.learned.training import (
    TrainConfig,
    TrainResult,
    run_training,
    split_train_val,
)
from mmcompress.codecs.spec import SpecContext
from mmcompress.errors import CodecError


def itq_init(X: np.ndarray, bits: int, random_state: int = 0, n_iter: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """ITQ: (mean, W (d, bits)); bits beyond ``d`` get random orthogonal directions."""
    from mmcompress.codecs.binary import itq_rotation
    from mmcompress.codecs.transforms import _pca, random_orthogonal

    d = X.shape[1]
    Xd = X.astype(np.float64)
    mean = Xd.mean(0)
    k = min(bits, d)
    _, V, _ = _pca(Xd, k)
    W = V @ itq_rotation((Xd - mean) @ V, n_iter=n_iter, random_state=random_state)
    if bits > d:
        extra = np.concatenate([random_orthogonal(d, random_state + 1 + r)
                                for r in range(-(-(bits - d) // d))], axis=1)[:, :bits - d]
        W = np.concatenate([W, extra], axis=1)
    return mean, W


def bit_entropy(bits: np.ndarray) -> np.ndarray:
    """Per-bit usage entropy in bits (1.0 = on for half of the items, 0.0 = constant)."""
    p = np.clip(bits.mean(0), 1e-12, 1 - 1e-12)
    h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    return np.where((bits.mean(0) == 0) | (bits.mean(0) == 1), 0.0, h)


class HashNet(nn.Module):
    def __init__(self, mean: np.ndarray, W: np.ndarray, D: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.W = nn.Parameter(torch.as_tensor(W, dtype=torch.float32))
        self.bias = nn.Parameter(torch.zeros(W.shape[1]))
        self.D = nn.Parameter(torch.as_tensor(D, dtype=torch.float32))
        self.log_sym_scale = nn.Parameter(torch.zeros(()))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) @ self.W + self.bias

    def decode(self, b: torch.Tensor) -> torch.Tensor:
        return self.mean + b @ self.D


class _HashObjective:
    def __init__(self, codec: LearnedHash, scale: float, X_train: torch.Tensor | None = None) -> None:
        self.c = codec
        self.scale = scale
        self.X_train = X_train

    def _neighbour_loss(self, model: HashNet, xb: torch.Tensor, epoch: int) -> torch.Tensor:
        """Listwise distillation over each row's exact top-``k`` training neighbours: the ranking
        recall@10 measures is the order among close neighbours, which random in-batch rows
        seldom contain."""
        c, X = self.c, self.X_train
        k = min(c.neighbours, len(X) - 1)
        with torch.no_grad():
            sims = xb @ X.T if c.metric == "ip" else -torch.cdist(xb, X).pow(2)
            nbr = sims.topk(k + 1, dim=1).indices[:, 1:]
        cand = X[nbr]  # (B, k, d)
        bits, _ = self._train_bits(model, cand.reshape(-1, cand.shape[-1]), epoch)
        x_hat = model.decode(bits).reshape(cand.shape)
        if c.metric == "ip":
            s_true, s_hat = torch.einsum("bd,bkd->bk", xb, cand), torch.einsum("bd,bkd->bk", xb, x_hat)
        else:
            s_true = -(cand - xb[:, None]).pow(2).sum(-1)
            s_hat = -(x_hat - xb[:, None]).pow(2).sum(-1)
        p = torch.log_softmax(s_true / c.temperature, dim=-1)
        return torch.nn.functional.kl_div(torch.log_softmax(s_hat / c.temperature, dim=-1), p,
                                          log_target=True, reduction="batchmean")

    def beta(self, epoch: int) -> float:
        c = self.c
        t = epoch / max(1, c.train.epochs - 1)
        return c.beta_start * (c.beta_end / c.beta_start) ** t

    def _loss(self, model: HashNet, x: torch.Tensor, bits: torch.Tensor,
              soft: torch.Tensor | None = None) -> torch.Tensor:
        c = self.c
        soft = bits if soft is None else soft
        x_hat = model.decode(bits)
        loss = listwise_distillation(x, x_hat, c.temperature, c.metric)
        if c.symmetric > 0:
            target = torch.log_softmax((x @ x.T) / c.temperature, dim=-1)
            sym = (bits @ bits.T) / bits.shape[1] * model.log_sym_scale.exp() * (1.0 / c.temperature)
            loss = loss + c.symmetric * torch.nn.functional.kl_div(
                torch.log_softmax(sym, dim=-1), target, log_target=True, reduction="batchmean")
        loss = loss + c.recon * (x - x_hat).pow(2).sum(-1).mean() * self.scale
        loss = loss + c.balance * bit_balance(soft) + c.decorrelation * bit_decorrelation(soft)
        return loss

    def _train_bits(self, model: HashNet, x: torch.Tensor, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(bits, soft bits): with ``straight_through`` the hard signs forward and the tempered
        tanh's gradient backward (tanh keeps the sign of the logits), else the soft bits."""
        soft = torch.tanh(self.beta(epoch) * model.logits(x))
        return (ste_sign(soft) if self.c.straight_through else soft), soft

    def batch_loss(self, model: HashNet, xb: torch.Tensor, epoch: int) -> torch.Tensor:
        bits, soft = self._train_bits(model, xb, epoch)
        loss = self._loss(model, xb, bits, soft)
        if self.c.neighbours > 0 and self.X_train is not None:
            loss = loss + self._neighbour_loss(model, xb, epoch)
        return loss

    def val_loss(self, model: HashNet, xv: torch.Tensor, epoch: int) -> float:
        hard = torch.where(model.logits(xv) >= 0, 1.0, -1.0)
        return float(self._loss(model, xv, hard))


class LearnedHash(Codec):
    """``HASH<bits>``: ITQ-initialised, similarity-preserving learned sign bits.

    Parameters
    ----------
    temperature : softmax temperature of the similarity rows (cosine units).
    beta_start, beta_end : tanh sharpness at the first and last epoch (geometric schedule);
        logits start at unit scale, so ``beta`` is how hard the soft bits are.
    neighbours : rows' exact top-``neighbours`` training neighbours are distilled listwise
        (0 = in-batch distillation only).
    straight_through : forward the hard signs, backward the tempered tanh gradient (trains
        what the codes really are); False trains on the soft bits alone.
    symmetric : weight of the code-to-code (Hamming) similarity term.
    recon : weight of the plain reconstruction error (keeps the decoder anchored).
    balance, decorrelation : weights of the bit-balance and decorrelation terms.
    calibrate : refit a scale per bit and the output offset by least squares on the hard bits
        of the validation split (the decoder's directions stay as trained).
    """

    kind = "learned_hash"
    is_binary = True

    def __init__(self, bits: int, *, temperature: float = 0.05, beta_start: float = 1.0,
                 beta_end: float = 10.0, symmetric: float = 0.5, recon: float = 0.1,
                 balance: float = 1.0, decorrelation: float = 1.0, calibrate: bool = True,
                 straight_through: bool = True, neighbours: int = 32,
                 metric: str = "ip", train: TrainConfig | dict[str, Any] | None = None,
                 max_train_rows: int | None = 20000, random_state: int = 0,
                 num_threads: int | None = None, progress: bool = False) -> None:
        super().__init__(metric)
        if bits < 8 or bits % 8:
            raise CodecError(f"HASH needs a positive multiple of 8 bits; found {bits}")
        if temperature <= 0 or beta_start <= 0 or beta_end <= 0:
            raise CodecError("HASH temperature and beta values must be > 0")
        self.bits = bits
        self.temperature, self.beta_start, self.beta_end = temperature, beta_start, beta_end
        self.symmetric, self.recon = symmetric, recon
        self.balance, self.decorrelation, self.calibrate = balance, decorrelation, calibrate
        self.straight_through = straight_through
        self.neighbours = int(neighbours)
        self.train = train if isinstance(train, TrainConfig) else TrainConfig.from_dict(
            {"epochs": 20, "batch_size": 512, "lr": 2e-3, **(train or {})})
        self.max_train_rows = max_train_rows
        self.random_state, self.num_threads, self.progress = random_state, num_threads, progress

    @property
    def spec(self) -> str:
        return f"HASH{self.bits}"

    @property
    def code_size(self) -> int:
        return self.bits // 8

    def _fit(self, X: np.ndarray) -> None:
        n, d = X.shape
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
        mean, W = itq_init(X, self.bits, random_state=cfg.seed)
        W = W / np.maximum(((X - mean) @ W).std(0), 1e-12)  # unit-scale logits: beta is the sharpness
        signs = np.where((X - mean) @ W >= 0, 1.0, -1.0)
        D = _least_squares_decoder(signs, X - mean)
        self.net_ = HashNet(mean, W, D)
        scale = 1.0 / max(float(((X - mean) ** 2).sum(1).mean()), 1e-12)
        Xt = torch.from_numpy(X)
        Xtr, Xval = split_train_val(Xt, cfg)
        self.train_result_: TrainResult = run_training(self.net_, _HashObjective(self, scale, Xtr), Xtr,
                                                       Xval, cfg, name=self.spec)
        with torch.no_grad():
            self.net_.eval()
            mean_t = self.net_.mean.numpy().astype(np.float64)
            W_np = self.net_.W.detach().numpy()
            b_np = self.net_.bias.detach().numpy()
            D_np = self.net_.D.detach().numpy().astype(np.float64)
        hard = np.where((X - mean_t) @ W_np + b_np >= 0, 1.0, -1.0)
        offset = mean_t
        if self.calibrate:
            cal = Xval.numpy() if len(Xval) >= 2 * self.bits else X
            cal_bits = np.where((cal - mean_t) @ W_np + b_np >= 0, 1.0, -1.0)
            scales, offset = _fit_bit_scales(cal_bits, cal, D_np)
            D_np = D_np * scales[:, None]
        self.mean_ = mean_t.astype(np.float32)
        self.offset_ = offset.astype(np.float32)
        self.W_ = W_np.astype(np.float32)
        self.bias_ = b_np.astype(np.float32)
        self.D_ = D_np.astype(np.float32)
        self.bit_entropy_ = bit_entropy(hard > 0)

    def _logits(self, X: np.ndarray) -> np.ndarray:
        return (X - self.mean_) @ self.W_ + self.bias_

    def _encode(self, X: np.ndarray) -> np.ndarray:
        return np.packbits(self._logits(X) >= 0, axis=1)

    def _signs(self, codes: np.ndarray) -> np.ndarray:
        return np.unpackbits(codes, axis=1)[:, :self.bits].astype(np.float32) * 2 - 1

    def _decode(self, codes: np.ndarray) -> np.ndarray:
        return self.offset_ + self._signs(codes) @ self.D_

    def _search(self, codes: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return chunked_search(self._decode, codes, queries, k, self.metric)

    def search_hamming(self, codes: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Symmetric scan: the query is hashed too; score = -Hamming distance."""
        import faiss

        self._check_fitted()
        from mmcompress.codecs.base import check_codes, check_vectors

        codes = check_codes(codes, self.code_size)
        queries = check_vectors(queries, d=self.d_, name="queries")
        index = faiss.IndexBinaryFlat(self.bits)
        index.add(codes)
        scores, ids = index.search(self._encode(queries), min(k, len(codes)))
        return -scores.astype(np.float32), ids

    def _get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        meta = {"bits": self.bits, "temperature": self.temperature, "beta_start": self.beta_start,
                "beta_end": self.beta_end, "symmetric": self.symmetric, "recon": self.recon,
                "balance": self.balance, "decorrelation": self.decorrelation,
                "calibrate": self.calibrate, "straight_through": self.straight_through,
                "neighbours": self.neighbours,
                "train": asdict(self.train),
                "train_result": {k: v for k, v in asdict(self.train_result_).items() if k != "history"}}
        return meta, {"mean": self.mean_, "offset": self.offset_, "W": self.W_, "bias": self.bias_,
                      "D": self.D_, "bit_entropy": self.bit_entropy_}

    def _set_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        for key in ("temperature", "beta_start", "beta_end", "symmetric", "recon", "balance",
                    "decorrelation"):
            setattr(self, key, float(meta[key]))
        self.calibrate = bool(meta["calibrate"])
        self.straight_through = bool(meta["straight_through"])
        self.neighbours = int(meta.get("neighbours", 0))
        self.train = TrainConfig.from_dict(meta["train"])
        self.train_result_ = TrainResult(**meta["train_result"])
        self.mean_, self.offset_, self.W_, self.bias_, self.D_ = (
            arrays[k] for k in ("mean", "offset", "W", "bias", "D"))
        self.bit_entropy_ = arrays["bit_entropy"]
        if self.W_.shape[1] != self.bits:
            raise CodecError(f"{self.spec}: saved projection has {self.W_.shape[1]} bits")


def _fit_bit_scales(B: np.ndarray, X: np.ndarray, D: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-bit scales ``s`` and an offset ``m`` minimising ``|X - m - (B * s) D|^2``.

    The calibration keeps the learned directions (rows of ``D``) and only re-weighs each bit,
    so it cannot undo what the neighbour loss taught the decoder.
    """
    Bc = B - B.mean(0)
    Xc = X - X.mean(0)
    G = (Bc.T @ Bc) * (D @ D.T)
    rhs = (Bc * (Xc @ D.T)).sum(0)
    s = np.linalg.solve(G + 1e-9 * np.trace(G) / len(G) * np.eye(len(G)), rhs)
    m = X.mean(0) - (B.mean(0) * s) @ D
    return s, m


def _least_squares_decoder(B: np.ndarray, Y: np.ndarray, ridge: float = 1e-3) -> np.ndarray:
    """D minimising |B D - Y|^2 + ridge*n*|D|^2 (the calibration refit)."""
    B = B.astype(np.float64)
    G = B.T @ B + ridge * len(B) * np.eye(B.shape[1])
    return np.linalg.solve(G, B.T @ Y.astype(np.float64))


def build_hash(m: re.Match[str], ctx: SpecContext) -> Codec:
    o = ctx.options
    kwargs = {k: o[f"hash_{k}"] for k in ("temperature", "beta_start", "beta_end", "symmetric",
                                          "recon", "balance", "decorrelation", "calibrate",
                                          "straight_through", "neighbours")
              if f"hash_{k}" in o}
    train = {k: v for k, v in dict(o.get("train", {}) or {}).items()
             if k in TrainConfig.__dataclass_fields__}
    return LearnedHash(int(m["bits"]), metric=ctx.metric, random_state=ctx.random_state,
                       progress=ctx.progress, num_threads=o.get("num_threads"),
                       train=train or None, **kwargs)


HASH_PATTERN = r"HASH(?P<bits>\d+)"

