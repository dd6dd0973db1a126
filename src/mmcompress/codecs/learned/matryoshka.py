"""Matryoshka projection (Kusupati et al. 2022): ``MRL<d>``, a learned transform whose prefixes
are usable on their own, optionally with whole input blocks pruned (``MRL<d>_s<percent>``).

The projection is affine like every transform (``y = (x - mean) A``, ``x ~ mean + y B``), so
it composes with any quantizer (``"MRL64,SQ8"``) and inner-product queries map to ``q B'``.
Training starts from PCA (already prefix-ordered for reconstruction) and minimises, summed over
the prefixes 16, 32, 64, ... up to ``d``, the listwise distillation between each item's
similarity row against the originals and against the prefix reconstructions, plus a small
reconstruction term. :meth:`MatryoshkaProjection.prefix_search` uses a short prefix as a
coarse router and reranks the shortlist with the full projection.

Structured sparsity: with ``prune`` > 0, a group-lasso penalty on blocks of input dimensions
(rows of ``A`` in groups of ``block``) is followed by removing the least important blocks and
retraining; :meth:`apply` then reads only the kept input dimensions.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from torch import nn

from mmcompress.codecs.base import check_vectors, exact_search
from mmcompress.codecs.learned.losses import listwise_distillation
from mmcompress.codecs.learned.training import (
    TrainConfig,
    TrainResult,
    run_training,
    split_train_val,
)
from mmcompress.codecs.spec import SpecContext
from mmcompress.codecs.transforms import Transform, _pca, project
from mmcompress.errors import CodecError


def default_prefixes(d_out: int) -> list[int]:
    """16, 32, 64, ... below ``d_out``, then ``d_out`` itself."""
    out, p = [], 16
    while p < d_out:
        out.append(p)
        p *= 2
    return out + [d_out]


class ProjectionNet(nn.Module):
    def __init__(self, mean: np.ndarray, A: np.ndarray, B: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.A = nn.Parameter(torch.as_tensor(A, dtype=torch.float32))
        self.B = nn.Parameter(torch.as_tensor(B, dtype=torch.float32))
        self.register_buffer("row_mask", torch.ones(A.shape[0]))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) @ (self.A * self.row_mask[:, None])

    def reconstruct(self, y: torch.Tensor, p: int) -> torch.Tensor:
        return self.mean + y[:, :p] @ self.B[:p]


class _MatryoshkaObjective:
    def __init__(self, t: MatryoshkaProjection, prefixes: list[int], scale: float,
                 group_lasso: float = 0.0) -> None:
        self.t, self.prefixes, self.scale, self.group_lasso = t, prefixes, scale, group_lasso

    def _loss(self, model: ProjectionNet, x: torch.Tensor) -> torch.Tensor:
        y = model.project(x)
        loss = x.new_zeros(())
        for p in self.prefixes:
            x_hat = model.reconstruct(y, p)
            loss = loss + listwise_distillation(x, x_hat, self.t.temperature, self.t.metric)
            loss = loss + self.t.recon * (x - x_hat).pow(2).sum(-1).mean() * self.scale
        return loss / len(self.prefixes)

    def batch_loss(self, model: ProjectionNet, xb: torch.Tensor, epoch: int) -> torch.Tensor:
        loss = self._loss(model, xb)
        if self.group_lasso > 0:
            loss = loss + self.group_lasso * group_norms(model.A, self.t.block).sum()
        return loss

    def val_loss(self, model: ProjectionNet, xv: torch.Tensor, epoch: int) -> float:
        return float(self._loss(model, xv))


def group_norms(A: torch.Tensor, block: int) -> torch.Tensor:
    """Frobenius norm of each block of ``block`` consecutive rows (input dimensions) of ``A``."""
    d_in = A.shape[0]
    pad = (-d_in) % block
    Ap = torch.cat([A, A.new_zeros(pad, A.shape[1])]) if pad else A
    return Ap.reshape(-1, block * A.shape[1]).norm(dim=1)


class MatryoshkaProjection(Transform):
    """``MRL<d>`` / ``MRL<d>_s<percent>``: a learned projection with usable prefixes.

    Parameters
    ----------
    d_out : output dimension; prefixes default to 16, 32, ... , ``d_out``.
    temperature, recon : distillation temperature and reconstruction weight.
    prune : fraction of input blocks to remove (0 = dense); ``block`` dims per block;
        ``group_lasso`` the penalty weight of the sparsifying phase.
    """

    kind = "matryoshka"

    def __init__(self, d_out: int, *, prefixes: list[int] | None = None, metric: str = "ip",
                 temperature: float = 0.05, recon: float = 0.1, prune: float = 0.0,
                 block: int = 16, group_lasso: float = 1e-3,
                 train: TrainConfig | dict[str, Any] | None = None,
                 max_train_rows: int | None = 20000, random_state: int = 0,
                 num_threads: int | None = None, progress: bool = False) -> None:
        if d_out < 1:
            raise CodecError(f"MRL needs an output dimension >= 1; found {d_out}")
        if not 0.0 <= prune < 1.0:
            raise CodecError(f"MRL prune fraction must be in [0, 1); found {prune}")
        self.d_out_spec = d_out
        self.prefixes = prefixes
        self.metric = metric
        self.temperature, self.recon = temperature, recon
        self.prune, self.block, self.group_lasso = prune, block, group_lasso
        self.train = train if isinstance(train, TrainConfig) else TrainConfig.from_dict(
            {"epochs": 15, "batch_size": 512, "lr": 1e-3, **(train or {})})
        self.max_train_rows = max_train_rows
        self.random_state, self.num_threads, self.progress = random_state, num_threads, progress

    @property
    def spec(self) -> str:
        pct = int(round(self.prune * 100))
        return f"MRL{self.d_out_spec}" + (f"_s{pct}" if pct else "")

    def _config(self, epochs: int | None = None) -> TrainConfig:
        cfg = TrainConfig(**asdict(self.train))
        cfg.seed = self.random_state if self.train.seed == 0 else self.train.seed
        cfg.progress = cfg.progress or self.progress
        if cfg.num_threads is None:
            cfg.num_threads = self.num_threads
        if epochs is not None:
            cfg.epochs = epochs
        return cfg

    def _fit(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n, d_in = X.shape
        if self.d_out_spec > d_in:
            raise CodecError(f"{self.spec} outputs {self.d_out_spec} dims but the input has d={d_in}")
        if self.max_train_rows is not None and n > self.max_train_rows:
            rng = np.random.default_rng(self.random_state)
            X = X[np.sort(rng.choice(n, self.max_train_rows, replace=False))]
        prefixes = sorted({p for p in (self.prefixes or default_prefixes(self.d_out_spec))
                           if 1 <= p <= self.d_out_spec} | {self.d_out_spec})
        mean, V, _ = _pca(X, self.d_out_spec)
        net = ProjectionNet(mean, V, V.T)
        scale = 1.0 / max(float(((X - mean) ** 2).sum(1).mean()), 1e-12)
        cfg = self._config()
        Xt = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
        Xtr, Xval = split_train_val(Xt, cfg)
        self.prefixes_ = prefixes
        self.history_: dict[str, TrainResult] = {}
        if self.prune > 0:
            self.history_["sparsify"] = run_training(
                net, _MatryoshkaObjective(self, prefixes, scale, self.group_lasso), Xtr, Xval,
                self._config(max(1, cfg.epochs // 2)), name=f"{self.spec}:sparsify")
            with torch.no_grad():
                norms = group_norms(net.A, self.block)
                n_drop = int(round(self.prune * len(norms)))
                drop = torch.argsort(norms, stable=True)[:n_drop]
                mask = torch.ones(len(norms))
                mask[drop] = 0
                net.row_mask.copy_(mask.repeat_interleave(self.block)[:d_in])
            self.group_importance_ = norms.numpy()
        self.history_["train"] = run_training(net, _MatryoshkaObjective(self, prefixes, scale), Xtr,
                                              Xval, cfg, name=self.spec)
        A = (net.A * net.row_mask[:, None]).detach().numpy()
        self.kept_inputs_ = np.flatnonzero(net.row_mask.numpy() > 0)
        return net.mean.numpy(), A, net.B.detach().numpy()

    def apply(self, X: np.ndarray) -> np.ndarray:
        if self.kept_inputs_ is not None and len(self.kept_inputs_) < self.d_in:
            k = self.kept_inputs_
            return project(X[:, k], self.mean_[k], self.A_[k])
        return super().apply(X)

    def prefix_reconstruct(self, Y: np.ndarray, p: int) -> np.ndarray:
        """``x`` estimated from the first ``p`` coordinates only."""
        return self.mean_ + Y[:, :p] @ self.B_[:p]

    def prefix_search(self, Y: np.ndarray, queries: np.ndarray, k: int, prefix: int,
                      shortlist: int = 100) -> tuple[np.ndarray, np.ndarray]:
        """Coarse route on the first ``prefix`` dims, rerank ``shortlist`` with all of ``Y``."""
        if not self.is_fitted:
            raise CodecError(f"transform {self.spec!r} is not fitted")
        queries = check_vectors(queries, d=self.d_in, name="queries")
        S = min(max(shortlist, k), len(Y))
        _, ids = exact_search(self.prefix_reconstruct(Y, prefix), queries, S, self.metric)
        cand = self.mean_ + Y[ids] @ self.B_
        if self.metric == "ip":
            scores = np.einsum("qd,qsd->qs", queries, cand)
        else:
            scores = -((cand - queries[:, None, :]) ** 2).sum(-1)
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, top, 1), np.take_along_axis(ids, top, 1)

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        meta, arrays = super().get_state()
        meta.update(prefixes=self.prefixes_, prune=self.prune, block=self.block)
        arrays["kept_inputs"] = self.kept_inputs_.astype(np.int64)
        return meta, arrays

    def set_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        super().set_state(meta, arrays)
        self.prefixes_ = list(meta["prefixes"])
        self.prune, self.block = float(meta["prune"]), int(meta["block"])
        self.kept_inputs_ = arrays["kept_inputs"]

    kept_inputs_: np.ndarray | None = None


def build_mrl(m: re.Match[str], ctx: SpecContext) -> Transform:
    o = ctx.options
    kwargs = {k: o[f"mrl_{k}"] for k in ("temperature", "recon", "block", "group_lasso", "prefixes")
              if f"mrl_{k}" in o}
    train = {k: v for k, v in dict(o.get("train", {}) or {}).items()
             if k in TrainConfig.__dataclass_fields__}
    return MatryoshkaProjection(int(m["d"]), metric=ctx.metric,
                                prune=int(m["s"]) / 100 if m["s"] else 0.0,
                                random_state=ctx.random_state, progress=ctx.progress,
                                num_threads=o.get("num_threads"), train=train or None, **kwargs)


MRL_PATTERN = r"MRL(?P<d>\d+)(?:_s(?P<s>\d+))?"
