"""Fixtures shared by the unit tests."""

from __future__ import annotations

import pytest
import torch

from helper.data import DigitsSplit, Loaders, make_loaders, split_digits


@pytest.fixture(scope="session")
def split() -> DigitsSplit:
    return split_digits()


@pytest.fixture
def loaders(split: DigitsSplit) -> Loaders:
    return make_loaders(split, batch_size=64, seed=0)


@pytest.fixture(autouse=True)
def _fixed_seed() -> None:
    torch.manual_seed(0)
