"""Where the course keeps its shipped data and the files the notebooks write.

Every file a notebook writes goes under one git-ignored folder,
``artifacts/`` at the top of the repository, one sub-folder per lesson.
Printed paths are shown relative to the repository, so notebook outputs do not
depend on where the course was cloned.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["REPO_ROOT", "DATA_DIR", "ARTIFACTS_DIR", "artifact_dir", "display_path"]


def _find_repo_root() -> Path:
    """The course's top folder: the one holding ``helper/`` and ``notebooks/``.

    ``helper`` is installed in editable mode, so its source lies in the
    repository itself. ``COURSE_ROOT`` overrides the guess.
    """
    if "COURSE_ROOT" in os.environ:
        return Path(os.environ["COURSE_ROOT"]).resolve()
    here = Path(__file__).resolve().parent.parent
    if (here / "notebooks").is_dir():
        return here
    return Path.cwd().resolve()


REPO_ROOT: Path = _find_repo_root()
DATA_DIR: Path = REPO_ROOT / "data"
ARTIFACTS_DIR: Path = REPO_ROOT / "artifacts"


def artifact_dir(lesson: str, *, clean: bool = True) -> Path:
    """Return ``artifacts/<lesson>/``, created empty (``clean=True``) or reused.

    Starting from an empty folder makes a notebook re-runnable from the top:
    listings of the folder print the same thing on every run.
    """
    if not lesson or Path(lesson).name != lesson:
        raise ValueError(f"lesson must be a plain folder name, got {lesson!r}")
    path = ARTIFACTS_DIR / lesson
    if clean and path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def display_path(path: str | os.PathLike[str], *, full_outside: bool = False) -> str:
    """``path`` relative to the repository (POSIX style) when it lies inside it; the one path renderer.

    Outside the repository: the file's name only (a notebook's stored output must not show a
    machine's folders), or with ``full_outside=True`` the absolute path as given, symlinks not
    followed (an error message or a doctor's report: the reader must be able to find the file).
    """
    p = Path(path).absolute() if full_outside else Path(path).resolve()
    try:
        return p.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return str(p) if full_outside else p.name
