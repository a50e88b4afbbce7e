"""The course as a static web site: every lesson with its stored outputs, built offline, checked in Chromium.

    python -m tools.course_site build    # stage site/ and the notebooks, Sphinx + myst-nb -> artifacts/site/
    python -m tools.course_site check    # open every page of artifacts/site/ in headless Chromium, offline
    python -m tools.course_site all      # build, then check (make site)
    python -m tools.course_site shots    # the landing page and lesson 02, desktop and phone, into docs/

Nothing is executed: the pages show the outputs stored in the committed notebooks, which CI proves
(strict nbval). The build warns on nothing: a link to a lesson or an anchor that does not exist, an
include whose text moved, a page left out of the navigation all fail it (Sphinx ``-W``).

Staging (``stage``) copies ``site/`` (Sphinx settings, the landing, doctor and instructors pages) and
the notebooks into ``artifacts/site-build/src``, changing only the copies: an anchor in a heading
(``## 7. ... <a id="size-mismatch"></a>``) becomes a MyST target, so ``12_troubleshooting.ipynb#size-mismatch``
resolves to the page and the heading; a cell tagged ``solution`` gets myst-nb's ``hide-cell`` tag (collapsed
until clicked, as in JupyterLab); the landing page's lesson list is written from each notebook's title and
goals and the README's run-time table.

The check (``check``) opens every page at 1280 px and at 390 px (a phone) with every request that is not
a local file blocked, and reports: a failed or blocked request, a console or page error, an internal link
to a missing page or anchor, an image that does not load, a page wider than the window (horizontal
scroll); then it searches "map_location" and "weights_only" and expects lessons 04 and 06 among the
results, and checks that a solution is hidden until its summary is clicked. Exit 1 on any finding.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import nbformat

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
SITE = ROOT / "site"  # Sphinx settings and the hand-written pages
OUT = ROOT / "artifacts" / "site"
WORK = ROOT / "artifacts" / "site-build"  # staged sources and Sphinx's doctrees
DOCS = ROOT / "docs"
README = ROOT / "README.md"

VIEWPORTS = {"desktop": (1280, 800), "phone": (390, 844)}
SEARCHES = {"map_location": "04_devices_map_location", "weights_only": "06_safe_loading"}
SOLUTION_PAGE = "03_training_checkpoints"
LESSONS_MARK = "<!-- lessons -->"
_ANCHOR = re.compile(r'\s*<a\s+id="([^"]+)"\s*>\s*</a>\s*')
_RUN_TIME = re.compile(r"^\| `(\d\d_\w+)\.ipynb` \| .* \| ([\d.]+ s) \|$", re.MULTILINE)


def _slides() -> Any:
    """tools/slides.py, for its offline Chromium (one browser per session, every non-file request blocked)."""
    from tools import slides

    return slides


# ---------------------------------------------------------------- staging


def anchor_ids(nb: Any) -> list[str]:
    """The ``<a id="...">`` anchors of a notebook's markdown cells, in order."""
    return [ident for cell in nb.cells if cell.cell_type == "markdown" for ident in _ANCHOR.findall(cell.source)]


def labels(notebooks: dict[str, Any]) -> dict[tuple[str, str], str]:
    """(lesson stem, anchor) -> the Sphinx label, unique across the site (Sphinx labels are global).

    An anchor keeps its name, so ``12_troubleshooting.html#size-mismatch`` is the notebook's own anchor;
    one that several lessons use keeps it in lesson 12 (the error index) or else in the first lesson,
    and becomes ``name-NN`` in the others (their links to it are rewritten to match).
    """
    users: dict[str, list[str]] = {}
    for stem, nb in notebooks.items():
        for ident in anchor_ids(nb):
            if not re.fullmatch(r"[a-z][a-z0-9-]*", ident):
                raise ValueError(
                    f"{stem}: anchor {ident!r} is not lower-case letters, digits and '-' "
                    "(Sphinx would rename it and links to it from outside would break)"
                )
            users.setdefault(ident, []).append(stem)
    found = {}
    for ident, stems in users.items():
        owner = next((s for s in stems if s.startswith("12_")), stems[0])
        for stem in stems:
            found[(stem, ident)] = ident if stem == owner else f"{ident}-{stem[:2]}"
    return found


def _relink(markdown: str, stem: str, names: dict[tuple[str, str], str]) -> str:
    """Links to an anchor (``#x``, ``NN_name.ipynb#x``) pointed at its label where that differs."""

    def link(m: re.Match[str]) -> str:
        path, ident = m.group(1) or "", m.group(2)
        target = Path(path).stem if path else stem
        return f"]({path}#{names.get((target, ident), ident)})"

    return re.sub(r"\]\(((?:\./)?\d\d_\w+\.ipynb)?#([\w-]+)\)", link, markdown)


def anchors_to_targets(markdown: str, stem: str = "", names: dict[tuple[str, str], str] | None = None) -> str:
    """``## Title <a id="x"></a>`` -> ``(x)=`` then ``## Title``: a MyST target Sphinx resolves links to.

    An anchor outside a heading stays as it is (raw HTML: the page has the id, Sphinx does not know it,
    and a link to it fails the build).
    """
    names = names or {}
    out = []
    for line in markdown.split("\n"):
        if line.startswith("#") and _ANCHOR.search(line):
            out += [f"({names.get((stem, ident), ident)})=" for ident in _ANCHOR.findall(line)]
            line = _ANCHOR.sub(" ", line).rstrip()
        out.append(line)
    return _relink("\n".join(out), stem, names)


def site_notebook(nb: Any, stem: str = "", names: dict[tuple[str, str], str] | None = None) -> Any:
    """The notebook as the site shows it: anchors as targets, solutions collapsed (myst-nb's hide-cell)."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = anchors_to_targets(cell.source, stem, names)
        elif "solution" in cell.metadata.get("tags", []):
            cell.metadata["tags"] = [*cell.metadata["tags"], "hide-cell"]
    return nb


def lesson_title(nb: Any) -> str:
    first = nb.cells[0].source.strip().splitlines()[0]
    if not first.startswith("# "):
        raise ValueError(f"the first cell does not start with a '# NN · Title' line: {first!r}")
    return first[2:].strip()


def lesson_goals(nb: Any) -> list[str]:
    """The bullets under ``## What you will learn``."""
    for cell in nb.cells:
        text = cell.source.strip()
        if cell.cell_type == "markdown" and "## What you will learn" in text:
            goals, started = [], False
            for line in text.split("## What you will learn", 1)[1].splitlines()[1:]:
                if line.startswith("- "):
                    goals.append(line[2:].strip())
                    started = True
                elif started and line.startswith("  ") and goals:
                    goals[-1] += " " + line.strip()
                elif started:
                    break
            return goals
    return []


def run_times(readme: Path = README) -> dict[str, str]:
    """Lesson stem -> run time ("6.6 s") from the README's lesson table."""
    return dict(_RUN_TIME.findall(readme.read_text(encoding="utf-8")))


def lesson_list(paths: list[Path], times: dict[str, str]) -> str:
    """The landing page's list: each lesson's title (a link), run time and goals."""
    blocks = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        goals = lesson_goals(nb)
        if path.stem not in times or not goals:
            raise ValueError(
                f"{path.name}: {'no run time in the README lesson table' if path.stem not in times else 'no goals'}"
            )
        bullets = "\n".join(f"  - {g}" for g in goals)
        blocks.append(f"- **[{lesson_title(nb)}]({path.name})** ({times[path.stem]} to run)\n{bullets}")
    return "\n".join(blocks)


def stage(notebooks: Path = NOTEBOOKS, src: Path = WORK / "src", readme: Path = README) -> list[Path]:
    """Copy site/ and the notebooks (as the site shows them) into ``src``; the lesson notebooks staged."""
    if src.exists():
        shutil.rmtree(src)
    shutil.copytree(SITE, src, ignore=shutil.ignore_patterns("__pycache__"))
    paths = sorted(notebooks.glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        raise FileNotFoundError(f"no lessons in {notebooks}")
    lessons = {p.stem: nbformat.read(p, as_version=4) for p in paths}
    names = labels(lessons)
    for stem, nb in lessons.items():
        nbformat.write(site_notebook(nb, stem, names), src / f"{stem}.ipynb")
    index = src / "index.md"
    text = index.read_text(encoding="utf-8")
    if LESSONS_MARK not in text:
        raise ValueError(f"site/index.md lacks the line {LESSONS_MARK}")
    index.write_text(text.replace(LESSONS_MARK, lesson_list(paths, run_times(readme))), encoding="utf-8")
    shutil.copy(readme, src / "README.md")  # included in part (conf.py keeps it off the pages)
    return [src / p.name for p in paths]


def build(
    notebooks: Path = NOTEBOOKS, out: Path = OUT, work: Path = WORK, *, readme: Path = README, quiet: bool = True
) -> int:
    """Stage, then Sphinx's html builder into ``out`` (emptied first); Sphinx's exit status (0: no warning)."""
    import warnings

    from sphinx.cmd.build import build_main

    stage(notebooks, work / "src", readme)
    if out.exists():
        shutil.rmtree(out)
    args = ["-b", "html", "-E", "-W", "--keep-going", "-d", str(work / "doctrees"), str(work / "src"), str(out)]
    with warnings.catch_warnings():  # the extensions' use of APIs Sphinx 11 removes: theirs to fix, not ours
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        status = build_main(args + ["-q"] * quiet)
    for source_map in out.glob("_static/**/*.map"):  # the theme's source maps: 3.4 of its 6.8 MB, for its developers
        source_map.unlink()
    (out / ".buildinfo").unlink(missing_ok=True)
    return status


# ---------------------------------------------------------------- the browser check

# Everything a page's check needs, read in the page: its size against the window, its images, its ids,
# its links (resolved by the browser against the page's own URL).
_PAGE = """() => {
    const doc = document.documentElement;
    const clipped = e => {  // inside a box that scrolls or clips sideways: the page itself does not scroll
        if (getComputedStyle(e).position === 'fixed') return true;  // a drawer off screen
        for (let a = e.parentElement; a && a !== document.body; a = a.parentElement)
            if (getComputedStyle(a).overflowX !== 'visible' || getComputedStyle(a).position === 'fixed') return true;
        return false;
    };
    const wide = [...document.querySelectorAll('body *')].filter(e => {
        const r = e.getBoundingClientRect();
        return r.width > 0 && r.right > doc.clientWidth + 1 && !clipped(e);
    }).slice(0, 3).map(e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') +
                           (e.className && typeof e.className === 'string' ? '.' + e.className.trim().split(/\\s+/).join('.') : ''));
    // a box that scrolls sideways: allowed for code and tables (they scroll inside themselves, as on
    // any documentation site), not for the page's columns (the article would scroll as a whole)
    const name = e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') +
        (typeof e.className === 'string' && e.className.trim() ? '.' + e.className.trim().split(/\\s+/).join('.') : '');
    const scrollers = [...document.querySelectorAll('body *')].filter(e => {
        const o = getComputedStyle(e).overflowX;
        return (o === 'auto' || o === 'scroll') && e.scrollWidth > e.clientWidth + 1 && e.clientWidth > 0 &&
            !e.matches('pre, table, .highlight, .highlight *, .table-wrapper, .pst-scrollable-table-container') &&
            !e.closest('.bd-sidebar-primary, .bd-sidebar-secondary');
    }).slice(0, 3).map(e => `${name(e)} (${e.scrollWidth} px in ${e.clientWidth})`);
    return {
        scroll_width: doc.scrollWidth, client_width: doc.clientWidth, wide, scrollers,
        images: [...document.images].map(i => ({src: i.currentSrc || i.src, ok: i.complete && i.naturalWidth > 0})),
        ids: [...document.querySelectorAll('[id]')].map(e => e.id),
        links: [...document.querySelectorAll('a[href]')].map(a => a.href),
    };
}"""

_IMAGES_LOADED = """async () => {  // images decoded, fonts loaded: nothing left in flight when the check moves on
    await Promise.all([...document.images].map(img => img.decode().catch(() => null)));
    await document.fonts.ready;
}"""

_SEARCH_DONE = "() => /finished|did not match/i.test((document.querySelector('#search-results .search-summary') || {}).textContent || '')"
_SEARCH_RESULTS = (
    "() => [...document.querySelectorAll('#search-results ul.search li a')].map(a => a.getAttribute('href'))"
)

_SOLUTION = """() => {
    const all = [...document.querySelectorAll('.tag_solution details')];
    const d = all[0];
    if (!d) return {count: 0};
    const code = d.querySelector('pre');
    return {count: all.length, open: all.filter(x => x.open).length,
            code_visible: !!code && code.checkVisibility({visibilityProperty: true, opacityProperty: true}), text: d.querySelector('summary').innerText.trim()};
}"""


def pages(site: Path) -> list[Path]:
    return sorted(p for p in site.rglob("*.html") if "_static" not in p.parts)


def check_page(
    page: Any,
    path: Path,
    site: Path,
    events: list[str],
    ids: dict[Path, set[str]],
    links: dict[Path, list[str]],
    images: list[int],
) -> list[str]:
    """Load one page (offline) in the page object's window; problems of this page at this size."""
    found: list[str] = []
    page.goto(path.as_uri(), wait_until="load")
    page.evaluate(_IMAGES_LOADED)
    info = page.evaluate(_PAGE)
    page.goto("about:blank")  # requests still open fail now, reported with this page
    found += events
    events.clear()
    if info["scroll_width"] > info["client_width"]:
        found.append(
            f"scrolls sideways: {info['scroll_width']} px wide in a {info['client_width']} px window "
            f"(widest: {', '.join(info['wide']) or '?'})"
        )
    for box in info["scrollers"]:
        found.append(f"scrolls sideways inside {box}")
    for image in info["images"]:
        if not image["ok"]:
            found.append(f"image does not load: {_relative(image['src'], site)}")
    ids[path] = set(info["ids"])
    links[path] = info["links"]
    images.append(len(info["images"]))
    return found


def _relative(url: str, site: Path) -> str:
    parts = urlsplit(url)
    if parts.scheme != "file":
        return url
    path = Path(unquote(parts.path))
    try:
        return str(path.relative_to(site)) + (f"#{parts.fragment}" if parts.fragment else "")
    except ValueError:
        return str(path)


def broken_links(links: dict[Path, list[str]], ids: dict[Path, set[str]], site: Path) -> dict[Path, list[str]]:
    """Internal links (file URLs) to a missing file, or to an anchor the target page lacks."""
    found: dict[Path, list[str]] = {}
    for source, urls in links.items():
        for url in urls:
            parts = urlsplit(url)
            if parts.scheme != "file":
                continue  # links out of the site (the PyTorch docs...) are not followed: no network here
            target = Path(unquote(parts.path))
            if target.is_dir():
                target = target / "index.html"
            problem = None
            if not target.exists():
                problem = "missing page"
            elif parts.fragment and target.suffix == ".html":
                anchors = ids.get(target)
                if anchors is None:
                    anchors = set(re.findall(r'\sid="([^"]+)"', target.read_text(encoding="utf-8")))
                if unquote(parts.fragment) not in anchors:
                    problem = "missing anchor"
            if problem:
                found.setdefault(source, []).append(f"broken link ({problem}): {_relative(url, site)}")
    return found


def check_search(page: Any, site: Path, events: list[str]) -> list[str]:
    found = []
    for word, stem in SEARCHES.items():
        page.goto(f"{(site / 'search.html').as_uri()}?q={word}", wait_until="load")
        with contextlib.suppress(Exception):  # a search that never finishes finds nothing: reported below
            page.wait_for_function(_SEARCH_DONE, timeout=30_000)
        hits = [h.split("#")[0].split("?")[0] for h in page.evaluate(_SEARCH_RESULTS)]
        if f"{stem}.html" not in hits:
            found.append(f"searching {word!r} does not find {stem} (found: {hits[:6]})")
    page.goto("about:blank")
    found += [f"search: {e}" for e in events]
    events.clear()
    return found


def check_solution(page: Any, site: Path, events: list[str]) -> list[str]:
    path = site / f"{SOLUTION_PAGE}.html"
    if not path.exists():
        return [f"{path.name} missing: no solution to check"]
    page.goto(path.as_uri(), wait_until="load")
    before = page.evaluate(_SOLUTION)
    found = []
    if before["count"] == 0:
        found.append(f"{path.name}: no collapsible solution (cells tagged solution should be hidden until clicked)")
    else:
        if before["open"] or before["code_visible"]:
            found.append(f"{path.name}: a solution is shown before it is clicked")
        page.locator(".tag_solution details summary").first.click()
        with contextlib.suppress(Exception):  # reported below if it never opens
            page.wait_for_function(  # open, and its code drawn (a busy machine may lag the animation)
                "() => { const d = document.querySelector('.tag_solution details'); const c = d && d.querySelector('pre');"
                " return d.open && !!c && c.checkVisibility({visibilityProperty: true, opacityProperty: true}); }",
                timeout=15_000,
            )
        after = page.evaluate(_SOLUTION)
        if not after["code_visible"]:
            found.append(f"{path.name}: clicking the solution's summary does not show its code")
    page.goto("about:blank")
    found += events
    events.clear()
    return found


def browser_check(
    site: Path = OUT, only: list[str] | None = None, stats: dict[str, int] | None = None
) -> dict[str, list[str]]:
    """Every page of the site at each viewport, then links, search and a solution; page -> problems.

    ``only``: these pages (names relative to the site) instead of all, and no search or solution check
    (the tests check a broken copy this way). ``stats`` receives what was checked: pages, links, images.
    """
    slides = _slides()
    site = site.resolve()
    report: dict[str, list[str]] = {}
    ids: dict[Path, set[str]] = {}
    links: dict[Path, list[str]] = {}
    if not (site / "index.html").exists():
        return {"index.html": ["no index.html: is this a built site?"]}
    every = [site / name for name in only] if only is not None else pages(site)
    images: list[int] = []
    with slides.browser_session() as browser:
        for name, size in VIEWPORTS.items():
            events: list[str] = []
            page = slides._offline_page(browser, size, events)
            for path in every:
                for problem in check_page(page, path, site, events, ids, links, images):
                    report.setdefault(str(path.relative_to(site)), []).append(f"{name} {size[0]} px: {problem}")
            if name == "desktop" and only is None:
                report.setdefault("search", []).extend(check_search(page, site, events))
                fresh = slides._offline_page(browser, size, events)  # no state left by the pages before
                report.setdefault("solution", []).extend(check_solution(fresh, site, events))
                fresh.close()
            page.close()
    for source, problems in broken_links(links, ids, site).items():
        report.setdefault(str(source.relative_to(site)), []).extend(sorted(set(problems)))
    if stats is not None:
        stats.update(
            pages=len(every),
            links=sum(map(len, links.values())),
            images=sum(images),
            internal_links=sum(u.startswith("file:") for urls in links.values() for u in urls),
        )
    return {k: v for k, v in report.items() if v}


def summary(report: dict[str, list[str]], stats: dict[str, int]) -> str:
    lines = [f"FAIL {where}: {p}" for where, problems in report.items() for p in problems]
    lines.append(
        f"{stats.get('pages', 0)} pages at {' and '.join(f'{w}x{h}' for w, h in VIEWPORTS.values())} "
        f"({stats.get('internal_links', 0)} internal links, {stats.get('images', 0)} images, searches "
        f"{', '.join(SEARCHES)}, a solution): {sum(map(len, report.values()))} problems"
    )
    return "\n".join(lines)


def size_of(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# ---------------------------------------------------------------- screenshots

SHOTS = [
    ("index.html", "desktop", "site-landing-desktop.png"),
    ("index.html", "phone", "site-landing-phone.png"),
    ("02_state_dict.html#size-mismatch-and-strict-false-does-not-skip-it", "desktop", "site-lesson-desktop.png"),
    ("02_state_dict.html#missing-and-unexpected-keys", "phone", "site-lesson-phone.png"),
]


def screenshots(site: Path = OUT, docs: Path = DOCS) -> list[Path]:
    slides = _slides()
    written = []
    with slides.browser_session() as browser:
        for where, kind, name in SHOTS:
            page = slides._offline_page(browser, VIEWPORTS[kind], [])
            name_, _, anchor = where.partition("#")
            page.goto((site / name_).as_uri(), wait_until="load")
            page.evaluate(_IMAGES_LOADED)
            if anchor:  # scrolled to by hand: a URL fragment would paint the heading as the :target
                page.evaluate(
                    "id => window.scrollTo(0, document.getElementById(id).getBoundingClientRect().top"
                    " + window.scrollY - 70)",
                    anchor,
                )
            page.wait_for_timeout(300)
            page.screenshot(path=str(docs / name))
            written.append(docs / name)
            page.close()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("build", "check", "all", "shots"))
    parser.add_argument("--notebooks", type=Path, default=NOTEBOOKS, help="folder of the notebooks")
    parser.add_argument("--out", type=Path, default=OUT, help="the site's folder")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    if args.command in ("build", "all"):
        start = time.perf_counter()
        status = build(args.notebooks.resolve(), out, quiet=True)
        took = time.perf_counter() - start
        if status:
            print(f"site build failed (Sphinx exit {status}; warnings are errors): see above", file=sys.stderr)
            return 1
        n = len(list(out.glob("[0-9][0-9]_*.html")))
        print(
            f"built {n} lessons, {len(pages(out))} pages, {size_of(out) / 1e6:.1f} MB in {took:.1f} s: {out}/index.html"
        )
    if args.command in ("check", "all", "shots") and _slides().chromium() is None:
        print("Chromium not found: install Debian's chromium package (make chromium does)", file=sys.stderr)
        return 1
    if args.command == "shots":
        for path in screenshots(out):
            print(f"wrote {path} ({path.stat().st_size // 1024} kB)")
        return 0
    if args.command in ("check", "all"):
        start = time.perf_counter()
        stats: dict[str, int] = {}
        report = browser_check(out, stats=stats)
        print(summary(report, stats) + f"; checked in {time.perf_counter() - start:.1f} s")
        return 1 if report else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
