"""Figures for the lessons: training curves, image grids, a confusion matrix.

Each function draws on a new figure and returns it; call ``plt.show()`` in
the notebook cell so the figure is displayed once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay

__all__ = ["plot_history", "plot_curves", "show_images", "plot_confusion_matrix"]


def plot_curves(
    runs: Mapping[str, Mapping[str, Sequence[Any]]],
    keys: Sequence[str] = ("train_loss", "val_loss"),
    *,
    title: str | None = None,
) -> Figure:
    """One panel per history key, one line per named run (overlaid to compare runs)."""
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for (name, history), style in zip(runs.items(), ("-o", "--x", ":s", "-.^")):
            ax.plot(history["epoch"], history[key], style, label=name, markersize=4)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_history(history: Mapping[str, Sequence[Any]], *, title: str | None = None) -> Figure:
    """Loss, accuracy and learning rate of one run, per epoch."""
    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(12, 3.2))
    for split in ("train", "val"):
        ax_loss.plot(history["epoch"], history[f"{split}_loss"], "-o", label=split, markersize=4)
        ax_acc.plot(history["epoch"], history[f"{split}_acc"], "-o", label=split, markersize=4)
    ax_lr.plot(history["epoch"], history["lr"], "-o", markersize=4)
    for ax, name in ((ax_loss, "loss"), (ax_acc, "accuracy"), (ax_lr, "learning rate")):
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    ax_loss.legend()
    ax_acc.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def show_images(
    images: torch.Tensor,
    labels: Sequence[int] | torch.Tensor,
    predictions: Sequence[int] | torch.Tensor | None = None,
    *,
    ncols: int = 8,
) -> Figure:
    """A grid of 8x8 digits titled with their label (and prediction, if given)."""
    n = len(images)
    nrows = max(1, -(-n // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.2 * ncols, 1.35 * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(torch.as_tensor(images[i]).reshape(8, 8).numpy(), cmap="gray_r", vmin=0, vmax=1)
        title = f"y={int(labels[i])}"
        if predictions is not None:
            title += f" p={int(predictions[i])}"
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return fig


def plot_confusion_matrix(
    y_true: Sequence[int] | torch.Tensor,
    y_pred: Sequence[int] | torch.Tensor,
    *,
    title: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """scikit-learn's ``ConfusionMatrixDisplay`` for true versus predicted digits.

    Draws on ``ax`` when given (to put several matrices side by side), else on a new figure.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4.5))
    ConfusionMatrixDisplay.from_predictions(y_true, y_pred, ax=ax, colorbar=False, cmap="Blues")
    if title:
        ax.set_title(title)
    ax.figure.tight_layout()
    return ax.figure
