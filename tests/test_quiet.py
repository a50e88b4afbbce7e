"""helper.quiet hides exactly the notices lesson 13 expects, and nothing else."""

from __future__ import annotations

import logging
import re
import warnings

import helper.quiet
from helper.quiet import EXPECTED_WARNINGS, quiet_libraries

LIGHTNING = "`isinstance(treespec, LeafSpec)` is deprecated, use ..."  # what lesson 13's Lightning prints


def shown_after_quiet(*messages: tuple[str, type[Warning]]) -> list[str]:
    """The messages still shown when each is warned after ``quiet_libraries()``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_libraries()  # inserts its filters in front of "always"
        for text, category in messages:
            warnings.warn(text, category, stacklevel=1)
    return [str(w.message) for w in caught]


def test_expected_warning_hidden_other_warnings_still_shown():
    assert shown_after_quiet((LIGHTNING, DeprecationWarning), ("something else went wrong", UserWarning)) == [
        "something else went wrong"
    ]
    assert [p for p in EXPECTED_WARNINGS if re.match(p, LIGHTNING)]  # hidden by its row of the table


def test_without_its_row_the_expected_warning_shows(monkeypatch):
    """The check above can fail: with the table empty, quiet_libraries hides no warning."""
    monkeypatch.setattr(helper.quiet, "EXPECTED_WARNINGS", ())
    assert shown_after_quiet((LIGHTNING, DeprecationWarning)) == [LIGHTNING]


def test_lightning_info_lines_hidden_warnings_kept():
    logging.getLogger("lightning.pytorch").setLevel(logging.INFO)  # as importing lightning does
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    assert logger.isEnabledFor(logging.INFO)
    quiet_libraries()
    assert not logger.isEnabledFor(logging.INFO)
    assert logger.isEnabledFor(logging.WARNING)
