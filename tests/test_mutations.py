"""Every key claim of a lesson is shown to fire: break what it guards and the notebook fails there.

The mutations are in ``tests/mutations/NN.toml``; ``python -m tools.mutate`` applies and runs them.
Running them all takes minutes, so they carry the ``mutation`` marker and run in ``make mutations`` (CI runs
it), not in ``make test``. ``make test`` still checks that every mutation applies to the notebook as
it is now, and that the runner itself can tell a surviving mutation and an early failure.
"""

from __future__ import annotations

from itertools import groupby
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from tools import mutate

MUTATIONS = mutate.load_all()
MINIMUM = 125  # issue 25: at least 125 mutations across the lessons


def test_there_are_enough_mutations():
    assert len(MUTATIONS) >= MINIMUM, f"{len(MUTATIONS)} mutations, want {MINIMUM} or more"


def test_every_mutation_applies_to_its_notebook_as_committed():
    problems = []
    for m in MUTATIONS:
        nb = nbformat.read(mutate.notebook_path(m.lesson), as_version=4)
        try:
            mutate.apply(nb, m)
        except mutate.SpecError as exc:
            problems.append(f"{m.lesson} {m.name!r}: {exc}")
    assert problems == []


def _notebook(*sources: str, raising: int | None = None) -> nbformat.NotebookNode:
    nb = new_notebook(cells=[new_code_cell(s) for s in sources])
    if raising is not None:
        nb.cells[raising].metadata["tags"] = ["raises-exception"]
    return nb


def test_runner_reports_a_mutation_that_survives(tmp_path: Path):
    nb = _notebook("x = 1", "assert x == 1")
    mutation = mutate.Mutation("00", "harmless", "x is one", ("x = 1",), ("x = 1  # still",), "assert x")
    target = mutate.apply(nb, mutation)
    assert mutate.run(nb, target, cwd=tmp_path).verdict == "survived"


def test_runner_reports_a_failure_before_the_guarding_cell(tmp_path: Path):
    nb = _notebook("1 / 0", "x = 1", "raise ValueError('ok')", "assert False", raising=2)
    outcome = mutate.run(nb, 3, cwd=tmp_path)
    assert (outcome.verdict, outcome.cell) == ("early", 0)
    assert "ZeroDivisionError" in outcome.detail


def test_runner_kills_when_a_live_error_stops_raising_and_checks_the_error_name(tmp_path: Path):
    nb = _notebook("y = 0", "1 / y", "assert y", raising=1)
    mutation = mutate.Mutation("00", "no error", "y is zero", ("y = 0",), ("y = 2",), "1 / y")
    assert mutate.run(nb, mutate.apply(nb, mutation), cwd=tmp_path).verdict == "killed"
    nb = _notebook("y = 0", "assert y")
    assert mutate.run(nb, 1, error="KeyError", cwd=tmp_path).verdict == "early"
    assert mutate.run(_notebook("y = 0", "assert y"), 1, error="AssertionError", cwd=tmp_path).verdict == "killed"


def _lesson_class(lesson: str, mutations: list) -> type:
    """One test class per lesson, so ``--dist loadscope`` spreads lessons over the xdist workers."""

    @pytest.mark.mutation
    @pytest.mark.parametrize("mutation", mutations, ids=[m.name for m in mutations])
    def test_notebook_fails_where_the_claim_is_checked(self, mutation):
        outcome = mutate.run_mutation(mutation)
        assert outcome.verdict == "killed", f"{mutation.claim}: {outcome}"

    return type(
        f"TestLesson{lesson}",
        (),
        {"test_notebook_fails_where_the_claim_is_checked": test_notebook_fails_where_the_claim_is_checked},
    )


for _lesson, _group in groupby(MUTATIONS, key=lambda m: m.lesson):
    globals()[f"TestLesson{_lesson}"] = _lesson_class(_lesson, list(_group))
