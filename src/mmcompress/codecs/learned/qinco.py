"""Neural residual quantizer (QINCo family, Huijben et al. 2024): ``QINCO<M>x<nbits>``.

Residual quantization where each step's codebook is adapted to the reconstruction so far:
codeword ``k`` of step ``m`` is ``C_m[k] + g_m(C_m[k], x_hat)``, ``g_m`` a small MLP whose
output layer starts at zero, so training starts from plain RQ (greedy residual k-means) and
only improves on it. To stay fast on CPUs the MLP works in a narrow hidden space (codeword and
reconstruction enter through separate linear maps, the codeword part precomputed per step) and
encoding pre-selects ``candidates`` codewords per beam with the base codebook (as QINCo2 does)
before evaluating the MLP on them only.

Training (QINCo's recipe): encode a batch with the current network (beam search, no gradient),
then back-propagate the error of every step's reconstruction through the network with those
codes fixed. Options: the ScaNN anisotropic error (``eta > 1``, also used to pick codes) and
listwise neighbour distillation. After training, a calibration split refits a per-dimension
scale and offset of the output by least squares.

Search: an additive look-up approximation (per-step codebooks fitted by least squares to the
neural reconstructions) ranks all items; the ``shortlist`` best per query are rescored with the
full neural decoder.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from torch import nn

from mmcompress.codecs.base import Codec, chunked_search, exact_search
from mmcompress.codecs.learned.bits import field_bits, pack_fields, packed_size, unpack_fields
from mmcompress.codecs.learned.losses import anisotropic_error, listwise_distillation
from mmcompress.codecs.learned.training import (
    TrainConfig,
    TrainResult,
    run_training,
    split_train_val,
    torch_threads,
)
from mmcompress.codecs.spec import SpecContext
from mmcompress.errors import ArtifactError, CodecError


class ResidualBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.l1 = nn.Linear(width, width)
        self.l2 = nn.Linear(width, width)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.l2(torch.relu(self.l1(z)))


class QincoStep(nn.Module):
    """One residual step: a base codebook and the MLP that adapts it to the reconstruction."""

    def __init__(self, d: int, K: int, hidden: int, n_blocks: int) -> None:
        super().__init__()
        self.codebook = nn.Parameter(torch.zeros(K, d))
        self.in_c = nn.Linear(d, hidden)
        self.in_x = nn.Linear(d, hidden, bias=False)
        self.blocks = nn.ModuleList(ResidualBlock(hidden) for _ in range(n_blocks))
        self.out = nn.Linear(hidden, d, bias=False)
        nn.init.zeros_(self.out.weight)

    def hidden_codebook(self) -> torch.Tensor:
        return self.in_c(self.codebook)

    def hidden(self, idx: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        """Hidden features ``(..., A, hidden)`` for indices ``idx (..., A)`` and ``x_hat (..., d)``."""
        return self.hidden_from(self.hidden_codebook()[idx], x_hat)

    def hidden_from(self, hc: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        z = hc + self.in_x(x_hat).unsqueeze(-2)
        for block in self.blocks:
            z = block(z)
        return z

    def adapt(self, idx: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        """Adapted codewords ``(..., A, d)`` for indices ``idx (..., A)`` given ``x_hat (..., d)``."""
        return self.codebook[idx] + self.out(self.hidden(idx, x_hat))


class QincoNet(nn.Module):
    def __init__(self, d: int, M: int, K: int, hidden: int, n_blocks: int) -> None:
        super().__init__()
        self.d, self.M, self.K = d, M, K
        self.steps = nn.ModuleList(QincoStep(d, K, hidden, n_blocks) for _ in range(M))

    def decode_steps(self, codes: torch.Tensor) -> list[torch.Tensor]:
        """Partial reconstructions after each step for codes (n, M)."""
        x_hat = codes.new_zeros((len(codes), self.d), dtype=torch.float32)
        out = []
        for m, step in enumerate(self.steps):
            x_hat = x_hat + step.adapt(codes[:, m:m + 1], x_hat)[:, 0]
            out.append(x_hat)
        return out

    @torch.no_grad()
    def encode(self, x: torch.Tensor, beam: int, candidates: int, u: torch.Tensor | None = None,
               eta: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Beam search: codes (n, M) and reconstructions (n, d).

        Step 0 scores every codeword (its adaptation does not depend on ``x``); later steps
        pre-select ``candidates`` per beam by the base codebook and score those with the MLP.
        With ``eta != 1`` candidates are ranked by the anisotropic error along ``u``.
        """
        codes, x_hat = self.first_step(x, beam, u, eta)
        for m in range(1, self.M):
            codes, x_hat = self.next_step(m, x, codes, x_hat, beam, candidates, u, eta)
        return codes[:, 0], x_hat[:, 0]

    @torch.no_grad()
    def first_step(self, x: torch.Tensor, beam: int, u: torch.Tensor | None = None,
                   eta: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Beams after step 0: codes (n, b, 1) and reconstructions (n, b, d), best first."""
        d = x.shape[1]
        C0 = self.steps[0].adapt(torch.arange(self.K)[None, :], x.new_zeros(1, d))[0]
        dist = (C0.pow(2).sum(1)[None, :] - 2 * x @ C0.T)
        if u is not None and eta != 1.0:
            dist = dist + (eta - 1.0) * ((x * u).sum(1, keepdim=True) - u @ C0.T).pow(2)
        top = dist.topk(min(beam, self.K), dim=1, largest=False).indices
        return top[:, :, None], C0[top]

    @torch.no_grad()
    def next_step(self, m: int, x: torch.Tensor, codes: torch.Tensor, x_hat: torch.Tensor,
                  beam: int, candidates: int, u: torch.Tensor | None = None,
                  eta: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Extend beams (n, b, m) / (n, b, d) by step ``m``, keeping the ``beam`` best."""
        n, bprev, d = x_hat.shape
        step = self.steps[m]
        C, W = step.codebook, step.out.weight
        A = min(candidates, self.K)
        r = x[:, None, :] - x_hat
        pre_score, pre = torch.addmm(-C.pow(2).sum(1), r.reshape(-1, d), C.T, alpha=2.0) \
            .view(n, bprev, self.K).topk(A, dim=2)
        # |r - c - Wz|^2 = |r - c|^2 + z.(z W'W - 2 rW + 2 cW), evaluated in the hidden space:
        # no (n, beam, A, d) tensor is ever built.
        hcw = torch.cat([step.hidden_codebook(), 2 * C @ W], dim=1)[pre]
        hc, cw2 = hcw.split(hcw.shape[-1] // 2, dim=-1)
        z = step.hidden_from(hc, x_hat)
        v = (z @ (W.T @ W)).add_(cw2).sub_(2 * (r @ W).unsqueeze(2))
        dist = (v.mul_(z).sum(-1)).sub_(pre_score).add_(r.pow(2).sum(-1, keepdim=True))
        if u is not None and eta != 1.0:
            uc = (u @ C.T)[:, None, :].expand(-1, bprev, -1).gather(2, pre)
            par = ((r * u[:, None, :]).sum(-1, keepdim=True) - uc
                   - torch.einsum("nbah,nh->nba", z, u @ W))
            dist = dist + (eta - 1.0) * par.pow(2)
        nb = min(beam, bprev * A)
        sel = dist.reshape(n, bprev * A).topk(nb, dim=1, largest=False).indices
        parent, which = sel // A, sel % A
        rows = torch.arange(n)[:, None]
        new_code = pre[rows, parent, which]
        x_hat = x_hat[rows, parent] + C[new_code] + step.out(z[rows, parent, which])
        return torch.cat([codes[rows, parent], new_code[:, :, None]], dim=2), x_hat


def faiss_rq_codebooks(X: np.ndarray, M: int, nbits: int, beam: int, n_iter: int, seed: int,
                       num_threads: int | None) -> np.ndarray:
    """Codebooks (M, K, d) of a faiss residual quantizer trained with beam search and
    progressive-dimension k-means: the initialisation QINCo starts from."""
    import faiss

    d = X.shape[1]
    rq = faiss.ResidualQuantizer(d, M, nbits)
    rq.train_type = faiss.ResidualQuantizer.Train_progressive_dim
    rq.max_beam_size = beam
    rq.cp.seed = seed
    rq.cp.niter = n_iter
    rq.cp.min_points_per_centroid = 1
    rq.verbose = False
    old = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(num_threads or old)
    try:
        rq.train(np.ascontiguousarray(X, dtype=np.float32))
    finally:
        faiss.omp_set_num_threads(old)
    return faiss.vector_to_array(rq.codebooks).reshape(M, 1 << nbits, d).copy()


def qinco_candidates(budget: int, d: int, metric: str) -> list[str]:
    """``auto``'s neural candidate: up to 8 bytes, where its gain over RQ is largest and a beam
    of 2 keeps encoding above 5,000 vectors/s on two cores. (At 16 bytes on the fused MovieLens
    vectors, 8 epochs reached recall@10 0.766 against RQ16x8's 0.779, encoding ~1,800/s.)"""
    return [f"QINCO{budget}x8_b2"] if 4 <= budget <= 8 else []


def default_beam(M: int) -> int:
    return 4 if M <= 8 else 2 if M <= 16 else 1


class _QincoObjective:
    def __init__(self, codec: NeuralResidualQuantizer) -> None:
        self.c = codec

    def _error(self, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        if self.c.eta != 1.0:
            return anisotropic_error(x, x_hat, self.c.eta)
        return (x - x_hat).pow(2).sum(-1).mean()

    def batch_loss(self, model: QincoNet, xb: torch.Tensor, epoch: int) -> torch.Tensor:
        c = self.c
        codes, _ = model.encode(xb, c.train_beam, c.candidates, _unit(xb), c.eta)
        steps = model.decode_steps(codes)
        loss = sum(self._error(xb, xh) for xh in steps) / len(steps)
        if c.distill > 0:
            s = 1.0 / c.scale_
            loss = loss + c.distill * listwise_distillation(xb * s, steps[-1] * s,
                                                            c.temperature, c.metric)
        return loss

    def val_loss(self, model: QincoNet, xv: torch.Tensor, epoch: int) -> float:
        _, x_hat = model.encode(xv, self.c.beam, self.c.candidates, _unit(xv), self.c.eta)
        return float(self._error(xv, x_hat))


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


class NeuralResidualQuantizer(Codec):
    """``QINCO<M>x<nbits>``: ``M`` neural residual steps of ``2**nbits`` codewords each.

    Parameters
    ----------
    hidden, n_blocks : width and depth of each step's MLP.
    beam, candidates : beam width (default 4 up to 8 steps, 2 up to 16, then 1, which keeps
        the encoding cost per vector about constant) and codewords pre-selected per beam.
    train_beam : beam width while training (default: the encoding beam, at most 2; encoding
        each batch is the training cost).
    refine_rounds, refine_beam : after the beam-trained RQ initialisation, rounds of beam
        encoding (width ``refine_beam``) + least-squares refit of all codebooks jointly (the
        LSQ codebook update), before the networks train.
    eta : anisotropic weight of the error parallel to each item (1 = plain squared error).
    distill, temperature : weight and softmax temperature of listwise neighbour distillation.
    calibrate : refit a per-dimension output scale/offset on the validation split.
    renormalize : scale reconstructions to unit norm; ``None`` decides at fit, for unit-norm
        inner-product data, by recall@10 on a training sample.
    shortlist : items per query the additive approximation passes to the neural rerank
        (0 = decode everything and search exactly).
    train : :class:`TrainConfig` (or its fields as a dict).
    max_train_rows : training rows used at most (a seeded sample).

    Examples
    --------
    >>> codec = NeuralResidualQuantizer(8, 8).fit(X)          # doctest: +SKIP
    >>> codes = codec.encode(X)                               # (n, 8) uint8
    """

    kind = "qinco"

    def __init__(self, M: int, nbits: int = 8, *, hidden: int = 64, n_blocks: int = 1,
                 beam: int | None = None, candidates: int = 4, train_beam: int | None = None,
                 refine_rounds: int = 3, refine_beam: int = 8,
                 eta: float = 1.0, distill: float = 0.0, temperature: float = 0.05,
                 calibrate: bool = True, renormalize: bool | None = None,
                 shortlist: int = 100, metric: str = "ip",
                 train: TrainConfig | dict[str, Any] | None = None,
                 max_train_rows: int | None = 20000, init_iter: int = 25,
                 random_state: int = 0, num_threads: int | None = None,
                 progress: bool = False) -> None:
        super().__init__(metric)
        if not 1 <= M <= 256:
            raise CodecError(f"QINCO needs 1 <= M <= 256 steps; found M={M}")
        if not 1 <= nbits <= 16:
            raise CodecError(f"QINCO needs 1 <= nbits <= 16; found nbits={nbits}")
        for name, v in (("hidden", hidden), ("beam", beam or 1), ("candidates", candidates)):
            if v < 1:
                raise CodecError(f"QINCO {name} must be >= 1; found {v}")
        if eta <= 0 or distill < 0 or temperature <= 0:
            raise CodecError(f"QINCO needs eta > 0, distill >= 0, temperature > 0; found "
                             f"eta={eta}, distill={distill}, temperature={temperature}")
        self.M, self.nbits = M, nbits
        self.hidden, self.n_blocks = hidden, n_blocks
        self.beam = beam or default_beam(M)
        self.candidates = candidates
        self.train_beam = train_beam or min(self.beam, 2)
        self.refine_rounds = refine_rounds
        self.refine_beam = refine_beam
        self.eta, self.distill, self.temperature = float(eta), float(distill), float(temperature)
        self.calibrate, self.shortlist = calibrate, shortlist
        self.renormalize = renormalize
        self.train = train if isinstance(train, TrainConfig) else TrainConfig.from_dict(
            {"epochs": 15, **(train or {})})
        self.max_train_rows, self.init_iter = max_train_rows, init_iter
        self.random_state, self.num_threads, self.progress = random_state, num_threads, progress

    # ---- contract ------------------------------------------------------------------------
    @property
    def spec(self) -> str:
        """``QINCO<M>x<nbits>`` plus whatever differs from the defaults (``_h``, ``_L``, ``_b``),
        so ``make_codec(codec.spec)`` builds the same network and beam."""
        return (f"QINCO{self.M}x{self.nbits}" + (f"_h{self.hidden}" if self.hidden != 64 else "")
                + (f"_L{self.n_blocks}" if self.n_blocks != 1 else "")
                + (f"_b{self.beam}" if self.beam != default_beam(self.M) else ""))

    @property
    def code_size(self) -> int:
        return packed_size(self.M, self.nbits)

    @property
    def field_bits(self) -> list[int]:
        return field_bits(self.M, self.nbits)

    @property
    def n_params_(self) -> int:
        return sum(p.numel() for p in self.net_.parameters())

    def _config(self) -> TrainConfig:
        cfg = TrainConfig(**asdict(self.train))
        cfg.seed = self.random_state if self.train.seed == 0 else self.train.seed
        cfg.progress = cfg.progress or self.progress
        cfg.num_threads = cfg.num_threads if cfg.num_threads is not None else self.num_threads
        return cfg

    def _fit(self, X: np.ndarray) -> None:
        n, d = X.shape
        K = 1 << self.nbits
        if n < 2:
            raise CodecError(f"{self.spec} needs at least 2 training rows; found {n}")
        if self.max_train_rows is not None and n > self.max_train_rows:
            rng = np.random.default_rng(self.random_state)
            X = X[np.sort(rng.choice(n, self.max_train_rows, replace=False))]
        cfg = self._config()
        norms = np.linalg.norm(X, axis=1)
        self.scale_ = float(math.sqrt(d) / max(float(np.sqrt((norms ** 2).mean())), 1e-12))
        self.unit_norm_ = bool(np.all(np.abs(norms - 1) < 1e-3))
        self.renormalize_ = bool(self.renormalize)
        with torch_threads(cfg.num_threads), torch.no_grad():
            torch.manual_seed(cfg.seed)
            Xt = torch.from_numpy(X) * self.scale_
            Xtr, Xval = split_train_val(Xt, cfg)
            self.net_ = QincoNet(d, self.M, K, self.hidden, self.n_blocks)
            books = faiss_rq_codebooks(Xtr.numpy(), self.M, self.nbits, self.refine_beam,
                                       self.init_iter, cfg.seed, cfg.num_threads)
            for step, C in zip(self.net_.steps, books, strict=True):
                step.codebook.copy_(torch.from_numpy(C))
            for _ in range(self.refine_rounds):
                # RQ refinement: beam-encode, then least-squares codebooks for those codes
                codes, _ = self.net_.encode(Xtr, self.refine_beam, 2 * self.candidates)
                books = _fit_additive(codes, Xtr, [st.codebook for st in self.net_.steps], sweeps=2)
                for step, C in zip(self.net_.steps, books, strict=True):
                    step.codebook.copy_(torch.from_numpy(C))
        self.train_result_: TrainResult = run_training(self.net_, _QincoObjective(self), Xtr, Xval,
                                                       cfg, name=f"{self.spec}")
        with torch_threads(cfg.num_threads), torch.no_grad():
            self.net_.eval()
            self.out_scale_ = np.ones(d, dtype=np.float32)
            self.out_offset_ = np.zeros(d, dtype=np.float32)
            codes, target = self.net_.encode(Xtr, self.beam, self.candidates, _unit(Xtr), self.eta)
            if self.calibrate and len(Xval) >= 32:
                _, xh = self.net_.encode(Xval, self.beam, self.candidates, _unit(Xval), self.eta)
                self.out_scale_, self.out_offset_ = _fit_affine(Xval.numpy(), xh.numpy())
            self.lut_codebooks_ = _fit_additive(codes, target, [s.codebook for s in self.net_.steps])
            if self.renormalize is None:
                self.renormalize_ = False
                if self.metric == "ip" and self.unit_norm_:
                    x_hat = self._finish(target.numpy())
                    self.renormalize_ = _renormalizing_helps(Xtr.numpy() / self.scale_, x_hat,
                                                             cfg.seed)

    # ---- encode / decode -----------------------------------------------------------------
    def _encode_int(self, X: np.ndarray, chunk: int = 1024) -> np.ndarray:
        out = np.empty((len(X), self.M), dtype=np.int64)
        with torch_threads(self.num_threads), torch.no_grad():
            for lo in range(0, len(X), chunk):
                x = torch.from_numpy(X[lo:lo + chunk]) * self.scale_
                codes, _ = self.net_.encode(x, self.beam, self.candidates, _unit(x), self.eta)
                out[lo:lo + chunk] = codes.numpy()
        return out

    def _encode(self, X: np.ndarray) -> np.ndarray:
        return pack_fields(self._encode_int(X), self.nbits)

    def _decode(self, codes: np.ndarray, chunk: int = 4096) -> np.ndarray:
        ints = unpack_fields(codes, self.M, self.nbits)
        out = np.empty((len(ints), self.net_.d), dtype=np.float32)
        with torch_threads(self.num_threads), torch.no_grad():
            for lo in range(0, len(ints), chunk):
                xh = self.net_.decode_steps(torch.from_numpy(ints[lo:lo + chunk]))[-1]
                out[lo:lo + chunk] = xh.numpy()
        return self._finish(out)

    def _finish(self, x_hat: np.ndarray) -> np.ndarray:
        out = (x_hat * self.out_scale_ + self.out_offset_) / self.scale_
        if self.renormalize_:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    def decode_additive(self, codes: np.ndarray) -> np.ndarray:
        """The fast approximation: a sum of one looked-up codeword per step (no MLP)."""
        self._check_fitted()
        ints = unpack_fields(codes, self.M, self.nbits)
        out = np.zeros((len(ints), self.net_.d), dtype=np.float32)
        for m in range(self.M):
            out += self.lut_codebooks_[m][ints[:, m]]
        return self._finish(out)

    def _search(self, codes: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(codes)
        S = max(self.shortlist, k)
        if self.shortlist <= 0 or S >= n:
            return chunked_search(self._decode, codes, queries, k, self.metric)
        _, ids = chunked_search(self.decode_additive, codes, queries, S, self.metric)
        uniq, inv = np.unique(ids, return_inverse=True)
        Xu = self._decode(codes[uniq])
        pos = inv.reshape(ids.shape)
        scores = np.empty(ids.shape, dtype=np.float32)
        for lo in range(0, len(queries), 256):
            cand = Xu[pos[lo:lo + 256]]
            q = queries[lo:lo + 256]
            if self.metric == "ip":
                scores[lo:lo + 256] = np.einsum("qd,qsd->qs", q, cand)
            else:
                scores[lo:lo + 256] = -((cand - q[:, None, :]) ** 2).sum(-1)
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, top, 1), np.take_along_axis(ids, top, 1)

    def search_exhaustive(self, codes: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Decode every code with the neural decoder and search exactly (the reference)."""
        self._check_fitted()
        return exact_search(self.decode(codes), queries, min(k, len(codes)), self.metric)

    # ---- state ---------------------------------------------------------------------------
    def _get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        meta = {"M": self.M, "nbits": self.nbits, "hidden": self.hidden, "n_blocks": self.n_blocks,
                "beam": self.beam, "candidates": self.candidates, "train_beam": self.train_beam,
                "refine_rounds": self.refine_rounds, "refine_beam": self.refine_beam,
                "eta": self.eta, "distill": self.distill, "temperature": self.temperature,
                "calibrate": self.calibrate, "shortlist": self.shortlist,
                "scale": self.scale_, "unit_norm": self.unit_norm_,
                "renormalize": self.renormalize, "renormalize_fitted": self.renormalize_,
                "train": asdict(self.train),
                "train_result": {k: v for k, v in asdict(self.train_result_).items() if k != "history"}}
        arrays = {f"net.{k}": v.detach().numpy() for k, v in self.net_.state_dict().items()}
        arrays.update(lut=self.lut_codebooks_, out_scale=self.out_scale_, out_offset=self.out_offset_)
        return meta, arrays

    def _set_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        for key in ("hidden", "n_blocks", "beam", "candidates", "train_beam", "shortlist",
                    "refine_rounds", "refine_beam"):
            setattr(self, key, int(meta[key]))
        self.eta, self.distill = float(meta["eta"]), float(meta["distill"])
        self.temperature, self.calibrate = float(meta["temperature"]), bool(meta["calibrate"])
        self.scale_, self.unit_norm_ = float(meta["scale"]), bool(meta["unit_norm"])
        self.renormalize, self.renormalize_ = meta["renormalize"], bool(meta["renormalize_fitted"])
        self.train = TrainConfig.from_dict(meta["train"])
        self.train_result_ = TrainResult(**meta["train_result"])
        d = arrays["out_scale"].shape[0]
        self.net_ = QincoNet(d, self.M, 1 << self.nbits, self.hidden, self.n_blocks)
        state = {k[4:]: torch.from_numpy(np.array(v)) for k, v in arrays.items() if k.startswith("net.")}
        try:
            self.net_.load_state_dict(state)
        except RuntimeError as e:
            raise ArtifactError(f"{self.spec}: saved network does not match its header: {e}") from e
        self.net_.eval()
        self.lut_codebooks_ = arrays["lut"]
        self.out_scale_, self.out_offset_ = arrays["out_scale"], arrays["out_offset"]


def _renormalizing_helps(X: np.ndarray, X_hat: np.ndarray, seed: int, n_base: int = 4000,
                         n_queries: int = 300) -> bool:
    """Whether unit-normalised reconstructions rank a sample's true top-10 better (recall@10)."""
    rng = np.random.default_rng(seed + 104729)
    rows = np.sort(rng.choice(len(X), min(n_base, len(X)), replace=False))
    xb, xh = X[rows], X_hat[rows]
    xq = xb[rng.choice(len(xb), min(n_queries, len(xb)), replace=False)]
    _, truth = exact_search(xb, xq, 10, "ip")
    unit = xh / np.maximum(np.linalg.norm(xh, axis=1, keepdims=True), 1e-12)
    hits = [sum(len(np.intersect1d(a, b)) for a, b in zip(exact_search(cand, xq, 10, "ip")[1], truth,
                                                          strict=True))
            for cand in (xh, unit)]
    return hits[1] > hits[0]


def _fit_affine(x: np.ndarray, x_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension least squares ``x ~ a * x_hat + b`` (the post-quantization calibration)."""
    xm, hm = x.mean(0), x_hat.mean(0)
    hc = x_hat - hm
    var = (hc * hc).mean(0)
    a = np.where(var > 1e-12, ((x - xm) * hc).mean(0) / np.maximum(var, 1e-12), 1.0)
    b = xm - a * hm
    return a.astype(np.float32), b.astype(np.float32)


def _fit_additive(codes: torch.Tensor, target: torch.Tensor, init: list[torch.Tensor],
                  sweeps: int = 4) -> np.ndarray:
    """Per-step codebooks (M, K, d) whose sum best matches ``target``: block coordinate descent."""
    M = codes.shape[1]
    books = [c.detach().clone() for c in init]
    K = books[0].shape[0]
    approx = sum(books[m][codes[:, m]] for m in range(M))
    for _ in range(sweeps):
        for m in range(M):
            partial = target - approx + books[m][codes[:, m]]
            counts = torch.bincount(codes[:, m], minlength=K)
            sums = torch.zeros_like(books[m]).index_add_(0, codes[:, m], partial)
            used = counts > 0
            new = books[m].clone()
            new[used] = sums[used] / counts[used, None]
            approx = approx + new[codes[:, m]] - books[m][codes[:, m]]
            books[m] = new
    return torch.stack(books).numpy().astype(np.float32)


_TRAIN_KEYS = set(TrainConfig.__dataclass_fields__)


def build_qinco(m: re.Match[str], ctx: SpecContext) -> Codec:
    o = ctx.options
    kwargs: dict[str, Any] = {}
    for key in ("hidden", "n_blocks", "beam", "candidates", "train_beam", "shortlist",
                "max_train_rows", "num_threads", "refine_rounds", "refine_beam", "init_iter"):
        if f"qinco_{key}" in o:
            kwargs[key] = o[f"qinco_{key}"]
    for key in ("eta", "distill", "temperature", "calibrate", "renormalize"):
        if f"qinco_{key}" in o:
            kwargs[key] = o[f"qinco_{key}"]
    if m["h"]:
        kwargs["hidden"] = int(m["h"])
    if m["L"]:
        kwargs["n_blocks"] = int(m["L"])
    if m["beam"]:
        kwargs["beam"] = int(m["beam"])
    if "num_threads" not in kwargs and "num_threads" in o:
        kwargs["num_threads"] = o["num_threads"]
    train = dict(o.get("train", {}) or {})
    return NeuralResidualQuantizer(int(m["M"]), int(m["nbits"] or 8), metric=ctx.metric,
                                   random_state=ctx.random_state, progress=ctx.progress,
                                   train={k: v for k, v in train.items() if k in _TRAIN_KEYS},
                                   **kwargs)


QINCO_PATTERN = r"QINCO(?P<M>\d+)(?:x(?P<nbits>\d+))?(?:_h(?P<h>\d+))?(?:_L(?P<L>\d+))?(?:_b(?P<beam>\d+))?"
