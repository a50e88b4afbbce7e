"""Lesson 12 indexes every error message the course shows.

Read at test time from the notebooks as stored: every error output of a cell tagged
``raises-exception`` in any lesson must have a twin in lesson 12, a raising cell with the same
exception name and the same message once the parts that name *this* run are normalised
(paths, numbers, addresses, quoted names, lists). The rule is line by line: the first line must be
equal, and every other line of the lesson's message must appear in the twin's message. So
"Error(s) in loading state_dict" with a ``size mismatch`` line is not covered by an entry that
shows only ``Missing key(s)`` lines, and "Unsupported global" is not covered by "Unsupported
operand". Messages a lesson raises itself (a ``raise`` or an ``assert``'s message written in
its own code, or in ``helper``) are the course's own checks, not errors a student meets
elsewhere: they need no entry.

It also checks the anchors: every entry heading carries one on its line, the contents table
links every one, and every link into lesson 12 from any notebook or the README resolves.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
INDEX = NOTEBOOK_DIR / "12_troubleshooting.ipynb"
RAISES = "raises-exception"

# Applied in order to each line of a message. Everything replaced names this run (a path, a key,
# a shape, a count), not the kind of error.
NORMALISE = [
    (re.compile(r"\x1b\[[0-9;]*m"), ""),  # ANSI colours
    (re.compile(r"0x[0-9a-fA-F]+"), "<addr>"),
    (re.compile(r"https?://\S+"), "<url>"),
    (re.compile(r"(?<!\w)'[^'\n]*'|\"[^\"\n]*\"|`[^`\n]*`"), "<q>"),  # quoted (not can't)
    (re.compile(r"(?:\.{0,2}/)?(?:[\w.-]+/)+[\w.-]*"), "<path>"),  # unquoted paths
    (re.compile(r"\bGLOBAL [\w.]+"), "GLOBAL <name>"),  # the global a pickle names
    (re.compile(r"\b\w+(?:\.\w+)+"), "<name>"),  # dotted names: modules, keys, versions
    (re.compile(r"(?<!Errno )(?<![\w<])\d+(?:\.\d+)?"), "<n>"),  # numbers, not errno codes
    (re.compile(r"\[(?!Errno )[^\[\]]*\]"), "<list>"),  # not "[Errno 22]"
    (re.compile(r"\([^()]*\)"), "(...)"),
    (re.compile(r"\{[^{}]*\}"), "<set>"),
    (re.compile(r"<(q|n|name|path|list|set)>(?:\s*,\s*<\1>)+"), r"<\1>"),  # a list of them: one
    (re.compile(r"\bfor [A-Z]\w*:"), "for <Model>:"),  # "Error(s) in loading state_dict for MLP:"
    (re.compile(r"\s+"), " "),
]


def normalise(line: str) -> str:
    """One line of a message with what names this run replaced by placeholders."""
    for pattern, replacement in NORMALISE:
        line = pattern.sub(replacement, line)
    return line.strip(" .")


@dataclass(frozen=True)
class Shown:
    """One error output of a raising cell."""

    notebook: str
    cell: int
    ename: str
    evalue: str

    @property
    def lines(self) -> list[str]:
        """The message's non-empty lines, normalised (at least one, maybe empty)."""
        lines = [normalise(line) for line in self.evalue.splitlines()]
        return [line for line in lines if line] or [""]

    def covered_by(self, other: Shown) -> bool:
        """Same exception, same first line, and every line of this message in the other's."""
        mine, theirs = self.lines, other.lines
        return self.ename == other.ename and mine[0] == theirs[0] and set(mine) <= set(theirs)

    def __str__(self) -> str:
        first = self.evalue.strip().splitlines()[0] if self.evalue.strip() else ""
        return f"{self.notebook} cell {self.cell}: {self.ename}: {first[:100]}"


def read(path: Path) -> nbformat.NotebookNode:
    """A notebook as stored, not validated (fast)."""
    return nbformat.reads(path.read_text(encoding="utf-8"), as_version=4, capture_validation_error={})


def shown_errors(path: Path) -> list[Shown]:
    """Every error stored by a cell tagged raises-exception."""
    nb = read(path)
    return [
        Shown(path.name, i, out["ename"], out["evalue"])
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and RAISES in cell.metadata.get("tags", [])
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]


def python_sources(path: Path) -> list[str]:
    """The code of a notebook's cells (IPython magics and shell lines dropped), or of a module."""
    if path.suffix == ".py":
        return [path.read_text(encoding="utf-8")]
    nb = read(path)
    return [
        "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in cell.source.splitlines())
        for cell in nb.cells
        if cell.cell_type == "code"
    ]


def own_messages(sources: list[str]) -> set[str]:
    """Strings of 12 characters or more inside a ``raise`` or an ``assert``'s message.

    Only the message of an assert counts, never its test: ``assert "size mismatch" in str(err)``
    checks a PyTorch message, it does not write one.
    """
    found: set[str] = set()
    for source in sources:
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            part = node.exc if isinstance(node, ast.Raise) else node.msg if isinstance(node, ast.Assert) else None
            if part is None:
                continue
            for sub in ast.walk(part):
                if isinstance(sub, ast.Constant) and isinstance(sub.value, str) and len(sub.value.strip()) >= 12:
                    found.add(sub.value.strip())
    return found


def is_own(error: Shown, messages: set[str]) -> bool:
    """The course raised this message itself."""
    return any(message in error.evalue for message in messages)


def uncovered(lessons: list[Path], index: Path, helper_dir: Path = ROOT / "helper") -> list[Shown]:
    """The errors the lessons show that the index lacks, the course's own messages left out."""
    entries = shown_errors(index)
    helper_messages = own_messages([s for p in sorted(helper_dir.glob("*.py")) for s in python_sources(p)])
    missing = []
    for lesson in lessons:
        messages = own_messages(python_sources(lesson)) | helper_messages
        for error in shown_errors(lesson):
            if not is_own(error, messages) and not any(error.covered_by(e) for e in entries):
                missing.append(error)
    return missing


def lessons() -> list[Path]:
    return [p for p in sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb")) if p != INDEX]


# ---- the index covers the course -------------------------------------------------------------


@pytest.mark.parametrize("lesson", lessons(), ids=lambda p: p.name[:2])
def test_lesson_12_has_an_entry_for_every_error_this_lesson_shows(lesson):
    missing = uncovered([lesson], INDEX)
    assert not missing, "lesson 12 has no raising cell with this message:\n" + "\n".join(map(str, missing))


def test_every_raising_cell_of_lesson_12_stores_its_error():
    nb = read(INDEX)
    raising = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and RAISES in c.metadata.get("tags", [])]
    with_error = sorted({e.cell for e in shown_errors(INDEX)})
    assert raising == with_error and len(raising) >= 20


# ---- the rule fails where it must --------------------------------------------------------------


def fake_notebook(path: Path, errors: list[tuple[str, str]], code: str = "pass") -> Path:
    """A notebook with one raising cell per (ename, evalue), each running ``code``."""
    nb = nbformat.v4.new_notebook()
    for ename, evalue in errors:
        cell = nbformat.v4.new_code_cell(code)
        cell.metadata["tags"] = [RAISES]
        cell.outputs = [nbformat.v4.new_output("error", ename=ename, evalue=evalue, traceback=[])]
        nb.cells.append(cell)
    nbformat.write(nb, path)
    return path


def test_a_notebook_with_an_error_lesson_12_lacks_fails(tmp_path):
    absent = [
        ("ZeroDivisionError", "division by zero"),
        ("OSError", "[Errno 28] No space left on device"),  # lesson 12 has Errno 22, not 28
        ("RuntimeError", "PytorchStreamReader failed reading file data/0: invalid header"),
    ]
    fake = fake_notebook(tmp_path / "99_fake.ipynb", absent)
    assert [e.evalue for e in uncovered([fake], INDEX)] == [evalue for _, evalue in absent]


def test_the_same_messages_from_another_run_are_covered(tmp_path):
    present = [  # lesson 12's messages with other paths, names, numbers and keys
        ("IsADirectoryError", "[Errno 21] Is a directory: '../artifacts/13_other/step_100'"),
        (
            "RuntimeError",
            "Error(s) in loading state_dict for ResNet:\n\tMissing key(s) in state_dict: "
            '"fc.weight", "fc.bias". \n\tUnexpected key(s) in state_dict: "head.weight". ',
        ),
        (
            "RuntimeError",
            "Error(s) in loading state_dict for ResNet:\n\tsize mismatch for fc.weight: copying "
            "a param with shape torch.Size([10, 512]) from checkpoint, the shape in current model is "
            "torch.Size([100, 512]).",
        ),
        ("AttributeError", "Can't get attribute 'TinyNet' on <module '__main__'>"),
    ]
    fake = fake_notebook(tmp_path / "99_fake.ipynb", present)
    assert uncovered([fake], INDEX) == []


def test_same_name_and_first_line_but_another_kind_of_line_is_not_covered():
    missing_keys = Shown(
        "a",
        0,
        "RuntimeError",
        "Error(s) in loading state_dict for MLP:\n\tMissing key(s) "
        'in state_dict: "1.weight". \n\tUnexpected key(s) in state_dict: "2.weight". ',
    )
    size = Shown(
        "b",
        0,
        "RuntimeError",
        "Error(s) in loading state_dict for SmallCNN:\n\tsize mismatch for "
        "x.weight: copying a param with shape torch.Size([2]) from checkpoint, the shape in "
        "current model is torch.Size([3]).",
    )
    refused = Shown(
        "c",
        0,
        "UnpicklingError",
        "Weights only load failed. This file can still be loaded\n"
        "\tWeightsUnpickler error: Unsupported global: GLOBAL print was not an allowed global",
    )
    operand = Shown(
        "d",
        0,
        "UnpicklingError",
        "Weights only load failed. This file can still be loaded\n\tWeightsUnpickler error: Unsupported operand 118",
    )
    assert not size.covered_by(missing_keys) and not missing_keys.covered_by(size)
    assert not operand.covered_by(refused) and not refused.covered_by(operand)
    assert not Shown("e", 0, "OSError", "[Errno 2] No such file").covered_by(
        Shown("f", 0, "OSError", "[Errno 22] No such file")
    )
    assert not Shown("g", 0, "ValueError", "loaded state dict").covered_by(
        Shown("h", 0, "RuntimeError", "loaded state dict")
    )


def test_only_a_message_the_course_writes_is_its_own(tmp_path):
    own = "raise RuntimeError(f'{path} needs {n}; if you trust it, allowlist data classes only')"
    fake = fake_notebook(
        tmp_path / "98_own.ipynb",
        [("RuntimeError", "a.pt needs 3; if you trust it, allowlist data classes only")],
        code=own,
    )
    assert uncovered([fake], INDEX) == []
    checks_torch = "assert 'Expected all tensors on one device' in str(err), 'the cell must fail'"
    fake = fake_notebook(
        tmp_path / "97_check.ipynb", [("RuntimeError", "Expected all tensors on one device")], code=checks_torch
    )
    assert len(uncovered([fake], INDEX)) == 1


# ---- anchors ---------------------------------------------------------------------------------

ANCHOR = re.compile(r'<a id="([\w-]+)"></a>')
LINK = re.compile(r"12_troubleshooting\.ipynb#([\w-]+)")


def index_markdown() -> list[str]:
    return [c.source for c in read(INDEX).cells if c.cell_type == "markdown"]


def test_every_entry_heading_carries_its_anchor_and_the_contents_link_every_one():
    anchors, in_page = [], set()
    for source in index_markdown():
        for i, line in enumerate(source.splitlines()):
            found = ANCHOR.findall(line)
            if found:
                assert i == 0 and line.startswith("## ") and line.endswith("</a>"), f"anchor off its heading: {line}"
                anchors += found
        in_page |= set(re.findall(r"\]\(#([\w-]+)\)", source))
    assert len(anchors) == len(set(anchors)) >= 20
    assert in_page == set(anchors), f"contents lacks {set(anchors) - in_page}, links nowhere {in_page - set(anchors)}"


def test_every_link_into_lesson_12_resolves():
    anchors = {a for source in index_markdown() for a in ANCHOR.findall(source)}
    files = [*sorted(NOTEBOOK_DIR.glob("*.ipynb")), ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = [
        f"{p.name}#{a}"
        for p in files
        if p.exists()
        for a in LINK.findall(p.read_text(encoding="utf-8"))
        if a not in anchors
    ]
    assert not broken, broken
