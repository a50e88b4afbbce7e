"""Settings for every test, notebooks included (nbval's kernels inherit this environment).

The environment is the harness's (``tools/harness.py``: no tqdm progress bars in stored outputs,
one thread per process unless the caller set ``OMP_NUM_THREADS``; README, "Threads"), put into
this process before anything imports torch; nbval's cell timeout is the harness's too. ``make run``,
the mutations, the portability runner and the benchmark take both from the same module.

CPU kernel settings are deliberately NOT pinned here. Measured on the reference
machine (AMD EPYC, AVX-512, 2 cores, torch 2.14.1): three epochs of the lesson-03
CNN give bit-identical weights run after run under one setting, but seven
different results under eight settings (default; ATEN_CPU_CAPABILITY=default;
=avx2; ONEDNN_MAX_CPU_ISA=AVX2; one thread; MKL_CBWR=COMPATIBLE; all of
those together; only MKL_ENABLE_INSTRUCTIONS=AVX2 changed nothing). Pinning
them would make this machine repeat itself, not make an Intel laptop, an ARM
Mac or a student's defaults agree with it, and it would hide exactly the
outputs that break for students. So the tests run with the kernels a student
gets, stored outputs print only what no kernel can change (see CONTRIBUTING.md),
and ``make test-portable`` re-runs every notebook under other kernel settings
(two threads among them) to prove it.

Tests marked ``slow`` (``SLOW``: the browser checks of the slides and the site, the crash and
bomb tests) run in ``make test``; ``make quick`` leaves them out.
"""

import gc
import os

import pytest

from tools.harness import CELL_TIMEOUT, THREADS, use_kernel_env

use_kernel_env()  # before anything imports torch: the OpenMP runtime reads it once, when it loads
(THREAD_VARIABLE,) = THREADS

# test module -> the fixtures that make one of its tests slow (an empty set: every test of the module)
SLOW = {"test_site": set(), "test_crash_safety": set(), "test_bombs": set(), "test_slides": {"chromium_session"}}


def pytest_configure(config):
    """nbval's cell timeout is the harness's (``CELL_TIMEOUT``) unless the caller chose one."""
    if getattr(config.option, "nbval_cell_timeout", None) == 2000:  # nbval's default, not the caller's choice
        config.option.nbval_cell_timeout = CELL_TIMEOUT


def pytest_report_header(config):
    """Say the thread policy at the top of every run, where it cannot be missed."""
    return f"kernels and tests: {THREAD_VARIABLE}={os.environ[THREAD_VARIABLE]} (see README, 'Threads')"


# Seconds each notebook or test module took in one `make test` on the reference machine (2 workers;
# 2026-11-30). pytest-xdist's loadscope hands out one file at a time to whichever worker runs low,
# in the order of the collection (`--no-loadscope-reorder` in pyproject.toml: xdist's own order is
# by number of tests, which put 12 s of crash and concurrency tests last). Longest first, the short
# files fill the end of both workers. A file not listed here goes after these; the order of the
# cells inside a notebook, and of the tests inside a module, never changes.
SECONDS = {
    "11_distributed_checkpoints": 20.5,
    "test_slides": 16.9,
    "12_troubleshooting": 16.4,
    "08_formats_safetensors_export": 14.2,
    "test_crash_safety": 12.5,
    "10_big_models_fast_loading": 12.3,
    "03_training_checkpoints": 11.6,
    "05_evaluate_after_reload": 9.6,
    "13_other_libraries": 9.5,
    "test_tools": 8.0,
    "test_doctor_libraries": 7.2,
    "test_bombs": 6.6,
    "07_crash_safe_checkpoints": 5.9,
    "06_safe_loading": 5.2,
    "test_loading_bench": 5.1,
    "test_environment": 5.1,
    "01_whole_model": 5.1,
    "09_partial_and_transfer": 4.9,
    "02_state_dict": 4.5,
    "test_concurrency": 4.0,
    "test_mutations": 3.9,
    "04_devices_map_location": 3.3,
    "test_doctor": 2.5,
    "test_site": 30.0,
}


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(session, config, items):
    """Mark the ``SLOW`` tests; sort the items file by file, longest first (``SECONDS``), stable within a file."""
    for item in items:
        slow = SLOW.get(item.path.stem)
        if slow is not None and (not slow or slow & set(getattr(item, "fixturenames", ()))):
            item.add_marker(pytest.mark.slow)
    items[:] = sorted(items, key=lambda item: -SECONDS.get(item.path.stem, 0.0))


def pytest_collection_finish(session):
    """Move everything collection imported (torch, the lessons' libraries) out of the garbage
    collector's view: the workers' full collections no longer walk it, nor does the final one at exit
    (after the last test, each worker and the main process spent 2-4 s in it)."""
    gc.freeze()


def pytest_unconfigure(config):
    """The same for what the tests imported (Lightning, transformers): no full collection at exit."""
    gc.freeze()
