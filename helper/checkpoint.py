"""Training checkpoints that load with ``torch.load(..., weights_only=True)``.

A checkpoint is a plain dict: tensors, numbers, strings, lists, tuples and
dicts only, so loading it never needs an allowlist and never runs code.

==============  ============================================================
key             value
==============  ============================================================
format_version  ``FORMAT_VERSION``
epoch, step     last finished epoch, optimizer steps so far
config          the model's config dict (``helper.models.build_model``)
model           ``model.state_dict()``
optimizer       ``optimizer.state_dict()`` or ``None``
scheduler       ``scheduler.state_dict()`` or ``None``
history         per-epoch metrics (``helper.training.History``)
rng             Python, NumPy, torch (CPU, CUDA) and DataLoader-generator states
extra           anything else the caller adds (plain data)
==============  ============================================================

``save_checkpoint`` writes to a temporary file in the same folder and renames
it over the target, so a failed save leaves the previous file untouched.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from helper.models import build_model
from helper.paths import display_path

__all__ = [
    "FORMAT_VERSION", "REQUIRED_KEYS", "CheckpointError", "capture_rng_state", "restore_rng_state",
    "make_checkpoint", "save_checkpoint", "load_checkpoint", "restore_training_state",
    "model_from_checkpoint",
]

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "epoch", "step", "config", "model", "optimizer", "scheduler", "history", "rng")
Checkpoint = dict[str, Any]


class CheckpointError(Exception):
    """A checkpoint file could not be used. The message names the file, the cause and a fix."""

    def __init__(self, path: str | os.PathLike[str], cause: str, fix: str):
        self.path, self.cause, self.fix = Path(path), cause, fix
        super().__init__(f"{display_path(path)}: {cause}. Fix: {fix}")


def capture_rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Every random generator a training run draws from, as weights-only-safe data.

    NumPy's state is stored as a tensor and a few numbers rather than its
    native tuple holding an ``ndarray``, which ``weights_only=True`` refuses.
    """
    version, mt_state, gauss = random.getstate()
    _, key, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "python": [version, list(mt_state), gauss],
        "numpy": {"key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generator": None if generator is None else generator.get_state(),
    }


def restore_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Put back what ``capture_rng_state`` captured (CUDA states only where CUDA exists)."""
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["key"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    if generator is not None:
        if state["generator"] is None:
            raise ValueError("this checkpoint holds no DataLoader generator state")
        generator.set_state(state["generator"].cpu())


def make_checkpoint(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    *,
    epoch: int = 0,
    step: int = 0,
    history: dict[str, list[Any]] | None = None,
    generator: torch.Generator | None = None,
    config: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Checkpoint:
    """Gather a training run's full state into one plain dict.

    ``config`` defaults to ``model.config`` (set by ``build_model``). Note that
    the state dicts hold references to the live tensors: save the dict (or
    deep-copy it) before training on, or it changes under you.
    """
    return {
        "format_version": FORMAT_VERSION,
        "epoch": epoch,
        "step": step,
        "config": config if config is not None else getattr(model, "config", None),
        "model": model.state_dict(),
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "history": history if history is not None else {},
        "rng": capture_rng_state(generator),
        "extra": extra or {},
    }


def save_checkpoint(checkpoint: Checkpoint, path: str | os.PathLike[str]) -> Path:
    """Write ``checkpoint`` to ``path`` atomically and return the path.

    The bytes go to a temporary file in the same folder, are flushed to disk,
    and only then renamed over ``path``: a crash mid-save never leaves a
    half-written file under the real name, and never destroys the old one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike[str], *, map_location: Any = "cpu") -> Checkpoint:
    """Load a checkpoint with ``weights_only=True`` and check that it is one.

    ``map_location`` defaults to the CPU so a file saved on a GPU loads
    anywhere. Any failure raises ``CheckpointError`` naming the file, the
    cause and a fix; it never falls back to ``weights_only=False``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no such file", "check the path, or train and save a checkpoint first")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(path, "not a zip archive (truncated, corrupted, or not saved by torch.save)",
                              "use an earlier checkpoint, or save this one again")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        what = f"it pickles {found.group(1)}" if found else "it holds a pickled object"
        raise CheckpointError(path, f"refused by weights_only=True: {what}, not plain data",
                              "store only tensors and plain data (dict, list, str, int, float)") from exc
    except RuntimeError as exc:
        raise CheckpointError(path, f"torch.load failed ({str(exc).splitlines()[0]})",
                              "use an earlier checkpoint, or save this one again") from exc
    if not isinstance(checkpoint, dict):
        raise CheckpointError(path, f"holds a {type(checkpoint).__name__}, not a checkpoint dict",
                              "save with helper.checkpoint.save_checkpoint(make_checkpoint(...), path)")
    missing = [k for k in REQUIRED_KEYS if k not in checkpoint]
    if missing:
        raise CheckpointError(path, f"missing keys {missing} (found {sorted(checkpoint)})",
                              "load it with torch.load, or save with helper.checkpoint.make_checkpoint")
    if checkpoint["format_version"] > FORMAT_VERSION:
        raise CheckpointError(path, f"format version {checkpoint['format_version']} is newer than "
                              f"{FORMAT_VERSION}", "update the course's helper package")
    return checkpoint


def restore_training_state(
    checkpoint: Checkpoint,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    *,
    generator: torch.Generator | None = None,
    rng: bool = True,
) -> None:
    """Load the checkpoint's states into freshly built objects, in place.

    Move ``model`` to its device and build ``optimizer`` on its parameters
    before calling this: ``optimizer.load_state_dict`` moves the saved state to
    each parameter's device. ``rng=False`` leaves every generator alone.
    """
    model.load_state_dict(checkpoint["model"])
    if optimizer is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(checkpoint["scheduler"])
    if rng:
        restore_rng_state(checkpoint["rng"], generator)


def model_from_checkpoint(checkpoint: Checkpoint, device: torch.device | str = "cpu") -> nn.Module:
    """Rebuild the model from the checkpoint's config, load its weights, switch to eval mode."""
    model = build_model(checkpoint["config"]).to(device)
    model.load_state_dict(checkpoint["model"])
    return model.eval()
