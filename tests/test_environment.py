"""The environment is the one requirements.txt describes (a stale .venv fails here, not mid-lesson)."""

import re
from importlib.metadata import version

import pytest
import torch

from helper.paths import REPO_ROOT

PINS = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (REPO_ROOT / "requirements.txt").read_text(), re.M))


def test_requirements_pin_torch_and_torchvision():
    assert PINS["torch"] == "2.14.1" and PINS["torchvision"] == "0.29.1"


@pytest.mark.parametrize("package", sorted(PINS))
def test_installed_version_matches_pin(package):
    installed = version(package).split("+")[0]  # torch reports e.g. 2.14.1+cu130
    assert installed == PINS[package], f"{package} {installed} installed, {PINS[package]} pinned: run make setup"


def test_torchvision_operators_load_beside_torch():
    """A torchvision built for another torch fails here ('operator torchvision::nms does not exist')."""
    from torchvision.ops import nms

    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0], [2.0, 2.0, 3.0, 3.0]])
    assert nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5).tolist() == [0, 2]
