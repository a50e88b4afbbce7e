"""Keep Lightning's, transformers' and torch's chatter out of lesson 13's outputs.

Defined for ``13_other_libraries.ipynb``. The libraries of that lesson print
notices, tips and progress bars that hold timings or depend on the machine
(whether a GPU was found), and nbval compares every output, stderr included.
``quiet_libraries`` turns off exactly these, by name; every other warning
still shows.

>>> quiet_libraries()
"""

from __future__ import annotations

import logging
import warnings

__all__ = ["EXPECTED_WARNINGS", "quiet_libraries"]

#: Warnings the lesson expects and hides, as regular expressions of their message.
EXPECTED_WARNINGS: tuple[str, ...] = (
    # lightning 2.6.6 on torch 2.14: a deprecation inside Lightning itself, nothing to fix on our side
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
)


def quiet_libraries() -> None:
    """Silence Lightning's info lines, transformers' bars and notices, and the expected warnings.

    - ``lightning.pytorch`` loggers: only warnings and errors (no "GPU
      available: False", no tips);
    - transformers: errors only, and no "Loading weights" / "Writing model
      shards" progress bars;
    - the warnings in ``EXPECTED_WARNINGS``.
    """
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    for pattern in EXPECTED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # transformers is only needed by lesson 13
        return
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
