"""Per-modality projection heads trained so that an item's modalities agree (InfoNCE).

Each modality m gets a head ``h_m: R^{d_m} → R^{out_dim}``; for every pair of modalities
the loss is the symmetric InfoNCE between ``h_a(x_a)`` and ``h_b(x_b)`` over the items of a
batch that have both, so an item's text lands next to its own collaborative vector rather
than another item's. The fused vector is the weighted mean of the available projections.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between row-aligned, L2-normalised batches ``a`` and ``b``."""
    logits = a @ b.T / temperature
    target = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def projection_head(d_in: int, hidden: int, d_out: int) -> nn.Module:
    if hidden <= 0:
        return nn.Linear(d_in, d_out)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out))


class ContrastiveProjection(nn.Module):
    """Projection heads per modality; ``forward`` returns fused L2-normalised vectors."""

    def __init__(self, dims: dict[str, int], out_dim: int, hidden_dim: int,
                 weights: dict[str, float]) -> None:
        super().__init__()
        self.names = list(dims)
        self.heads = nn.ModuleDict({m: projection_head(d, hidden_dim, out_dim) for m, d in dims.items()})
        self.register_buffer("weights", torch.tensor([float(weights[m]) for m in self.names]))

    def project(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.heads[name](x), dim=-1)

    def forward(self, xs: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> torch.Tensor:
        out = None
        for j, m in enumerate(self.names):
            z = self.project(m, xs[m]) * (self.weights[j] * masks[m].float())[:, None]
            out = z if out is None else out + z
        return F.normalize(out, dim=-1)

    def loss(self, xs: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], temperature: float,
             generator: torch.Generator | None = None) -> torch.Tensor:
        del generator
        z = {m: self.project(m, xs[m]) for m in self.names}
        total, count = None, 0
        for a, b in itertools.combinations(self.names, 2):
            both = masks[a] & masks[b]
            if int(both.sum()) < 2:
                continue
            term = info_nce(z[a][both], z[b][both], temperature)
            total = term if total is None else total + term
            count += 1
        if total is None:
            return torch.zeros((), requires_grad=True)
        return total / count
