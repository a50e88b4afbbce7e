"""scikit-learn's bundled digits data set as PyTorch tensors and DataLoaders.

The 1,797 8x8 images ship inside scikit-learn, so nothing is ever downloaded.
The test split is the one the GPU fixture in ``data/`` was evaluated on
(``train_test_split(test_size=0.2, random_state=0, stratify=y)``, pixels / 16);
a validation set is then carved, stratified, out of the training part.

scikit-learn is imported only when a split is computed: its import costs a
second of CPU per process (more than torch's own), and every kernel and many
of the lessons' fresh processes need the split. ``split_digits`` keeps each
split it computes in ``artifacts/cache/`` (a NumPy ``.npz``, read with
``allow_pickle=False``), keyed by its arguments and scikit-learn's version;
later processes read that file instead. Delete the folder (``make clean``) and
the next call computes the split again, bit for bit the same.
"""

from __future__ import annotations

import os
import secrets
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from helper.paths import ARTIFACTS_DIR

__all__ = ["DigitsSplit", "Loaders", "load_digits_tensors", "split_digits", "compute_split", "make_loaders"]

PIXEL_MAX = 16.0  # digits pixels are integers 0..16


@dataclass(frozen=True)
class DigitsSplit:
    """Images ``(N, 1, 8, 8)`` float32 in [0, 1] and labels ``(N,)`` int64."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def sizes(self) -> dict[str, int]:
        """Number of examples in each part."""
        return {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)}


@dataclass(frozen=True)
class Loaders:
    """The three DataLoaders, and the generator that drives training shuffles.

    Saving ``generator.get_state()`` in a checkpoint and restoring it on resume
    makes the resumed run see the same batches as an uninterrupted one.
    """

    train: DataLoader
    val: DataLoader
    test: DataLoader
    generator: torch.Generator


def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """All digits: images ``(1797, 1, 8, 8)`` scaled to [0, 1], labels ``(1797,)``."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    images = torch.tensor(x / PIXEL_MAX, dtype=torch.float32).reshape(-1, 1, 8, 8)
    return images, torch.tensor(y, dtype=torch.long)


_PARTS = ("x_train", "x_val", "x_test", "y_train", "y_val", "y_test")


def compute_split(*, test_size: float = 0.2, val_size: float = 0.15, seed: int = 0) -> dict[str, np.ndarray]:
    """The split as scikit-learn makes it: pixels 0..16 and labels, as NumPy arrays named as in ``DigitsSplit``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y)
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=val_size, random_state=seed, stratify=y_rest
    )
    return {"x_train": x_train, "x_val": x_val, "x_test": x_test, "y_train": y_train, "y_val": y_val, "y_test": y_test}


def split_cache_path(*, test_size: float = 0.2, val_size: float = 0.15, seed: int = 0) -> Path:
    """Where ``split_digits`` keeps this split (the name carries the arguments and scikit-learn's version)."""
    version = metadata.version("scikit-learn")
    return ARTIFACTS_DIR / "cache" / f"digits-split-sklearn{version}-test{test_size!r}-val{val_size!r}-seed{seed}.npz"


def _cached_split(**kwargs) -> dict[str, np.ndarray]:
    path = split_cache_path(**kwargs)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {name: f[name] for name in _PARTS}
        if all(
            arrays[f"x_{p}"].shape[1:] == (64,) and len(arrays[f"x_{p}"]) == len(arrays[f"y_{p}"])
            for p in ("train", "val", "test")
        ):
            return arrays
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        pass  # absent, or not a whole file: compute it again
    arrays = compute_split(**kwargs)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:  # a temporary file renamed over the target: a reader never sees half a file
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy stubs type **kwds as allow_pickle
        os.replace(tmp, path)
    except OSError:  # a read-only or full disk: no cache (and no temporary file left), the split is still right
        tmp.unlink(missing_ok=True)
    return arrays


def split_digits(*, test_size: float = 0.2, val_size: float = 0.15, seed: int = 0) -> DigitsSplit:
    """A deterministic, stratified train/validation/test split.

    ``test_size`` is a fraction of all data, ``val_size`` a fraction of what is
    left for training. The same arguments always give the same split (computed
    by scikit-learn's ``train_test_split`` once, then read from the cache).
    """
    a = _cached_split(test_size=test_size, val_size=val_size, seed=seed)

    def images(x) -> torch.Tensor:
        return torch.tensor(x / PIXEL_MAX, dtype=torch.float32).reshape(-1, 1, 8, 8)

    def labels(y) -> torch.Tensor:
        return torch.tensor(y, dtype=torch.long)

    return DigitsSplit(
        images(a["x_train"]),
        labels(a["y_train"]),
        images(a["x_val"]),
        labels(a["y_val"]),
        images(a["x_test"]),
        labels(a["y_test"]),
    )


def make_loaders(split: DigitsSplit, *, batch_size: int = 64, seed: int = 0) -> Loaders:
    """DataLoaders over ``split``; only the training one shuffles.

    Its shuffling draws from an explicit ``torch.Generator`` seeded with
    ``seed``, not from the global RNG, so its state can be checkpointed.
    """
    generator = torch.Generator().manual_seed(seed)
    train = DataLoader(
        TensorDataset(split.x_train, split.y_train),
        batch_size=batch_size,
        shuffle=True,
        generator=generator,
    )
    val = DataLoader(TensorDataset(split.x_val, split.y_val), batch_size=256)
    test = DataLoader(TensorDataset(split.x_test, split.y_test), batch_size=256)
    return Loaders(train=train, val=val, test=test, generator=generator)
