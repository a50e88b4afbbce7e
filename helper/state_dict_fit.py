"""Architecture mismatches: a readable table of what does not fit instead of ``load_state_dict``'s paragraph.

Taught in notebooks/12_troubleshooting.ipynb, sections 6-12 (missing, unexpected and wrong-shape keys,
and the ``module.``, ``_orig_mod.`` and Lightning ``model.`` prefixes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from helper.formats import CheckpointError

__all__ = ["StateDictMismatchError", "Mismatch", "find_mismatch", "state_dict_mismatch", "load_model_state"]

PathLike = str | os.PathLike[str]


class StateDictMismatchError(CheckpointError, RuntimeError):
    """The saved weights do not fit the model (a ``RuntimeError`` too, like ``load_state_dict``'s own)."""


_PREFIX_CAUSE = {
    "module.": "a nn.DataParallel / DistributedDataParallel wrapper",
    "_orig_mod.": "a torch.compile wrapper",
}


def _shape(value: Any) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


@dataclass(frozen=True)
class Mismatch:
    """How a state dict fails to fit a model: ``rows`` of (problem, key, in file, in model), and a prefix hint.

    ``hint`` is ``(cause, fix)`` when one prefix explains every row (``module.``
    from DDP, ``_orig_mod.`` from ``torch.compile``, or an attribute prefix such
    as Lightning's ``model.``).
    """

    rows: list[tuple[str, str, str, str]]
    hint: tuple[str, str] | None = None

    @property
    def summary(self) -> str:
        counts = {what: sum(r[0] == what for r in self.rows) for what in ("missing", "unexpected", "wrong shape")}
        return ", ".join(f"{n} {what}" for what, n in counts.items() if n)

    def table(self, limit: int = 12) -> list[str]:
        header, shown = ("problem", "key", "in file", "in model"), self.rows[:limit]
        widths = [max(len(r[i]) for r in [header, *shown]) for i in range(4)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *shown]]
        return lines + ([f"... and {len(self.rows) - limit} more"] if len(self.rows) > limit else [])

    @property
    def fix(self) -> str:
        return (
            self.hint[1]
            if self.hint
            else (
                "rebuild the model from the checkpoint's own config (model_from_checkpoint), or load the matching "
                "keys on purpose with load_state_dict(..., strict=False) and check what it returns"
            )
        )


def _prefix_hint(expected: set[str], found: set[str]) -> tuple[str, str] | None:
    heads = {k.split(".", 1)[0] + "." for k in found if "." in k}
    for prefix in ["module.", "_orig_mod.", *sorted(heads)] if len(heads) == 1 else ["module.", "_orig_mod."]:
        origin = _PREFIX_CAUSE.get(
            prefix, f"a wrapper that holds the model as its attribute {prefix[:-1]!r}, as a LightningModule does"
        )
        if found and all(k.startswith(prefix) for k in found) and {k[len(prefix) :] for k in found} == expected:
            return (
                f"every saved key starts with {prefix!r} (saved from {origin})",
                f"strip it: torch.nn.modules.utils.consume_prefix_in_state_dict_if_present(state_dict, {prefix!r})",
            )
        if (
            prefix in _PREFIX_CAUSE
            and expected
            and all(k.startswith(prefix) for k in expected)
            and {k[len(prefix) :] for k in expected} == found
        ):
            inner = "module" if prefix == "module." else "_orig_mod"
            return (
                f"the model's keys start with {prefix!r} (it is wrapped by {origin}) and the file's do not",
                f"load into the inner model: model.{inner}.load_state_dict(state_dict)",
            )
    return None


def find_mismatch(model: nn.Module, state_dict: dict[str, Any]) -> Mismatch | None:
    """``None`` if ``state_dict`` fits ``model`` exactly (keys and shapes), else a ``Mismatch``."""
    own = model.state_dict()
    expected, found = set(own), set(state_dict)
    rows = [("missing", k, "-", _shape(own[k])) for k in own if k not in found]
    rows += [("unexpected", k, _shape(state_dict[k]), "-") for k in state_dict if k not in expected]
    rows += [
        ("wrong shape", k, _shape(state_dict[k]), _shape(own[k]))
        for k in own
        if k in found
        and isinstance(own[k], torch.Tensor)
        and isinstance(state_dict[k], torch.Tensor)
        and own[k].shape != state_dict[k].shape
    ]
    return Mismatch(rows, _prefix_hint(expected, found)) if rows else None


def state_dict_mismatch(model: nn.Module, state_dict: dict[str, Any], *, limit: int = 12) -> str | None:
    """``None`` if ``state_dict`` fits ``model`` exactly, else the summary, a table and the prefix hint, as text."""
    found = find_mismatch(model, state_dict)
    if found is None:
        return None
    hint = [f"{found.hint[0]}; {found.hint[1]}"] if found.hint else []
    return "\n".join([found.summary, *found.table(limit), *hint])


def load_model_state(model: nn.Module, state_dict: dict[str, Any], *, path: PathLike | None = None) -> None:
    """``model.load_state_dict(state_dict)``, or ``StateDictMismatchError`` with the table of what does not fit."""
    found = find_mismatch(model, state_dict)
    if found is not None:
        fix = f"{found.hint[0]}; {found.hint[1]}" if found.hint else found.fix
        raise StateDictMismatchError(
            path, f"the weights do not fit the model ({found.summary})", "\n".join([fix, *found.table()])
        )
    model.load_state_dict(state_dict)
