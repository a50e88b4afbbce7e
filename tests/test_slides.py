"""Instructor's kit: every lesson carries slide metadata that fits the canvas, and every slide of every
exported deck, opened offline in a real browser (headless Chromium at 1280x800), fits reveal.js's
960x700 canvas and has no heading in its speaker notes. Each verdict is shown to fail on bad input."""

from __future__ import annotations

import json
import os
import re

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from helper.paths import REPO_ROOT
from tools import slides

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))


def needs_chromium() -> None:
    if slides.chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("CI must check the slides in Chromium: .ci/run installs Debian's chromium package")
        pytest.skip("Chromium is not installed (make chromium installs it)")


def code(lines: int, tags: tuple[str, ...] = (), outputs: int = 0):
    cell = new_code_cell("\n".join(f"x{i} = {i}" for i in range(lines)), metadata={"tags": list(tags)})
    if outputs:
        cell.outputs = [new_output("stream", name="stdout", text="line\n" * outputs)]
    return cell


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_every_lesson_has_current_slide_metadata_and_no_cell_taller_than_a_slide(path):
    nb = nbformat.read(path, as_version=4)
    assert slides.problems(nb, path.name) == []


def test_rules_and_the_pixel_budget():
    nb = new_notebook(
        cells=[
            new_markdown_cell("# Title"),
            code(1),
            new_code_cell("assert x0 == 0"),
            new_markdown_cell("\n".join(["prose"] * slides.NOTES_FROM)),
            new_markdown_cell("### Part"),
            code(2),
            code(3),
            new_code_cell("# Solution 1: ...\nassert True", metadata={"tags": ["solution"]}),
            new_markdown_cell("<details><summary>Why</summary>because</details>"),
            new_markdown_cell("**Exercise 2.** Do it."),
        ]
    )
    heights = {slides.cell_key(c): 100 for c in nb.cells}
    heights[slides.cell_key(nb.cells[6])] = slides.BUDGET - 199  # Part (100) + 100 + this: over
    assert slides.slide_types(nb, heights) == [
        "slide",
        "-",
        "fragment",
        "notes",
        "subslide",
        "-",
        "subslide",
        "subslide",
        "-",
        "subslide",
    ]
    heights[slides.cell_key(nb.cells[6])] = slides.BUDGET - 200  # fits exactly
    assert slides.slide_types(nb, heights)[6] == "-"
    assert slides.apply(nb, heights) and not slides.apply(nb, heights)  # idempotent
    assert slides.problems(nb, "t", heights) == []
    assert nb.metadata.rise["scroll"] is True
    assert nb.cells[7].metadata.jupyter == {"source_hidden": True, "outputs_hidden": True}


def test_check_flags_stale_metadata_misplaced_headings_shown_solutions_and_tall_cells():
    nb = new_notebook(cells=[new_markdown_cell("# Title\nprose\n## What you will learn"), code(3)])
    slides.apply(nb, {})
    assert slides.problems(nb, "t", {}) == []  # a heading-first cell may hold more headings
    bad = [
        new_markdown_cell('<a id="x"></a>\n## 3. Title'),
        new_markdown_cell('<a id="x"></a>## 3. Title'),
        new_markdown_cell('Some prose first.\n\n## 4. Title <a id="y"></a>'),
        new_markdown_cell("```\n## not a heading, code\n```"),
    ]
    solution = code(2, ("solution",), outputs=2)
    nb.cells += [*bad, solution]
    slides.apply(nb, {})
    found = slides.problems(nb, "t", {})
    assert [p.split(":")[0] for p in found if "heading" in p] == ["t cell 2", "t cell 3", "t cell 4"]
    solution.metadata.jupyter = {"source_hidden": True}  # outputs shown under the exercise
    found = slides.problems(nb, "t", {})
    assert any("cell 6: solution shows its outputs" in p for p in found)
    assert any("stale in cells [6]" in p for p in found)
    nb.metadata.rise["scroll"] = False
    assert any("rise" in p for p in slides.problems(nb, "t", {}))
    nb.cells[1].source = "y = 1\n" + "z" * (slides.MAX_CODE_LINE + 1)
    assert any("t cell 1: code lines [2] longer than 70" in p for p in slides.problems(nb, "t", {}))
    nb.cells[1].source = "z" * slides.MAX_CODE_LINE
    assert not any("longer than" in p for p in slides.problems(nb, "t", {}))
    tall = code(40)
    nb.cells.append(tall)
    slides.apply(nb, {})
    px = slides.estimate(tall)
    assert px > slides.BUDGET and f"t cell 7: {px} px, taller than a slide" in "\n".join(slides.problems(nb, "t", {}))
    assert slides.tall_cells(nb, {}) == [(7, px)]
    assert slides.tall_cells(nb, {slides.cell_key(tall): 300}) == []  # a measured height wins


def test_hanging_indent_keeps_each_line_whole():
    pre = '<span class="k">def</span> f():\n    <span class="sd">"""two\n    lines"""</span>\n\n    return 1\n'
    out = slides.hanging_indent(pre)
    assert out.count('class="cl"') == 5
    assert "--i:0" in out and out.count("--i:4") == 3
    assert '<span class="cl" style="--i:4">    <span class="sd">"""two</span></span>' in out  # closed at line end
    assert '<span class="cl" style="--i:4"><span class="sd">    lines"""</span></span>' in out  # reopened


def test_text_of_html_resolves_references_and_drops_tags_and_comments():
    assert slides.text_of('<table><tr><td class="x">a &lt; b&amp;c</td></tr></table><!-- <b>no</b> -->') == "a < b&c"
    assert slides.hanging_indent('  <span class="o">&lt;</span>x\n') == (
        '<span class="cl" style="--i:2">  <span class="o">&lt;</span>x</span>'
    )  # the reference is one character


def test_anchors_map_each_id_to_its_slide():
    deck = (
        '<section><h1 id="t">T</h1></section><section><section><span class="k">x</span></section>'
        '<section><p><span id="in-span">y</span> <a id="a"></a></p></section></section>'
    )
    assert slides.anchors(deck) == {"t": (0, 0), "in-span": (1, 1), "a": (1, 1)}


def test_links_between_lessons_point_at_the_deck_and_slide():
    maps = {"12_troubleshooting": {"size-mismatch": (2, 5)}, "03_x": {"here": (4, 1)}}
    body = (
        '<a href="12_troubleshooting.ipynb#size-mismatch">a</a> <a href="12_troubleshooting.ipynb">b</a> '
        '<a href="#here">c</a> <a href="https://pytorch.org/x.html#y">d</a> <a href="#gone">e</a>'
    )
    out = slides._rewrite_links(body, maps, "03_x")
    assert 'href="12_troubleshooting.slides.html#/2/5"' in out
    assert 'href="12_troubleshooting.slides.html"' in out
    assert 'href="#/4/1"' in out and 'href="https://pytorch.org/x.html#y"' in out
    assert 'href="#gone" data-broken-link="gone"' in out  # the browser check reports these
    assert out.count("data-broken-link") == 1
    out = slides._rewrite_links('<a href="14_none.ipynb#x">f</a>', maps, "03_x")
    assert 'href="14_none.slides.html" data-broken-link="x"' in out


def test_the_estimate_is_not_far_under_the_measured_height():
    heights = slides.load_heights()
    cells = [c for p in NOTEBOOKS for c in nbformat.read(p, as_version=4).cells if slides.cell_key(c) in heights]
    if len(cells) < 50:
        pytest.skip("too few measured cells: run tools/slides.py measure")
    under = [
        (heights[slides.cell_key(c)], slides.estimate(c))
        for c in cells
        if slides.estimate(c) < 0.85 * heights[slides.cell_key(c)]
    ]
    assert len(under) <= len(cells) // 50, under[:10]


PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4//8/AAX+Av4N70a4AAAAAElFTkSuQmCC"  # 1x1


def test_our_template_differs_from_lab_s_only_in_its_input_block(tmp_path):
    """export renders code cells with our template's input block (no bleach pass, for the hanging indent);
    everything else, alt text and tabindex included, is what nbconvert's SlidesExporter writes with lab's."""
    from nbconvert import SlidesExporter

    ours = slides.TEMPLATE_DIR / "offline_reveal"
    stock = tmp_path / "stock_input" / "stock_reveal"  # our template less its `input` block: lab's, with clean_html
    stock.mkdir(parents=True)
    (stock / "conf.json").write_text((ours / "conf.json").read_text())
    template, n = re.subn(
        r"\{% block input %\}.*?\{%- endblock input %\}", "", (ours / "index.html.j2").read_text(), flags=re.DOTALL
    )
    assert n == 1
    (stock / "index.html.j2").write_text(template)
    cell = new_code_cell(
        'def f(a="<b>&amp;</b>", b=\'x\'):\n    """doc\n    string"""\n    return a  # <i>',
        outputs=[
            new_output("stream", name="stdout", text="a < b & c\n"),
            new_output("display_data", data={"image/png": PNG, "text/plain": "<Figure>"}),
            new_output("execute_result", data={"text/html": "<p class='x'>hi<br></p>"}, execution_count=1),
            new_output("error", ename="ValueError", evalue="<bad>", traceback=["tb"]),
        ],
    )
    nb = new_notebook(
        cells=[
            new_markdown_cell(
                '# T <a id="t"></a>\n\n<img src="data:image/png;base64,' + PNG + '"> <img alt="given" src="x.png"/>'
                ' <img src="y.png"/>\n\n![described](z.png)'
            ),
            cell,
            new_code_cell("x = 1"),
        ]
    )
    settings = {"reveal_url_prefix": "reveal.js", "reveal_number": "c/t"}
    mine, _ = slides.exporter(
        template_name="offline_reveal", extra_template_basedirs=[str(slides.TEMPLATE_DIR)], **settings
    ).from_notebook_node(nb)
    theirs, _ = SlidesExporter(
        template_name="stock_reveal", extra_template_basedirs=[str(stock.parent)], **settings
    ).from_notebook_node(nb)
    assert mine == theirs
    assert mine.count(slides.NO_ALT) == 3 and mine.count('alt="given"') == 1  # markdown x2, the figure
    assert mine.count('tabindex="0"') == 3 + 4  # the three cells' inputs, the four outputs


@pytest.fixture(scope="module")
def chromium_session():
    """One Chromium for all of this module's browser checks (each would start its own: about 1 s apiece)."""
    needs_chromium()
    with slides.browser_session() as browser:
        yield browser


@pytest.fixture(scope="module")
def bad_decks(tmp_path_factory):
    """Two tiny notebooks: one whose slide overflows the canvas, one with a heading in its notes and a table
    wider than the canvas."""
    needs_chromium()
    folder = tmp_path_factory.mktemp("bad")
    tall = new_notebook(cells=[new_markdown_cell("# Tall"), code(18), code(18), code(18)])
    for cell in tall.cells[1:]:
        cell.metadata["slideshow"] = {"slide_type": "-"}  # all three on the title's slide
    notes = new_notebook(
        cells=[
            new_markdown_cell("# Notes [gone](#nowhere)"),
            new_markdown_cell(
                "A paragraph of prose first.\n\n" + "More prose.\n\n" * 4 + "## 2. A section\n\nIts text."
            ),
        ]
    )
    names = [f"layer{i}.weight" for i in range(8)]  # a table of 8 parameter names: about 2000 px wide
    notes.cells.append(
        new_markdown_cell(
            "## 3. A wide table\n\n| "
            + " | ".join(names)
            + " |\n|"
            + "---|" * 8
            + "\n| "
            + " | ".join(["(64, 128)"] * 8)
            + " |"
        )
    )
    slides.apply(notes, {})
    assert notes.cells[1].metadata.slideshow.slide_type == "notes"
    nbformat.write(tall, folder / "01_tall.ipynb")
    nbformat.write(notes, folder / "02_notes.ipynb")
    return folder


def test_the_browser_check_fails_on_a_slide_over_the_canvas_and_on_a_heading_in_notes(
    chromium_session, bad_decks, tmp_path
):
    # the command line (export, then browser_check) once: its exit status and its JSON report
    assert slides.main(["browser", "--notebooks", str(bad_decks), "--out", str(tmp_path / "cli")]) == 1
    report = json.loads((tmp_path / "cli" / "report.json").read_text())
    tall, notes = report["01_tall.slides.html"], report["02_notes.slides.html"]
    assert tall["slides"][0]["height"] > slides.CANVAS[1] and tall["slides"][0]["over"]
    assert any("px tall, canvas 700" in p for p in tall["problems"])
    assert notes["slides"][0]["notes_headings"] == ["h2 2. A section"]
    assert any("heading in speaker notes" in p for p in notes["problems"])
    assert any("link to a lesson or anchor the decks do not have: #nowhere" in p for p in notes["problems"])
    assert any(re.search(r"'3\. A wide table': \d{4} px wide, canvas 960", p) for p in notes["problems"])
    nb = nbformat.read(bad_decks / "02_notes.ipynb", as_version=4)
    assert any("heading not on the first line" in p for p in slides.problems(nb, "02", {}))


def test_apply_with_measured_heights_splits_the_overflowing_slide(chromium_session, bad_decks, tmp_path):
    path = tmp_path / "01_tall.ipynb"
    path.write_bytes((bad_decks / "01_tall.ipynb").read_bytes())
    heights = slides.measure([path], tmp_path / "heights.json")
    nb = nbformat.read(path, as_version=4)
    assert all(slides.cell_key(c) in heights for c in nb.cells)
    assert slides.apply(nb, heights)
    assert [c.metadata.slideshow.slide_type for c in nb.cells].count("subslide") >= 1
    nbformat.write(nb, path)
    report = slides.browser_check(slides.export([path], tmp_path / "deck"))
    assert report["01_tall.slides.html"]["problems"] == []
    assert max(s["height"] for s in report["01_tall.slides.html"]["slides"]) <= slides.CANVAS[1]


def test_every_slide_of_every_deck_fits_and_opens_offline(chromium_session, tmp_path):
    decks = slides.export(NOTEBOOKS, tmp_path)
    broken = tmp_path / "broken.slides.html"  # the check itself must be able to fail
    broken.write_text(
        decks[0]
        .read_text(encoding="utf-8")
        .replace("</head>", '<script src="https://cdn.example.org/x.js"></script></head>'),
        encoding="utf-8",
    )
    report = slides.browser_check(decks[:1] + [broken] + decks[1:])  # one page for all: nothing leaks to the next
    assert any("failed request" in p for p in report.pop("broken.slides.html")["problems"])
    assert {d: e["problems"] for d, e in report.items()} == {d.name: [] for d in decks}, slides.summary(report)


def test_a_deck_needs_no_network_and_carries_the_presentation_settings(tmp_path):
    nb = new_notebook(cells=[new_markdown_cell("# T"), new_code_cell("def f():\n    return 1")])
    nb.metadata["widgets"] = {
        "application/vnd.jupyter.widget-state+json": {"state": {}, "version_major": 2, "version_minor": 0}
    }
    nbformat.write(nb, tmp_path / "01_t.ipynb")
    deck = slides.export([tmp_path / "01_t.ipynb"], tmp_path / "out")[0].read_text(encoding="utf-8")
    assert "unpkg.com" not in deck and not re.search(r'(src|href)="(https?:)?//', deck)
    assert 'slideNumber: "c/t"' in deck
    assert ".jp-InputPrompt, .jp-OutputPrompt { display: none" in deck
    assert '<span class="cl" style="--i:4">' in deck  # the hanging indent of the body line
