"""Execute every notebook in notebooks/ headlessly and print how long each took.

    python -m tools.run_notebooks            # run all, leave tracked files untouched
    python -m tools.run_notebooks 01 03      # only notebooks whose name starts so
    python -m tools.run_notebooks --write    # maintainers: store fresh outputs (and slide metadata) in place

Each notebook runs in its own kernel from the notebooks/ folder, as in
JupyterLab, with the harness's environment and client (tools/harness.py: no
progress bars in stored outputs, one thread per kernel unless set already).
Exit status 1 if any notebook fails.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
from nbclient.exceptions import CellExecutionError
from nbconvert.preprocessors import CoalesceStreamsPreprocessor

from tools import slides
from tools.harness import ANSI, CELL_TIMEOUT, RAISES, notebook_client, notebooks

LINUX = sys.platform.startswith("linux")


def expected_errors(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    """The cells tagged ``raises-exception``: they must raise (nbclient carries on past them)."""
    return [c for c in nb.cells if c.cell_type == "code" and RAISES in c.metadata.get("tags", [])]


def silent_cells(nb: nbformat.NotebookNode, must_raise: list[nbformat.NotebookNode], linux: bool) -> list[int]:
    """Indices of the tagged cells that did not raise. Off Linux, a cell that printed (on stdout) a
    line starting with "skipped" and naming Linux is not one of them: the course's Linux-only cells
    print that there (lesson 11 on macOS and Windows). On Linux every tagged cell must raise."""

    def raised(cell: nbformat.NotebookNode) -> bool:
        return any(o.output_type == "error" for o in cell.outputs)

    def said_skipped(cell: nbformat.NotebookNode) -> bool:
        return any(
            line.startswith("skipped") and "Linux" in line
            for o in cell.outputs
            if o.output_type == "stream" and o.name == "stdout"
            for line in o.text.splitlines()
        )

    return [nb.cells.index(c) for c in must_raise if not raised(c) and (linux or not said_skipped(c))]


def run_one(path: Path, *, write: bool, timeout: int = CELL_TIMEOUT) -> tuple[float, str]:
    """Execute one notebook; return (seconds, "ok" or what went wrong)."""
    nb = nbformat.read(path, as_version=4)
    must_raise = expected_errors(nb)
    client = notebook_client(nb, path.parent, timeout=timeout)
    start = time.perf_counter()
    try:
        client.execute()
        silent = silent_cells(nb, must_raise, LINUX)
        status = f"FAILED: cells {silent} are tagged {RAISES} but did not raise" if silent else "ok"
    except CellExecutionError as exc:
        text = ANSI.sub("", str(exc))
        expected = {id(c) for c in must_raise}
        failed = next(
            (
                i
                for i, c in enumerate(nb.cells)
                if id(c) not in expected and any(o.output_type == "error" for o in c.get("outputs", []))
            ),
            "?",
        )
        status = (
            f"FAILED in cell {failed}: " + next((line for line in text.splitlines() if "Error" in line), "error")[:200]
        )
    seconds = time.perf_counter() - start
    if write and status == "ok":
        # how printing splits into stream outputs depends on flush timing; joining them keeps refreshes stable
        nb, _ = CoalesceStreamsPreprocessor().preprocess(nb, {})
        slides.apply(nb)  # slide metadata follows the fresh outputs (tools/slides.py)
        nbformat.write(nb, path)
    return seconds, status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prefixes", nargs="*", help="run only notebooks whose file name starts with one of these")
    parser.add_argument("--write", action="store_true", help="store the fresh outputs in the notebooks")
    parser.add_argument(
        "--timeout", type=int, default=CELL_TIMEOUT, help=f"seconds allowed per cell (default {CELL_TIMEOUT})"
    )
    args = parser.parse_args(argv)

    paths = notebooks(args.prefixes)
    if not paths:
        print("no notebooks matched", file=sys.stderr)
        return 1
    print(f"{'notebook':<44} {'seconds':>8}  status", flush=True)
    total, failed = 0.0, 0
    for path in paths:
        seconds, status = run_one(path, write=args.write, timeout=args.timeout)
        total += seconds
        failed += status != "ok"
        print(f"{path.name:<44} {seconds:8.1f}  {status}", flush=True)
    print(f"{'total':<44} {total:8.1f}  {len(paths) - failed} ok, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
