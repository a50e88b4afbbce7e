"""Training checkpoints that load with ``torch.load(..., weights_only=True)``, saved crash-safely.

A checkpoint is a plain dict: tensors, numbers, strings, lists, tuples and
dicts only, so loading it never needs an allowlist and never runs code.

==============  ============================================================
key             value
==============  ============================================================
format_version  ``FORMAT_VERSION``
epoch, step     last finished epoch, optimizer steps so far
config          the model's config dict (``helper.models.build_model``)
model           ``model.state_dict()``
optimizer       ``optimizer.state_dict()`` or ``None``
scheduler       ``scheduler.state_dict()`` or ``None``
history         per-epoch metrics (``helper.training.History``)
rng             Python, NumPy, torch (CPU, CUDA) and DataLoader-generator states
extra           anything else the caller adds (plain data)
==============  ============================================================

Saving (``save_checkpoint``) is atomic and durable: the bytes go to a
temporary file in the target's folder (locked with ``flock`` while it exists,
so a later save removes only the leftovers of writers that are gone), are
flushed and ``fsync``-ed, the file is checked to load with
``weights_only=True``, it is renamed over the target with ``os.replace``, and
the folder is ``fsync``-ed so the rename itself survives a power cut. A save
that fails or is killed at any moment leaves the previous file intact; a full
or read-only disk is a ``CheckpointError`` naming the errno and the fix.

Saving also adds a digest record (``DIGEST_RECORD``): each storage's CRC-32
and size under its name, and data.pkl's, taken from the zip's own directory
(nothing is read back), so a renamed or swapped member is refused on loading.

Loading (``load_checkpoint``) first recognises what the path really is
(``helper.formats``: one table of file kinds shared with the doctor), checks
data.pkl's opcodes with ``helper.pickle_guard`` (exact globals, call rules, a
budget on depth, containers, memo, memory and allocations) before any other
parser reads it, validates the archive (structure, records, storage sizes) on
a private copy of everything but the tensor data (never through a shared
mapping of a file another process may truncate), compares the digest record,
and loads with ``weights_only=True`` from the same open file while the CRC-32
of every storage is taken as torch.load reads it (``torch.load`` never checks
them, so a flipped byte would load silently as wrong weights). Every failure,
``RecursionError`` and ``MemoryError`` included, is a ``CheckpointError``
naming the file, the cause and the fix, with a ``kind`` code.

``CheckpointFolder`` keeps the last K checkpoints of a run and the best one by
a metric, and resumes from the newest good one, saying which files it skipped.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import ctypes
import errno
import json
import os
import pickle
import queue
import random
import re
import secrets
import tempfile
import threading
import warnings
import weakref
import zipfile
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import torch
from torch import nn

from helper.formats import (EARLIER, KINDS, CheckpointError, crc_problem, kind_error, open_torch_zip, shown_path,
                            sniff)
from helper.models import build_model
from helper.pickle_guard import (KIND_HOSTILE, KIND_MALFORMED, KIND_TRUNCATED, PickleBudget, scan_pickle,
                                 torch_allowed_globals)

try:  # ISA-L's CRC-32 (same polynomial as zlib's, faster), as helper.formats uses
    from isal.isal_zlib import crc32 as _crc32
except ImportError:
    from zlib import crc32 as _crc32

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

__all__ = [
    "FORMAT_VERSION", "REQUIRED_KEYS", "CheckpointError", "StateDictMismatchError", "CheckpointFallback",
    "capture_rng_state", "restore_rng_state", "make_checkpoint", "save_checkpoint", "load_checkpoint",
    "restore_training_state", "model_from_checkpoint", "sniff", "KINDS", "verify_zip", "find_unsafe_values",
    "remove_stale_temp_files", "fsync_folder", "Mismatch", "find_mismatch", "state_dict_mismatch",
    "load_model_state", "CheckpointFolder", "Resumed", "DIGEST_RECORD",
]

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "epoch", "step", "config", "model", "optimizer", "scheduler", "history", "rng")
Checkpoint = dict[str, Any]
PathLike = str | os.PathLike[str]


def _err(path: PathLike | None, cause: str, fix: str, *, kind: str | None) -> CheckpointError:
    """A ``CheckpointError`` with its ``kind`` code (``helper.formats``' class takes no ``kind`` argument)."""
    error = CheckpointError(path, cause, fix)
    error.kind = kind or "error"
    return error


class StateDictMismatchError(CheckpointError, RuntimeError):
    """The saved weights do not fit the model (a ``RuntimeError`` too, like ``load_state_dict``'s own)."""


class CheckpointFallback(UserWarning):
    """``CheckpointFolder.resume`` skipped a damaged checkpoint and used an older one."""


# --------------------------------------------------------------------------------------------------
# Random states and the checkpoint dict


def capture_rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Every random generator a training run draws from, as weights-only-safe data.

    NumPy's state is stored as a tensor and a few numbers rather than its
    native tuple holding an ``ndarray``, which ``weights_only=True`` refuses.
    """
    version, mt_state, gauss = random.getstate()
    _, key, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "python": [version, list(mt_state), gauss],
        "numpy": {"key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generator": None if generator is None else generator.get_state(),
    }


def restore_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Put back what ``capture_rng_state`` captured (CUDA states only where CUDA exists)."""
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["key"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    if generator is not None:
        if state["generator"] is None:
            raise ValueError("this checkpoint holds no DataLoader generator state")
        generator.set_state(state["generator"].cpu())


def make_checkpoint(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    *,
    epoch: int = 0,
    step: int = 0,
    history: dict[str, list[Any]] | None = None,
    generator: torch.Generator | None = None,
    config: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Checkpoint:
    """Gather a training run's full state into one plain dict.

    ``config`` defaults to ``model.config`` (set by ``build_model``). Note that
    the state dicts hold references to the live tensors: save the dict (or
    deep-copy it) before training on, or it changes under you.
    """
    return {
        "format_version": FORMAT_VERSION,
        "epoch": epoch,
        "step": step,
        "config": config if config is not None else getattr(model, "config", None),
        "model": model.state_dict(),
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "history": history if history is not None else {},
        "rng": capture_rng_state(generator),
        "extra": extra or {},
    }


# --------------------------------------------------------------------------------------------------
# What may go into a checkpoint (checked at save time, with the key path of the offending value)

_SAFE_LEAVES = (str, bytes, bytearray, int, float, bool, complex, type(None),
                torch.Size, torch.dtype, torch.device, torch.layout)
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

    Two costs of replacing a 403 MB checkpoint, measured on the reference machine (ext4, a VM):

    - Its cached pages stay in memory while the new file is written: twice the page cache, and
      the new file's pages come from memory that was idle. A VM that returns idle memory to its
      host (a cloud VM, WSL2 on Windows) must fetch such memory back page by page: the write took
      450-650 ms instead of 160 ms. ``posix_fadvise(DONTNEED)`` drops the old pages first (17 ms;
      the old file on disk is untouched), as the truncate in ``open(path, "wb")`` does for
      ``torch.save``.
    - Dropping its last reference frees its blocks inside ``os.replace``: 65-70 ms. Holding this
      descriptor moves that work to its ``close``, which ``_release_later`` does in a thread
      once the new file is durable.

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
        name = errno.errorcode.get(err.errno, str(err.errno))
        fix = _FAULT_FIX.get(err.errno, "check the disk and the folder {folder}, then save again")
        raise _err(path, f"not saved: {err.strerror} ({name}); the previous file is intact",
                   fix.format(folder=path.parent, target=path), kind="not-saved") from exc


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
            raise _err(target, cause + "; the previous file is untouched",
                       _advice(kind, isinstance(value, nn.Module)), kind="not-saved") from None
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
        _append_digests(f)

    return _atomic_write(path, write, _check_loads_safely(checkpoint, path) if check else None)


# The record save_checkpoint adds to the zip: {"version": 1, "pickle": crc, "storages": {key: [crc, size]}}.
# The CRC-32s are those torch.save wrote into the zip's directory (nothing is read back to make it); what
# the record adds is which name each belongs to: swap two members' names (their CRCs stay valid) and
# the record disagrees. It is not a signature: whoever crafts a file can write a record that fits.
DIGEST_RECORD = ".data/helper_digests.json"


def _append_digests(f: Any) -> None:
    f.seek(0)
    with zipfile.ZipFile(f, "a") as z:
        infos = z.infolist()
        pickles = [i for i in infos if i.filename.endswith("/data.pkl") and i.filename.count("/") == 1]
        if len(pickles) != 1:
            return  # not a torch.save zip: load_checkpoint will say what it is
        prefix = pickles[0].filename[:-len("data.pkl")]
        storages = {i.filename[len(prefix) + 5:]: [i.CRC, i.file_size] for i in infos
                    if i.filename.startswith(prefix + "data/")}
        record = json.dumps({"version": 1, "pickle": pickles[0].CRC, "storages": storages},
                            sort_keys=True, separators=(",", ":")).encode()
        info = zipfile.ZipInfo(prefix + DIGEST_RECORD, date_time=(1980, 1, 1, 0, 0, 0))
        z.writestr(info, record)
        z.filelist[-1].external_attr = 0  # as torch.save writes (writestr may set permissions)
        z.filelist[-1].create_system = 0


def _digest_problem(archive: Any, fd: int | None = None) -> str | None:
    """The first disagreement between the digest record (if the file has one) and the zip's members, or ``None``.

    ``fd``: the descriptor the caller loads from (so the record read is that file's, even if the path was
    replaced meanwhile)."""
    record_member = archive.members.get(archive.prefix + DIGEST_RECORD)
    if record_member is None:
        return None
    try:
        if fd is None:
            with open(archive.path, "rb") as f:
                raw = os.pread(f.fileno(), record_member.size, record_member.start)
        else:
            raw = os.pread(fd, record_member.size, record_member.start)
        if zlib.crc32(raw) != record_member.crc:
            return f"its digest record {DIGEST_RECORD!r} fails its CRC-32 check"
        record = json.loads(raw)
        saved = {k: (int(v[0]), int(v[1])) for k, v in record["storages"].items()}
        pickle_crc = int(record["pickle"])
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        return f"its digest record {DIGEST_RECORD!r} is unreadable ({type(exc).__name__})"
    pkl = archive.members[archive.prefix + "data.pkl"]
    if pkl.crc != pickle_crc:
        return "data.pkl is not the pickle save_checkpoint wrote (its CRC-32 differs from the digest record's)"
    found = {m.name[len(archive.prefix) + 5:]: (m.crc, m.size) for m in archive.tensor_members()}
    by_digest = {v: k for k, v in saved.items()}
    for key in sorted(set(saved) | set(found), key=lambda k: (len(k), k)):
        if found.get(key) != saved.get(key):
            if key not in found:
                return f"storage {key!r} that save_checkpoint wrote is missing"
            if key not in saved:
                return f"member 'data/{key}' was not written by save_checkpoint"
            other = by_digest.get(found[key])
            return (f"member 'data/{key}' holds the bytes save_checkpoint wrote as 'data/{other}': members were "
                    "renamed or swapped" if other is not None else
                    f"member 'data/{key}' is not the one save_checkpoint wrote (its CRC-32 or size differs)")
    return None


# --------------------------------------------------------------------------------------------------
# Loading


def verify_zip(path: PathLike) -> str | None:
    """``None`` if ``path`` passes every check ``load_checkpoint`` makes before unpickling, else the cause."""
    try:
        with open(path, "rb") as f:
            allowed, infos = torch_allowed_globals(), _zip_infos(f)
            _prescan(Path(path), f, infos, allowed)
            archive = _validated(Path(path), f, infos, check_data_crc=True)
            problem = _digest_problem(archive, f.fileno())
            if problem is not None:
                return f"is corrupted: {problem}"
            _refuse_unsafe(Path(path), archive, allowed)
    except CheckpointError as exc:
        return exc.cause
    except OSError as exc:
        return f"could not be read ({exc.strerror or type(exc).__name__})"
    return None


def _zip_infos(f: Any) -> list[zipfile.ZipInfo] | None:
    """The zip directory of the open file ``f``, read once per load; ``None`` if ``zipfile`` cannot read it."""
    try:
        with zipfile.ZipFile(f) as z:
            return z.infolist()
    except Exception:  # a damaged directory (zipfile raises many kinds): open_torch_zip names it
        return None


def _refuse_unsafe(path: Path, archive: Any, allowed: frozenset[str] | None = None) -> None:
    """``CheckpointError`` if the scanned pickle names globals weights_only refuses, or holds meta tensors.

    ``allowed``: the allowlist the pre-scan used (the same snapshot for both checks); ``None``: torch's now."""
    if allowed is None:
        allowed = torch_allowed_globals()
    needed = sorted(archive.scan.globals - allowed)  # from the opcodes: nothing was unpickled
    if needed:
        raise _err(
            path, f"refused by weights_only=True: it pickles {', '.join(needed)}, not plain data (nothing in it "
            "was run)", "store only tensors and plain data (dict, list, str, int, float); save_checkpoint refuses "
            "such objects at save time", kind="hostile-pickle")
    if archive.scan.meta:
        raise _err(path, "holds tensors on the meta device: shapes without data",
                              "save the real weights (model.to('cpu').state_dict()), or " + EARLIER,
                              kind="not-a-checkpoint")


def _tensor_member(name: str) -> bool:
    return name.partition("/")[2].startswith("data/")


def _private_copy(f: Any, infos: list[zipfile.ZipInfo] | None) -> Path:
    """A private sparse copy of ``f`` for ``open_torch_zip`` to map: every byte but the tensors' data.

    ``open_torch_zip`` reads the archive through a shared ``mmap``; another process truncating the file
    meanwhile (``open(path, "wb")``) would kill this one with SIGBUS (issue 24, case 10). The copy
    holds the zip's directory, its local headers and every record but the tensor data (which the
    validation does not read: its CRC-32s are checked from ``torch.load``'s reads, or by ``read()``),
    at the same offsets, in a file nobody else knows. The copy is read with ``pread`` from the one
    descriptor ``torch.load`` reads too, so both see the same file even if ``path`` is replaced.
    """
    fd = f.fileno()
    size = os.fstat(fd).st_size
    holes: list[tuple[int, int]] = []
    for info in infos or []:  # no directory (damaged): copy everything, open_torch_zip names the problem
        if _tensor_member(info.filename) and info.file_size > 4096:
            header = os.pread(fd, 30, info.header_offset)
            if len(header) == 30 and header[:4] == b"PK\x03\x04":
                start = info.header_offset + 30 + int.from_bytes(header[26:28], "little") \
                    + int.from_bytes(header[28:30], "little")
                holes.append((start, min(start + info.file_size, size)))
    out_fd, name = _scratch_file()
    try:
        os.ftruncate(out_fd, size)
        pos = 0
        for begin, end in sorted(holes) + [(size, size)]:
            while pos < begin:
                chunk = os.pread(fd, min(begin - pos, _COPY_CHUNK), pos)
                if not chunk:
                    break  # cut short meanwhile: the copy keeps zeros, the validation says so
                os.pwrite(out_fd, chunk, pos)
                pos += len(chunk)
            pos = max(pos, end)
    except BaseException:
        os.close(out_fd)
        os.unlink(name)
        raise
    os.close(out_fd)
    return Path(name)


_COPY_CHUNK = 1 << 20


def _scratch_file() -> tuple[int, str]:
    """A new private file for the sparse copy: in /dev/shm (memory) where there is one, else the temp folder."""
    for folder in ("/dev/shm", None):
        if folder is not None and not (os.path.isdir(folder) and os.access(folder, os.W_OK)):
            continue
        try:
            return tempfile.mkstemp(prefix=".checkpoint-", suffix=".zip", dir=folder)
        except OSError:
            if folder is None:
                raise
    raise AssertionError("unreachable")


def _validated(path: Path, f: Any, infos: list[zipfile.ZipInfo] | None = None, *, check_data_crc: bool = False) -> Any:
    """``open_torch_zip`` on a private copy of the open file ``f`` (no shared mapping), errors naming ``path``.

    ``infos``: ``f``'s zip directory if the caller has read it already (``_zip_infos``)."""
    if fcntl is None:  # Windows: a mapped file cannot be truncated, so no SIGBUS; and no sparse copies
        return open_torch_zip(path, check_data_crc=check_data_crc)
    try:
        copy = _private_copy(f, _zip_infos(f) if infos is None else infos)
    except OSError:  # no room for the copy (a full /tmp): validate the file itself, as before
        return open_torch_zip(path, check_data_crc=check_data_crc)
    try:
        archive = open_torch_zip(copy, check_data_crc=False)
        if check_data_crc:
            problem = crc_problem(_fd_path(f, path), archive.tensor_members())
            if problem is not None:
                raise _err(copy, f"is corrupted: {problem} (its bytes changed after torch.save wrote "
                                      "them)", EARLIER + "; copy checkpoints with a checksum (sha256sum)",
                                      kind="corrupted")
    except CheckpointError as exc:
        raise _renamed(exc, path) from None
    finally:
        copy.unlink(missing_ok=True)
    archive.path = path
    return archive


def _renamed(exc: CheckpointError, path: Path) -> CheckpointError:
    new = _err(path, exc.cause, exc.fix, kind=getattr(exc, "kind", None) or _kind_of(exc.cause))
    return new


def _kind_of(cause: str) -> str:
    if "bomb" in cause:
        return "budget"
    if "truncated" in cause or "cut short" in cause:
        return "truncated"
    if "corrupted" in cause or "CRC-32" in cause:
        return "corrupted"
    return "not-a-checkpoint"


def _fd_path(f: Any, path: Path) -> Path:
    """A path that opens the very file ``f`` has open (``/proc/self/fd``), else ``path``."""
    candidate = Path(f"/proc/self/fd/{f.fileno()}")
    return candidate if candidate.exists() else path


def _prescan(path: Path, f: Any, infos: list[zipfile.ZipInfo] | None, allowed: frozenset[str]) -> None:
    """``helper.pickle_guard``'s budget and rules on data.pkl, before anything else parses it.

    Runs first, so that no other reader (``open_torch_zip``'s own scan, torch's unpickler) walks a pickle
    that would build millions of objects. A data.pkl that is not intact (its CRC-32 fails, it is
    compressed, its sizes do not fit the file) is left to ``open_torch_zip``, which names the damage; so
    is a pickle that is merely malformed. Globals outside the allowlist give the message
    ``_refuse_unsafe`` gives (the names it pickles), whatever else the pickle holds.
    """
    fd = f.fileno()
    if infos is None:
        return  # a damaged directory: open_torch_zip names it
    try:
        size = os.fstat(fd).st_size
        pickles = [i for i in infos if i.filename.endswith("/data.pkl") and i.filename.count("/") == 1]
        if len(pickles) != 1 or pickles[0].compress_type != zipfile.ZIP_STORED or pickles[0].file_size > size:
            return
        info = pickles[0]
        header = os.pread(fd, 30, info.header_offset)
        if len(header) != 30 or header[:4] != b"PK\x03\x04":
            return
        start = info.header_offset + 30 + int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30],
                                                                                                    "little")
        data = os.pread(fd, info.file_size, start)
    except Exception:  # a damaged directory (zipfile raises many kinds): open_torch_zip names it
        return
    if len(data) != info.file_size or zlib.crc32(data) != info.CRC:
        return
    budget = dataclasses.replace(PickleBudget.for_size(len(data)), max_alloc=(1 << 20) + size)  # what the file holds
    try:
        scan_pickle(data, allowed=allowed, budget=budget, name="data.pkl")
    except CheckpointError as exc:
        kind = getattr(exc, "kind", None)
        if getattr(exc, "limit", None) == "max_alloc":  # said as lesson 07 says it: the whole request, the file size
            unlimited = dataclasses.replace(budget, max_alloc=1 << 62, max_memory=1 << 62)
            try:
                asked = scan_pickle(data, allowed=allowed, budget=unlimited, name="data.pkl").alloc
            except CheckpointError:
                asked = None
            if asked is not None:
                raise _err(path, f"refused: its pickle asks for {asked:,} bytes (bytearray) from a file of {size:,} "
                           "bytes, a memory bomb (nothing was allocated)", "do not load this file; ask for the "
                           "weights as a state_dict or safetensors file", kind=kind) from None
        if kind in (KIND_MALFORMED, KIND_TRUNCATED):
            return
        names = getattr(exc, "refused_globals", ())
        if names:
            raise _err(path, f"refused by weights_only=True: it pickles {', '.join(names)}, not plain data "
                       "(nothing in it was run)", "store only tensors and plain data (dict, list, str, int, float); "
                       "save_checkpoint refuses such objects at save time", kind=KIND_HOSTILE) from None
        raise _err(path, exc.cause, exc.fix, kind=kind) from None


class _CrcTap:
    """A ``map_location`` for ``torch.load`` that takes the CRC-32 of each storage as torch.load reads it from the
    file (before it is moved anywhere), then places it as the caller's ``map_location`` would.

    torch.load calls it once per storage record, so what it saw is every tensor byte that was loaded: no
    second read of the file, no walk through the result. Storages of 1 MiB or more are checked by a thread
    while torch.load reads the next record (its reads release the GIL), smaller ones at once. (Where the
    file's byte order differs from this machine's, torch swaps the bytes first; the CRC-32s then disagree
    and the file is read to decide.)
    """

    THREAD_FROM = 1 << 20

    def __init__(self, map_location: Any) -> None:
        self.map_location = map_location
        self.seen: collections.Counter[tuple[int, int]] = collections.Counter()
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.pool: ThreadPoolExecutor | None = None
        self.worker: Future[collections.Counter[tuple[int, int]]] | None = None

    @staticmethod
    def _crc(storage: Any) -> tuple[int, int]:
        n = storage.nbytes()
        return _crc32((ctypes.c_char * n).from_address(storage.data_ptr())), n

    def _work(self) -> collections.Counter[tuple[int, int]]:
        """The thread's part: the CRC-32 and size of each storage queued, until ``None``; its Future's result."""
        threading.current_thread().name = "checkpoint-crc"
        seen: collections.Counter[tuple[int, int]] = collections.Counter()
        while (storage := self.queue.get()) is not None:
            seen[self._crc(storage)] += 1
        return seen

    def __call__(self, storage: Any, location: str) -> Any:
        n = storage.nbytes()
        if n and storage.device.type == "cpu":
            if n < self.THREAD_FROM:
                self.seen[self._crc(storage)] += 1
            else:
                if self.worker is None:
                    self.pool = ThreadPoolExecutor(1, thread_name_prefix="checkpoint-crc")
                    self.worker = self.pool.submit(self._work)
                self.queue.put(storage)  # kept alive by the queue until its CRC-32 is taken
        where = self.map_location
        if where is None:
            return torch.serialization.default_restore_location(storage, location)
        if isinstance(where, dict):
            return torch.serialization.default_restore_location(storage, where.get(location, location))
        if isinstance(where, (str, bytes, torch.device)):
            return torch.serialization.default_restore_location(storage, str(where) if isinstance(
                where, torch.device) else where)
        result = where(storage, location)
        return torch.serialization.default_restore_location(storage, location) if result is None else result

    def finish(self) -> None:
        """Wait for the thread's last CRC-32 (always called, so no thread outlives the load)."""
        if self.worker is not None:
            self.queue.put(None)
            try:
                self.seen += self.worker.result()
            except Exception:  # the thread failed: what it saw is missing, so agrees() is False and the file is read
                pass
            finally:
                self.pool.shutdown()
                self.pool = self.worker = None

    def agrees(self, members: list[Any]) -> bool:
        """Did torch.load read exactly the bytes (CRC-32 and size) of the zip's tensor members?"""
        return self.seen == collections.Counter((m.crc, m.size) for m in members if m.size)


def _meta(map_location: Any) -> bool:
    return (isinstance(map_location, (str, torch.device)) and torch.device(map_location).type == "meta")


_SNIFFED_KIND = {"missing": "missing", "empty": "truncated", "damaged-zip": "truncated",
                 "incomplete-torch-zip": "truncated"}


def load_checkpoint(path: PathLike, *, map_location: Any = "cpu", verify: bool = True) -> Checkpoint:
    """Load a checkpoint with ``weights_only=True`` and check that it is one.

    Before anything is unpickled: ``sniff`` must find a ``torch.save`` zip
    (anything else is named for what it is), ``open_torch_zip`` validates
    it (structure, records, ``data.pkl``'s CRC-32 and opcodes, storage sizes, a
    memory budget) on a private copy of everything but the tensor data (never a
    shared mapping another process could truncate), the digest record
    ``save_checkpoint`` writes is compared with the members (a renamed or swapped
    member is refused), and ``helper.pickle_guard.scan_pickle`` checks every
    opcode against its budget (depth, containers, memo, memory, allocations) and
    call rules. With ``verify=True`` (the default) the CRC-32 of every tensor's
    bytes is checked: on the CPU over the bytes ``torch.load`` returned (no
    second read), elsewhere by a thread that reads the file while ``torch.load``
    runs; a mismatch discards what was loaded. ``map_location`` defaults to the CPU.
    Every failure, ``RecursionError`` and ``MemoryError`` included, raises
    ``CheckpointError`` naming the file, the cause and a fix; its ``kind`` says
    which: ``missing``, ``not-a-checkpoint`` (another format, a folder, a dict
    without the keys), ``truncated``, ``corrupted`` (a CRC-32 or the structure),
    ``swapped`` (members renamed against the digest record), ``hostile-pickle``
    (a global or call weights_only must never reach), ``budget`` (would build
    too much), ``load-failed`` (torch.load raised anything else). It never falls
    back to ``weights_only=False``. (Saving: ``not-saved``; ``CheckpointFolder``:
    ``folder``.)
    """
    path = Path(path)
    kind = sniff(path)
    if kind != "torch-zip":
        err = kind_error(path, kind)
        raise _err(path, err.cause, err.fix, kind=_SNIFFED_KIND.get(kind, "not-a-checkpoint"))
    try:
        with open(path, "rb") as f:
            return _load(path, f, map_location, verify)
    except CheckpointError:
        raise
    except (Exception, RecursionError, MemoryError) as exc:  # anything torch or Python raises on a crafted file
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise _err(path, f"could not be loaded ({type(exc).__name__}: {first[:200]})", EARLIER,
                              kind="load-failed") from None


def _load(path: Path, f: Any, map_location: Any, verify: bool) -> Checkpoint:
    allowed, infos = torch_allowed_globals(), _zip_infos(f)  # one allowlist and one directory read per load
    _prescan(path, f, infos, allowed)
    archive = _validated(path, f, infos)
    problem = _digest_problem(archive, f.fileno())
    if problem is not None:
        raise _err(path, f"is corrupted: {problem}", EARLIER + "; copy checkpoints with a checksum "
                              "(sha256sum)", kind="swapped" if "swapped" in problem else "corrupted")
    _refuse_unsafe(path, archive, allowed)
    members = archive.tensor_members()
    tap = _CrcTap(map_location) if verify and not _meta(map_location) else None
    checkpoint, error, problem = None, None, None
    try:
        f.seek(0)
        checkpoint = torch.load(f, map_location=map_location if tap is None else tap, weights_only=True)
    except (Exception, RecursionError, MemoryError) as exc:  # judged below, once the CRCs are known
        error = exc
    finally:
        if tap is not None:
            tap.finish()
    if verify and (tap is None or error is not None or not tap.agrees(members)):
        problem = crc_problem(_fd_path(f, path), members)  # which member, read from the file (the rare path)
    if problem is not None:
        raise _err(path, f"is corrupted: {problem} (its bytes changed after torch.save wrote them)",
                              EARLIER + "; copy checkpoints with a checksum (sha256sum)", kind="corrupted") from None
    if isinstance(error, pickle.UnpicklingError):
        raise _err(path, f"refused by weights_only=True ({str(error).splitlines()[-1][:200]}), nothing "
                              "in it was run", "store only tensors and plain data (dict, list, str, int, float)",
                              kind="hostile-pickle") from None
    if error is not None:
        first = (str(error).splitlines() or [type(error).__name__])[0]
        raise _err(path, f"torch.load failed ({type(error).__name__}: {first[:200]})", EARLIER,
                              kind="load-failed") from None
    if not isinstance(checkpoint, dict):
        raise _err(path, f"holds a {type(checkpoint).__name__}, not a checkpoint dict",
                              "save with helper.checkpoint.save_checkpoint(make_checkpoint(...), path)",
                              kind="not-a-checkpoint")
    missing = [k for k in REQUIRED_KEYS if k not in checkpoint]
    if missing:
        raise _err(path, f"missing keys {missing} (found {sorted(checkpoint, key=str)})",
                              "load it with torch.load, or save with helper.checkpoint.make_checkpoint",
                              kind="not-a-checkpoint")
    version = checkpoint["format_version"]
    if type(version) is not int or version > FORMAT_VERSION:
        shown = repr(version) if type(version) in (int, str, float, type(None)) else f"a {type(version).__name__}"
        raise _err(path, f"format version {shown[:80]} is newer than {FORMAT_VERSION}",
                              "update the course's helper package", kind="not-a-checkpoint")
    return checkpoint


# --------------------------------------------------------------------------------------------------
# Architecture mismatches: a readable table instead of load_state_dict's paragraph

_PREFIX_CAUSE = {"module.": "a nn.DataParallel / DistributedDataParallel wrapper",
                 "_orig_mod.": "a torch.compile wrapper"}


def _shape(value: Any) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


@dataclass(frozen=True)
class Mismatch:
    """How a state dict fails to fit a model: ``rows`` of (problem, key, in file, in model), and a prefix hint.

    ``hint`` is ``(cause, fix)`` when one prefix explains every row (``module.``
    from DDP, ``_orig_mod.`` from ``torch.compile``, or an attribute prefix such
    as Lightning's ``model.``).
    """

    rows: list[tuple[str, str, str, str]]
    hint: tuple[str, str] | None = None

    @property
    def summary(self) -> str:
        counts = {what: sum(r[0] == what for r in self.rows) for what in ("missing", "unexpected", "wrong shape")}
        return ", ".join(f"{n} {what}" for what, n in counts.items() if n)

    def table(self, limit: int = 12) -> list[str]:
        header, shown = ("problem", "key", "in file", "in model"), self.rows[:limit]
        widths = [max(len(r[i]) for r in [header, *shown]) for i in range(4)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *shown]]
        return lines + ([f"... and {len(self.rows) - limit} more"] if len(self.rows) > limit else [])

    @property
    def fix(self) -> str:
        return self.hint[1] if self.hint else (
            "rebuild the model from the checkpoint's own config (model_from_checkpoint), or load the matching "
            "keys on purpose with load_state_dict(..., strict=False) and check what it returns")


def _prefix_hint(expected: set[str], found: set[str]) -> tuple[str, str] | None:
    heads = {k.split(".", 1)[0] + "." for k in found if "." in k}
    for prefix in ["module.", "_orig_mod.", *sorted(heads)] if len(heads) == 1 else ["module.", "_orig_mod."]:
        origin = _PREFIX_CAUSE.get(prefix, f"a wrapper that holds the model as its attribute {prefix[:-1]!r}, "
                                           "as a LightningModule does")
        if found and all(k.startswith(prefix) for k in found) and {k[len(prefix):] for k in found} == expected:
            return (f"every saved key starts with {prefix!r} (saved from {origin})",
                    f"strip it: torch.nn.modules.utils.consume_prefix_in_state_dict_if_present(state_dict, {prefix!r})")
        if prefix in _PREFIX_CAUSE and expected and all(k.startswith(prefix) for k in expected) \
                and {k[len(prefix):] for k in expected} == found:
            inner = "module" if prefix == "module." else "_orig_mod"
            return (f"the model's keys start with {prefix!r} (it is wrapped by {origin}) and the file's do not",
                    f"load into the inner model: model.{inner}.load_state_dict(state_dict)")
    return None


def find_mismatch(model: nn.Module, state_dict: dict[str, Any]) -> Mismatch | None:
    """``None`` if ``state_dict`` fits ``model`` exactly (keys and shapes), else a ``Mismatch``."""
    own = model.state_dict()
    expected, found = set(own), set(state_dict)
    rows = [("missing", k, "-", _shape(own[k])) for k in own if k not in found]
    rows += [("unexpected", k, _shape(state_dict[k]), "-") for k in state_dict if k not in expected]
    rows += [("wrong shape", k, _shape(state_dict[k]), _shape(own[k])) for k in own
             if k in found and isinstance(own[k], torch.Tensor) and isinstance(state_dict[k], torch.Tensor)
             and own[k].shape != state_dict[k].shape]
    return Mismatch(rows, _prefix_hint(expected, found)) if rows else None


def state_dict_mismatch(model: nn.Module, state_dict: dict[str, Any], *, limit: int = 12) -> str | None:
    """``None`` if ``state_dict`` fits ``model`` exactly, else the summary, a table and the prefix hint, as text."""
    found = find_mismatch(model, state_dict)
    if found is None:
        return None
    hint = [f"{found.hint[0]}; {found.hint[1]}"] if found.hint else []
    return "\n".join([found.summary, *found.table(limit), *hint])


def load_model_state(model: nn.Module, state_dict: dict[str, Any], *, path: PathLike | None = None) -> None:
    """``model.load_state_dict(state_dict)``, or ``StateDictMismatchError`` with the table of what does not fit."""
    found = find_mismatch(model, state_dict)
    if found is not None:
        fix = f"{found.hint[0]}; {found.hint[1]}" if found.hint else found.fix
        raise StateDictMismatchError(path, f"the weights do not fit the model ({found.summary})",
                                     "\n".join([fix, *found.table()]))
    model.load_state_dict(state_dict)


def restore_training_state(
    checkpoint: Checkpoint,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    *,
    generator: torch.Generator | None = None,
    rng: bool = True,
) -> None:
    """Load the checkpoint's states into freshly built objects, in place.

    Move ``model`` to its device and build ``optimizer`` on its parameters
    before calling this: ``optimizer.load_state_dict`` moves the saved state to
    each parameter's device. ``rng=False`` leaves every generator alone. Weights
    that do not fit the model raise ``StateDictMismatchError`` with a table.
    """
    load_model_state(model, checkpoint["model"])
    if optimizer is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(checkpoint["scheduler"])
    if rng:
        restore_rng_state(checkpoint["rng"], generator)


def model_from_checkpoint(checkpoint: Checkpoint, device: torch.device | str = "cpu") -> nn.Module:
    """Rebuild the model from the checkpoint's config, load its weights, switch to eval mode."""
    model = build_model(checkpoint["config"]).to(device)
    load_model_state(model, checkpoint["model"])
    return model.eval()


# --------------------------------------------------------------------------------------------------
# A folder of checkpoints: the last K, the best by a metric, resume from the newest good one


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
    fix = _FAULT_FIX.get(exc.errno, "check the disk and the folder {folder}, then try again")
    return _err(path, f"{doing}: {exc.strerror or exc} ({name})", fix.format(folder=path, target=path / "last.pt"),
                kind="folder")


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
        return int(self._pattern.match(Path(path).name).group(1))

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
        try:
            index = json.loads((self.folder / self.POINTER).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return index if isinstance(index, dict) else {}

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
        for run in [r for r in runs if r != self.run and (r in self._continues or runs[r].get("process") == _PROCESS)
                    and not self._alive(r)]:
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
                    raise _err(target, f"not saved: another run (id {owner}) is writing into this folder and owns "
                               "this file", "give each run its own folder or prefix", kind="folder")
                raise _err(target, f"not saved: this file belongs to run {owner}, which ended (killed or crashed) "
                           "and which this run did not resume", "resume() from its checkpoints to continue that run, "
                           "or remove its files with cleanup()", kind="folder")
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
            kept = sorted((p for p in ours if p not in abandoned), key=self._number)[-self.keep_last:]
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
            for bad, why in skipped:
                warnings.warn(f"skipped {shown_path(bad)} ({why}); resuming from {shown_path(path)}",
                              CheckpointFallback, stacklevel=2)
            owner = self._read_pointer().get("files", {}).get(path.name)
            self._continues.add(path.name if owner is None else owner)  # its next save takes that run's files over
            return Resumed(checkpoint, path, skipped)
        listing = "; ".join(f"{p.name}: {why}" for p, why in skipped)
        raise _err(self.folder, f"no checkpoint in this folder loads ({listing})",
                   "start the run again, or restore the folder from a backup", kind="folder")
