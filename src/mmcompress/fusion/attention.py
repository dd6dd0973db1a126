"""Low-dimensional cross-modal attention: each item attends over its available modality tokens.

Every present modality becomes a token (linear map to ``attention_dim`` plus a learned
modality embedding); one self-attention block lets tokens exchange information, absent
modalities are masked out of the keys; the weighted mean of the tokens is projected to
``out_dim``. Training contrasts two views of each item built from different modality subsets
(one a random proper subset, the other its complement or the full set), so the fused vector
from any subset points to the same item.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmcompress.fusion.contrastive import info_nce


class CrossModalAttention(nn.Module):
    def __init__(self, dims: dict[str, int], out_dim: int, attention_dim: int, heads: int,
                 weights: dict[str, float]) -> None:
        super().__init__()
        self.names = list(dims)
        self.inputs = nn.ModuleDict({m: nn.Linear(d, attention_dim) for m, d in dims.items()})
        self.modality_embedding = nn.Parameter(0.02 * torch.randn(len(dims), attention_dim))
        self.attention = nn.MultiheadAttention(attention_dim, heads, batch_first=True)
        self.norm1 = nn.LayerNorm(attention_dim)
        self.feed_forward = nn.Sequential(nn.Linear(attention_dim, 2 * attention_dim), nn.GELU(),
                                          nn.Linear(2 * attention_dim, attention_dim))
        self.norm2 = nn.LayerNorm(attention_dim)
        self.output = nn.Linear(attention_dim, out_dim)
        self.register_buffer("weights", torch.tensor([float(weights[m]) for m in self.names]))

    def fuse(self, xs: dict[str, torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        """Fused vectors for a (B, M) presence matrix; rows with nothing present are zeros."""
        tokens = torch.stack([self.inputs[m](xs[m]) for m in self.names], dim=1)
        tokens = tokens + self.modality_embedding[None]
        any_present = present.any(dim=1)
        safe = present.clone()
        safe[~any_present, 0] = True
        h, _ = self.attention(tokens, tokens, tokens, key_padding_mask=~safe, need_weights=False)
        x = self.norm1(tokens + h)
        x = self.norm2(x + self.feed_forward(x))
        w = safe.float() * self.weights[None]
        pooled = (x * w[..., None]).sum(dim=1) / w.sum(dim=1, keepdim=True).clamp_min(1e-6)
        out = F.normalize(self.output(pooled), dim=-1)
        return out * any_present[:, None].float()

    def forward(self, xs: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.fuse(xs, torch.stack([masks[m] for m in self.names], dim=1))

    def loss(self, xs: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], temperature: float,
             generator: torch.Generator | None = None) -> torch.Tensor:
        present = torch.stack([masks[m] for m in self.names], dim=1)
        view_a, view_b = modality_views(present, generator)
        return info_nce(self.fuse(xs, view_a), self.fuse(xs, view_b), temperature)


def modality_views(present: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Two presence masks per item: a random non-empty proper subset, and its complement or all.

    Items with a single modality get that modality in both views.
    """
    B, M = present.shape
    keep = (torch.rand(B, M, generator=generator) < 0.5) & present
    n_present = present.sum(dim=1)
    n_keep = keep.sum(dim=1)
    scores = torch.rand(B, M, generator=generator).masked_fill(~present, -1.0)
    first = scores.argmax(dim=1)
    second = scores.masked_fill(torch.nn.functional.one_hot(first, M).bool(), -2.0).argmax(dim=1)
    rows = torch.arange(B)
    empty = n_keep == 0
    keep[rows[empty], first[empty]] = True
    full = (keep.sum(dim=1) == n_present) & (n_present > 1)
    keep[rows[full], second[full]] = False
    complement = present & ~keep
    use_full = torch.rand(B, generator=generator) < 0.5
    view_b = torch.where(use_full[:, None], present, complement)
    single = n_present <= 1
    view_b[single] = present[single]
    keep[single] = present[single]
    return keep, view_b
