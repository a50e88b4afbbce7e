"""The notebook runners behind `make run` and tools/run_cells.py must report failures, not hide them."""

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
    nb = new_notebook(cells=[new_markdown_cell("# t")] + [new_code_cell(s) for s in sources],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def run_notebooks():
    return load_tool("run_notebooks")


@pytest.fixture(scope="module")
def run_cells():
    return load_tool("run_cells")


def test_run_notebooks_executes_and_writes_outputs(tmp_path, run_notebooks):
    path = write_notebook(tmp_path / "ok.ipynb", "import sys\nprint(6 * 7)\nsys.stdout.flush()\nprint('more')",
                          "# NBVAL_RAISES_EXCEPTION\n1 / 0")
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
    silent = write_notebook(tmp_path / "silent.ipynb", "# NBVAL_RAISES_EXCEPTION\nx = 1")
    _, status = run_notebooks.run_one(silent, write=False, timeout=60)
    assert status == "FAILED: cells [1] are marked NBVAL_RAISES_EXCEPTION but did not raise"
    assert nbformat.read(silent, as_version=4).cells[1].outputs == []  # write=False leaves the file alone


def test_run_cells_runs_in_a_real_main_and_checks_marked_cells(tmp_path, run_cells, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    good = write_notebook(tmp_path / "good.ipynb", "%xmode Minimal\nimport pickle\nclass A: pass",
                          "print(len(pickle.dumps(A())) > 0)", "%%writefile out.txt\nhello",
                          "# NBVAL_RAISES_EXCEPTION\n{}['k']")
    assert run_cells.run(good) == 0
    out = capsys.readouterr().out
    assert "True" in out and "KeyError: 'k'" in out and (tmp_path / "out.txt").read_text() == "hello\n"
    assert run_cells.run(write_notebook(tmp_path / "bad.ipynb", "1 / 0")) == 1
    assert run_cells.run(write_notebook(tmp_path / "quiet.ipynb", "# NBVAL_RAISES_EXCEPTION\npass")) == 1
