"""Small models for 8x8 digits, each built from a plain config dict.

The config holds only strings, numbers and lists, so it can sit in a
checkpoint next to the weights and still load with ``weights_only=True``;
``build_model(checkpoint["config"])`` then rebuilds the architecture from the
file alone.

>>> model = build_model({"arch": "mlp", "hidden": [64]})
>>> model.config["num_classes"]
10
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

__all__ = ["MLP", "SmallCNN", "DEFAULTS", "build_model", "count_parameters"]

Config = dict[str, Any]

DEFAULTS: dict[str, Config] = {
    "mlp": {"arch": "mlp", "in_features": 64, "hidden": [64], "num_classes": 10, "dropout": 0.0},
    "cnn": {"arch": "cnn", "channels": [16, 32], "num_classes": 10, "dropout": 0.25},
}


class MLP(nn.Sequential):
    """Flatten, then ``Linear -> ReLU [-> Dropout]`` per hidden size, then a Linear head.

    With one hidden layer of 64 and no dropout its ``state_dict`` keys
    (``1.weight``, ``1.bias``, ``3.weight``, ``3.bias``) match the
    ``nn.Sequential`` that the GPU fixture in ``data/`` was saved from.
    """

    def __init__(self, in_features: int, hidden: list[int], num_classes: int, dropout: float = 0.0):
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)


class SmallCNN(nn.Module):
    """Two ``Conv -> BatchNorm -> ReLU`` blocks, max-pooling, Dropout, a Linear head.

    BatchNorm brings buffers (``running_mean``, ``running_var``,
    ``num_batches_tracked``) into the ``state_dict``; Dropout brings nothing.
    Expects images of shape ``(N, 1, 8, 8)``.
    """

    def __init__(self, channels: list[int], num_classes: int, dropout: float = 0.25):
        super().__init__()
        blocks: list[nn.Module] = []
        c_in = 1
        for c_out in channels:
            blocks += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
            c_in = c_out
        blocks.append(nn.MaxPool2d(2))  # 8x8 -> 4x4
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_in * 4 * 4, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build_model(config: Config) -> nn.Module:
    """Build the model ``config`` describes; ``model.config`` is the full config.

    Missing keys take the architecture's defaults (``DEFAULTS``); unknown keys
    or architectures raise ``ValueError`` rather than being ignored.
    """
    arch = config.get("arch")
    if arch not in DEFAULTS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {sorted(DEFAULTS)}")
    unknown = set(config) - set(DEFAULTS[arch])
    if unknown:
        raise ValueError(f"unknown config keys for {arch!r}: {sorted(unknown)}")
    full: Config = copy.deepcopy({**DEFAULTS[arch], **config})  # never share lists with the caller
    kwargs = {k: v for k, v in full.items() if k != "arch"}
    model: nn.Module = MLP(**kwargs) if arch == "mlp" else SmallCNN(**kwargs)
    model.config = full  # type: ignore[assignment]  # plain data, stored in checkpoints
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters (buffers not included)."""
    return sum(p.numel() for p in model.parameters())
