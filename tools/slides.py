"""Slides for instructors: slide metadata by rule, an offline reveal.js export, and a per-slide browser check.

    python -m tools.slides measure [NN ...]  # render every cell once in Chromium, cache its height
                                             # (tools/slides_template/heights.json, committed)
    python -m tools.slides apply [NN ...]    # set slide types from the cached heights (run_notebooks.py
                                             # --write does it too), hide solutions, RISE settings
    python -m tools.slides check [NN ...]    # exit 1 if metadata is stale, a heading is not the first
                                             # line of its cell, a solution shows its outputs, a code
                                             # line is over 70 characters, or one cell is taller than
                                             # the canvas (listed with its height)
    python -m tools.slides export [NN ...]   # artifacts/slides/NN_name.slides.html + a local reveal.js
    python -m tools.slides browser [NN ...]  # export, then open EVERY slide of every deck in headless
                                             # Chromium at 1280x800, offline: content height and width
                                             # against the 960x700 canvas, headings in speaker notes,
                                             # failed requests, console errors; JSON report in
                                             # artifacts/slides/report.json; exit 1 on any finding
    python -m tools.slides shots             # three slides at 1024x768 into docs/

``--notebooks DIR`` works on the notebooks of another folder (copies in artifacts/, test notebooks).

The rules, so any lesson presents the same way (RISE in JupyterLab reads the same metadata): a
``#``/``##`` heading starts a slide, ``###`` a sub-slide (the heading must be the first line of its
cell); a cell that asserts (a proof) appears as a fragment; a long paragraph of prose becomes speaker
notes; a solution gets its own sub-slide (and is collapsed, input and outputs, in JupyterLab); and a
slide whose cells would grow past the canvas continues on a new sub-slide. Heights are real: each
cell's rendered height in pixels, measured once in Chromium and cached by the cell's content; a
cell not measured yet gets a conservative estimate (``estimate``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import logging
import math
import re
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import nbformat

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
OUT = ROOT / "artifacts" / "slides"
DOCS = ROOT / "docs"
TEMPLATE_DIR = Path(__file__).resolve().parent / "slides_template"
HEIGHTS = TEMPLATE_DIR / "heights.json"

CANVAS = (960, 700)  # reveal.js's slide size (nbconvert's default), scaled to fit the window
VIEWPORT = (1280, 800)  # the window the check opens every slide in
SLIDE_PAD = 10  # px kept free on a slide: its height is the sum of its cells (measured), plus fonts that differ
BUDGET = CANVAS[1] - SLIDE_PAD  # px of cells that fit on one slide
MAX_CODE_LINE = 70  # characters of a code line: wider ones wrap on a slide (about 80 fit)
NOTES_FROM = 8  # a paragraph of prose this many lines long or longer goes to the speaker notes
RISE = {"scroll": True, "slideNumber": "c/t", "transition": "none", "start_slideshow_at": "selected"}
SOLUTION_HIDDEN = {"source_hidden": True, "outputs_hidden": True}
# the three slides in docs/: (deck, reveal.js "h/v", what it shows)
SHOTS = [("02_state_dict", "0/0", "title"), ("02_state_dict", "6/1", "error"), ("02_state_dict", "4/1", "figure")]
HEADING = re.compile(r"#{1,3} ")
ANCHOR_FIRST = re.compile(r"\s*<a\s[^>]*>\s*(</a>)?\s*#")

# The fallback model (px), fitted to the 618 measured cells of the twelve lessons and rounded up:
# characters a line holds before it wraps, and px a line takes.
CODE_CHARS, OUTPUT_CHARS, ERROR_CHARS, CODE_LINE, OUTPUT_LINE = 80, 72, 60, 23, 25
PROSE_CHARS, PROSE_LINE = 82, 30
HEADING_PX = {1: 90, 2: 66, 3: 56}
CELL_PX, OUTPUT_PX, PARAGRAPH_PX = 28, 24, 24
IMAGE_WIDTH, IMAGE_FACTOR = 900, 1.15  # a figure is shown at most this wide, and takes a little more


def _wrapped(text: str, chars: int) -> int:
    return sum(max(1, math.ceil(len(line) / chars)) for line in text.splitlines())


def _png_size(data: str) -> tuple[int, int]:
    head = base64.b64decode(data[:44])
    width, height = struct.unpack(">II", head[16:24])
    return width, height


class _Text(HTMLParser):
    """The text of an HTML fragment (character references resolved), and the spans open at its end."""

    def __init__(self, open_spans: list[str] | None = None) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.spans = list(open_spans or [])

    def handle_data(self, data: str) -> None:
        self.parts.append(data)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "span":
            self.spans.append(self.get_starttag_text() or "<span>")

    def handle_endtag(self, tag: str) -> None:
        if tag == "span" and self.spans:
            self.spans.pop()


def _parsed(fragment: str, open_spans: list[str] | None = None) -> _Text:
    parser = _Text(open_spans)
    parser.feed(fragment)
    parser.close()
    return parser


def text_of(fragment: str) -> str:
    """What an HTML fragment shows as text: tags dropped, ``&lt;`` and the like resolved."""
    return "".join(_parsed(fragment).parts)


def estimate(cell: Any) -> int:
    """A cell's height in px from its text (used until the cell is measured): deliberately generous."""
    if cell.cell_type == "markdown":
        px, fenced = CELL_PX, False
        for para in re.split(r"\n\s*\n", cell.source.strip()):
            for line in para.splitlines():
                if line.startswith("```"):
                    fenced = not fenced
                    px += CODE_LINE // 2
                elif fenced:
                    px += CODE_LINE * _wrapped(line, CODE_CHARS)
                elif m := re.match(r"(#{1,3}) ", line):
                    px += HEADING_PX[len(m.group(1))] * _wrapped(line, PROSE_CHARS * 2 // 3)
                else:
                    px += PROSE_LINE * _wrapped(line, PROSE_CHARS)
            px += PARAGRAPH_PX
        return px
    px = CELL_PX + CODE_LINE * _wrapped(cell.source, CODE_CHARS) if cell.source.strip() else 0
    for output in cell.get("outputs", []):
        data = output.get("data", {})
        if output.output_type == "stream":
            px += OUTPUT_PX + OUTPUT_LINE * _wrapped(output.text, OUTPUT_CHARS)
        elif output.output_type == "error":
            px += OUTPUT_PX + OUTPUT_LINE * _wrapped(f"{output.ename}: {output.evalue}", ERROR_CHARS)
        elif "image/png" in data:
            width, height = _png_size(data["image/png"])
            px += OUTPUT_PX + math.ceil(IMAGE_FACTOR * height * min(1.0, IMAGE_WIDTH / width))
        elif "text/html" in data:
            px += OUTPUT_PX + PROSE_LINE * _wrapped(text_of(data["text/html"]), PROSE_CHARS)
        else:
            px += OUTPUT_PX + OUTPUT_LINE * _wrapped(data.get("text/plain", ""), OUTPUT_CHARS)
    return px


def cell_key(cell: Any) -> str:
    """What a cell's rendered height depends on: its kind, source and outputs (not counts, not metadata)."""
    outputs = [
        {k: v for k, v in o.items() if k not in ("execution_count", "metadata")} for o in cell.get("outputs", [])
    ]
    blob = json.dumps([cell.cell_type, cell.source, outputs], sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def load_heights(path: Path = HEIGHTS) -> dict[str, int]:
    """The cached measured heights: cell key -> px."""
    return json.loads(path.read_text()) if path.exists() else {}


def cell_height(cell: Any, heights: dict[str, int] | None = None) -> int:
    """A cell's height on a slide in px: measured if cached, else estimated."""
    heights = load_heights() if heights is None else heights
    return heights.get(cell_key(cell)) or estimate(cell)


def rule(cell: Any) -> str:
    """The slide type a cell gets by its kind alone (before the height budget)."""
    text = cell.source.lstrip()
    if cell.cell_type == "markdown":
        if re.match(r"#{1,2} ", text):
            return "slide"
        if text.startswith("### "):
            return "subslide"
        return "notes" if _wrapped(text, PROSE_CHARS) >= NOTES_FROM else "-"
    if "solution" in cell.metadata.get("tags", []):
        return "subslide"
    if re.search(r"^\s*assert\b", cell.source, re.MULTILINE):
        return "fragment"
    return "-"


def _is_solution(cell: Any) -> bool:
    return cell.cell_type == "code" and "solution" in cell.metadata.get("tags", [])


def slide_types(nb: Any, heights: dict[str, int] | None = None) -> list[str]:
    """Every cell's slide type: the rule, then a new sub-slide wherever a slide would outgrow the canvas.

    The cell after a solution starts a new sub-slide too (unless it is the solution's
    ``<details>`` explanation), so a solution never shares a slide with the next exercise.
    """
    heights = load_heights() if heights is None else heights
    types: list[str] = []
    used, after_solution = 0, False
    for cell in nb.cells:
        kind = rule(cell)
        if (
            after_solution
            and kind not in ("slide", "subslide", "notes")
            and not (cell.cell_type == "markdown" and cell.source.lstrip().startswith("<details"))
        ):
            kind = "subslide"
        if kind != "notes":
            after_solution = _is_solution(cell) or (after_solution and kind not in ("slide", "subslide"))
        height = 0 if kind in ("notes", "skip") else cell_height(cell, heights)
        if kind in ("slide", "subslide"):
            used = height
        elif used + height > BUDGET and used > 0:
            kind, used = "subslide", height
        else:
            used += height
        types.append(kind)
    return types


def apply(nb: Any, heights: dict[str, int] | None = None) -> bool:
    """Write slide types, collapsed solutions and RISE settings into the notebook; True if anything changed."""
    changed = False
    for cell, kind in zip(nb.cells, slide_types(nb, heights)):
        if cell.metadata.get("slideshow", {}).get("slide_type") != kind:
            cell.metadata["slideshow"] = {"slide_type": kind}
            changed = True
        if _is_solution(cell) and any(cell.metadata.get("jupyter", {}).get(k) is not True for k in SOLUTION_HIDDEN):
            cell.metadata["jupyter"] = {**cell.metadata.get("jupyter", {}), **SOLUTION_HIDDEN}
            changed = True
    rise = nb.metadata.get("rise", {})
    if any(rise.get(k) != v for k, v in RISE.items()):
        nb.metadata["rise"] = {**rise, **RISE}
        changed = True
    return changed


def misplaced_headings(cell: Any) -> list[str]:
    """Headings of a markdown cell that does not start with one (prose or an anchor before them).

    Such a cell is not a slide by the rules, so its headings land in the speaker notes (if the cell
    is long) or mid-slide, and the section's code becomes an untitled sub-slide of the previous one.
    A cell that starts with a heading may hold more below it: they are on its slide.
    """
    lines, fenced, found = cell.source.strip().splitlines(), False, []
    if cell.cell_type != "markdown" or (lines and HEADING.match(lines[0])):
        return []
    for i, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and i > 0 and HEADING.match(line):
            found.append(line.strip())
    if lines and ANCHOR_FIRST.match(lines[0]):
        found.insert(0, lines[0].strip())
    return found


def tall_cells(nb: Any, heights: dict[str, int] | None = None) -> list[tuple[int, int]]:
    """(cell index, px) of every shown cell taller than the canvas: it must be split by hand.

    (Slides are packed to ``BUDGET``, a little less, but a cell alone that fits the canvas is fine.)
    """
    heights = load_heights() if heights is None else heights
    return [
        (i, cell_height(c, heights))
        for i, (c, k) in enumerate(zip(nb.cells, slide_types(nb, heights)))
        if k not in ("notes", "skip") and cell_height(c, heights) > CANVAS[1]
    ]


def problems(nb: Any, name: str, heights: dict[str, int] | None = None) -> list[str]:
    """What is wrong with a notebook's slides, one line each."""
    heights = load_heights() if heights is None else heights
    found = []
    copy = nbformat.from_dict(json.loads(json.dumps(nb)))
    if apply(copy, heights):
        stale = [i for i, (a, b) in enumerate(zip(nb.cells, copy.cells)) if a.metadata != b.metadata]
        shown = f"{stale[:8]}"[:-1] + (f", ... ({len(stale)} cells)]" if len(stale) > 8 else "]")
        where = [f"cells {shown}"] * bool(stale) + ["the notebook's rise settings"] * (nb.metadata != copy.metadata)
        found.append(
            f"{name}: slide metadata missing or stale in {' and '.join(where)}: run python -m tools.slides apply"
        )
    for i, cell in enumerate(nb.cells):
        for heading in misplaced_headings(cell):
            found.append(
                f"{name} cell {i}: heading not on the first line of its cell (it goes to the speaker "
                f"notes or an untitled slide): {heading[:60]!r}"
            )
        long = [n for n, line in enumerate(cell.source.splitlines(), 1) if len(line) > MAX_CODE_LINE]
        if cell.cell_type == "code" and long:
            found.append(f"{name} cell {i}: code lines {long} longer than {MAX_CODE_LINE} characters")
        if _is_solution(cell) and cell.get("outputs") and not cell.metadata.get("jupyter", {}).get("outputs_hidden"):
            found.append(
                f"{name} cell {i}: solution shows its outputs (set jupyter.outputs_hidden: tools/slides.py apply)"
            )
    for i, px in tall_cells(nb, heights):
        found.append(f"{name} cell {i}: {px} px, taller than a slide ({CANVAS[1]} px); split it")
    return found


# ---------------------------------------------------------------- export


class _Anchors(HTMLParser):
    """Every element id of a deck -> the reveal.js indices (h, v) of the slide it is on."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.depth, self.h, self.v, self.ids = 0, -1, -1, {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "section":
            self.depth += 1
            if self.depth == 1:
                self.h, self.v = self.h + 1, -1
            elif self.depth == 2:
                self.v += 1
        ident = dict(attrs).get("id")
        if ident and self.depth:
            self.ids.setdefault(ident, (self.h, max(self.v, 0)))

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self.depth -= 1


def anchors(deck_html: str) -> dict[str, tuple[int, int]]:
    """Element id -> (h, v) of its slide in an exported deck."""
    parser = _Anchors()
    parser.feed(deck_html)
    parser.close()
    return parser.ids


_PRE = re.compile(r'(<div class="\s*highlight[^"]*"><pre>)(.*?)(</pre>)', re.DOTALL)


def hanging_indent(pre_html: str) -> str:
    """Each line of a highlighted ``<pre>`` in its own ``<span class="cl" style="--i:N">`` (N: its indentation).

    Pygments spans that cross a line end (docstrings) are closed and reopened, so each line is whole.
    """
    lines = pre_html.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    out, spans = [], []
    for line in lines:
        reopen = "".join(spans)
        parsed = _parsed(line, spans)
        spans = parsed.spans
        text = "".join(parsed.parts)
        indent = len(text) - len(text.lstrip(" "))
        out.append(f'<span class="cl" style="--i:{indent}">{reopen}{line}{"</span>" * len(spans)}</span>')
    return "".join(out)


def _rewrite_links(
    body: str, maps: dict[str, dict[str, tuple[int, int]]], own: str, elsewhere: frozenset[str] = frozenset()
) -> str:
    """``NN_name.ipynb#anchor`` -> ``NN_name.slides.html#/h/v`` (the slide holding the anchor); ``#anchor`` too.

    A link to an anchor that deck lacks, or to a lesson with no deck (not in ``maps``, not in
    ``elsewhere``: decks already beside it) gets ``data-broken-link``, which the browser check reports.
    """

    def link(m: re.Match[str]) -> str:
        path, anchor = m.group(1) or "", (m.group(2) or "")[1:]
        stem = Path(path).stem if path else own
        ids = maps.get(stem, {})
        where = ids.get(anchor) or ids.get(unquote(anchor)) if anchor else None
        lost = (anchor and not where and stem in maps) or (stem not in maps and stem not in elsewhere)
        broken = f' data-broken-link="{anchor or stem}"' if lost else ""
        if not path and not where:
            return m.group(0) + broken
        return f'href="{stem + ".slides.html" if path else ""}{f"#/{where[0]}/{where[1]}" if where else ""}"{broken}'

    return re.sub(r'href="((?:\./)?\d\d_[\w-]+\.ipynb)?(#[^"]*)?"', link, body)


NO_ALT = "No description has been provided for this image"  # nbconvert's words for an image with no alt


def exporter(**settings: Any) -> Any:
    """nbconvert's SlidesExporter with ``settings`` (its traits: template, reveal.js options), quiet about
    the lessons' figures having no alt text (it gives them ``NO_ALT``)."""
    from nbconvert import SlidesExporter

    slides = SlidesExporter(**settings)
    slides.log = logging.getLogger("tools.slides.nbconvert")
    slides.log.setLevel(logging.ERROR)
    return slides


def export(paths: list[Path], out: Path = OUT, *, all_slides: bool = False) -> list[Path]:
    """Export each notebook to a reveal.js deck in ``out`` that needs no network, beside a reveal.js copy.

    Code lines get a hanging indent, links between lessons point at the deck and slide holding the
    anchor, slides are numbered. ``all_slides`` puts every cell on its own slide (to measure cells).
    """
    import sphinx_revealjs  # ships reveal.js's built files: the local copy the decks point at

    reveal = Path(sphinx_revealjs.__file__).parent / "_static" / "revealjs"
    out.mkdir(parents=True, exist_ok=True)
    target = out / "reveal.js"
    if not target.exists():
        shutil.copytree(reveal / "dist", target / "dist")
        shutil.copytree(reveal / "plugin" / "notes", target / "plugin" / "notes")
    deck_exporter = exporter(
        template_name="offline_reveal",
        extra_template_basedirs=[str(TEMPLATE_DIR)],
        reveal_url_prefix="reveal.js",
        reveal_theme="white",
        reveal_number="c/t",
    )
    bodies: dict[str, str] = {}
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            cell.metadata.pop("jupyter", None)  # solutions collapsed in Lab, shown on their sub-slide
            if all_slides:
                cell.metadata["slideshow"] = {"slide_type": "slide"}
        body, _ = deck_exporter.from_notebook_node(nb, resources={"metadata": {"name": path.stem}})
        bodies[path.stem] = _PRE.sub(lambda m: m.group(1) + hanging_indent(m.group(2)) + m.group(3), body)
    maps = {stem: anchors(body) for stem, body in bodies.items()}
    elsewhere = frozenset(p.name.split(".")[0] for p in out.glob("*.slides.html"))
    decks = []
    for stem, body in bodies.items():
        deck = out / f"{stem}.slides.html"
        deck.write_text(_rewrite_links(body, maps, stem, elsewhere), encoding="utf-8")
        decks.append(deck)
    return decks


# ---------------------------------------------------------------- the browser


def chromium() -> str | None:
    """The system's Chromium (Debian's package ``chromium``), if installed."""
    return next(filter(None, (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome"))), None)


_READY = """async () => {
    for (let i = 0; i < 50 && !(typeof Reveal !== 'undefined' && Reveal.isReady()); i++)
        await new Promise(r => setTimeout(r, 100));
    await Promise.all([...document.images].map(img => img.decode().catch(() => null)));
    return typeof Reveal !== 'undefined' && Reveal.isReady();
}"""

# Every slide in turn: its content size in canvas px (reveal.js lays a slide out at 960x700 and scales
# it), elements wider than the slide, headings inside the speaker notes, and each cell's height.
_SLIDES = """() => {
    // for the check only (the deck as saved keeps its settings): no transition under way while a
    // slide is measured, no URL rewritten per slide (half the time), only neighbouring slides laid out
    Reveal.configure({transition: 'none', backgroundTransition: 'none', history: false, viewDistance: 1});
    const out = [];
    const [W, H] = [Reveal.getConfig().width, Reveal.getConfig().height];
    for (const s of Reveal.getSlides()) {
        const {h, v} = Reveal.getIndices(s);
        Reveal.slide(h, v || 0);
        const sec = Reveal.getCurrentSlide();
        const box = sec.getBoundingClientRect(), scale = Reveal.getScale();
        let right = sec.scrollWidth;
        for (const e of sec.querySelectorAll('pre, img, table, .jp-OutputArea-output, .jp-RenderedHTMLCommon')) {
            if (e.closest('aside.notes')) continue;
            if (e.scrollWidth > e.clientWidth + 1) right = Math.max(right, e.scrollWidth + (e.getBoundingClientRect().left - box.left) / scale);
            right = Math.max(right, (e.getBoundingClientRect().right - box.left) / scale);
        }
        const title = sec.querySelector('h1, h2, h3');
        const cells = [...sec.querySelectorAll(':scope > .jp-Cell, :scope > div > .jp-Cell')].filter(c => !c.closest('aside.notes'))
            .map(c => ({id: c.id.replace('cell-id=', ''), px: Math.round(c.getBoundingClientRect().height / scale)}));
        out.push({slide: `${h}.${v || 0}`, number: out.length + 1,
                  title: (title ? title.innerText : sec.innerText).replace('¶', '').replace(/\\s+/g, ' ').trim().slice(0, 60),
                  height: sec.scrollHeight, width: Math.round(right), canvas: [W, H],
                  notes_headings: [...sec.querySelectorAll('aside.notes h1, aside.notes h2, aside.notes h3')]
                      .map(e => e.tagName.toLowerCase() + ' ' + e.textContent.replace('¶', '').trim().slice(0, 60)),
                  cells,
                  broken_links: [...sec.querySelectorAll('a[data-broken-link], a[href*=".ipynb"]')]
                      .map(a => a.getAttribute('href'))});
    }
    Reveal.slide(0, 0);
    return out;
}"""

_ALL_CELLS = """() => {
    const scale = Reveal.getScale();
    for (const s of document.querySelectorAll('.reveal .slides section')) s.style.display = 'block';
    return [...document.querySelectorAll('.jp-Cell')].map(c => {
        const st = getComputedStyle(c);
        return [c.id.replace('cell-id=', ''),
                Math.ceil(c.getBoundingClientRect().height / scale + parseFloat(st.marginTop) + parseFloat(st.marginBottom))];
    });
}"""


def _browser(p: Any) -> Any:
    return p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])


_SESSION: list[Any] = []  # the browser of the browser_session() open now, if any


@contextlib.contextmanager
def browser_session() -> Iterator[Any]:
    """Headless Chromium, one for every check, measure and screenshot run inside the block.

    Each of those opens a session itself; inside an open one they share its browser (starting
    Playwright and Chromium takes about a second: the tests run several checks in one session).
    """
    if _SESSION:
        yield _SESSION[0]
        return
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = _browser(p)
        _SESSION.append(browser)
        try:
            yield browser
        finally:
            _SESSION.clear()
            browser.close()


def _offline_page(browser: Any, size: tuple[int, int], found: list[str]) -> Any:
    page = browser.new_page(viewport={"width": size[0], "height": size[1]})
    page.on("console", lambda msg: msg.type == "error" and found.append(f"console error: {msg.text}"))
    page.on("pageerror", lambda exc: found.append(f"page error: {exc}"))
    page.on("requestfailed", lambda req: found.append(f"failed request: {req.url}"))
    page.route(re.compile(r"^(?!file:).*"), lambda route: route.abort())  # offline: only local files
    return page


def browser_check(decks: list[Path], screenshots: Path | None = None) -> dict[str, dict[str, Any]]:
    """Open every slide of each deck in headless Chromium at 1280x800 with the network cut off.

    Deck name -> {"slides": [per-slide sizes, notes headings, cells], "problems": [...]}. A problem is
    a slide taller or wider than the canvas, a heading inside speaker notes, a failed request (any
    request that is not a local file), a console or page error, or reveal.js not starting.
    """
    report: dict[str, dict[str, Any]] = {}
    with browser_session() as browser:
        events: list[str] = []  # what the page's handlers report, for the deck open now
        page = _offline_page(browser, VIEWPORT, events)  # one page for all decks: a new one costs ~0.2 s
        for deck in decks:
            page.goto(deck.as_uri(), wait_until="load")
            slides: list[dict[str, Any]] = []
            found: list[str] = []
            if not page.evaluate(_READY):
                found.append("reveal.js did not start")
            else:
                slides = page.evaluate(_SLIDES)
                if screenshots:
                    screenshots.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=str(screenshots / f"{deck.name.split('.')[0]}.png"))
            page.goto("about:blank")  # requests still open fail now, reported with this deck
            found = [*events, *found]
            events.clear()
            for s in slides:
                s["over"] = s["height"] > CANVAS[1] or s["width"] > CANVAS[0]
                where = f"slide {s['number']} ({s['slide']}) {s['title']!r}"
                one = (
                    f" (one cell, id {s['cells'][0]['id']}, taller than the canvas: split it)"
                    if len(s["cells"]) == 1
                    else ""
                )
                if s["height"] > CANVAS[1]:
                    found.append(f"{where}: {s['height']} px tall, canvas {CANVAS[1]}{one}")
                if s["width"] > CANVAS[0]:
                    found.append(f"{where}: {s['width']} px wide, canvas {CANVAS[0]}")
                for href in s["broken_links"]:
                    found.append(f"{where}: link to a lesson or anchor the decks do not have: {href}")
                for heading in s["notes_headings"]:
                    found.append(f"{where}: heading in speaker notes: {heading}")
            report[deck.name] = {"slides": slides, "problems": found}
        page.close()
    return report


def measure(paths: list[Path], cache: Path = HEIGHTS, *, prune: bool = False) -> dict[str, int]:
    """Render every cell of the notebooks once in Chromium (each on its own slide) and cache its height."""
    heights = {} if prune else load_heights(cache)
    with tempfile.TemporaryDirectory() as tmp, browser_session() as browser:
        decks = export(paths, Path(tmp), all_slides=True)
        for path, deck in zip(paths, decks):
            page = _offline_page(browser, VIEWPORT, [])
            page.goto(deck.as_uri(), wait_until="load")
            page.evaluate(_READY)
            measured = dict(page.evaluate(_ALL_CELLS))
            page.close()
            for i, cell in enumerate(nbformat.read(path, as_version=4).cells):
                px = measured.get(cell.get("id", f"no-id-{i}"))
                if px:
                    heights[cell_key(cell)] = int(px)
    cache.write_text(json.dumps(dict(sorted(heights.items())), indent=0) + "\n")
    return heights


def screenshots(picks: list[tuple[Path, str, str]], size: tuple[int, int] = (1024, 768)) -> list[Path]:
    """PNGs of chosen slides: (deck, "h/v", file) -> the files written."""
    written = []
    with browser_session() as browser:
        for deck, where, target in picks:
            page = _offline_page(browser, size, [])
            page.goto(f"{deck.as_uri()}#/{where}", wait_until="load")
            page.evaluate(_READY)
            page.wait_for_timeout(300)
            page.screenshot(path=target)
            written.append(Path(target))
            page.close()
    return written


def summary(report: dict[str, dict[str, Any]]) -> str:
    """One line per deck (slides, over the canvas, headings in notes, tallest), then every problem."""
    lines, total, over, notes = [], 0, 0, 0
    for deck, entry in report.items():
        slides = entry["slides"]
        n_over = sum(s["over"] for s in slides)
        n_notes = sum(len(s["notes_headings"]) for s in slides)
        tallest = max((s["height"] for s in slides), default=0)
        total, over, notes = total + len(slides), over + n_over, notes + n_notes
        flag = "ok  " if not entry["problems"] else "FAIL"
        lines.append(
            f"{flag} {deck}: {len(slides)} slides, {n_over} over the canvas, {n_notes} headings in "
            f"notes, tallest {tallest} px"
        )
        lines += [f"    {p}" for p in entry["problems"]]
    lines.append(
        f"{len(report)} decks, {total} slides: {over} over the {CANVAS[0]}x{CANVAS[1]} canvas, "
        f"{notes} headings in speaker notes"
    )
    return "\n".join(lines)


def _notebooks(folder: Path, prefixes: list[str]) -> list[Path]:
    return sorted(p for p in folder.glob("*.ipynb") if not prefixes or p.name.startswith(tuple(prefixes)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("measure", "apply", "check", "export", "browser", "shots"))
    parser.add_argument("prefixes", nargs="*", help="only notebooks whose file name starts with one of these")
    parser.add_argument("--notebooks", type=Path, default=NOTEBOOKS, help="folder of the notebooks")
    parser.add_argument("--out", type=Path, default=OUT, help="folder of the decks and the report")
    args = parser.parse_intermixed_args(argv)
    args.out = args.out.resolve()
    paths = _notebooks(args.notebooks.resolve(), args.prefixes)
    if args.command in ("measure", "shots") and chromium() is None:
        print("Chromium not found: install Debian's chromium package (make chromium does)", file=sys.stderr)
        return 1
    if args.command == "measure":
        heights = measure(paths, prune=not args.prefixes and args.notebooks.resolve() == NOTEBOOKS)
        print(f"{len(heights)} cell heights in {HEIGHTS.relative_to(ROOT)}")
        return 0
    heights = load_heights()
    if args.command == "apply":
        for path in paths:
            nb = nbformat.read(path, as_version=4)
            if apply(nb, heights):
                nbformat.write(nb, path)
                print(f"updated {path.name}")
        return 0
    if args.command == "check":
        found = [p for path in paths for p in problems(nbformat.read(path, as_version=4), path.name, heights)]
        print("\n".join(found) or f"{len(paths)} notebooks: slides ok")
        return 1 if found else 0
    start = time.perf_counter()
    decks = export(paths, args.out)
    print(f"exported {len(decks)} decks to {args.out}/")
    if args.command == "shots":
        picks = [
            (args.out / f"{name}.slides.html", where, str(DOCS / f"slide-{name[:2]}-{what}.png"))
            for name, where, what in SHOTS
            if (args.out / f"{name}.slides.html").exists()
        ]
        for path in screenshots(picks):
            print(f"wrote {path}")
        return 0
    if args.command == "browser":
        if chromium() is None:  # the decks are exported all the same
            print(
                "Chromium not found, slides not checked: install Debian's chromium package (make chromium)",
                file=sys.stderr,
            )
            return 1
        report = browser_check(decks, args.out / "screenshots")
        (args.out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
        text = summary(report) + f"\nchecked in {time.perf_counter() - start:.0f} s; report: {args.out}/report.json"
        (args.out / "report.txt").write_text(text + "\n")
        print(text)
        return 1 if any(e["problems"] for e in report.values()) else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
