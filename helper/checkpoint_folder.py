"""A run's checkpoints in one folder: the last K, the best by a metric, resume from the newest good one.

Taught in notebooks/07_crash_safe_checkpoints.ipynb, section 6 (resume from the newest good checkpoint).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from helper.atomic_save import _FAULT_FIX, _atomic_write, _err, _lock, save_checkpoint
from helper.formats import CheckpointError
from helper.paths import display_path

__all__ = ["CheckpointFolder", "Resumed", "CheckpointFallback"]

Checkpoint = dict[str, Any]


class CheckpointFallback(UserWarning):
    """``CheckpointFolder.resume`` skipped a damaged checkpoint and used an older one."""


class Resumed(NamedTuple):
    """What ``CheckpointFolder.resume`` found: the checkpoint, its file, and the files it skipped (with why)."""

    checkpoint: Checkpoint
    path: Path
    skipped: list[tuple[Path, str]]


@contextlib.contextmanager
def _locked(lock_file: Path):
    """Hold an exclusive advisory lock on ``lock_file`` (created if needed) for the ``with`` block."""
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        _lock(fd)
        yield
    finally:
        os.close(fd)


_PROCESS = secrets.token_hex(8)  # this process: a CheckpointFolder it replaced (a cell run again) was its own run


def _folder_error(path: Path, exc: OSError, doing: str) -> CheckpointError:
    """A ``CheckpointError`` for an ``OSError`` from the folder (read-only, full, no permission...)."""
    name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    fix = _FAULT_FIX.get(exc.errno or 0, "check the disk and the folder {folder}, then try again")
    return _err(
        path,
        f"{doing}: {exc.strerror or exc} ({name})",
        fix.format(folder=path, target=path / "last.pt"),
        kind="folder",
    )


@dataclass
class CheckpointFolder:
    """A run's checkpoints in one folder: keep the last ``keep_last`` and the best by a metric.

    ``save(checkpoint, metric=...)`` writes ``epoch-0007.pt`` (named by
    ``checkpoint["epoch"]``) crash-safely, then the ``latest.json`` pointer
    (only once the file it names is durable), then removes this run's files
    older than the last ``keep_last`` (by epoch number, not by name: 10000
    comes after 9999) and any numbered higher (left by a run that was resumed
    from an older file), never the best (lowest ``metric`` when ``mode="min"``,
    highest when ``"max"``). Saves take a folder lock and re-read the pointer;
    each run holds a lock of its own while it lives, so two runs saving into one
    folder never delete each other's files. A run that ended (killed, crashed)
    keeps its files until its own next save, that is a run that ``resume()``-d
    from one of its files (or a ``CheckpointFolder`` that replaced it in the
    same process, as when a notebook cell runs again) takes them over, or until
    ``cleanup()`` removes them. ``resume()`` loads the newest file (by
    modification time) that passes every check, even where the pointer write
    failed, and warns (``CheckpointFallback``) about each newer one it had to
    skip. Every ``OSError`` of the folder is a ``CheckpointError``.
    """

    folder: Path
    keep_last: int = 3
    mode: str = "min"
    prefix: str = "epoch"
    _index: dict[str, Any] = field(default_factory=dict, repr=False)

    POINTER = "latest.json"

    def __post_init__(self) -> None:
        self.folder = Path(self.folder).absolute()
        if self.keep_last < 1 or self.mode not in ("min", "max"):
            raise ValueError("keep_last must be >= 1 and mode 'min' or 'max'")
        self._pattern = re.compile(rf"^{re.escape(self.prefix)}-(\d+)\.pt$")
        self.run = secrets.token_hex(6)
        self._run_fd: int | None = None
        self._continues: set[str] = set()  # runs (ended) this one resumed from: it takes their files over
        self._index = self._read_pointer()

    def path_for(self, number: int) -> Path:
        return self.folder / f"{self.prefix}-{number:04d}.pt"

    def _number(self, path: Path | str) -> int:
        """The epoch number in a checkpoint file's name (the caller matched the name already)."""
        match = self._pattern.fullmatch(Path(path).name)
        assert match is not None, path
        return int(match.group(1))

    def checkpoints(self) -> list[Path]:
        """The checkpoint files in the folder, oldest first (by the number in their name)."""
        try:
            if not self.folder.is_dir():
                return []
            found = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := self._pattern.match(p.name))]
        except OSError as exc:
            raise _folder_error(self.folder, exc, "cannot list the checkpoint folder") from None
        return [p for _, p in sorted(found)]

    def _read_pointer(self) -> dict[str, Any]:
        """The pointer file, keeping only entries that name this folder's own checkpoint files.

        A copied or downloaded folder's pointer is untrusted: a name such as
        ``../../notes.txt`` or an absolute path would let ``cleanup()`` delete, or
        ``latest`` point at, a file outside the folder, so such entries are dropped.
        """
        try:
            index = json.loads((self.folder / self.POINTER).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(index, dict):
            return {}
        own = self._own_name
        files, runs = index.get("files"), index.get("runs")
        index["files"] = {n: r for n, r in files.items() if own(n)} if isinstance(files, dict) else {}
        index["runs"] = {r: e for r, e in runs.items() if isinstance(e, dict)} if isinstance(runs, dict) else {}
        for entry in index["runs"].values():
            if not own(entry.get("latest")):
                entry.pop("latest", None)
            if not (isinstance(entry.get("best"), dict) and own(entry["best"].get("file"))):
                entry.pop("best", None)
        if not own(index.get("latest")):
            index.pop("latest", None)
        return index

    def _own_name(self, name: object) -> bool:
        """Whether ``name`` is a plain file name of this folder's checkpoints (``prefix-NNNN.pt``)."""
        return isinstance(name, str) and self._pattern.fullmatch(name) is not None

    def _mine(self) -> dict[str, Any]:
        """This run's entry, or (before its first save) that of the run that saved last."""
        runs = self._index.get("runs", {})
        return runs.get(self.run) or runs.get(self._index.get("files", {}).get(self._index.get("latest")), {})

    @property
    def latest(self) -> Path | None:
        """The file this run saved last (before its first save: the folder's newest; ``None`` if none)."""
        name = self._mine().get("latest")
        return None if name is None else self.folder / name

    @property
    def best(self) -> Path | None:
        name = (self._mine().get("best") or {}).get("file")
        return None if name is None else self.folder / name

    def _alive(self, run: str) -> bool:
        """Does run ``run`` still hold its lock? (A dead run's lock file is removed.)"""
        if run == self.run:
            return True
        lock = self.folder / f".run-{run}.lock"
        try:
            fd = os.open(lock, os.O_RDONLY)
        except OSError:
            return False
        try:
            if not _lock(fd, block=False):
                return True
            with contextlib.suppress(OSError):  # a read-only folder: the lock file stays, the run is still over
                lock.unlink(missing_ok=True)
            return False
        finally:
            os.close(fd)

    def _adopt(self, index: dict[str, Any]) -> dict[str, Any]:
        """Take over the files and best of the runs this one continues: those it resumed from, and those this
        process ran before (a cell run again), once they have ended. Other runs' files are left alone."""
        runs = index.setdefault("runs", {})
        owners = index.setdefault("files", {})
        mine = runs.setdefault(self.run, {})
        mine["process"] = _PROCESS
        for run in [
            r
            for r in runs
            if r != self.run and (r in self._continues or runs[r].get("process") == _PROCESS) and not self._alive(r)
        ]:
            dead = runs.pop(run)
            best = dead.get("best")
            if best and (self.folder / best["file"]).exists() and self._better(mine.get("best"), best["metric"]):
                mine["best"] = best
            for name in [n for n, r in owners.items() if r == run]:
                owners[name] = self.run
        for name in self._continues & {p.name for p in self.checkpoints()}:  # a file no run claims, resumed from
            owners.setdefault(name, self.run)
        return index

    def _better(self, best: dict[str, Any] | None, metric: float) -> bool:
        if best is None:
            return True
        return metric < best["metric"] if self.mode == "min" else metric > best["metric"]

    def save(self, checkpoint: Checkpoint, *, metric: float | None = None, number: int | None = None) -> Path:
        """Save ``checkpoint`` as ``<prefix>-<number>.pt`` (number: ``checkpoint["epoch"]``), update, rotate."""
        number = int(checkpoint["epoch"] if number is None else number)
        target = self.path_for(number)
        try:
            return self._save(checkpoint, metric, number, target)
        except OSError as exc:
            raise _folder_error(self.folder, exc, f"not saved: {target.name}") from None

    def _save(self, checkpoint: Checkpoint, metric: float | None, number: int, target: Path) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self._run_fd is None:  # held until this object is garbage-collected or the process ends
            self._run_fd = os.open(self.folder / f".run-{self.run}.lock", os.O_RDWR | os.O_CREAT, 0o666)
            _lock(self._run_fd)
            weakref.finalize(self, os.close, self._run_fd)  # a cell run again: the old run is over
        with _locked(self.folder / ".lock"):
            index = self._adopt(self._read_pointer())
            owner = index["files"].get(target.name, self.run)
            if owner != self.run and target.exists():
                if self._alive(owner):
                    raise _err(
                        target,
                        f"not saved: another run (id {owner}) is writing into this folder and owns this file",
                        "give each run its own folder or prefix",
                        kind="folder",
                    )
                raise _err(
                    target,
                    f"not saved: this file belongs to run {owner}, which ended (killed or crashed) "
                    "and which this run did not resume",
                    "resume() from its checkpoints to continue that run, or remove its files with cleanup()",
                    kind="folder",
                )
            path = save_checkpoint(checkpoint, target)  # durable before anything points at it
            mine, owners = index["runs"][self.run], index["files"]
            owners[path.name] = self.run
            ours = [p for p in self.checkpoints() if owners.get(p.name) == self.run]
            abandoned = [p for p in ours if self._number(p) > number]  # a run resumed from an older file
            if mine.get("best") and mine["best"]["file"] in {p.name for p in abandoned}:
                del mine["best"]
            if metric is not None and self._better(mine.get("best"), float(metric)):
                mine["best"] = {"file": path.name, "metric": float(metric)}
            mine["latest"] = index["latest"] = path.name
            kept = sorted((p for p in ours if p not in abandoned), key=self._number)[-self.keep_last :]
            keep = {p.name for p in kept} | {path.name, (mine.get("best") or {}).get("file")}
            for old in ours:
                if old.name not in keep:
                    owners.pop(old.name, None)
            text = json.dumps(index, indent=1, sort_keys=True).encode()
            _atomic_write(self.folder / self.POINTER, lambda f: f.write(text))
            self._index = index
            self._continues.clear()
            for old in ours:
                if old.name not in keep:
                    old.unlink(missing_ok=True)
        return path

    def cleanup(self) -> list[Path]:
        """Remove the checkpoints of every run that has ended (and of none that lives); return what was removed.

        Files no run claims (the pointer was lost, or the folder was copied) are left alone.
        """
        removed: list[Path] = []
        try:
            if not self.folder.is_dir():
                return removed
            with _locked(self.folder / ".lock"):
                index = self._read_pointer()
                runs, owners = index.setdefault("runs", {}), index.setdefault("files", {})
                dead = {r for r in runs if r != self.run and not self._alive(r)}
                for name in sorted(n for n, r in owners.items() if r in dead):
                    path = self.folder / name
                    if path.exists():
                        path.unlink()
                        removed.append(path)
                    del owners[name]
                for run in dead:
                    del runs[run]
                if index.get("latest") not in owners:
                    index.pop("latest", None)
                text = json.dumps(index, indent=1, sort_keys=True).encode()
                _atomic_write(self.folder / self.POINTER, lambda f: f.write(text))
                self._index = index
        except OSError as exc:
            raise _folder_error(self.folder, exc, "not cleaned up") from None
        return removed

    def resume(self, *, map_location: Any = "cpu") -> Resumed | None:
        """The newest checkpoint that loads and passes every check, or ``None`` if the folder holds none.

        Tries the files newest first (by modification time, then number), so a
        checkpoint saved just before a failed pointer write is not skipped.
        Each skipped file is reported with a ``CheckpointFallback`` warning;
        if every file fails, raises ``CheckpointError`` listing them all.
        """

        def age(p: Path) -> tuple[int, int]:
            try:
                return p.stat().st_mtime_ns, self._number(p)
            except OSError:
                return 0, self._number(p)

        from helper.checkpoint import load_checkpoint  # here: helper.checkpoint imports this module

        files = sorted(self.checkpoints(), key=age, reverse=True)
        if not files:
            return None
        skipped: list[tuple[Path, str]] = []
        for path in files:
            try:
                checkpoint = load_checkpoint(path, map_location=map_location)
            except CheckpointError as exc:
                skipped.append((path, exc.cause))
                continue
            shown = display_path(path, full_outside=True)
            for bad, why in skipped:
                warnings.warn(
                    f"skipped {display_path(bad, full_outside=True)} ({why}); resuming from {shown}",
                    CheckpointFallback,
                    stacklevel=2,
                )
            owner = self._read_pointer().get("files", {}).get(path.name)
            self._continues.add(path.name if owner is None else owner)  # its next save takes that run's files over
            return Resumed(checkpoint, path, skipped)
        listing = "; ".join(f"{p.name}: {why}" for p, why in skipped)
        raise _err(
            self.folder,
            f"no checkpoint in this folder loads ({listing})",
            "start the run again, or restore the folder from a backup",
            kind="folder",
        )
