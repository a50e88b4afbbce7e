"""Mutation tests for the lessons' claims: break what a claim guards, and the notebook must fail
at the cell that checks it.

    python -m tools.mutate                  # every mutation of every lesson, one line each
    python -m tools.mutate 03               # lesson 03's mutations
    python -m tools.mutate 03 "best.pt"     # the mutations of lesson 03 whose name contains "best.pt"
    python -m tools.mutate --list           # list them without running anything

Each mutation lives in ``tests/mutations/NN.toml`` (NN: the lesson's number)::

    [[mutation]]
    name = "best.pt is written every epoch"      # unique in its file
    claim = "best.pt holds the epoch with the lowest validation loss"
    find = "if val_loss < best_loss:"            # exact text, in exactly one code cell, once
    replace = "if True:"
    fails_at = "assert best_epoch != last_epoch" # text of exactly one code cell: the cell that must fail
    error = "AssertionError"                     # optional: the exception expected there

Write the texts as TOML basic strings (double quotes): ``\n`` is an escape there, not in
single-quoted literal strings. ``find`` and ``replace`` may also be lists of the same length
(several edits, one mutation).
The notebook runs from the top up to and including the ``fails_at`` cell. The mutation is
*killed* (the claim is proven) when no earlier cell deviates from the stored notebook (a
cell raises that should not, or a ``raises-exception`` cell stops raising) and the
``fails_at`` cell fails: an ordinary cell raises (``error`` if given), or a cell tagged
``raises-exception`` completes without an error. Anything else is reported as *survived*
or *fired early*, and ``tests/test_mutations.py`` (``make mutations``) fails.
"""

from __future__ import annotations

import argparse
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import nbformat

from tools.harness import ANSI, CELL_TIMEOUT, NOTEBOOKS, RAISES, ROOT, notebook_client, notebooks

MUTATIONS = ROOT / "tests" / "mutations"


class SpecError(ValueError):
    """A mutation that cannot be applied: its texts match no cell, or more than one."""


@dataclass(frozen=True)
class Mutation:
    """One way to break a lesson, and the cell that must notice."""

    lesson: str  # "03"
    name: str
    claim: str
    find: tuple[str, ...]
    replace: tuple[str, ...]
    fails_at: str
    error: str | None = None


@dataclass(frozen=True)
class Outcome:
    """What running a mutated notebook gave: ``verdict`` is killed, survived or early."""

    verdict: str
    cell: int  # the cell that failed first (or the target cell, when it passed)
    detail: str
    seconds: float

    def __str__(self) -> str:
        return f"{self.verdict} at cell {self.cell} ({self.seconds:.1f} s): {self.detail}"


def _as_tuple(value: str | list[str]) -> tuple[str, ...]:
    return tuple(value) if isinstance(value, list) else (value,)


def load(path: Path) -> list[Mutation]:
    """The mutations of one ``NN.toml`` file, checked for the fields they need."""
    lesson = path.stem
    entries = tomllib.loads(path.read_text(encoding="utf-8")).get("mutation", [])
    mutations = []
    for entry in entries:
        missing = {"name", "claim", "find", "replace", "fails_at"} - entry.keys()
        if missing:
            raise SpecError(f"{path.name}: a mutation lacks {sorted(missing)}: {entry}")
        find, replace = _as_tuple(entry["find"]), _as_tuple(entry["replace"])
        if len(find) != len(replace):
            raise SpecError(f"{path.name}: {entry['name']!r}: find and replace differ in length")
        mutations.append(
            Mutation(lesson, entry["name"], entry["claim"], find, replace, entry["fails_at"], entry.get("error"))
        )
    names = [m.name for m in mutations]
    if len(set(names)) != len(names):
        raise SpecError(f"{path.name}: mutation names repeat")
    return mutations


def load_all(lessons: list[str] | None = None) -> list[Mutation]:
    """Every mutation in ``tests/mutations/``, lesson by lesson."""
    files = sorted(MUTATIONS.glob("*.toml"))
    return [m for f in files if not lessons or f.stem in lessons for m in load(f)]


def notebook_path(lesson: str) -> Path:
    """``notebooks/NN_*.ipynb`` for lesson ``NN``."""
    found = notebooks([f"{lesson}_"])
    if len(found) != 1:
        raise SpecError(f"lesson {lesson}: expected one notebook, found {[p.name for p in found]}")
    return found[0]


def _only_cell(nb: nbformat.NotebookNode, text: str, what: str) -> int:
    hits = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and text in c.source]
    if len(hits) != 1:
        raise SpecError(f"{what} {text!r} is in {len(hits)} code cells {hits}, not exactly one")
    return hits[0]


def apply(nb: nbformat.NotebookNode, mutation: Mutation) -> int:
    """Apply ``mutation`` to ``nb`` in place; return the index of the cell that must fail."""
    edited = []
    for find, replace in zip(mutation.find, mutation.replace):
        index = _only_cell(nb, find, "find")
        cell = nb.cells[index]
        if cell.source.count(find) != 1:
            raise SpecError(f"find {find!r} occurs {cell.source.count(find)} times in cell {index}")
        cell.source = cell.source.replace(find, replace)
        edited.append(index)
    target = _only_cell(nb, mutation.fails_at, "fails_at")
    if min(edited) > target:
        raise SpecError(f"the mutated cell {min(edited)} comes after the fails_at cell {target}")
    return target


def _error(cell: nbformat.NotebookNode) -> nbformat.NotebookNode | None:
    return next((o for o in cell.get("outputs", []) if o.output_type == "error"), None)


def _describe(error: nbformat.NotebookNode) -> str:
    message = ANSI.sub("", error.evalue).strip().splitlines()
    return f"{error.ename}: {message[0][:160] if message else ''}"


def run(
    nb: nbformat.NotebookNode,
    target: int,
    *,
    error: str | None = None,
    cwd: Path = NOTEBOOKS,
    timeout: int = CELL_TIMEOUT,
) -> Outcome:
    """Execute ``nb`` from the top through cell ``target`` and judge the result (see the module doc)."""
    start = time.perf_counter()
    client = notebook_client(nb, cwd, timeout=timeout, allow_errors=True)
    client.reset_execution_trackers()
    with client.setup_kernel():
        for index in range(target + 1):
            cell = nb.cells[index]
            if cell.cell_type != "code":
                continue
            client.execute_cell(cell, index)
            raised, must_raise = _error(cell), RAISES in cell.metadata.get("tags", [])
            seconds = time.perf_counter() - start
            if index == target:
                if must_raise and raised is None:
                    return Outcome("killed", index, "the live error cell no longer raises", seconds)
                if must_raise:
                    return Outcome("survived", index, f"still raises {_describe(raised)}", seconds)
                if raised is None:
                    return Outcome("survived", index, "the cell that guards the claim passed", seconds)
                if error and raised.ename != error:
                    return Outcome("early", index, f"expected {error}, got {_describe(raised)}", seconds)
                return Outcome("killed", index, _describe(raised), seconds)
            if must_raise and raised is None:
                return Outcome("early", index, "a live error cell stopped raising", seconds)
            if raised is not None and not must_raise:
                return Outcome("early", index, _describe(raised), seconds)
    raise AssertionError("unreachable: the loop returns at the target cell")


def run_mutation(mutation: Mutation, *, timeout: int = CELL_TIMEOUT) -> Outcome:
    """Apply one mutation to its lesson and run it."""
    nb = nbformat.read(notebook_path(mutation.lesson), as_version=4)
    target = apply(nb, mutation)
    return run(nb, target, error=mutation.error, timeout=timeout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("lesson", nargs="?", help="two-digit lesson number")
    parser.add_argument("name", nargs="?", help="run only mutations whose name contains this")
    parser.add_argument("--list", action="store_true", help="list the mutations, run nothing")
    args = parser.parse_args(argv)
    chosen = [m for m in load_all([args.lesson] if args.lesson else None) if not args.name or args.name in m.name]
    if not chosen:
        print("no mutation matched", file=sys.stderr)
        return 1
    bad = 0
    for m in chosen:
        if args.list:
            print(f"{m.lesson}  {m.name}  ->  {m.fails_at!r}")
            continue
        try:
            outcome = str(run_mutation(m))
        except SpecError as exc:
            outcome = f"spec error: {exc}"
        bad += not outcome.startswith("killed")
        print(f"{m.lesson}  {m.name:<50} {outcome}", flush=True)
    if not args.list:
        print(f"{len(chosen) - bad} killed, {bad} not")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
