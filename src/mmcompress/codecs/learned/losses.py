"""Losses that keep nearest-neighbour structure, and the pieces of quantization-aware training.

- :func:`anisotropic_error` (ScaNN, Guo et al. 2020): for inner-product search the error along
  the item's own direction moves its score for every query that matches it well; weight it
  ``eta`` times the orthogonal error.
- :func:`listwise_distillation`: KL divergence between the softmaxed similarity rows of the
  original and the reconstructed vectors, so each item keeps its top neighbours in order.
- :func:`bit_balance` and :func:`bit_decorrelation`: keep every hash bit used half the time
  and bits independent, so codes never collapse.
- :func:`ste_round`: rounding with a straight-through gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def squared_error(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Mean over rows of the squared L2 reconstruction error."""
    return (x - x_hat).pow(2).sum(-1).mean()


def anisotropic_error(x: torch.Tensor, x_hat: torch.Tensor, eta: float) -> torch.Tensor:
    """``eta * |r_par|^2 + |r_perp|^2`` averaged over rows, ``r = x - x_hat`` split along ``x``.

    Normalised by ``(eta + d - 1) / d`` so it has the scale of the squared error for an
    isotropic residual and ``eta`` changes the balance only.
    """
    r = x - x_hat
    u = F.normalize(x, dim=-1)
    par = (r * u).sum(-1)
    total = r.pow(2).sum(-1)
    d = x.shape[-1]
    return ((total + (eta - 1.0) * par.pow(2)) * (d / (eta + d - 1.0))).mean()


def listwise_distillation(x: torch.Tensor, x_hat: torch.Tensor, temperature: float = 0.05,
                          metric: str = "ip", queries: torch.Tensor | None = None) -> torch.Tensor:
    """KL(softmax(sim(q, x)/T) || softmax(sim(q, x_hat)/T)) averaged over queries.

    The queries default to the batch itself (each item ranks its batch neighbours); the
    diagonal is kept because an item must still find itself first.
    """
    q = x if queries is None else queries
    if metric == "ip":
        s_true, s_hat = q @ x.T, q @ x_hat.T
    else:
        s_true, s_hat = -torch.cdist(q, x).pow(2), -torch.cdist(q, x_hat).pow(2)
    p = F.log_softmax(s_true / temperature, dim=-1)
    log_q = F.log_softmax(s_hat / temperature, dim=-1)
    return F.kl_div(log_q, p, log_target=True, reduction="batchmean")


def bit_balance(soft_bits: torch.Tensor) -> torch.Tensor:
    """Squared mean of each (±1) bit over the batch: 0 when every bit splits the items evenly."""
    return soft_bits.mean(0).pow(2).mean()


def bit_decorrelation(soft_bits: torch.Tensor) -> torch.Tensor:
    """Squared off-diagonal correlation of (±1) bits: 0 when bits carry independent information."""
    b = soft_bits - soft_bits.mean(0, keepdim=True)
    cov = b.T @ b / max(1, len(b) - 1)
    std = cov.diagonal().clamp_min(1e-6).sqrt()
    corr = cov / (std[:, None] * std[None, :])
    off = corr - torch.diag_embed(corr.diagonal())
    n = corr.shape[0]
    return off.pow(2).sum() / max(1, n * (n - 1))


def ste_round(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` forward, identity backward (straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def ste_sign(x: torch.Tensor) -> torch.Tensor:
    """``sign(x)`` (0 -> +1) forward, identity backward."""
    s = torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))
    return x + (s - x).detach()
