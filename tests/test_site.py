"""The course site (make site, tools/course_site.py): it builds from the committed notebooks, its
pages pass the browser check, and the check fails on a broken link, a missing image, an overflowing
page, a network request, a console error, a solution shown open and a search that finds nothing."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shutil

import nbformat
import pytest

from helper.paths import REPO_ROOT
from tools import course_site

LESSONS = sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def needs_chromium() -> None:
    if course_site._slides().chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("CI must check the site in Chromium: .ci/run installs Debian's chromium package")
        pytest.skip("Chromium is not installed (make chromium installs it)")


# ---------------------------------------------------------------- without a build


def test_site_requirements_are_installed_at_their_pins():
    text = (REPO_ROOT / "requirements-site.txt").read_text()
    assert "-r requirements-slides.txt" in text.splitlines()
    pins = dict(re.findall(r"^([\w.-]+)==(\S+)$", text, re.MULTILINE))
    assert "myst-nb" in pins and "sphinx-book-theme" in pins
    for name, version in pins.items():
        assert importlib.metadata.version(name) == version, name


def test_every_lesson_has_a_title_goals_and_a_run_time():
    times = course_site.run_times()
    assert set(times) == {p.stem for p in LESSONS}
    for path in LESSONS:
        nb = nbformat.read(path, as_version=4)
        assert course_site.lesson_title(nb).startswith(path.name[:2] + " · "), path.name
        assert 3 <= len(course_site.lesson_goals(nb)) <= 8, path.name


def test_anchors_become_targets_and_a_shared_anchor_is_renamed_outside_lesson_12():
    twelve = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell(
                '## 7. Size mismatch <a id="size-mismatch"></a>\nText, [see](#size-mismatch).\n'
                '## 8. X <a id="shared"></a>'
            )
        ]
    )
    other = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell(
                '## 1. Lightning <a id="shared"></a>\n[here](#shared), [there](12_troubleshooting.ipynb#shared), '
                "[entry](12_troubleshooting.ipynb#size-mismatch)"
            ),
            nbformat.v4.new_code_cell("1", metadata={"tags": ["solution"]}),
        ]
    )
    names = course_site.labels({"05_other": other, "12_troubleshooting": twelve})
    assert names[("12_troubleshooting", "shared")] == "shared" and names[("05_other", "shared")] == "shared-05"
    text = course_site.site_notebook(twelve, "12_troubleshooting", names).cells[0].source
    assert text.splitlines()[:3] == ["(size-mismatch)=", "## 7. Size mismatch", "Text, [see](#size-mismatch)."]
    staged = course_site.site_notebook(other, "05_other", names)
    assert staged.cells[0].source == (
        "(shared-05)=\n## 1. Lightning\n[here](#shared-05), "
        "[there](12_troubleshooting.ipynb#shared), "
        "[entry](12_troubleshooting.ipynb#size-mismatch)"
    )
    assert staged.cells[1].metadata["tags"] == ["solution", "hide-cell"]


# ---------------------------------------------------------------- the real site


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The site built from the committed notebooks, once for this module."""
    root = tmp_path_factory.mktemp("site")
    out = root / "site"
    assert course_site.build(out=out, work=root / "work") == 0
    return out


@pytest.fixture(scope="module")
def browser():
    needs_chromium()
    with course_site._slides().browser_session() as session:
        yield session


def test_the_site_has_every_lesson_the_licence_and_lesson_12s_anchors(built):
    names = {p.name for p in course_site.pages(built)}
    assert {f"{p.stem}.html" for p in LESSONS} | {
        "index.html",
        "doctor.html",
        "instructors.html",
        "search.html",
    } <= names
    for page in course_site.pages(built):
        assert "CC BY 4.0 for text, MIT for code" in page.read_text(encoding="utf-8"), page.name
    twelve = (built / "12_troubleshooting.html").read_text(encoding="utf-8")
    assert 'id="size-mismatch"' in twelve and 'id="lightning"' in twelve
    assert 'href="12_troubleshooting.html#size-mismatch"' in (built / "02_state_dict.html").read_text(encoding="utf-8")
    index = (built / "index.html").read_text(encoding="utf-8")
    first = course_site.run_times()[LESSONS[0].stem]  # the README's run time of lesson 01, e.g. "4.3 s"
    assert all(f'href="{p.stem}.html"' in index for p in LESSONS) and f"{first} to run" in index
    instructors = (built / "instructors.html").read_text(encoding="utf-8")
    assert "07_crash_safe_checkpoints.ipynb" in instructors and "SIGKILL" in instructors  # the README's table
    assert "copybutton.js" in index and 'class="cell tag_solution tag_hide-cell' in (
        built / "03_training_checkpoints.html"
    ).read_text(encoding="utf-8")
    assert not (built / ".doctrees").exists()


def test_every_page_passes_the_browser_check(built, browser):
    stats: dict[str, int] = {}
    report = course_site.browser_check(built, stats=stats)
    assert report == {}
    assert stats["pages"] >= 18 and stats["internal_links"] > 500 and stats["images"] >= 6


def test_the_build_fails_on_a_link_to_a_missing_anchor(tmp_path, capfd):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    for path in LESSONS:
        shutil.copy(path, folder)
    first = folder / LESSONS[0].name
    nb = nbformat.read(first, as_version=4)
    nb.cells[0].source += "\n\nSee [the entry](12_troubleshooting.ipynb#no-such-entry)."
    nbformat.write(nb, first)
    assert course_site.build(folder, tmp_path / "out", tmp_path / "work") != 0
    warnings = [line for line in capfd.readouterr().err.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "no-such-entry" in warnings[0], warnings  # that link, and nothing else


# ---------------------------------------------------------------- a broken copy


def _break(page, old: str, new: str, count: int = 1) -> None:
    text = page.read_text(encoding="utf-8")
    assert old in text, (page.name, old)
    page.write_text(text.replace(old, new, count), encoding="utf-8")


@pytest.fixture(scope="module")
def broken(built, tmp_path_factory):
    """A copy of the site with one fault per page: a link to a missing anchor and one to a missing page,
    a deleted image, an element wider than the window (the page scrolls) and one in a box that scrolls,
    a script from the network, a console error."""
    site = tmp_path_factory.mktemp("broken") / "site"
    shutil.copytree(built, site)
    _break(
        site / "02_state_dict.html",
        'href="12_troubleshooting.html#size-mismatch"',
        'href="12_troubleshooting.html#no-such-entry"',
    )
    _break(site / "doctor.html", 'href="12_troubleshooting.html"', 'href="14_no_such_lesson.html"')
    image = re.search(r'<img[^>]*src="(_images/[^"]+)"', (site / "05_evaluate_after_reload.html").read_text()).group(1)
    (site / image).unlink()
    article = '<article class="bd-article">'
    _break(site / "instructors.html", article, article + '<div style="width: 1500px">a wide table</div>')
    _break(
        site / "09_partial_and_transfer.html",
        article,
        article + '<div style="overflow-x: auto"><div style="width: 1500px">a wide table</div></div>',
    )
    _break(site / "index.html", "</head>", '<script src="https://example.org/tracker.js"></script></head>')
    _break(site / "search.html", "</head>", "<script>console.error('boom')</script></head>")
    return site, image


def test_the_browser_check_fails_on_each_broken_page(broken, browser):
    site, image = broken
    only = [
        "02_state_dict.html",
        "doctor.html",
        "05_evaluate_after_reload.html",
        "instructors.html",
        "09_partial_and_transfer.html",
        "index.html",
        "search.html",
        "01_whole_model.html",
    ]
    report = course_site.browser_check(site, only=only)
    found = {page: " | ".join(problems) for page, problems in report.items()}
    assert "broken link (missing anchor): 12_troubleshooting.html#no-such-entry" in found["02_state_dict.html"]
    assert "broken link (missing page): 14_no_such_lesson.html" in found["doctor.html"]
    assert f"image does not load: {image}" in found["05_evaluate_after_reload.html"]
    assert re.search(
        r"desktop 1280 px: scrolls sideways: 1\d\d\d px wide in a 1280 px window", found["instructors.html"]
    )
    assert re.search(r"phone 390 px: scrolls sideways: 1\d\d\d px wide in a 390 px window", found["instructors.html"])
    assert re.search(
        r"phone 390 px: scrolls sideways inside div \(1500 px in \d+\)", found["09_partial_and_transfer.html"]
    )
    assert "failed request: https://example.org/tracker.js" in found["index.html"]
    assert "console error: boom" in found["search.html"]
    assert "01_whole_model.html" not in found  # the page left alone passes


def test_the_search_and_solution_checks_fail_when_broken(broken, browser):
    site, _ = broken
    (site / "searchindex.js").write_text(
        "Search.setIndex({docnames: [], filenames: [], titles: [], terms: {}, "
        "titleterms: {}, objects: {}, objnames: {}, objtypes: {}, envversion: {}, "
        "indexentries: {}, alltitles: {}})"
    )
    page03 = site / f"{course_site.SOLUTION_PAGE}.html"
    _break(
        page03,
        '<details class="admonition hide above-input">',
        '<details open class="admonition hide above-input">',
        count=-1,
    )
    events: list[str] = []
    page = course_site._slides()._offline_page(browser, course_site.VIEWPORTS["desktop"], events)
    try:
        search = course_site.check_search(page, site, events)
        solution = course_site.check_solution(page, site, events)
    finally:
        page.close()
    assert any("'map_location' does not find 04_devices_map_location" in p for p in search), search
    assert any("'weights_only' does not find 06_safe_loading" in p for p in search), search
    assert any("a solution is shown before it is clicked" in p for p in solution), solution
