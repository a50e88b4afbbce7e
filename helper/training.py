"""Seeding, device choice, and a small training loop with a tqdm progress bar."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

__all__ = [
    "History",
    "seed_everything",
    "pick_device",
    "train_one_epoch",
    "evaluate",
    "predict",
    "fit",
    "new_history",
    "build_optimizer",
    "build_scheduler",
]

#: Per-epoch record: lists of plain floats/ints under these keys, safe to store
#: in a checkpoint that loads with ``weights_only=True``.
History = dict[str, list[Any]]
HISTORY_KEYS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr")


def new_history() -> History:
    """An empty history with every key present."""
    return {k: [] for k in HISTORY_KEYS}


def _from_plain_data(kind: str, classes: dict[str, Any], config: dict[str, Any], target: Any) -> Any:
    """``classes[config["name"]](target, **other keys)``, with a clear error for an unknown name."""
    kwargs = dict(config)
    name = kwargs.pop("name", None)
    if name not in classes:
        raise ValueError(f"unknown {kind} {name!r}; expected one of {sorted(classes)}")
    return classes[name](target, **kwargs)


def build_optimizer(model: nn.Module, config: dict[str, Any]) -> torch.optim.Optimizer:
    """An optimizer from plain data, e.g. ``{"name": "sgd", "lr": 0.05, "momentum": 0.9}``.

    ``name`` is ``"sgd"`` or ``"adam"``; every other key is passed to its
    constructor. Kept in a checkpoint, the dict lets a fresh process rebuild
    the optimizer before loading its state.
    """
    classes = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}
    return _from_plain_data("optimizer", classes, config, model.parameters())


def build_scheduler(optimizer: torch.optim.Optimizer, config: dict[str, Any] | None) -> Any | None:
    """An LR scheduler from plain data, e.g. ``{"name": "step", "step_size": 2, "gamma": 0.5}``.

    ``name`` is ``"step"`` (StepLR) or ``"cosine"`` (CosineAnnealingLR);
    ``None`` means no scheduler.
    """
    if config is None:
        return None
    classes = {"step": torch.optim.lr_scheduler.StepLR, "cosine": torch.optim.lr_scheduler.CosineAnnealingLR}
    return _from_plain_data("scheduler", classes, config, optimizer)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's global generators (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def pick_device(*, verbose: bool = True) -> torch.device:
    """The best device here: CUDA, then Apple's MPS, then the CPU. Prints its choice."""
    if torch.cuda.is_available():
        device = torch.device("cuda")
        label = f"cuda ({torch.cuda.get_device_name(0)})"
    elif torch.backends.mps.is_available():
        device, label = torch.device("mps"), "mps"
    else:
        device, label = torch.device("cpu"), "cpu"
    if verbose:
        print(f"Using device: {label}")
    return device


def _batch_stats(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
    """Summed cross-entropy and number correct for one batch."""
    loss = F.cross_entropy(logits, y, reduction="sum").item()
    return loss, int((logits.argmax(1) == y).sum().item())


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    device: torch.device | str = "cpu",
) -> tuple[float, float]:
    """One pass over ``loader`` in train mode; returns (mean loss, accuracy)."""
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        optimizer.step()
        batch_loss, right = _batch_stats(logits.detach(), y)
        total_loss, correct, seen = total_loss + batch_loss, correct + right, seen + len(y)
    return total_loss / seen, correct / seen


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device | str = "cpu") -> tuple[float, float]:
    """Mean loss and accuracy over ``loader`` in eval mode (no gradients)."""
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    for x, y in loader:
        loss, right = _batch_stats(model(x.to(device)), y.to(device))
        total_loss, correct, seen = total_loss + loss, correct + right, seen + len(y)
    return total_loss / seen, correct / seen


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """Logits for a batch of images, without gradients, returned on the CPU.

    It leaves the model's mode alone: call ``model.eval()`` first for
    inference (Dropout off, BatchNorm's running statistics), as a lesson
    that forgets it must show.
    """
    return model(x.to(device)).cpu()


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_loader: DataLoader,
    val_loader: DataLoader,
    *,
    epochs: int,
    start_epoch: int = 0,
    scheduler: Any | None = None,
    device: torch.device | str = "cpu",
    history: History | None = None,
    on_epoch_end: Callable[[int, History], None] | None = None,
    progress: bool | None = None,
) -> History:
    """Train from ``start_epoch + 1`` up to ``epochs`` (inclusive) and return the history.

    After each epoch the scheduler steps (``ReduceLROnPlateau`` gets the
    validation loss), the history grows by one row, and ``on_epoch_end(epoch,
    history)`` runs: the place to save a checkpoint. ``history`` continues an
    earlier run's record when resuming. The tqdm bar shows unless
    ``progress=False`` or, by default, the environment variable
    ``TQDM_DISABLE=1`` is set (the tests set it: a bar's timings would make
    stored notebook outputs differ on every run).
    """
    history = new_history() if history is None else history
    epoch_iter: Iterable[int] = range(start_epoch + 1, epochs + 1)
    if progress is None:  # tqdm.notebook ignores TQDM_DISABLE, so read it here
        progress = os.environ.get("TQDM_DISABLE", "").lower() not in ("1", "true")
    bar = tqdm(epoch_iter, desc="epochs", disable=not progress)
    for epoch in bar:
        lr = optimizer.param_groups[0]["lr"]
        train_loss, train_acc = train_one_epoch(model, train_loader, optimizer, device)
        val_loss, val_acc = evaluate(model, val_loader, device)
        if scheduler is not None:
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(val_loss)
            else:
                scheduler.step()
        for key, value in zip(HISTORY_KEYS, (epoch, train_loss, train_acc, val_loss, val_acc, lr)):
            history[key].append(value)
        bar.set_postfix(loss=f"{train_loss:.3f}", val_acc=f"{val_acc:.3f}")
        if on_epoch_end is not None:
            on_epoch_end(epoch, history)
    return history
