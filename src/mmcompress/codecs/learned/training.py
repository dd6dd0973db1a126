"""The one training loop every learned codec uses.

Deterministic for a seed and a thread count (``torch.manual_seed``, a private generator for
shuffling, deterministic algorithms only, learning rate a pure function of the epoch), with a
progress bar, early stopping on a validation plateau, checkpoints a later run resumes from, and a
clear error on a non-finite loss that leaves the last good checkpoint in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from mmcompress.codecs.learned.checkpoint import (
    checkpoint_exists,
    load_checkpoint,
    optimizer_from_data,
    optimizer_to_data,
    save_checkpoint,
)
from mmcompress.errors import CodecError


class TrainingDivergedError(CodecError):
    """The loss became NaN or infinite; the message names where and the last good checkpoint."""


@dataclass
class TrainConfig:
    """Knobs of :func:`run_training`.

    ``stop_after_epoch`` ends a run early with a checkpoint written, so a long training can be
    split over several runs (each resumes from ``checkpoint_dir``). ``time_budget_s`` stops at
    the first epoch boundary past the budget; it makes the result depend on machine speed.
    """

    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    min_lr_fraction: float = 0.05
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    seed: int = 0
    patience: int = 5
    min_delta: float = 1e-4
    val_fraction: float = 0.1
    max_val: int = 2000
    checkpoint_dir: str | None = None
    resume: bool = True
    stop_after_epoch: int | None = None
    time_budget_s: float | None = None
    progress: bool = False
    num_threads: int | None = None

    def fingerprint(self) -> str:
        """Hash of the fields that change the trained result (not where or how it is shown)."""
        skip = {"checkpoint_dir", "resume", "stop_after_epoch", "progress", "time_budget_s"}
        d = {k: v for k, v in asdict(self).items() if k not in skip}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> TrainConfig:
        d = dict(d or {})
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise CodecError(f"unknown training options {sorted(unknown)}; "
                             f"expected some of {sorted(cls.__dataclass_fields__)}")
        return cls(**d)


@dataclass
class TrainResult:
    """What happened: epochs run (all runs together), best validation loss and when."""

    epochs_run: int = 0
    best_epoch: int = -1
    best_val: float = math.inf
    stopped_early: bool = False
    complete: bool = True
    resumed_from_epoch: int | None = None
    seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)


class Objective(Protocol):
    """What a codec plugs into the loop: a batch loss with gradients and a validation loss."""

    def batch_loss(self, model: nn.Module, xb: torch.Tensor, epoch: int) -> torch.Tensor: ...

    def val_loss(self, model: nn.Module, xv: torch.Tensor, epoch: int) -> float: ...


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run a block with ``n`` intra-op threads (unchanged when ``None``), restoring afterwards."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def deterministic() -> Iterator[None]:
    old = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old)


def cosine_lr(config: TrainConfig, epoch: int) -> float:
    t = epoch / max(1, config.epochs - 1)
    lo = config.lr * config.min_lr_fraction
    return lo + 0.5 * (config.lr - lo) * (1 + math.cos(math.pi * t))


def split_train_val(X: torch.Tensor, config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded split; the validation part is at most ``max_val`` rows (empty for tiny inputs)."""
    n = len(X)
    n_val = min(config.max_val, int(n * config.val_fraction)) if n >= 20 else 0
    g = torch.Generator().manual_seed(config.seed + 7919)
    perm = torch.randperm(n, generator=g)
    return X[perm[n_val:]], X[perm[:n_val]]


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def run_training(model: nn.Module, objective: Objective, X_train: torch.Tensor,
                 X_val: torch.Tensor, config: TrainConfig, *, name: str = "train") -> TrainResult:
    """Train ``model`` in place with Adam and a cosine schedule; keep the best validation state.

    Without a validation split the last epoch counts as best. Raises
    :class:`TrainingDivergedError` on a non-finite loss without touching the checkpoint.
    """
    from tqdm.auto import tqdm

    if len(X_train) == 0:
        raise CodecError("no training rows left after the validation split")
    t0 = time.perf_counter()
    with torch_threads(config.num_threads), deterministic():
        torch.manual_seed(config.seed)
        gen = torch.Generator().manual_seed(config.seed)
        opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        result = TrainResult()
        best_state = _params(model)
        bad_epochs, start = 0, 0
        ckpt_dir = Path(config.checkpoint_dir) if config.checkpoint_dir else None
        if ckpt_dir is not None and config.resume and checkpoint_exists(ckpt_dir):
            tensors, state = load_checkpoint(ckpt_dir)
            if state.get("fingerprint") != config.fingerprint() or state.get("name") != name:
                raise CodecError(f"checkpoint in {ckpt_dir} was written by a different training "
                                 f"setup ({state.get('name')}, {state.get('fingerprint')}); "
                                 f"expected ({name}, {config.fingerprint()}) - remove it or "
                                 f"set resume=False")
            model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
            best_state = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
            optimizer_from_data(opt, {k[4:]: v for k, v in tensors.items() if k.startswith("opt.")},
                                state["optimizer"])
            gen.set_state(tensors["rng.shuffle"])
            torch.set_rng_state(tensors["rng.torch"])
            start = int(state["epoch"])
            bad_epochs = int(state["bad_epochs"])
            result = TrainResult(epochs_run=start, best_epoch=int(state["best_epoch"]),
                                 best_val=float(state["best_val"]), resumed_from_epoch=start,
                                 history=list(state["history"]))
            if state.get("finished"):
                model.load_state_dict(best_state)
                result.stopped_early = bool(state.get("stopped_early", False))
                result.seconds = time.perf_counter() - t0
                return result

        def write_checkpoint(epoch_done: int, finished: bool) -> None:
            if ckpt_dir is None:
                return
            opt_t, opt_meta = optimizer_to_data(opt)
            tensors = {**{f"model.{k}": v for k, v in model.state_dict().items()},
                       **{f"best.{k}": v for k, v in best_state.items()},
                       **{f"opt.{k}": v for k, v in opt_t.items()},
                       "rng.shuffle": gen.get_state(), "rng.torch": torch.get_rng_state()}
            save_checkpoint(ckpt_dir, tensors, {
                "name": name, "fingerprint": config.fingerprint(), "epoch": epoch_done,
                "bad_epochs": bad_epochs, "best_epoch": result.best_epoch,
                "best_val": result.best_val if math.isfinite(result.best_val) else None,
                "history": result.history, "optimizer": opt_meta, "finished": finished,
                "stopped_early": result.stopped_early, "config": asdict(config)})

        def diverged(where: str, value: float) -> TrainingDivergedError:
            last = (f"last good checkpoint: {ckpt_dir / 'checkpoint.json'} "
                    f"(epoch {result.epochs_run})" if ckpt_dir is not None and checkpoint_exists(ckpt_dir)
                    else "no checkpoint was written")
            return TrainingDivergedError(
                f"{name}: non-finite loss ({value}) at {where}; training stopped. Lower the "
                f"learning rate or check the input scale; {last}")

        n = len(X_train)
        bs = max(1, min(config.batch_size, n))
        bar = tqdm(total=config.epochs, initial=start, desc=name, disable=not config.progress,
                   leave=False)
        try:
            for epoch in range(start, config.epochs):
                lr = cosine_lr(config, epoch)
                for group in opt.param_groups:
                    group["lr"] = lr
                model.train()
                perm = torch.randperm(n, generator=gen)
                total, count = 0.0, 0
                for step, lo in enumerate(range(0, n - bs + 1, bs)):
                    xb = X_train[perm[lo:lo + bs]]
                    loss = objective.batch_loss(model, xb, epoch)
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        raise diverged(f"epoch {epoch} step {step}", value)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if config.grad_clip is not None:
                        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                    opt.step()
                    total += value * len(xb)
                    count += len(xb)
                model.eval()
                train_loss = total / max(1, count)
                with torch.no_grad():
                    val = objective.val_loss(model, X_val, epoch) if len(X_val) else train_loss
                if not math.isfinite(val):
                    raise diverged(f"validation after epoch {epoch}", val)
                result.history.append({"epoch": epoch, "lr": lr, "train_loss": train_loss,
                                       "val_loss": val})
                result.epochs_run = epoch + 1
                if val < result.best_val - config.min_delta * abs(result.best_val) or not math.isfinite(result.best_val):
                    result.best_val, result.best_epoch, bad_epochs = val, epoch, 0
                    best_state = _params(model)
                else:
                    bad_epochs += 1
                bar.update(1)
                bar.set_postfix(train=f"{train_loss:.4g}", val=f"{val:.4g}")
                stop = bad_epochs >= config.patience
                result.stopped_early = stop
                done = stop or epoch + 1 == config.epochs
                over_time = (config.time_budget_s is not None
                             and time.perf_counter() - t0 > config.time_budget_s)
                pause = config.stop_after_epoch is not None and epoch + 1 >= config.stop_after_epoch
                write_checkpoint(epoch + 1, finished=done or over_time)
                if done or over_time:
                    break
                if pause:
                    result.complete = False
                    break
        finally:
            bar.close()
        model.load_state_dict(best_state)
        result.seconds = time.perf_counter() - t0
        return result
