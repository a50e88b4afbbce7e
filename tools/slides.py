"""Slides for instructors: slide metadata by rule, an offline reveal.js export, and a real-browser check.

    python tools/slides.py apply [NN ...]    # set every cell's slide type (run_notebooks.py --write does it too)
    python tools/slides.py check             # exit 1 if slide metadata is stale or a cell is taller than a screen
    python tools/slides.py export            # artifacts/slides/NN_name.slides.html + a local reveal.js copy
    python tools/slides.py browser           # open each deck in headless Chromium: no failed request,
                                             # no console error, a screenshot of the first slide

The rules, so any lesson presents the same way (RISE in JupyterLab reads the same metadata):
a ``#``/``##`` heading starts a slide, ``###`` a sub-slide; a cell that asserts (a proof) appears as a
fragment; a long paragraph of prose becomes speaker notes; a solution gets its own sub-slide; and a
slide that would grow taller than ``BUDGET`` lines continues on a new sub-slide.
"""

from __future__ import annotations

import argparse
import math
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import nbformat

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
OUT = ROOT / "artifacts" / "slides"
TEMPLATE_DIR = Path(__file__).resolve().parent / "slides_template"

# Measured on the exported decks in Chromium at 1280x800: about 24 lines of code or prose fit.
BUDGET = 30  # lines that fit on one 1280x800 slide (code renders smaller than prose)
NOTES_FROM = 8  # a paragraph of prose this many lines long or longer goes to the speaker notes
IMAGE_LINES = 12  # an embedded figure counts as this many lines
WRAP = 80  # characters per displayed line


def _lines(text: str) -> int:
    """Displayed lines of ``text``, long lines wrapped at ``WRAP`` characters."""
    return sum(max(1, math.ceil(len(line) / WRAP)) for line in text.splitlines())


def cell_height(cell: Any) -> int:
    """How many lines a cell takes on a slide: its source plus what it printed."""
    height = _lines(cell.source)
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            height += _lines(output.text)
        elif output.output_type == "error":
            height += 1 + _lines(output.evalue)
        elif "image/png" in output.get("data", {}):
            height += IMAGE_LINES
        else:
            height += _lines(output.get("data", {}).get("text/plain", ""))
    return height


def rule(cell: Any) -> str:
    """The slide type a cell gets by its kind alone (before the height budget)."""
    text = cell.source.lstrip()
    if cell.cell_type == "markdown":
        if re.match(r"#{1,2} ", text):
            return "slide"
        if text.startswith("### "):
            return "subslide"
        return "notes" if _lines(text) >= NOTES_FROM else "-"
    if "solution" in cell.metadata.get("tags", []):
        return "subslide"
    if re.search(r"^\s*assert\b", cell.source, re.MULTILINE):
        return "fragment"
    return "-"


def slide_types(nb: Any) -> list[str]:
    """Every cell's slide type: the rule, plus a new sub-slide wherever a slide would overflow."""
    types, used = [], 0
    for cell in nb.cells:
        kind = rule(cell)
        height = 0 if kind in ("notes", "skip") else cell_height(cell)
        if kind in ("slide", "subslide"):
            used = height
        elif used + height > BUDGET and used > 0:
            kind, used = "subslide", height
        else:
            used += height
        types.append(kind)
    return types


def apply(nb: Any) -> bool:
    """Write the slide types into the cells' metadata; True if anything changed."""
    changed = False
    for cell, kind in zip(nb.cells, slide_types(nb)):
        if cell.metadata.get("slideshow", {}).get("slide_type") != kind:
            cell.metadata["slideshow"] = {"slide_type": kind}
            changed = True
    return changed


def problems(nb: Any, name: str) -> list[str]:
    """What is wrong with a notebook's slides: stale metadata, or a cell taller than a screen."""
    found = []
    stale = [i for i, (c, k) in enumerate(zip(nb.cells, slide_types(nb)))
             if c.metadata.get("slideshow", {}).get("slide_type") != k]
    if stale:
        found.append(f"{name}: slide metadata missing or stale in cells {stale}: run tools/slides.py apply")
    for i, cell in enumerate(nb.cells):
        if rule(cell) not in ("notes", "skip") and cell_height(cell) > BUDGET:
            found.append(f"{name} cell {i}: {cell_height(cell)} lines, taller than a slide ({BUDGET}); split it")
    return found


def export(paths: list[Path], out: Path = OUT) -> list[Path]:
    """Export each notebook to a reveal.js deck in ``out`` that needs no network, beside a reveal.js copy."""
    from nbconvert import SlidesExporter

    import sphinx_revealjs  # ships reveal.js's built files: the local copy the decks point at

    reveal = Path(sphinx_revealjs.__file__).parent / "_static" / "revealjs"
    out.mkdir(parents=True, exist_ok=True)
    target = out / "reveal.js"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(reveal / "dist", target / "dist")
    shutil.copytree(reveal / "plugin" / "notes", target / "plugin" / "notes")
    exporter = SlidesExporter(template_name="offline_reveal", extra_template_basedirs=[str(TEMPLATE_DIR)],
                              reveal_url_prefix="reveal.js", reveal_theme="white")
    decks = []
    for path in paths:
        body, _ = exporter.from_filename(str(path))
        deck = out / f"{path.stem}.slides.html"
        deck.write_text(body, encoding="utf-8")
        decks.append(deck)
    return decks


def chromium() -> str | None:
    """The system's Chromium (Debian's package ``chromium``), if installed."""
    return next(filter(None, (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome"))), None)


def browser_check(decks: list[Path], screenshots: Path) -> dict[str, list[str]]:
    """Open each deck in headless Chromium with the network cut off; deck name -> problems found.

    Any request that is not a local file fails (and is reported), as do console errors and
    page errors; reveal.js must have started. A PNG of each deck's first slide goes to ``screenshots``.
    """
    from playwright.sync_api import sync_playwright

    screenshots.mkdir(parents=True, exist_ok=True)
    report: dict[str, list[str]] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        for deck in decks:
            found: list[str] = []
            on_console = lambda msg, f=found: msg.type == "error" and f.append(f"console error: {msg.text}")
            on_error = lambda exc, f=found: f.append(f"page error: {exc}")
            on_failed = lambda req, f=found: f.append(f"failed request: {req.url}")
            page.on("console", on_console)
            page.on("pageerror", on_error)
            page.on("requestfailed", on_failed)
            page.route(re.compile(r"^(?!file:).*"), lambda route: route.abort())  # offline: only local files
            page.goto(deck.as_uri(), wait_until="load")
            if not page.evaluate("typeof Reveal !== 'undefined' && Reveal.isReady()"):
                page.wait_for_timeout(500)
                if not page.evaluate("typeof Reveal !== 'undefined' && Reveal.isReady()"):
                    found.append("reveal.js did not start")
            page.screenshot(path=str(screenshots / f"{deck.name.split('.')[0]}.png"))
            for event, handler in (("console", on_console), ("pageerror", on_error), ("requestfailed", on_failed)):
                page.remove_listener(event, handler)
            page.unroute_all()
            report[deck.name] = found
        browser.close()
    return report


def _notebooks(prefixes: list[str]) -> list[Path]:
    return sorted(p for p in NOTEBOOKS.glob("*.ipynb") if not prefixes or p.name.startswith(tuple(prefixes)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("apply", "check", "export", "browser"))
    parser.add_argument("prefixes", nargs="*", help="only notebooks whose file name starts with one of these")
    args = parser.parse_args(argv)
    paths = _notebooks(args.prefixes)
    if args.command == "apply":
        for path in paths:
            nb = nbformat.read(path, as_version=4)
            if apply(nb):
                nbformat.write(nb, path)
                print(f"updated {path.name}")
        return 0
    if args.command == "check":
        found = [p for path in paths for p in problems(nbformat.read(path, as_version=4), path.name)]
        print("\n".join(found) or f"{len(paths)} notebooks: slides ok")
        return 1 if found else 0
    decks = export(paths)
    print(f"exported {len(decks)} decks to {OUT.relative_to(ROOT)}/")
    if args.command == "browser":
        if chromium() is None:
            print("Chromium not found: install Debian's chromium package (make slides does)", file=sys.stderr)
            return 1
        report = browser_check(decks, OUT / "screenshots")
        for deck, found in report.items():
            print(f"{'ok  ' if not found else 'FAIL'} {deck}" + "".join(f"\n    {f}" for f in found))
        return 1 if any(report.values()) else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
