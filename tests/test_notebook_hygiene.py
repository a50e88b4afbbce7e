"""Checks on the notebooks as committed: nbval compares what is stored, so what is stored must be sound."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from helper.paths import REPO_ROOT

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
MACHINE_SPECIFIC = re.compile(r"(/tmp/|/root/|/home/\w+|/Users/\w+|/work/|[A-Z]:\\\\|0x[0-9a-fA-F]{6,})")
MAX_BYTES = 1_000_000


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def joined(value: str | list[str]) -> str:
    return "".join(value) if isinstance(value, list) else value


def source(cell: dict) -> str:
    return joined(cell["source"])


def code_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code" and source(c).strip()]


def output_text(output: dict) -> str:
    """All the text an output shows: stream text, text/* data, and an error's message and traceback."""
    parts = [joined(output.get("text", ""))]
    for mime, value in output.get("data", {}).items():
        if mime.startswith("text/"):
            parts.append(joined(value))
    if output.get("output_type") == "error":
        parts += [output.get("evalue", "")] + output.get("traceback", [])
    return "\n".join(parts)


def tags(cell: dict) -> list[str]:
    return cell["metadata"].get("tags", [])


def raises(cell: dict) -> bool:
    """A cell that must raise carries the ``raises-exception`` tag (nbval, nbclient and JupyterLab honour it)."""
    return "raises-exception" in tags(cell)


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 1


def test_notebooks_are_numbered_in_order():
    numbers = []
    for path in NOTEBOOKS:
        match = re.fullmatch(r"(\d\d)_[a-z0-9_]+\.ipynb", path.name)
        assert match, f"{path.name}: expected NN_lower_case_name.ipynb"
        numbers.append(int(match.group(1)))
    assert numbers == list(range(1, len(numbers) + 1))


@pytest.fixture(params=NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def notebook(request) -> tuple[str, dict]:
    return request.param.name, load(request.param)


def test_size_under_limit():
    for path in NOTEBOOKS:
        assert path.stat().st_size < MAX_BYTES, f"{path.name} is {path.stat().st_size} bytes"


def test_every_code_cell_executed_in_order(notebook):
    name, nb = notebook
    counts = [c["execution_count"] for c in code_cells(nb)]
    assert counts == list(range(1, len(counts) + 1)), f"{name}: execution counts {counts}"


def test_errors_only_where_a_cell_is_marked_to_raise(notebook):
    name, nb = notebook
    for i, cell in enumerate(code_cells(nb)):
        errors = [o for o in cell["outputs"] if o["output_type"] == "error"]
        if raises(cell):
            assert errors, f"{name} cell {i} is tagged raises-exception but stores no error"
        else:
            assert not errors, f"{name} cell {i} stores {errors[0]['ename']} but is not marked to raise"


def test_one_marker_per_purpose_and_no_skipped_cells(notebook):
    """Cell tags only: no nbval comment markers beside them, and no cell that never runs."""
    name, nb = notebook
    for i, cell in enumerate(code_cells(nb)):
        marker = re.search(r"^\s*#\s*(NBVAL_\w+|PYTEST_VALIDATE_\w+)", source(cell), re.MULTILINE)
        assert not marker, f"{name} cell {i}: use a cell tag instead of the comment {marker.group(1)}"
        assert not {"nbval-skip", "skip-execution"} & set(tags(cell)), f"{name} cell {i} is never run"


def test_uncompared_cells_still_prove_something(notebook):
    """A cell whose output nbval does not compare must assert, or say why it cannot."""
    name, nb = notebook
    for i, cell in enumerate(code_cells(nb)):
        if "nbval-ignore-output" in tags(cell):
            code = source(cell)
            assert re.search(r"^\s*assert\b", code, re.MULTILINE) or "# not asserted:" in code, (
                f"{name} cell {i} is tagged nbval-ignore-output but asserts nothing "
                "and has no '# not asserted: <why>' comment"
            )


def test_outputs_hold_nothing_machine_specific(notebook):
    name, nb = notebook
    for i, cell in enumerate(code_cells(nb)):
        for output in cell["outputs"]:
            leak = MACHINE_SPECIFIC.search(output_text(output))
            assert not leak, f"{name} cell {i} output shows {leak.group(0)!r}"
            assert not {"image/svg+xml", "application/pdf"} & set(output.get("data", {})), (
                f"{name} cell {i} stores SVG/PDF, which nbval compares byte for byte"
            )


def test_outputs_hold_no_progress_bars_or_widgets(notebook):
    name, nb = notebook
    for i, cell in enumerate(code_cells(nb)):
        for output in cell["outputs"]:
            assert "application/vnd.jupyter.widget-view+json" not in output.get("data", {}), f"{name} cell {i}"
            assert "it/s]" not in output_text(output), f"{name} cell {i} stores a tqdm bar"


def torch_load_arguments(code: str) -> list[str]:
    """The argument text of each call of torch.load in ``code``."""
    calls = []
    for call in re.finditer(r"torch\.load\(", code):
        depth = 0
        for end in range(call.end() - 1, len(code)):
            depth += {"(": 1, ")": -1}.get(code[end], 0)
            if depth == 0:
                break
        calls.append(code[call.end() : end])
    return calls


def test_every_torch_load_states_weights_only(notebook):
    """Cells that raise may show the lazy call as old tutorials write it; every other one says."""
    name, nb = notebook
    for i, cell in enumerate(code_cells(nb)):
        code = source(cell)
        if not raises(cell):
            for args in torch_load_arguments(code):
                assert "weights_only=" in args, f"{name} cell {i}: torch.load({args}) without weights_only="
        if "weights_only=False" in code:
            assert "trust" in code.lower(), (
                f"{name} cell {i} uses weights_only=False without saying why the file is trusted"
            )


# The one .py file allowed weights_only=False, and why: it loads only files it built itself, each a harmless
# payload, to prove that the hostile corpus runs code when opened the way its victim would open it.
TRUSTED_FALSE = {"hostile_corpus.py": "--run-payloads: each hostile file it built, opened as its victim would"}


def test_python_code_states_weights_only_and_never_false():
    for path in sorted(REPO_ROOT.glob("[!.]*/**/*.py")):
        if ".venv" in path.parts or "artifacts" in path.parts or path == Path(__file__).resolve():
            continue  # (this file names the call in its messages)
        code = path.read_text(encoding="utf-8")
        for args in torch_load_arguments(code):
            wanted = r"weights_only=(True|False)" if path.name in TRUSTED_FALSE else r"weights_only=True"
            assert re.search(wanted, args), f"{path.name}: torch.load({args})"


def test_house_skeleton(notebook):
    name, nb = notebook
    markdown = [source(c) for c in nb["cells"] if c["cell_type"] == "markdown"]
    assert nb["cells"][0]["cell_type"] == "markdown" and markdown[0].startswith("# "), f"{name}: no title"
    text = "\n".join(markdown)
    for heading in ("## What you will learn", "## Summary", "## Exercises"):
        assert heading in text, f"{name}: missing {heading!r}"
    run = 0
    for i, cell in enumerate(nb["cells"]):
        run = run + 1 if cell["cell_type"] == "code" and "solution" not in tags(cell) else 0
        assert run <= 2, f"{name} cell {i}: three code cells in a row with no sentence between them"
        if cell["cell_type"] == "code":
            assert source(cell).count("\n") < 30, f"{name} cell {i}: over 30 lines; split it"


def test_exercise_solutions_are_cells_that_run(notebook):
    """Solutions are collapsed code cells after the exercises, so CI runs them; no code hides in prose."""
    name, nb = notebook
    starts = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "markdown" and "## Exercises" in source(c)]
    assert starts, f"{name}: no ## Exercises"
    solutions = [(i, c) for i, c in enumerate(nb["cells"]) if "solution" in tags(c)]
    assert solutions, f"{name}: no cell tagged solution"
    for i, cell in solutions:
        assert cell["cell_type"] == "code" and i > starts[0], (
            f"{name} cell {i}: a solution is a code cell after the exercises"
        )
        assert source(cell).startswith("# Solution"), f"{name} cell {i}: start a solution with '# Solution N: ...'"
        assert cell["metadata"].get("jupyter", {}).get("source_hidden") is True, (
            f"{name} cell {i}: collapse the solution (metadata jupyter.source_hidden) so students can try first"
        )
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "markdown":
            for block in re.findall(r"<details>(.*?)</details>", source(cell), re.DOTALL):
                assert "```" not in block, f"{name} cell {i}: code in <details> never runs; put it in a solution cell"


def test_kernel_is_plain_python3(notebook):
    name, nb = notebook
    assert nb["metadata"]["kernelspec"]["name"] == "python3", name


def test_readme_lists_every_notebook():
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    missing = [p.name for p in NOTEBOOKS if p.name not in readme]
    assert not missing, f"README.md does not list {missing}"


def test_nothing_generated_is_committed():
    try:
        tracked = subprocess.run(
            ["git", "ls-files", "artifacts", "*.pt", "*.pth", "*.safetensors"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    allowed = {f"data/{name}" for name in json.loads((REPO_ROOT / "data/manifest.json").read_text())["files"]}
    assert set(tracked) <= allowed, f"generated files are tracked: {sorted(set(tracked) - allowed)}"
