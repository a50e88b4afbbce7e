"""Training checkpoints that load with ``torch.load(..., weights_only=True)``: the checkpoint dict and its RNG states.

Taught in notebooks/03_training_checkpoints.ipynb, sections 1 and 3 (the dict by hand, then this module).

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

The other jobs live in modules of their own, and every name is importable from here as before:
``helper.atomic_save`` (``save_checkpoint``: atomic and durable, with a check that it loads),
``helper.digest_record`` (each storage's CRC-32 under its name), ``helper.checked_load`` (the checks
``load_checkpoint`` makes), ``helper.state_dict_fit`` (a table of what does not fit a model) and
``helper.checkpoint_folder`` (``CheckpointFolder``: the last K, the best, resume).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from helper.atomic_save import _err, find_unsafe_values, fsync_folder, remove_stale_temp_files, save_checkpoint
from helper.checked_load import load_verified, verify_zip
from helper.checkpoint_folder import CheckpointFallback, CheckpointFolder, Resumed
from helper.digest_record import DIGEST_RECORD
from helper.digest_record import digest_problem as _digest_problem  # noqa: F401 - helper.inspector imports it
from helper.formats import KINDS, CheckpointError, sniff
from helper.models import build_model
from helper.state_dict_fit import Mismatch, StateDictMismatchError, find_mismatch, load_model_state, state_dict_mismatch

__all__ = [
    "FORMAT_VERSION",
    "REQUIRED_KEYS",
    "CheckpointError",
    "StateDictMismatchError",
    "CheckpointFallback",
    "capture_rng_state",
    "restore_rng_state",
    "make_checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "restore_training_state",
    "model_from_checkpoint",
    "sniff",
    "KINDS",
    "verify_zip",
    "find_unsafe_values",
    "remove_stale_temp_files",
    "fsync_folder",
    "Mismatch",
    "find_mismatch",
    "state_dict_mismatch",
    "load_model_state",
    "CheckpointFolder",
    "Resumed",
    "DIGEST_RECORD",
]

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "epoch", "step", "config", "model", "optimizer", "scheduler", "history", "rng")
Checkpoint = dict[str, Any]
PathLike = str | os.PathLike[str]


# --------------------------------------------------------------------------------------------------
# Random states and the checkpoint dict


def capture_rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Every random generator a training run draws from, as weights-only-safe data.

    NumPy's state is stored as a tensor and a few numbers rather than its
    native tuple holding an ``ndarray``, which ``weights_only=True`` refuses.
    """
    version, mt_state, gauss = random.getstate()
    _, key, pos, has_gauss, cached = np.random.get_state(legacy=True)
    assert isinstance(key, np.ndarray)
    return {
        "python": [version, list(mt_state), gauss],
        "numpy": {
            "key": torch.from_numpy(key.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generator": None if generator is None else generator.get_state(),
    }


def restore_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Put back what ``capture_rng_state`` captured (CUDA states only where CUDA exists)."""
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["key"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
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


def load_checkpoint(path: PathLike, *, map_location: Any = "cpu", verify: bool = True) -> Checkpoint:
    """Load a checkpoint with ``weights_only=True`` and check that it is one.

    Before anything is unpickled: ``sniff`` must find a ``torch.save`` zip
    (anything else is named for what it is), ``open_torch_zip`` validates
    it (structure, records, ``data.pkl``'s CRC-32 and opcodes, storage sizes, a
    memory budget) on one read of everything but the tensor data (never a
    shared mapping another process could truncate), the digest record
    ``save_checkpoint`` writes is compared with the members (a renamed or swapped
    member is refused), and ``helper.pickle_guard.scan_pickle`` checks every
    opcode against its budget (depth, containers, memo, memory, allocations) and
    call rules; ``torch.load`` then reads the bytes these checks read (the
    tensors' data aside). With ``verify=True`` (the default) the CRC-32 of every
    tensor's bytes is checked over the bytes ``torch.load`` read, before they
    are moved to ``map_location`` (no second read); a mismatch refuses what was
    loaded, even where the file reads correctly afterwards (it changed
    meanwhile). ``map_location`` defaults to the CPU.
    Every failure, ``RecursionError`` and ``MemoryError`` included, raises
    ``CheckpointError`` naming the file, the cause and a fix; its ``kind`` says
    which: ``missing``, ``not-a-checkpoint`` (another format, a folder, a dict
    without the keys), ``truncated``, ``corrupted`` (a CRC-32 or the structure),
    ``swapped`` (members renamed against the digest record), ``hostile-pickle``
    (a global or call weights_only must never reach), ``budget`` (would build
    too much), ``load-failed`` (torch.load raised anything else). It never falls
    back to ``weights_only=False``. (Saving: ``not-saved``; ``CheckpointFolder``:
    ``folder``.)
    """
    return load_verified(path, map_location=map_location, verify=verify, accept=_a_checkpoint)


def _a_checkpoint(path: Path, checkpoint: Any) -> None:
    """``CheckpointError`` (``not-a-checkpoint``) unless ``checkpoint`` is a checkpoint dict this version reads."""
    if not isinstance(checkpoint, dict):
        raise _err(
            path,
            f"holds a {type(checkpoint).__name__}, not a checkpoint dict",
            "save with helper.checkpoint.save_checkpoint(make_checkpoint(...), path)",
            kind="not-a-checkpoint",
        )
    missing = [k for k in REQUIRED_KEYS if k not in checkpoint]
    if missing:
        raise _err(
            path,
            f"missing keys {missing} (found {sorted(checkpoint, key=str)})",
            "load it with torch.load, or save with helper.checkpoint.make_checkpoint",
            kind="not-a-checkpoint",
        )
    version = checkpoint["format_version"]
    if type(version) is not int or version > FORMAT_VERSION:
        shown = repr(version) if type(version) in (int, str, float, type(None)) else f"a {type(version).__name__}"
        raise _err(
            path,
            f"format version {shown[:80]} is newer than {FORMAT_VERSION}",
            "update the course's helper package",
            kind="not-a-checkpoint",
        )


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
    each parameter's device. ``rng=False`` leaves every generator alone. Weights
    that do not fit the model raise ``StateDictMismatchError`` with a table.
    """
    load_model_state(model, checkpoint["model"])
    if optimizer is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(checkpoint["scheduler"])
    if rng:
        restore_rng_state(checkpoint["rng"], generator)


def model_from_checkpoint(checkpoint: Checkpoint, device: torch.device | str = "cpu") -> nn.Module:
    """Rebuild the model from the checkpoint's config, load its weights, switch to eval mode."""
    model = build_model(checkpoint["config"]).to(device)
    load_model_state(model, checkpoint["model"])
    return model.eval()
