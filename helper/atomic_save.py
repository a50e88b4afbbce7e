"""Crash-safe saving: a locked temporary file, fsync, a check that it loads, ``os.replace``, fsync of the folder.

Taught in notebooks/07_crash_safe_checkpoints.ipynb, sections 3 and 4 (the save by hand, then
``save_checkpoint``); what may go into a checkpoint in notebooks/03_training_checkpoints.ipynb, section 7.

The bytes go to a temporary file in the target's folder (locked with ``flock`` while it exists, so a
later save removes only the leftovers of writers that are gone), are flushed and ``fsync``-ed, the
file is checked to load with ``weights_only=True``, it is renamed over the target with ``os.replace``,
and the folder is ``fsync``-ed so the rename itself survives a power cut. A save that fails or is
killed at any moment leaves the previous file intact; a full or read-only disk is a
``CheckpointError`` naming the errno and the fix. ``save_checkpoint`` also adds the digest record
(``helper.digest_record``).
"""

from __future__ import annotations

import collections
import errno
import os
import pickle
import re
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from helper.digest_record import append_digests
from helper.formats import CheckpointError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["save_checkpoint", "find_unsafe_values", "remove_stale_temp_files", "fsync_folder"]

Checkpoint = dict[str, Any]
PathLike = str | os.PathLike[str]


def _err(path: PathLike | None, cause: str, fix: str, *, kind: str | None) -> CheckpointError:
    """A ``CheckpointError`` with its ``kind`` code (``helper.formats``' class takes no ``kind`` argument)."""
    error = CheckpointError(path, cause, fix)
    error.kind = kind or "error"
    return error


# --------------------------------------------------------------------------------------------------
# What may go into a checkpoint (checked at save time, with the key path of the offending value)

_SAFE_LEAVES = (
    str,
    bytes,
    bytearray,
    int,
    float,
    bool,
    complex,
    type(None),
    torch.Size,
    torch.dtype,
    torch.device,
    torch.layout,
)
_CONTAINERS = (dict, list, tuple, set)
_ADVICE = {
    "argparse.Namespace": "store vars(args), a plain dict",
    "numpy.ndarray": "store torch.from_numpy(array) or array.tolist()",
    "numpy": "store int(x) / float(x) or a tensor",
    "collections.defaultdict": "store dict(d)",
    "tuple": "store tuple(x) or x._asdict() (a namedtuple pickles its class)",
    "module": "store model.state_dict() and the config that rebuilds the model",
}


def _type_name(value: Any) -> str:
    kind = type(value)
    return f"{kind.__module__}.{kind.__qualname__}" if kind.__module__ != "builtins" else kind.__qualname__


def _user_safe(value: Any) -> bool:
    return type(value) in torch.serialization.get_safe_globals()


def find_unsafe_values(obj: Any, path: str = "checkpoint") -> list[tuple[str, str]]:
    """``(key path, type)`` of every value in ``obj`` that ``torch.load(weights_only=True)`` refuses.

    Walks dicts, lists, tuples and sets; tensors, numbers, strings, bytes,
    ``torch.Size``/``dtype``/``device`` and types added with
    ``torch.serialization.add_safe_globals`` pass. Subclasses do not (a
    namedtuple, a defaultdict or an IntEnum pickles its class by name).
    """
    return [(where, _type_name(value)) for where, value in _unsafe(obj, path)]


def _unsafe(obj: Any, path: str) -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []
    stack = [(path, obj)]
    while stack:
        where, value = stack.pop()
        kind = type(value)
        if isinstance(value, torch.Tensor):
            if kind not in (torch.Tensor, nn.Parameter) and not _user_safe(value):
                found.append((where, value))
        elif kind in _SAFE_LEAVES:
            continue
        elif kind in (dict, collections.OrderedDict):
            stack.extend((f"{where}[{k!r}]", v) for k, v in reversed(list(value.items())))
            stack.extend((f"{where} (a key)", k) for k in value if type(k) not in (str, int))
        elif kind in (list, tuple):
            stack.extend((f"{where}[{i}]", v) for i, v in reversed(list(enumerate(value))))
        elif kind is set:
            stack.extend((f"{where} (a set item)", v) for v in value)
        elif not _user_safe(value):
            found.append((where, value))
    return found


def _advice(type_name: str, value_is_module: bool = False) -> str:
    if value_is_module:
        return _ADVICE["module"]
    for key in (type_name, type_name.split(".")[0]):
        if key in _ADVICE:
            return _ADVICE[key]
    return "store tensors and plain data (dict, list, tuple, str, int, float) only"


# --------------------------------------------------------------------------------------------------
# Crash-safe writing. A writer holds an advisory lock (flock) on its temporary file for as long as the
# file exists; a cleaner removes only temporary files whose lock it can take, so a live writer in any
# process, PID namespace or host sharing the folder keeps its file, and PID reuse cannot fool it.

_TEMP = re.compile(r"^\..+\.[0-9a-f]{16}\.tmp$")
_FAULT_FIX = {
    errno.ENOSPC: "free space on the disk that holds {folder}, or save somewhere else",
    errno.EDQUOT: "your disk quota is used up: free space in {folder}, or save somewhere else",
    errno.EROFS: "{folder} is on a read-only file system: save to a writable folder",
    errno.EACCES: "you may not write to {folder}: fix its permissions, or save somewhere else",
    errno.EPERM: "you may not write to {folder}: fix its permissions, or save somewhere else",
    errno.EISDIR: "the target is a folder: pass a file path such as {target}/last.pt",
}


def _lock(fd: int, block: bool = True) -> bool:
    """Take an exclusive advisory lock on ``fd``; ``False`` if another holder has it (and ``block`` is off)."""
    if fcntl is None:  # Windows: no flock; temp files of others are then never removed
        return block
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
        return True
    except BlockingIOError:
        return False


def _create_temp(target: Path) -> tuple[Path, int]:
    """A new locked temporary file next to ``target`` (retried if a cleaner removed it before the lock)."""
    while True:
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)  # read too: save_checkpoint appends a record
        _lock(fd)
        try:
            if os.stat(tmp).st_ino == os.fstat(fd).st_ino:
                return tmp, fd
        except FileNotFoundError:
            pass
        os.close(fd)


def remove_stale_temp_files(folder: PathLike) -> list[Path]:
    """Remove the temporary files that killed saves left in ``folder``; return what was removed.

    Only files named the way ``save_checkpoint`` names them, and only those
    whose advisory lock can be taken (the writer is gone: killed, crashed, on
    any host or in any container), are removed.
    """
    removed: list[Path] = []
    folder = Path(folder)
    if fcntl is None or not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        if not _TEMP.match(entry.name):
            continue
        try:
            fd = os.open(entry, os.O_RDONLY)
        except OSError:
            continue  # gone already, or not ours to read
        try:
            if _lock(fd, block=False) and os.stat(entry).st_ino == os.fstat(fd).st_ino:
                entry.unlink()
                removed.append(entry)
        except OSError:
            pass
        finally:
            os.close(fd)
    return sorted(removed)


def fsync_folder(folder: PathLike) -> None:
    """Make a rename or a new file in ``folder`` durable (a no-op where folders cannot be fsync-ed)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # Windows: folders cannot be opened; NTFS journals the rename itself
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _os_error(exc: BaseException | None) -> OSError | None:
    """The ``OSError`` behind ``exc`` (torch.save wraps a failed write in a RuntimeError)."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno:
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


_HOLD_ABOVE = 1 << 24  # bytes: a file this big that a save replaces is handled as below


def _hold_previous(path: Path) -> int | None:
    """An open descriptor of the big file this save will replace (its cached pages dropped), or ``None``.

    Replacing a big file costs twice: its cached pages stay in memory while the new file is written
    (on a VM that returns idle memory to its host the write then slows several-fold), and dropping its
    last reference frees its blocks inside ``os.replace``. ``posix_fadvise(DONTNEED)`` drops the old
    pages first (the old file on disk is untouched), as the truncate in ``open(path, "wb")`` does for
    ``torch.save``; holding this descriptor moves the freeing to its ``close``, which ``_release_later``
    does in a thread once the new file is durable. Figures: the README's "Benchmarks" section.

    POSIX only (on Windows an open file cannot be replaced).
    """
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None  # no previous file (or not ours to read): nothing to hold
    try:
        if os.fstat(fd).st_size >= _HOLD_ABOVE:
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def _release_later(fd: int | None) -> None:
    """Close ``fd`` in a background thread: the kernel frees the replaced file's blocks off the caller's path."""
    if fd is not None:
        threading.Thread(target=os.close, args=(fd,), name="free-replaced-checkpoint", daemon=True).start()


def _atomic_write(path: Path, write: Callable[[Any], None], check: Callable[[Path], None] | None = None) -> Path:
    """Write through a locked temporary file in ``path``'s folder: write, fsync, check, replace, fsync folder.

    A failure of the disk (full, read-only, no permission) or a folder at
    ``path`` raises ``CheckpointError`` naming the errno and the fix; the
    previous file at ``path`` is untouched either way.
    """
    path = Path(path).absolute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        remove_stale_temp_files(path.parent)
        previous = _hold_previous(path)
        try:
            tmp, fd = _create_temp(path)
        except BaseException:
            _release_later(previous)
            raise
        try:
            with os.fdopen(fd, "r+b") as f:  # closing it releases the lock, after the rename
                write(f)
                f.flush()
                os.fsync(f.fileno())
                if check is not None:
                    check(tmp)
                os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            _release_later(previous)
            raise
        fsync_folder(path.parent)
        _release_later(previous)
        return path
    except (OSError, RuntimeError) as exc:
        err = _os_error(exc)
        if err is None:
            raise
        name = errno.errorcode.get(err.errno or 0, str(err.errno))
        fix = _FAULT_FIX.get(err.errno or 0, "check the disk and the folder {folder}, then save again")
        raise _err(
            path,
            f"not saved: {err.strerror} ({name}); the previous file, if any, is intact",
            fix.format(folder=path.parent, target=path),
            kind="not-saved",
        ) from exc


def _check_loads_safely(checkpoint: Any, target: Path) -> Callable[[Path], None]:
    def check(tmp: Path) -> None:
        try:  # map_location="meta": the pickle is parsed, no tensor byte is read
            torch.load(tmp, map_location="meta", weights_only=True)
        except pickle.UnpicklingError:
            offenders = _unsafe(checkpoint, "checkpoint")
            where, value = offenders[0] if offenders else ("checkpoint", checkpoint)
            kind = _type_name(value)
            more = f" (and {len(offenders) - 1} more)" if len(offenders) > 1 else ""
            cause = f"not saved: {where} is of type {kind}{more}, which torch.load(weights_only=True) refuses"
            raise _err(
                target,
                cause + "; the previous file is untouched",
                _advice(kind, isinstance(value, nn.Module)),
                kind="not-saved",
            ) from None

    return check


def save_checkpoint(checkpoint: Checkpoint, path: PathLike, *, check: bool = True) -> Path:
    """Write ``checkpoint`` to ``path`` atomically and durably, and return the path.

    Temporary file in the same folder (locked while it exists), ``torch.save``,
    the digest record (``DIGEST_RECORD``: each storage's CRC-32 and size under
    its name, and data.pkl's, so ``load_checkpoint`` refuses a member renamed or
    swapped), flush, ``os.fsync``, (``check=True``) proof that it loads with
    ``weights_only=True`` (on the meta device: no tensor byte is read back),
    ``os.replace`` over ``path``, ``fsync`` of the folder. (A file of 16 MiB or more that it
    replaces has its cached pages dropped first and its blocks freed in a background thread
    afterwards: ``_hold_previous``.) A save that fails or
    is killed at any moment leaves the previous file as it was; a full or
    read-only disk raises ``CheckpointError`` with the errno and the fix. An
    object ``weights_only=True`` would refuse raises ``CheckpointError``
    naming its key path, before anything is replaced.
    """
    path = Path(path)

    def write(f: Any) -> None:
        torch.save(checkpoint, f)
        f.flush()
        append_digests(f)

    return _atomic_write(path, write, _check_loads_safely(checkpoint, path) if check else None)
