"""Execute every notebook in notebooks/ headlessly and print how long each took.

    python tools/run_notebooks.py            # run all, leave tracked files untouched
    python tools/run_notebooks.py 01 03      # only notebooks whose name starts so
    python tools/run_notebooks.py --write    # maintainers: store fresh outputs (and slide metadata) in place

Each notebook runs in its own kernel from the notebooks/ folder, as in
JupyterLab, with TQDM_DISABLE=1 so stored outputs hold no progress-bar text,
and OMP_NUM_THREADS=1 unless set already (the course's thread policy: one
thread per kernel keeps a lesson's time when another core is busy; README,
'Threads').
Exit status 1 if any notebook fails.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from nbconvert.preprocessors import CoalesceStreamsPreprocessor

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def _sibling(name: str):
    """Import another script of tools/ (tools/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RAISES = "raises-exception"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
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
        return any(line.startswith("skipped") and "Linux" in line
                   for o in cell.outputs if o.output_type == "stream" and o.name == "stdout"
                   for line in o.text.splitlines())

    return [nb.cells.index(c) for c in must_raise if not raised(c) and (linux or not said_skipped(c))]


def run_one(path: Path, *, write: bool, timeout: int) -> tuple[float, str]:
    """Execute one notebook; return (seconds, "ok" or what went wrong)."""
    nb = nbformat.read(path, as_version=4)
    must_raise = expected_errors(nb)
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", record_timing=False,
        # the kernel listens on localhost only; its notice that TCP is unencrypted is noise here
        extra_arguments=["--IPKernelApp.log_level=ERROR"],
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    try:
        client.execute()
        silent = silent_cells(nb, must_raise, LINUX)
        status = f"FAILED: cells {silent} are tagged {RAISES} but did not raise" if silent else "ok"
    except CellExecutionError as exc:
        text = ANSI.sub("", str(exc))
        expected = {id(c) for c in must_raise}
        failed = next((i for i, c in enumerate(nb.cells) if id(c) not in expected
                       and any(o.output_type == "error" for o in c.get("outputs", []))), "?")
        status = f"FAILED in cell {failed}: " + next((l for l in text.splitlines() if "Error" in l), "error")[:200]
    seconds = time.perf_counter() - start
    if write and status == "ok":
        # how printing splits into stream outputs depends on flush timing; joining them keeps refreshes stable
        nb, _ = CoalesceStreamsPreprocessor().preprocess(nb, {})
        _sibling("slides").apply(nb)  # slide metadata follows the fresh outputs (tools/slides.py)
        nbformat.write(nb, path)
    return seconds, status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prefixes", nargs="*", help="run only notebooks whose file name starts with one of these")
    parser.add_argument("--write", action="store_true", help="store the fresh outputs in the notebooks")
    parser.add_argument("--timeout", type=int, default=300, help="seconds allowed per cell (default 300)")
    args = parser.parse_args(argv)

    os.environ["TQDM_DISABLE"] = "1"
    os.environ.setdefault("PYTHONHASHSEED", "0")
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the thread policy, see the docstring
    paths = sorted(p for p in NOTEBOOKS.glob("*.ipynb")
                   if not args.prefixes or p.name.startswith(tuple(args.prefixes)))
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
