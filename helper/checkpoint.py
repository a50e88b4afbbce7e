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
temporary file in the target's folder (named after this host and process, so a
later save can tell a dead writer's leftovers from a live one's), are flushed
and ``fsync``-ed, the file is checked to load with ``weights_only=True``, it is
renamed over the target with ``os.replace``, and the folder is ``fsync``-ed so
the rename itself survives a power cut. A save that fails or is killed at any
moment leaves the previous file intact.

Loading (``load_checkpoint``) first recognises what the path really is
(``sniff``: a folder, an empty file, a truncated zip, safetensors, the legacy
format, a DCP folder, ...), checks every member's CRC-32 (``torch.load`` never
does, so a flipped byte would load silently as wrong weights), then loads with
``weights_only=True``. Every failure is a ``CheckpointError`` naming the file,
the cause and the fix.

``CheckpointFolder`` keeps the last K checkpoints of a run and the best one by
a metric, and resumes from the newest good one, saying which files it skipped.
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import random
import re
import secrets
import socket
import struct
import sys
import threading
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import torch
from torch import nn

from helper.models import build_model
from helper.paths import display_path

__all__ = [
    "FORMAT_VERSION", "REQUIRED_KEYS", "CheckpointError", "StateDictMismatchError", "CheckpointFallback",
    "capture_rng_state", "restore_rng_state", "make_checkpoint", "save_checkpoint", "load_checkpoint",
    "restore_training_state", "model_from_checkpoint", "sniff", "KINDS", "verify_zip", "find_unsafe_values",
    "remove_stale_temp_files", "fsync_folder", "state_dict_mismatch", "load_model_state", "CheckpointFolder",
    "Resumed",
]

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "epoch", "step", "config", "model", "optimizer", "scheduler", "history", "rng")
Checkpoint = dict[str, Any]
PathLike = str | os.PathLike[str]
EARLIER = "use an earlier checkpoint (CheckpointFolder.resume picks the newest good one)"


class CheckpointError(Exception):
    """A checkpoint file could not be used. The message names the file, the cause and a fix."""

    def __init__(self, path: PathLike | None, cause: str, fix: str):
        self.path, self.cause, self.fix = (None if path is None else Path(path)), cause, fix
        where = "the checkpoint" if path is None else display_path(path)
        super().__init__(f"{where}: {cause}. Fix: {fix}")


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
# Crash-safe writing

_TEMP = re.compile(r"^\.(?P<target>.+)\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.(?P<token>[0-9a-f]{8})\.tmp$")
_IN_FLIGHT: set[str] = set()  # temp files this process is writing right now (any thread)
_IN_FLIGHT_LOCK = threading.Lock()


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


def _temp_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.{_host()}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _pid_alive(pid: int) -> bool:
    """Is process ``pid`` still running on this host? Unsure means yes (then nothing is removed)."""
    if sys.platform == "win32":  # os.kill(pid, 0) would send CTRL_C_EVENT there
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child its parent has not reaped yet is a zombie: it writes nothing any more
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2] != "Z"
    except (OSError, ValueError, IndexError):
        return True


def remove_stale_temp_files(folder: PathLike) -> list[Path]:
    """Remove the temporary files that killed saves left in ``folder``; return what was removed.

    Only files named the way ``save_checkpoint`` names them, written on this
    host by a process that no longer runs (or by this process, outside any save
    still in progress), are removed: a save running in another process keeps
    its file.
    """
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    host, me = _host(), os.getpid()
    for entry in folder.iterdir():
        match = _TEMP.match(entry.name)
        if not match or match["host"] != host:
            continue
        pid = int(match["pid"])
        with _IN_FLIGHT_LOCK:
            busy = str(entry) in _IN_FLIGHT
        if busy or (pid != me and _pid_alive(pid)):
            continue
        try:
            entry.unlink()
            removed.append(entry)
        except FileNotFoundError:
            pass  # another process cleaned it first
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


def _atomic_write(path: Path, write: Callable[[Any], None], check: Callable[[Path], None] | None = None) -> Path:
    """Write through a temporary file in ``path``'s folder: write, flush, fsync, check, replace, fsync folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path.parent)
    tmp = _temp_path(path)
    with _IN_FLIGHT_LOCK:
        _IN_FLIGHT.add(str(tmp))
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if check is not None:
            check(tmp)
        os.replace(tmp, path)
        fsync_folder(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        with _IN_FLIGHT_LOCK:
            _IN_FLIGHT.discard(str(tmp))
    return path


def _check_loads_safely(checkpoint: Any, target: Path) -> Callable[[Path], None]:
    def check(tmp: Path) -> None:
        try:  # mmap=True: the pickle is parsed, the tensor bytes are not read again
            torch.load(tmp, map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError as exc:
            offenders = _unsafe(checkpoint, "checkpoint")
            if offenders:
                where, value = offenders[0]
                kind = _type_name(value)
                more = f" (and {len(offenders) - 1} more)" if len(offenders) > 1 else ""
                value_is_module = isinstance(value, nn.Module)
                cause = f"not saved: {where} is of type {kind}{more}, which torch.load(weights_only=True) refuses"
                fix = _advice(kind, value_is_module)
            else:
                found = re.search(r"[Uu]nsupported (?:global: )?GLOBAL (\S+)", str(exc))
                cause = f"not saved: it pickles {found.group(1) if found else 'an object'}, which " \
                        "torch.load(weights_only=True) refuses"
                fix = _advice("")
            raise CheckpointError(target, cause + "; the previous file is untouched", fix) from None
    return check


def save_checkpoint(checkpoint: Checkpoint, path: PathLike, *, check: bool = True) -> Path:
    """Write ``checkpoint`` to ``path`` atomically and durably, and return the path.

    Temporary file in the same folder, ``torch.save``, flush, ``os.fsync``,
    (``check=True``) proof that it loads with ``weights_only=True``,
    ``os.replace`` over ``path``, ``fsync`` of the folder. A save that fails or
    is killed at any moment leaves the previous file as it was; the temporary
    file is removed on any error, and leftovers of killed saves are removed by
    the next save into the folder. An object ``weights_only=True`` would refuse
    raises ``CheckpointError`` naming its key path, before anything is replaced.
    """
    path = Path(path)
    return _atomic_write(path, lambda f: torch.save(checkpoint, f),
                         _check_loads_safely(checkpoint, path) if check else None)


# --------------------------------------------------------------------------------------------------
# What is this file? (used by load_checkpoint and by the checkpoint doctor)

_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."  # pickle of torch's legacy MAGIC_NUMBER

KINDS: dict[str, tuple[str, str]] = {
    # kind: (cause, fix) as load_checkpoint reports them
    "missing": ("no such file", "check the path, or train and save a checkpoint first"),
    "not-a-file": ("not a regular file", "pass the path of a checkpoint file"),
    "directory": ("is a folder, not a checkpoint file", "pass the path of a file inside it{listing}"),
    "dcp": ("is a torch.distributed.checkpoint (DCP) folder, not a torch.save file",
            "load it with torch.distributed.checkpoint.load(state_dict, checkpoint_id=folder), or convert it "
            "once with torch.distributed.checkpoint.format_utils.dcp_to_torch_save(folder, 'model.pt')"),
    "empty": ("is empty (0 bytes): the save that wrote it never finished", EARLIER),
    "damaged-zip": ("is truncated or damaged: a zip archive whose directory (at the end of the file) is missing, "
                    "as when a save is killed half way or a copy is cut short", EARLIER),
    "torch-zip": ("", ""),
    "incomplete-torch-zip": ("is an incomplete torch.save archive: torch.save's bookkeeping records but no data.pkl, "
                             "as when torch.save raised part way (a value it could not pickle)", EARLIER),
    "torchscript": ("is a TorchScript archive (torch.jit.save), not a checkpoint dict",
                    "load it with torch.jit.load(path); save training checkpoints with save_checkpoint"),
    "zip": ("is a zip archive, but not one torch.save wrote (no data.pkl inside)", "check the path"),
    "legacy": ("is in PyTorch's legacy format (before 1.6, or _use_new_zipfile_serialization=False), which "
               "has no checksums", "convert it once: torch.save(torch.load(path, weights_only=True), new_path)"),
    "safetensors": ("is a safetensors file (tensors only), not a torch.save file, whatever its name says",
                    "load it with safetensors.torch.load_file(path), and name it .safetensors"),
    "numpy": ("is a NumPy .npy file, not a torch.save file", "load it with numpy.load(path)"),
    "pickle": ("is a plain pickle (pickle.dump), not a torch.save file; unpickling it could run code",
               "re-create it with torch.save from tensors and plain data"),
    "git-lfs-pointer": ("is a Git LFS pointer (a small text file), not the checkpoint itself",
                        "fetch the real file: git lfs pull"),
    "html": ("is an HTML page (a failed download?), not a checkpoint", "download the file again"),
    "text": ("is a text file, not a checkpoint", "check the path"),
    "unknown": ("is not a torch.save file (unknown format)", "check the path, or " + EARLIER),
}


def sniff(path: PathLike) -> str:
    """What ``path`` really is, from the file system and its first bytes: one of ``KINDS``.

    ``"torch-zip"`` is a readable ``torch.save`` archive (its contents are not
    checked here: see ``verify_zip``). The others are ``"missing"``,
    ``"not-a-file"``, ``"directory"``, ``"dcp"`` (a ``torch.distributed.checkpoint``
    folder), ``"empty"``, ``"damaged-zip"`` (a zip whose end is gone: a killed
    save, a cut copy), ``"incomplete-torch-zip"`` (``torch.save`` raised part
    way), ``"torchscript"``, ``"zip"`` (some other zip),
    ``"legacy"`` (``torch.save``'s pre-1.6 format), ``"safetensors"``,
    ``"numpy"``, ``"pickle"``, ``"git-lfs-pointer"``, ``"html"``, ``"text"`` and
    ``"unknown"``. Reads at most the first 64 bytes and the zip's directory.
    """
    path = Path(path)
    if path.is_dir():
        return "dcp" if (path / ".metadata").is_file() else "directory"
    if not path.exists():
        return "missing"
    if not path.is_file():
        return "not-a-file"
    size = path.stat().st_size
    if size == 0:
        return "empty"
    with open(path, "rb") as f:
        head = f.read(64)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06") or (len(head) < 4 and b"PK\x03\x04".startswith(head)):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error):
            return "damaged-zip"
        if any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names):
            return "torchscript"
        if any(n.endswith("data.pkl") for n in names):
            return "torch-zip"
        bookkeeping = ("/version", "/byteorder", "/.format_version", "/.data/serialization_id")
        return "incomplete-torch-zip" if any(n.endswith(bookkeeping) for n in names) else "zip"
    if head.startswith(_LEGACY_MAGIC):
        return "legacy"
    if len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] <= size - 8:
        return "safetensors"
    if head.startswith(b"\x93NUMPY"):
        return "numpy"
    if len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    if head.startswith(b"version https://git-lfs"):
        return "git-lfs-pointer"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and text.lstrip().lower().startswith(("<!doctype html", "<html")):
        return "html"
    if text is not None and all(ch.isprintable() or ch in "\r\n\t" for ch in text):
        return "text"
    return "unknown"


def _kind_error(path: Path, kind: str) -> CheckpointError:
    cause, fix = KINDS[kind]
    if kind == "directory":
        names = sorted(p.name for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        fix = fix.format(listing=f" (it holds {shown})" if names else " (it is empty)")
    return CheckpointError(path, cause, fix)


def verify_zip(path: PathLike) -> str | None:
    """Check every member of a ``torch.save`` archive against the CRC-32 ``torch.save`` stored for it.

    Returns ``None`` when all match, else a sentence naming the first damaged
    member. ``torch.load`` never checks these CRCs, so without this a flipped
    byte in tensor data loads silently as a different weight. Reads the file
    through ``mmap`` once (about as fast as reading its bytes).
    """
    import mmap

    with zipfile.ZipFile(path) as z, open(path, "rb") as f:
        infos = z.infolist()
        size = os.fstat(f.fileno()).st_size
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            view = memoryview(mm)
            try:
                for info in infos:
                    start = info.header_offset
                    header = bytes(view[start:start + 30])
                    if len(header) < 30 or header[:4] != b"PK\x03\x04":
                        return f"the local header of member {info.filename!r} is damaged"
                    name_len, extra_len = struct.unpack("<HH", header[26:30])
                    name = bytes(view[start + 30:start + 30 + name_len])
                    if name.decode("utf-8", "replace") != info.filename:
                        return f"the name stored with member {info.filename!r} is damaged"
                    if info.compress_type != zipfile.ZIP_STORED:
                        with z.open(info) as member:  # zipfile checks the CRC as it reads
                            while member.read(1 << 20):
                                pass
                        continue
                    data = start + 30 + name_len + extra_len
                    if data + info.file_size > size:
                        return f"member {info.filename!r} runs past the end of the file"
                    if zlib.crc32(view[data:data + info.file_size]) != info.CRC:
                        return f"member {info.filename!r} fails its CRC-32 check"
            except zipfile.BadZipFile as exc:
                return f"{exc}"
            finally:
                view.release()
    return None


# --------------------------------------------------------------------------------------------------
# Loading


def load_checkpoint(path: PathLike, *, map_location: Any = "cpu", verify: bool = True) -> Checkpoint:
    """Load a checkpoint with ``weights_only=True`` and check that it is one.

    Preflight: ``sniff`` must find a ``torch.save`` zip (anything else is named
    for what it is). ``verify=True`` (the default) first checks every member's
    CRC-32, so a flipped byte is caught and a damaged file is never unpickled;
    it costs less than the load itself (``make benchmark``: about 0.4x of a
    plain ``torch.load``, from the page cache). ``map_location``
    defaults to the CPU so a file saved on a GPU loads anywhere. Any failure
    raises ``CheckpointError`` naming the file, the cause and a fix; it never
    falls back to ``weights_only=False``.
    """
    path = Path(path)
    kind = sniff(path)
    if kind != "torch-zip":
        raise _kind_error(path, kind)
    problem = verify_zip(path) if verify else None  # before torch.load: a damaged file is never unpickled
    if problem is not None:
        raise CheckpointError(path, f"is corrupted: {problem} (its bytes changed after torch.save wrote them)",
                              EARLIER + "; copy checkpoints with a checksum (sha256sum)")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"[Uu]nsupported (?:global: )?GLOBAL (\S+)", str(exc))
        what = f"it pickles {found.group(1)}" if found else "it holds a pickled object"
        raise CheckpointError(
            path, f"refused by weights_only=True: {what}, not plain data (nothing in it was run)",
            "store only tensors and plain data (dict, list, str, int, float); save_checkpoint refuses such "
            "objects at save time") from exc
    except Exception as exc:  # a damaged archive fails in many ways
        raise CheckpointError(path, f"torch.load failed ({str(exc).splitlines()[0]})", EARLIER) from exc
    if not isinstance(checkpoint, dict):
        raise CheckpointError(path, f"holds a {type(checkpoint).__name__}, not a checkpoint dict",
                              "save with helper.checkpoint.save_checkpoint(make_checkpoint(...), path)")
    missing = [k for k in REQUIRED_KEYS if k not in checkpoint]
    if missing:
        raise CheckpointError(path, f"missing keys {missing} (found {sorted(checkpoint)})",
                              "load it with torch.load, or save with helper.checkpoint.make_checkpoint")
    if checkpoint["format_version"] > FORMAT_VERSION:
        raise CheckpointError(path, f"format version {checkpoint['format_version']} is newer than "
                              f"{FORMAT_VERSION}", "update the course's helper package")
    return checkpoint


# --------------------------------------------------------------------------------------------------
# Architecture mismatches: a readable table instead of load_state_dict's paragraph

_PREFIXES = ("module.", "_orig_mod.")
_PREFIX_CAUSE = {"module.": "nn.DataParallel / DistributedDataParallel", "_orig_mod.": "torch.compile"}


def _shape(value: Any) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


def _prefix_hint(expected: set[str], found: set[str]) -> str | None:
    for prefix in _PREFIXES:
        if found and all(k.startswith(prefix) for k in found) and {k[len(prefix):] for k in found} == expected:
            return (f"every saved key starts with {prefix!r} (saved from a {_PREFIX_CAUSE[prefix]} wrapper); strip "
                    f"it: torch.nn.modules.utils.consume_prefix_in_state_dict_if_present(state_dict, {prefix!r})")
        if expected and all(k.startswith(prefix) for k in expected) and {k[len(prefix):] for k in expected} == found:
            return (f"the model's keys start with {prefix!r} (it is wrapped by {_PREFIX_CAUSE[prefix]}) and the "
                    "file's do not; load into the inner model: "
                    f"model.{'module' if prefix == 'module.' else '_orig_mod'}.load_state_dict(state_dict)")
    return None


def _mismatch(model: nn.Module, state_dict: dict[str, Any], limit: int) -> tuple[str, str, str | None] | None:
    own = model.state_dict()
    expected, found = set(own), set(state_dict)
    rows = [("missing", k, "-", _shape(own[k])) for k in own if k not in found]
    rows += [("unexpected", k, _shape(state_dict[k]), "-") for k in state_dict if k not in expected]
    rows += [("wrong shape", k, _shape(state_dict[k]), _shape(own[k])) for k in own
             if k in found and isinstance(own[k], torch.Tensor) and isinstance(state_dict[k], torch.Tensor)
             and own[k].shape != state_dict[k].shape]
    if not rows:
        return None
    counts = {what: sum(r[0] == what for r in rows) for what in ("missing", "unexpected", "wrong shape")}
    summary = ", ".join(f"{n} {what}" for what, n in counts.items() if n)
    header = ("problem", "key", "in file", "in model")
    shown = rows[:limit]
    widths = [max(len(r[i]) for r in [header, *shown]) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *shown]]
    if len(rows) > limit:
        lines.append(f"... and {len(rows) - limit} more")
    return summary, "\n".join(lines), _prefix_hint(expected, found)


def state_dict_mismatch(model: nn.Module, state_dict: dict[str, Any], *, limit: int = 12) -> str | None:
    """``None`` if ``state_dict`` fits ``model`` exactly, else a table of what does not fit.

    One row per missing key (the model has it, the file does not), unexpected
    key (the other way round) and shape mismatch, with both shapes; a
    ``module.``/``_orig_mod.`` prefix on one side is recognised and its fix named
    on the last line.
    """
    found = _mismatch(model, state_dict, limit)
    if found is None:
        return None
    summary, table, hint = found
    return f"{summary}\n{table}" + (f"\n{hint}" if hint else "")


def load_model_state(model: nn.Module, state_dict: dict[str, Any], *, path: PathLike | None = None) -> None:
    """``model.load_state_dict(state_dict)``, or ``StateDictMismatchError`` with the table of what does not fit."""
    found = _mismatch(model, state_dict, 12)
    if found is not None:
        summary, table, hint = found
        fix = hint or ("rebuild the model from the checkpoint's own config (model_from_checkpoint), or load the "
                       "matching keys on purpose with load_state_dict(..., strict=False) and check what it returns")
        raise StateDictMismatchError(path, f"the weights do not fit the model ({summary})", f"{fix}\n{table}")
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


@dataclass
class CheckpointFolder:
    """A run's checkpoints in one folder: keep the last ``keep_last`` and the best by a metric.

    ``save(checkpoint, metric=...)`` writes ``epoch-0007.pt`` (named by
    ``checkpoint["epoch"]``) crash-safely, then the ``latest.json`` pointer
    (only once the file it names is durable), then removes files older than
    the last ``keep_last`` and any numbered higher (left by a run that was
    resumed from an older file), never the best (lowest ``metric`` when
    ``mode="min"``, highest when ``"max"``). ``resume()`` loads the newest
    checkpoint that passes every check and warns (``CheckpointFallback``) about
    each newer one it had to skip.
    """

    folder: Path
    keep_last: int = 3
    mode: str = "min"
    prefix: str = "epoch"
    _index: dict[str, Any] = field(default_factory=dict, repr=False)

    POINTER = "latest.json"

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        if self.keep_last < 1 or self.mode not in ("min", "max"):
            raise ValueError("keep_last must be >= 1 and mode 'min' or 'max'")
        self._pattern = re.compile(rf"^{re.escape(self.prefix)}-(\d+)\.pt$")
        self._index = self._read_pointer() or {}

    def path_for(self, number: int) -> Path:
        return self.folder / f"{self.prefix}-{number:04d}.pt"

    def _number(self, path: Path) -> int:
        return int(self._pattern.match(path.name).group(1))

    def checkpoints(self) -> list[Path]:
        """The checkpoint files in the folder, oldest first (by the number in their name)."""
        if not self.folder.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := self._pattern.match(p.name))]
        return [p for _, p in sorted(found)]

    def _read_pointer(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.folder / self.POINTER).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    @property
    def latest(self) -> Path | None:
        """The file the pointer names (``None`` before the first save)."""
        name = self._index.get("latest")
        return None if name is None else self.folder / name

    @property
    def best(self) -> Path | None:
        name = (self._index.get("best") or {}).get("file")
        return None if name is None else self.folder / name

    def _better(self, metric: float) -> bool:
        best = self._index.get("best")
        if best is None:
            return True
        return metric < best["metric"] if self.mode == "min" else metric > best["metric"]

    def save(self, checkpoint: Checkpoint, *, metric: float | None = None, number: int | None = None) -> Path:
        """Save ``checkpoint`` as ``<prefix>-<number>.pt`` (number: ``checkpoint["epoch"]``), update, rotate."""
        number = int(checkpoint["epoch"] if number is None else number)
        path = save_checkpoint(checkpoint, self.path_for(number))  # durable before anything points at it
        abandoned = [p for p in self.checkpoints() if self._number(p) > number]  # a run resumed from older
        index = dict(self._index, latest=path.name)
        if index.get("best") and index["best"]["file"] in {p.name for p in abandoned}:
            del index["best"]
        if metric is not None and self._better(float(metric)):
            index["best"] = {"file": path.name, "metric": float(metric)}
        text = json.dumps(index, indent=1, sort_keys=True).encode()
        _atomic_write(self.folder / self.POINTER, lambda f: f.write(text))
        self._index = index
        for old in abandoned:
            old.unlink(missing_ok=True)
        keep = {p.name for p in self.checkpoints()[-self.keep_last:]} | {path.name}
        if self.best is not None:
            keep.add(self.best.name)
        for old in self.checkpoints():
            if old.name not in keep:
                old.unlink(missing_ok=True)
        return path

    def resume(self, *, map_location: Any = "cpu") -> Resumed | None:
        """The newest checkpoint that loads and passes every check, or ``None`` if the folder holds none.

        Tries the pointer's file first, then every other checkpoint newest first.
        Each skipped file is reported with a ``CheckpointFallback`` warning;
        if every file fails, raises ``CheckpointError`` listing them all.
        """
        files = self.checkpoints()[::-1]
        latest = self.latest
        if latest is not None and latest.exists():
            files = [latest] + [p for p in files if p != latest]
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
                warnings.warn(f"skipped {display_path(bad)} ({why}); resuming from {display_path(path)}",
                              CheckpointFallback, stacklevel=2)
            return Resumed(checkpoint, path, skipped)
        listing = "; ".join(f"{p.name}: {why}" for p, why in skipped)
        raise CheckpointError(self.folder, f"no checkpoint in this folder loads ({listing})",
                              "start the run again, or restore the folder from a backup")
