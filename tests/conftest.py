"""Fixtures shared by the unit tests.

torch is imported inside the fixtures, not here: pytest-xdist's main process loads this file too but
runs no test, and importing torch there cost 2-3 s of CPU while the two workers were starting.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from helper.data import DigitsSplit, Loaders


@pytest.fixture(scope="session")
def split() -> DigitsSplit:
    from helper.data import split_digits

    return split_digits()


@pytest.fixture
def loaders(split: DigitsSplit) -> Loaders:
    from helper.data import make_loaders

    return make_loaders(split, batch_size=64, seed=0)


@pytest.fixture(autouse=True)
def _fixed_seed() -> None:
    import torch

    torch.manual_seed(0)
