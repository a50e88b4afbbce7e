"""Run a notebook's code cells with plain Python, no Jupyter needed, and print what each prints.

    python tools/run_cells.py notebooks/04_devices_map_location.ipynb

For machines that have PyTorch but no Jupyter (a GPU server, say): the cells
run in order in one namespace, from the notebook's folder, as in a kernel.
A cell marked ``# NBVAL_RAISES_EXCEPTION`` must raise; its error is printed.
Line magics (``%xmode``) are skipped; ``%%writefile PATH`` writes the file.
Exit status 1 if a cell fails or a marked cell does not raise.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
import types
from pathlib import Path


def cells(path: Path) -> list[str]:
    nb = json.loads(path.read_text(encoding="utf-8"))
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def run(path: Path) -> int:
    os.chdir(path.parent)
    main = types.ModuleType("__main__")  # a kernel's namespace is the real __main__ module:
    sys.modules["__main__"] = main       # classes defined in cells must pickle as __main__.X
    namespace = main.__dict__
    for number, source in enumerate(cells(path), start=1):
        print(f"----- [{number}]", flush=True)
        if source.startswith("%%writefile"):
            first, _, body = source.partition("\n")
            Path(first.split(maxsplit=1)[1]).write_text(body + "\n")
            continue
        code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith("%"))
        must_raise = "NBVAL_RAISES_EXCEPTION" in source
        try:
            exec(compile(code, f"cell {number}", "exec"), namespace)
        except Exception as exc:  # noqa: BLE001 - report any cell error
            print(f"{type(exc).__name__}: {exc}", flush=True)
            if not must_raise:
                traceback.print_exc()
                return 1
        else:
            if must_raise:
                print(f"cell {number} is marked NBVAL_RAISES_EXCEPTION but did not raise")
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1]).resolve()))
