"""Figures for the lessons: training curves, image grids, a confusion matrix.

Each function draws on a new figure and returns it; call ``plt.show()`` in
the notebook cell so the figure is displayed once.

Every figure is made to be read on a projector: 150 dpi, 14 pt titles and
axis labels, 12 pt ticks, legends and image titles (``SLIDE_RC``, applied to
matplotlib when this module is imported, so a notebook's own figures get the
same fonts). A figure is sized in pixels (``new_figure``): the
``<Figure size WxH ...>`` text that nbval compares is that size. A slide shows
a figure at most about 940 px wide, so a 1440 px figure's 14 pt (29 px) titles
appear at about 19 px, its 12 pt ticks at about 16 px (prose is 20 px).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = ["SLIDE_DPI", "SLIDE_RC", "new_figure", "plot_history", "plot_curves", "show_images", "plot_confusion_matrix"]

SLIDE_DPI = 150  # a figure's resolution: its pixel size is what nbval sees, this is how fine it draws
SLIDE_RC = {
    "font.size": 14,
    "axes.titlesize": 14,
    "axes.labelsize": 14,
    "figure.titlesize": 15,
    "xtick.labelsize": 12,
    "ytick.labelsize": 12,
    "legend.fontsize": 12,
}
IMAGE_TITLE_PT = 12  # titles over the digits of show_images
MATRIX_COUNT_PT = 12  # the counts in a confusion matrix's cells

plt.rcParams.update(SLIDE_RC)  # type: ignore[arg-type]  # matplotlib types keys as a Literal


def new_figure(width_px: int, height_px: int, nrows: int = 1, ncols: int = 1, **kwargs: Any) -> tuple[Figure, Any]:
    """``plt.subplots`` for a figure ``width_px`` x ``height_px`` pixels drawn at ``SLIDE_DPI``."""
    return plt.subplots(nrows, ncols, figsize=(width_px / SLIDE_DPI, height_px / SLIDE_DPI), dpi=SLIDE_DPI, **kwargs)


def plot_curves(
    runs: Mapping[str, Mapping[str, Sequence[Any]]],
    keys: Sequence[str] = ("train_loss", "val_loss"),
    *,
    title: str | None = None,
) -> Figure:
    """One panel per history key, one line per named run (overlaid to compare runs)."""
    fig, axes = new_figure(660 * len(keys), 480, 1, len(keys), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for (name, history), style in zip(runs.items(), ("-o", "--x", ":s", "-.^")):
            ax.plot(history["epoch"], history[key], style, label=name, markersize=4)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_history(history: Mapping[str, Sequence[Any]], *, title: str | None = None) -> Figure:
    """Loss, accuracy and learning rate of one run, per epoch."""
    fig, (ax_loss, ax_acc, ax_lr) = new_figure(1440, 480, 1, 3)
    for split in ("train", "val"):
        ax_loss.plot(history["epoch"], history[f"{split}_loss"], "-o", label=split, markersize=4)
        ax_acc.plot(history["epoch"], history[f"{split}_acc"], "-o", label=split, markersize=4)
    ax_lr.plot(history["epoch"], history["lr"], "-o", markersize=4)
    for ax, name in ((ax_loss, "loss"), (ax_acc, "accuracy"), (ax_lr, "learning rate")):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
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
    fig, axes = new_figure(165 * ncols, 195 * nrows, nrows, ncols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(torch.as_tensor(images[i]).reshape(8, 8).numpy(), cmap="gray_r", vmin=0, vmax=1)
        title = f"y={int(labels[i])}"
        if predictions is not None:
            title += f" p={int(predictions[i])}"
        ax.set_title(title, fontsize=IMAGE_TITLE_PT)
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
    scikit-learn is imported here, not with the module: it costs a second of CPU, and most
    lessons that plot never draw a confusion matrix.
    """
    from sklearn.metrics import ConfusionMatrixDisplay

    if ax is None:
        _, ax = new_figure(600, 540)
    ConfusionMatrixDisplay.from_predictions(
        y_true, y_pred, ax=ax, colorbar=False, cmap="Blues", text_kw={"fontsize": MATRIX_COUNT_PT}
    )
    if title:
        ax.set_title(title)
    figure = ax.get_figure(root=True)
    assert isinstance(figure, Figure)
    figure.tight_layout()
    return figure
