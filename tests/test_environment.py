"""The environment is the one the requirements files describe (a stale .venv fails here, not
mid-lesson), and the thread policy (README, "Threads") does what it says."""

import contextlib
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import tomllib
from importlib.metadata import version
from types import SimpleNamespace

import pytest
import torch

from helper.paths import REPO_ROOT

REQUIREMENTS = ["requirements.txt", "requirements-dev.txt", "requirements-slides.txt"]


def pins(name: str) -> dict[str, str]:
    """``package -> version`` of every ``==`` line of one requirements file."""
    text = (REPO_ROOT / name).read_text(encoding="utf-8")
    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", text, re.M))


PINS = {package: pin for name in REQUIREMENTS for package, pin in pins(name).items()}


def test_requirements_pin_torch_and_torchvision():
    assert pins("requirements.txt")["torch"] == "2.14.1"
    assert pins("requirements.txt")["torchvision"] == "0.29.1"


def test_student_file_is_lean_and_the_others_include_it():
    student = pins("requirements.txt")
    tools = {"pytest", "nbval", "pytest-xdist", "playwright", "sphinx-revealjs", "jupyterlab-rise"}
    assert not tools & set(student), "test and slide tools belong in requirements-dev/-slides.txt"
    for name in REQUIREMENTS[1:]:
        text = (REPO_ROOT / name).read_text(encoding="utf-8")
        assert "-r requirements.txt" in text.splitlines(), name
        assert not set(pins(name)) & set(student), f"{name} pins a student package again"


def test_python_floor_and_torch_floor_match_the_pins():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["requires-python"] == ">=3.11"  # numpy 2.4, scikit-learn 1.9, matplotlib 3.11
    torch_floor = next(d for d in project["dependencies"] if d.startswith("torch"))
    assert torch_floor == "torch>=2.10"  # the safety lessons' claims (CVE-2025-32434, CVE-2026-24747)
    assert sys.version_info >= (3, 11)


@pytest.mark.parametrize("package", sorted(PINS))
def test_installed_version_matches_pin(package):
    installed = version(package).split("+")[0]  # torch reports e.g. 2.14.1+cu130
    assert installed == PINS[package], f"{package} {installed} installed, {PINS[package]} pinned: run make setup"


def test_torchvision_operators_load_beside_torch():
    """A torchvision built for another torch fails here ('operator torchvision::nms does not exist')."""
    from torchvision.ops import nms

    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0], [2.0, 2.0, 3.0, 3.0]])
    assert nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5).tolist() == [0, 2]


POOLS = """
import json, torch, numpy, sklearn.cluster, helper.training, helper.checkpoint, helper.plotting
from threadpoolctl import threadpool_info
pools = {i["filepath"].rsplit("/", 1)[-1]: i["num_threads"] for i in threadpool_info()}
print(json.dumps({"torch": torch.get_num_threads(), **pools}))
"""


def thread_counts(omp: str) -> dict[str, int]:
    """Threads of every pool in an interpreter that imported the lessons' libraries and helper with
    ``OMP_NUM_THREADS=omp`` and no other ``*_NUM_THREADS`` variable. This test process is one when its
    environment is exactly that (the harness set it before anything was imported: conftest.py);
    otherwise a fresh interpreter is started (2-3 s of CPU)."""
    others = [k for k in os.environ if k.endswith("_NUM_THREADS") and k != "OMP_NUM_THREADS"]
    if os.environ.get("OMP_NUM_THREADS") == omp and not others:
        done = io.StringIO()
        with contextlib.redirect_stdout(done):
            exec(POOLS, {})
        return json.loads(done.getvalue().splitlines()[-1])
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    env["OMP_NUM_THREADS"] = omp
    done = subprocess.run(
        [sys.executable, "-c", POOLS], env=env, capture_output=True, text=True, cwd=REPO_ROOT, check=True
    )
    return json.loads(done.stdout.splitlines()[-1])


def test_the_harness_runs_kernels_with_one_thread():
    """conftest.py sets OMP_NUM_THREADS=1 unless the caller chose; nbval's kernels inherit it."""
    if os.environ["OMP_NUM_THREADS"] != "1":
        pytest.skip(f"the caller chose OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}")
    assert torch.get_num_threads() == 1


def test_one_variable_caps_every_thread_pool_and_helper_sets_none():
    """OMP_NUM_THREADS alone caps torch, MKL/oneDNN, OpenBLAS and scikit-learn's OpenMP; importing
    helper changes no thread count (2 stays 2: no hidden torch.set_num_threads)."""
    one, two = thread_counts("1"), thread_counts("2")
    assert len(one) >= 3 and set(one.values()) == {1}, one
    assert set(two.values()) == {2}, two  # the check can fail: 2 is seen as 2


def root_conftest():
    """The repository's conftest.py as a module (pytest has loaded it, but under a name of its own)."""
    spec = importlib.util.spec_from_file_location("root_conftest", REPO_ROOT / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_longest_first_table_names_only_files_that_exist():
    """conftest.py's SECONDS orders the files handed to the workers; a renamed file would silently
    lose its place (and the suite its balance), so every name must still be a notebook or test module."""
    seconds = root_conftest().SECONDS
    stems = {p.stem for p in (REPO_ROOT / "notebooks").glob("*.ipynb")} | {
        p.stem for p in (REPO_ROOT / "tests").glob("test_*.py")
    }
    assert set(seconds) <= stems, set(seconds) - stems
    assert len(seconds) >= 20


def test_files_go_to_the_workers_longest_first_each_in_its_own_order():
    """The sort is by file, longest first, stable inside a file; and xdist keeps that order
    (without --no-loadscope-reorder it would hand out files by their number of tests)."""
    conftest = root_conftest()
    names = [
        "test_data.py",
        "11_distributed_checkpoints.ipynb",
        "test_slides.py",
        "11_distributed_checkpoints.ipynb",
        "test_data.py",
        "not_in_the_table.py",
        "04_devices_map_location.ipynb",
    ]
    items = [SimpleNamespace(path=REPO_ROOT / name, index=i) for i, name in enumerate(names)]
    conftest.pytest_collection_modifyitems(None, None, items)
    assert [(item.path.name, item.index) for item in items] == [
        ("11_distributed_checkpoints.ipynb", 1),
        ("11_distributed_checkpoints.ipynb", 3),
        ("test_slides.py", 2),
        ("04_devices_map_location.ipynb", 6),
        ("test_data.py", 0),
        ("test_data.py", 4),
        ("not_in_the_table.py", 5),
    ]
    addopts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["pytest"][
        "ini_options"
    ]["addopts"]
    assert "--dist loadscope --no-loadscope-reorder" in " ".join(addopts.split())


def collected(*args: str) -> set[str]:
    """The test ids ``pytest --collect-only`` selects with ``args`` (nbval and addopts off)."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:nbval",
            "-p",
            "no:cacheprovider",
            "-o",
            "addopts=",
            *args,
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode in (0, 5), done.stdout[-2000:] + done.stderr[-2000:]  # 5: nothing selected
    return {line.split("[")[0] for line in done.stdout.splitlines() if "::" in line}


def test_the_slow_marker_leaves_out_the_browser_and_bomb_tests_and_only_those():
    """conftest.py marks the SLOW tests (make quick deselects them, make test runs them); every name in
    SLOW is a test module and the marker is registered (pyproject.toml)."""
    slow = root_conftest().SLOW
    assert set(slow) <= {p.stem for p in (REPO_ROOT / "tests").glob("test_*.py")}, set(slow)
    markers = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["pytest"][
        "ini_options"
    ]["markers"]
    assert any(m.startswith("slow:") for m in markers)
    files = ["tests/test_slides.py", "tests/test_bombs.py"]
    every, quick = collected(*files), collected("-m", "not slow", *files)
    browser = {
        t
        for t in every
        if "test_slides.py" in t and ("browser" in t or "apply_with_measured" in t or "every_slide_of_every_deck" in t)
    }
    assert len(browser) == 3 and not browser & quick
    assert not {t for t in quick if "test_bombs.py" in t} and any("test_bombs.py" in t for t in every)
    assert "tests/test_slides.py::test_rules_and_the_pixel_budget" in quick  # the fast ones stay
    assert collected("-m", "slow", *files) == every - quick


def test_nbval_takes_the_harness_cell_timeout_unless_the_caller_chose_one():
    from tools.harness import CELL_TIMEOUT

    conftest = root_conftest()
    default, chosen = (
        SimpleNamespace(option=SimpleNamespace(nbval_cell_timeout=2000.0)),
        SimpleNamespace(option=SimpleNamespace(nbval_cell_timeout=50.0)),
    )
    conftest.pytest_configure(default)
    conftest.pytest_configure(chosen)
    assert (default.option.nbval_cell_timeout, chosen.option.nbval_cell_timeout) == (CELL_TIMEOUT, 50.0)
