"""Minibatch training of a fusion network with a validation split and early stopping."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm


@dataclass
class TrainingHistory:
    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    initial_val_loss: float = float("nan")
    best_epoch: int = -1
    stopped_early: bool = False


def _batch(Z: dict[str, np.ndarray], masks: dict[str, np.ndarray], idx: np.ndarray):
    xs = {m: torch.from_numpy(Z[m][idx]) for m in Z}
    ms = {m: torch.from_numpy(masks[m][idx]) for m in masks}
    return xs, ms


def mean_loss(net: torch.nn.Module, Z: dict[str, np.ndarray], masks: dict[str, np.ndarray],
              rows: np.ndarray, *, batch_size: int, temperature: float, seed: int) -> float:
    """Loss over ``rows`` in fixed batches with fixed random views (comparable across epochs)."""
    if len(rows) < 2:
        return float("nan")
    gen = torch.Generator().manual_seed(seed)
    total, weight = 0.0, 0
    net.eval()
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            idx = rows[start:start + batch_size]
            if len(idx) < 2:
                continue
            xs, ms = _batch(Z, masks, idx)
            total += float(net.loss(xs, ms, temperature, gen)) * len(idx)
            weight += len(idx)
    return total / max(weight, 1)


def train_network(
    net: torch.nn.Module,
    Z: dict[str, np.ndarray],
    masks: dict[str, np.ndarray],
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    temperature: float,
    patience: int,
    min_delta: float,
    seed: int,
    progress: bool,
) -> TrainingHistory:
    """AdamW over shuffled minibatches; keeps the weights of the best validation epoch."""
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    hist = TrainingHistory()
    best = mean_loss(net, Z, masks, val_rows, batch_size=batch_size, temperature=temperature, seed=seed + 1)
    hist.initial_val_loss = best
    best_state = copy.deepcopy(net.state_dict())
    stale = 0
    bar = tqdm(range(epochs), desc="fusion training", disable=not progress)
    for epoch in bar:
        net.train()
        order = rng.permutation(train_rows)
        losses = []
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            if len(idx) < 2:
                continue
            xs, ms = _batch(Z, masks, idx)
            loss = net.loss(xs, ms, temperature, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        hist.train_loss.append(float(np.mean(losses)) if losses else float("nan"))
        val = mean_loss(net, Z, masks, val_rows, batch_size=batch_size, temperature=temperature, seed=seed + 1)
        hist.val_loss.append(val)
        bar.set_postfix(train=f"{hist.train_loss[-1]:.3f}", val=f"{val:.3f}")
        if np.isnan(val) or val < best - min_delta:
            best, best_state, stale, hist.best_epoch = val, copy.deepcopy(net.state_dict()), 0, epoch
        else:
            stale += 1
            if stale >= patience:
                hist.stopped_early = True
                break
    net.load_state_dict(best_state)
    net.eval()
    return hist
