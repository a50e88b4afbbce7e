"""What every way of running a lesson shares: the kernels' environment and the notebook client.

The lessons run in five places: nbval (``make test``, set up by conftest.py), ``make run``
(tools/run_notebooks.py), the mutations (tools/mutate.py), the portability runner
(tools/portability.py, strict nbval once per CPU-kernel setting, built on ``kernel_env``) and the
benchmark (tools/benchmark.py). Each takes its environment and its client from here.

Thread policy: one thread per process (``OMP_NUM_THREADS=1``) unless the caller set
``OMP_NUM_THREADS`` already. Measured on the reference machine (2 cores): lesson 03 takes 13-14 s
either way on a quiet machine, but with torch's default of one OpenMP thread per core it took
128-235 s while one other process kept a core busy (its threads spin waiting for each other), and
14.5 s with one thread. The one variable covers every thread pool the lessons load (torch's OpenMP
pool, MKL, oneDNN, numpy's and scipy's OpenBLAS, scikit-learn's OpenMP; checked with
``threadpoolctl``, tests/test_environment.py). It must be set before torch is imported (the OpenMP
runtime reads it once, when it loads). ``make lab`` starts JupyterLab under the policy too
(``python -m tools.harness --threads-only jupyter lab``). README, "Threads".

For the harness's kernels also: ``TQDM_DISABLE=1`` (tqdm's progress bars hold timings and would make
stored outputs differ on every run; in JupyterLab students still see them) and
``PYTHONHASHSEED=0`` unless set.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"

#: the thread policy: the default for every process the course starts; a caller's value wins
THREADS = {"OMP_NUM_THREADS": "1"}
#: the harness's kernels only: defaults a caller may override ...
KERNEL_DEFAULTS = {**THREADS, "PYTHONHASHSEED": "0"}
#: ... and what is always set (stored outputs must not depend on progress-bar timings)
KERNEL_FIXED = {"TQDM_DISABLE": "1"}

#: the notebook client: kernel, seconds allowed per cell, the kernel's own arguments
KERNEL_NAME = "python3"
CELL_TIMEOUT = 300
# the kernel listens on localhost only; its notice that TCP is unencrypted is noise here
KERNEL_ARGS = ("--IPKernelApp.log_level=ERROR",)

RAISES = "raises-exception"  # the tag of a cell that must raise (nbval and the runners carry on past it)
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # colour codes in tracebacks


def kernel_env(
    base: Mapping[str, str] | None = None, *, threads_only: bool = False, **overrides: str
) -> dict[str, str]:
    """The environment for a kernel (or a pytest, or a benchmark) started from ``base`` (default: this
    process's): the policy's defaults where ``base`` has no value, then ``overrides``.

    ``threads_only``: the thread policy alone (JupyterLab: students keep their progress bars).
    """
    env = dict(os.environ if base is None else base)
    for key, value in (THREADS if threads_only else KERNEL_DEFAULTS).items():
        env.setdefault(key, value)
    if not threads_only:
        env.update(KERNEL_FIXED)
    env.update(overrides)
    return env


def use_kernel_env() -> dict[str, str]:
    """Put ``kernel_env()`` into this process's environment: its kernels inherit it, and torch, when
    imported afterwards, runs with the policy's threads. Returns what changed."""
    before = dict(os.environ)
    os.environ.update(kernel_env())
    return {k: v for k, v in os.environ.items() if before.get(k) != v}


def notebooks(prefixes: Iterable[str] = (), folder: Path = NOTEBOOKS) -> list[Path]:
    """The lessons whose file name starts with one of ``prefixes`` (all with none), sorted."""
    prefixes = tuple(prefixes)
    return sorted(p for p in folder.glob("*.ipynb") if not prefixes or p.name.startswith(prefixes))


def notebook_client(nb: Any, cwd: Path = NOTEBOOKS, *, timeout: int = CELL_TIMEOUT, **options: Any) -> Any:
    """An nbclient ``NotebookClient`` for ``nb`` whose kernel starts in ``cwd`` (as in JupyterLab: the
    notebook's folder) with ``kernel_env()``; ``options`` go to the client (``allow_errors=True``)."""
    from nbclient import NotebookClient
    from nbclient.util import run_sync

    class Client(NotebookClient):  # type: ignore[misc]
        async def async_start_new_kernel(self, **kwargs: Any) -> None:
            kwargs.setdefault("env", kernel_env())
            await super().async_start_new_kernel(**kwargs)

        start_new_kernel = run_sync(async_start_new_kernel)

    return Client(
        nb,
        timeout=timeout,
        kernel_name=KERNEL_NAME,
        record_timing=False,
        extra_arguments=list(KERNEL_ARGS),
        resources={"metadata": {"path": str(cwd)}},
        **options,
    )


def main(argv: list[str] | None = None) -> int:
    """Run a command under the policy: ``python -m tools.harness [--threads-only] CMD ARGS...``."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--threads-only", action="store_true", help="only the thread policy (make lab)")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if not args.command:
        parser.error("no command given")
    os.execvpe(args.command[0], args.command, kernel_env(threads_only=args.threads_only))
    return 127  # not reached: exec replaces this process


if __name__ == "__main__":
    sys.exit(main())
