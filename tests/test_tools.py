"""The tools behind `make run` and `make test-portable` must report failures, not hide them."""

import importlib.util
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from helper.paths import REPO_ROOT


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_notebook(path: Path, *sources: str) -> Path:
    """A notebook of code cells; a source starting with ``!raise\n`` becomes a cell tagged raises-exception."""
    cells = [new_code_cell(s.removeprefix("!raise\n"), metadata={"tags": ["raises-exception"]})
             if s.startswith("!raise\n") else new_code_cell(s) for s in sources]
    nb = new_notebook(cells=[new_markdown_cell("# t")] + cells,
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def run_notebooks():
    return load_tool("run_notebooks")


@pytest.fixture(scope="module")
def test_portable():
    return load_tool("test_portable")


def test_run_notebooks_executes_and_writes_outputs(tmp_path, run_notebooks):
    path = write_notebook(tmp_path / "ok.ipynb", "import sys\nprint(6 * 7)\nsys.stdout.flush()\nprint('more')",
                          "!raise\n1 / 0")
    seconds, status = run_notebooks.run_one(path, write=True, timeout=60)
    assert status == "ok" and seconds > 0
    cells = nbformat.read(path, as_version=4).cells
    assert cells[1]["outputs"] == [{"output_type": "stream", "name": "stdout", "text": "42\nmore\n"}]
    assert cells[1]["execution_count"] == 1
    assert cells[2]["outputs"][0]["ename"] == "ZeroDivisionError"
    assert cells[2]["metadata"]["tags"] == ["raises-exception"]


def test_run_notebooks_reports_errors_and_cells_that_should_have_raised(tmp_path, run_notebooks):
    failing = write_notebook(tmp_path / "bad.ipynb", "x = 1", "raise ValueError('boom')")
    _, status = run_notebooks.run_one(failing, write=False, timeout=60)
    assert status.startswith("FAILED in cell 2") and "ValueError" in status
    silent = write_notebook(tmp_path / "silent.ipynb", "!raise\nx = 1")
    _, status = run_notebooks.run_one(silent, write=False, timeout=60)
    assert status == "FAILED: cells [1] are tagged raises-exception but did not raise"
    assert nbformat.read(silent, as_version=4).cells[1].outputs == []  # write=False leaves the file alone


def test_portability_settings_reach_the_kernels(tmp_path, test_portable):
    """Each setting's variables reach the nbval kernel, and a failing notebook fails the setting."""
    nb = write_notebook(tmp_path / "01_env.ipynb",
                        "import os\nprint(os.environ.get('ATEN_CPU_CAPABILITY'))")
    stored = nbformat.read(nb, as_version=4)
    stored.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="default\n")]
    stored.cells[1].execution_count = 1
    nbformat.write(stored, nb)
    name, _, code, summary = test_portable.run_setting("aten-default", [nb])
    assert (name, code) == ("aten-default", 0), summary
    _, _, code, summary = test_portable.run_setting("aten-avx2", [nb])
    assert code == 1 and "FAILED" in summary
