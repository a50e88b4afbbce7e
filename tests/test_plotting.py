import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from helper.plotting import plot_confusion_matrix, plot_curves, plot_history, show_images  # noqa: E402
from helper.training import new_history  # noqa: E402


def history(n: int, scale: float = 1.0):
    h = new_history()
    for epoch in range(1, n + 1):
        for key, value in zip(h, (epoch, scale / epoch, 0.9, scale / epoch, 0.8, 0.1)):
            h[key].append(value)
    return h


def test_plot_history_draws_loss_accuracy_and_lr():
    fig = plot_history(history(3), title="run")
    assert [ax.get_title() for ax in fig.axes] == ["loss", "accuracy", "learning rate"]
    assert list(fig.axes[0].lines[0].get_ydata()) == [1.0, 0.5, 1 / 3]
    plt.close(fig)


def test_plot_curves_overlays_one_line_per_run():
    fig = plot_curves({"a": history(3), "b": history(3, 2.0)}, ("train_loss", "val_loss"))
    assert len(fig.axes) == 2 and all(len(ax.lines) == 2 for ax in fig.axes)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["a", "b"]
    plt.close(fig)


def test_show_images_titles_labels_and_predictions():
    fig = show_images(torch.rand(5, 1, 8, 8), [1, 2, 3, 4, 5], [1, 2, 0, 4, 5], ncols=4)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["y=1 p=1", "y=2 p=2", "y=3 p=0", "y=4 p=4", "y=5 p=5"]
    assert len(fig.axes) == 8  # two rows of four, the last three blank
    plt.close(fig)


def test_confusion_matrix_counts_and_side_by_side_axes():
    fig, (left, right) = plt.subplots(1, 2)
    plot_confusion_matrix([0, 1, 1, 2], [0, 1, 2, 2], ax=left, title="A")
    assert left.get_title() == "A"
    counts = np.array([[int(t.get_text()) for t in left.texts]]).reshape(3, 3)
    assert counts.tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    assert len(right.texts) == 0  # only the axes it was given
    plt.close(fig)
