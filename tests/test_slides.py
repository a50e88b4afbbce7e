"""Instructor's kit: every lesson carries slide metadata that fits a screen, and the exported decks
open offline in a real browser (headless Chromium) with no failed request and no console error."""

from __future__ import annotations

import importlib.util
import os
import shutil

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from helper.paths import REPO_ROOT

spec = importlib.util.spec_from_file_location("slides", REPO_ROOT / "tools" / "slides.py")
slides = importlib.util.module_from_spec(spec)
spec.loader.exec_module(slides)

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_every_lesson_has_current_slide_metadata_and_no_slide_taller_than_a_screen(path):
    nb = nbformat.read(path, as_version=4)
    assert slides.problems(nb, path.name) == []


def test_rules_and_the_height_budget():
    nb = new_notebook(cells=[
        new_markdown_cell("# Title"),
        new_code_cell("x = 1"),
        new_code_cell("assert x == 1"),
        new_markdown_cell("\n".join(["prose"] * slides.NOTES_FROM)),
        new_markdown_cell("### Part"),
        new_code_cell("\n".join(f"y{i} = {i}" for i in range(slides.BUDGET - 2))),
        new_code_cell("print(1)", outputs=[new_output("stream", name="stdout", text="1\n" * 5)]),
        new_code_cell("# Solution 1: ...", metadata={"tags": ["solution"]}),
    ])
    assert slides.slide_types(nb) == ["slide", "-", "fragment", "notes", "subslide", "-", "subslide", "subslide"]
    assert slides.apply(nb) and not slides.apply(nb)  # idempotent
    assert slides.problems(nb, "t") == []
    nb.cells[1].source = "\n".join(["z = 0"] * (slides.BUDGET + 1))
    assert any("taller than a slide" in p for p in slides.problems(nb, "t"))


def test_decks_open_offline_in_headless_chromium(tmp_path):
    if slides.chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("CI must check the slides in Chromium: .ci/run installs Debian's chromium package")
        pytest.skip("Chromium is not installed (make slides installs it)")
    decks = slides.export(NOTEBOOKS, tmp_path)
    broken = tmp_path / "broken.slides.html"  # the check itself must be able to fail
    broken.write_text(decks[0].read_text(encoding="utf-8").replace(
        "</head>", '<script src="https://cdn.example.org/x.js"></script></head>'), encoding="utf-8")
    report = slides.browser_check(decks + [broken], tmp_path / "shots")
    assert report.pop("broken.slides.html"), "a deck that fetches from the network must fail the check"
    assert report == {d.name: [] for d in decks}
    assert all((tmp_path / "shots" / f"{d.name.split('.')[0]}.png").stat().st_size > 10_000 for d in decks)
