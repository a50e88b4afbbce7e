"""scikit-learn's bundled digits data set as PyTorch tensors and DataLoaders.

The 1,797 8x8 images ship inside scikit-learn, so nothing is ever downloaded.
The test split is the one the GPU fixture in ``data/`` was evaluated on
(``train_test_split(test_size=0.2, random_state=0, stratify=y)``, pixels / 16);
a validation set is then carved, stratified, out of the training part.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["DigitsSplit", "Loaders", "load_digits_tensors", "split_digits", "make_loaders"]

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
    x, y = load_digits(return_X_y=True)
    images = torch.tensor(x / PIXEL_MAX, dtype=torch.float32).reshape(-1, 1, 8, 8)
    return images, torch.tensor(y, dtype=torch.long)


def split_digits(*, test_size: float = 0.2, val_size: float = 0.15, seed: int = 0) -> DigitsSplit:
    """A deterministic, stratified train/validation/test split.

    ``test_size`` is a fraction of all data, ``val_size`` a fraction of what is
    left for training. The same arguments always give the same split.
    """
    x, y = load_digits(return_X_y=True)
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=test_size, random_state=seed, stratify=y
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=val_size, random_state=seed, stratify=y_rest
    )

    def images(a) -> torch.Tensor:
        return torch.tensor(a / PIXEL_MAX, dtype=torch.float32).reshape(-1, 1, 8, 8)

    def labels(a) -> torch.Tensor:
        return torch.tensor(a, dtype=torch.long)

    return DigitsSplit(
        images(x_train), labels(y_train),
        images(x_val), labels(y_val),
        images(x_test), labels(y_test),
    )


def make_loaders(split: DigitsSplit, *, batch_size: int = 64, seed: int = 0) -> Loaders:
    """DataLoaders over ``split``; only the training one shuffles.

    Its shuffling draws from an explicit ``torch.Generator`` seeded with
    ``seed``, not from the global RNG, so its state can be checkpointed.
    """
    generator = torch.Generator().manual_seed(seed)
    train = DataLoader(
        TensorDataset(split.x_train, split.y_train),
        batch_size=batch_size, shuffle=True, generator=generator,
    )
    val = DataLoader(TensorDataset(split.x_val, split.y_val), batch_size=256)
    test = DataLoader(TensorDataset(split.x_test, split.y_test), batch_size=256)
    return Loaders(train=train, val=val, test=test, generator=generator)
