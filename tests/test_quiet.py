"""helper.quiet hides exactly the notices lesson 13 expects, and nothing else."""

from __future__ import annotations

import logging
import warnings

from helper.quiet import EXPECTED_WARNINGS, quiet_libraries


def test_expected_warning_hidden_other_warnings_still_shown():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_libraries()  # inserts its filters in front of "always"
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", DeprecationWarning)
        warnings.warn("something else went wrong", UserWarning)
    assert [str(w.message) for w in caught] == ["something else went wrong"]
    assert EXPECTED_WARNINGS


def test_lightning_info_lines_hidden_warnings_kept():
    logging.getLogger("lightning.pytorch").setLevel(logging.INFO)  # as importing lightning does
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    assert logger.isEnabledFor(logging.INFO)
    quiet_libraries()
    assert not logger.isEnabledFor(logging.INFO)
    assert logger.isEnabledFor(logging.WARNING)
