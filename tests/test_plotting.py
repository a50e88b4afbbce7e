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


def _text_sizes(fig):
    """Point sizes of every visible title, axis label and tick label of a drawn figure."""
    fig.canvas.draw()
    sizes = {}
    for ax in fig.axes:
        if ax.get_title():
            sizes.setdefault("title", []).append(ax.title.get_fontsize())
        for label in (ax.xaxis.label, ax.yaxis.label):
            if label.get_text():
                sizes.setdefault("label", []).append(label.get_fontsize())
        for tick in ax.get_xticklabels() + ax.get_yticklabels():
            if tick.get_text() and tick.get_visible():
                sizes.setdefault("tick", []).append(tick.get_fontsize())
    return {k: min(v) for k, v in sizes.items()}


def test_every_figure_reads_on_a_projector():
    figures = {
        "history": plot_history(history(3)),
        "curves": plot_curves({"a": history(3)}),
        "images": show_images(torch.rand(8, 1, 8, 8), list(range(8)), list(range(8))),
        "matrix": plot_confusion_matrix([0, 1, 1, 2], [0, 1, 2, 2]),
    }
    for name, fig in figures.items():
        assert fig.dpi == 150, name
        sizes = _text_sizes(fig)
        assert sizes.get("title", 14) >= 12 and sizes.get("label", 14) >= 14 and sizes.get("tick", 12) >= 12, (
            name,
            sizes,
        )
    assert _text_sizes(figures["images"])["title"] == 12
    assert _text_sizes(figures["history"])["title"] >= 14
    assert min(t.get_fontsize() for t in figures["matrix"].axes[0].texts) >= 12
    # the size nbval compares (<Figure size WxH ...>): pixels, wide enough that a slide shrinks it
    assert [repr(f).split(" with")[0] for f in figures.values()] == [
        "<Figure size 1440x480",
        "<Figure size 1320x480",
        "<Figure size 1320x195",
        "<Figure size 600x540",
    ]
    plt.close("all")


def test_the_readability_check_fails_on_a_small_font():
    fig = plot_history(history(3))
    fig.axes[1].set_title("accuracy", fontsize=7)
    assert _text_sizes(fig)["title"] == 7
    plt.close(fig)
