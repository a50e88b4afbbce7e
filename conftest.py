"""Settings for every test, notebooks included (nbval's kernels inherit this environment).

TQDM_DISABLE=1 hides tqdm's progress bars, whose text holds timings and would
make stored outputs differ on every run; in JupyterLab students still see them.
The stored notebook outputs were made the same way (``make refresh``).

Thread policy: one thread per process (``OMP_NUM_THREADS=1``) unless the caller
set ``OMP_NUM_THREADS`` already. Measured on the reference machine (2 cores):
lesson 03 takes 13-14 s either way on a quiet machine, but with torch's default
of one OpenMP thread per core it took 128-235 s while one other process kept a
core busy (its threads spin waiting for each other), and 14.5 s with one thread.
The one variable covers every thread pool the lessons load (torch's OpenMP
pool, MKL, oneDNN, numpy's and scipy's OpenBLAS, scikit-learn's OpenMP;
checked with ``threadpoolctl``), and under ``pytest -n 2`` each worker's
kernel gets a core of its own. The same default is set by
``tools/run_notebooks.py`` and the Makefile (``make lab``, ``run``, ``test``);
the README says why. No ``helper`` import changes the thread count.

CPU kernel settings are deliberately NOT pinned here. Measured on the reference
machine (AMD EPYC, AVX-512, 2 cores, torch 2.14.1): three epochs of the lesson-03
CNN give bit-identical weights run after run under one setting, but seven
different results under eight settings (default; ATEN_CPU_CAPABILITY=default;
=avx2; ONEDNN_MAX_CPU_ISA=AVX2; OMP_NUM_THREADS=1; MKL_CBWR=COMPATIBLE; all of
those together; only MKL_ENABLE_INSTRUCTIONS=AVX2 changed nothing). Pinning
them would make this machine repeat itself, not make an Intel laptop, an ARM
Mac or a student's defaults agree with it, and it would hide exactly the
outputs that break for students. So the tests run with the kernels a student
gets, stored outputs print only what no kernel can change (see CONTRIBUTING.md),
and ``make test-portable`` re-runs every notebook under other kernel settings
(two threads among them) to prove it.
"""

import os

os.environ["TQDM_DISABLE"] = "1"
os.environ.setdefault("PYTHONHASHSEED", "0")
# before anything imports torch: the OpenMP runtime reads it once, when it loads
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_report_header(config):
    """Say the thread policy at the top of every run, where it cannot be missed."""
    return f"kernels and tests: OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} (see README, 'Threads')"


# Longest first (seconds of one `make test` on the reference machine, 2 workers): pytest-xdist's
# loadscope hands out whole notebooks and test modules in collection order, so the long ones go
# first and the short ones fill the end of both workers. Unlisted files keep their place after these;
# the order of the cells inside a notebook, and of the tests inside a module, never changes.
LONGEST_FIRST = ("11_distributed_checkpoints", "test_slides", "12_troubleshooting", "test_crash_safety",
                 "10_big_models_fast_loading", "08_formats_safetensors_export", "test_concurrency",
                 "03_training_checkpoints", "test_tools", "13_other_libraries", "05_evaluate_after_reload")


def pytest_collection_modifyitems(session, config, items):
    """Sort the collected items file by file, longest files first (``LONGEST_FIRST``)."""
    def rank(item) -> int:
        stem = item.path.stem
        return LONGEST_FIRST.index(stem) if stem in LONGEST_FIRST else len(LONGEST_FIRST)
    items[:] = sorted(items, key=rank)  # stable: the original order within a file and among the rest
