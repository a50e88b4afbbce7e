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

