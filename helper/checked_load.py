"""Loading a checkpoint with every check: what the file is, its pickle, its archive, its digests, its CRC-32s.

Taught in notebooks/07_crash_safe_checkpoints.ipynb, section 5 (every broken file named for what it
is), and notebooks/06_safe_loading.ipynb, section 7 (never fall back to ``weights_only=False``).

``load_verified`` first recognises what the path really is (``helper.formats``: one table of file
kinds shared with the doctor), checks data.pkl's opcodes with ``helper.pickle_guard`` (exact globals,
call rules, a budget on depth, containers, memo, memory and allocations) before any other parser reads
it, validates the archive (structure, records, storage sizes) on a private copy of everything but the
tensor data (never through a shared mapping of a file another process may truncate), compares the
digest record (``helper.digest_record``), and loads with ``weights_only=True`` from the same open file
while the CRC-32 of every storage is taken as torch.load reads it (``torch.load`` never checks them, so
a flipped byte would load silently as wrong weights). Every failure, ``RecursionError`` and
``MemoryError`` included, is a ``CheckpointError`` naming the file, the cause and the fix, with a
``kind`` code. ``helper.checkpoint.load_checkpoint`` adds the checks of the checkpoint dict itself.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from helper.atomic_save import _err
from helper.crc_tap import CrcTap as _CrcTap  # a module global: tests replace it here
from helper.digest_record import digest_problem
from helper.formats import EARLIER, CheckpointError, crc_problem, kind_error, open_torch_zip, sniff
from helper.kinds import META_CAUSE, META_FIX, PLAIN_DATA_FIX, PLAIN_DATA_SAVE_FIX
from helper.pickle_guard import (
    KIND_HOSTILE,
    KIND_MALFORMED,
    KIND_TRUNCATED,
    PickleBudget,
    scan_pickle,
    torch_allowed_globals,
)

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["load_verified", "verify_zip"]

PathLike = str | os.PathLike[str]


def verify_zip(path: PathLike) -> str | None:
    """``None`` if ``path`` passes every check ``load_checkpoint`` makes before unpickling, else the cause."""
    try:
        with open(path, "rb") as f:
            allowed, infos = torch_allowed_globals(), _zip_infos(f)
            _prescan(Path(path), f, infos, allowed)
            archive = _validated(Path(path), f, infos, check_data_crc=True)
            problem = digest_problem(archive, f.fileno())
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
            path,
            f"refused by weights_only=True: it pickles {', '.join(needed)}, not plain data (nothing in it was run)",
            PLAIN_DATA_SAVE_FIX,
            kind="hostile-pickle",
        )
    if archive.scan.meta:
        raise _err(
            path,
            META_CAUSE,
            META_FIX,
            kind="not-a-checkpoint",
        )


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
                start = (
                    info.header_offset
                    + 30
                    + int.from_bytes(header[26:28], "little")
                    + int.from_bytes(header[28:30], "little")
                )
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
                raise _err(
                    copy,
                    f"is corrupted: {problem} (its bytes changed after torch.save wrote them)",
                    EARLIER + "; copy checkpoints with a checksum (sha256sum)",
                    kind="corrupted",
                )
    except CheckpointError as exc:
        raise _renamed(exc, path) from None
    finally:
        copy.unlink(missing_ok=True)
    archive.path = path
    return archive


def _renamed(exc: CheckpointError, path: Path) -> CheckpointError:
    return _err(path, exc.cause, exc.fix, kind=getattr(exc, "kind", None) or _kind_of(exc.cause))


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
        start = (
            info.header_offset + 30 + int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little")
        )
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
                raise _err(
                    path,
                    f"refused: its pickle asks for {asked:,} bytes (bytearray) from a file of {size:,} "
                    "bytes, a memory bomb (nothing was allocated)",
                    "do not load this file; ask for the weights as a state_dict or safetensors file",
                    kind=kind,
                ) from None
        if kind in (KIND_MALFORMED, KIND_TRUNCATED):
            return
        names = getattr(exc, "refused_globals", ())
        if names:
            raise _err(
                path,
                f"refused by weights_only=True: it pickles {', '.join(names)}, not plain data (nothing in it was run)",
                PLAIN_DATA_SAVE_FIX,
                kind=KIND_HOSTILE,
            ) from None
        raise _err(path, exc.cause, exc.fix, kind=kind) from None


def _meta(map_location: Any) -> bool:
    return isinstance(map_location, (str, torch.device)) and torch.device(map_location).type == "meta"


_SNIFFED_KIND = {
    "missing": "missing",
    "empty": "truncated",
    "damaged-zip": "truncated",
    "incomplete-torch-zip": "truncated",
}


def load_verified(
    path: PathLike, *, map_location: Any = "cpu", verify: bool = True, accept: Callable[[Path, Any], None] | None = None
) -> Any:
    """What ``torch.load(weights_only=True)`` returns for ``path``, once every check has passed.

    The checks, the ``kind`` codes and the messages are ``helper.checkpoint.load_checkpoint``'s (its
    docstring lists them). ``accept(path, loaded)`` may refuse what was loaded by raising
    ``CheckpointError``; anything else it raises is reported as the load's own failure.
    """
    path = Path(path)
    path = Path(path)
    kind = sniff(path)
    if kind != "torch-zip":
        err = kind_error(path, kind)
        raise _err(path, err.cause, err.fix, kind=_SNIFFED_KIND.get(kind, "not-a-checkpoint"))
    try:
        with open(path, "rb") as f:
            return _load(path, f, map_location, verify, accept)
    except CheckpointError:
        raise
    except (Exception, RecursionError, MemoryError) as exc:  # anything torch or Python raises on a crafted file
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise _err(
            path, f"could not be loaded ({type(exc).__name__}: {first[:200]})", EARLIER, kind="load-failed"
        ) from None


def _load(path: Path, f: Any, map_location: Any, verify: bool, accept: Callable[[Path, Any], None] | None) -> Any:
    allowed, infos = torch_allowed_globals(), _zip_infos(f)  # one allowlist and one directory read per load
    _prescan(path, f, infos, allowed)
    archive = _validated(path, f, infos)
    problem = digest_problem(archive, f.fileno())
    if problem is not None:
        raise _err(
            path,
            f"is corrupted: {problem}",
            EARLIER + "; copy checkpoints with a checksum (sha256sum)",
            kind="swapped" if "swapped" in problem else "corrupted",
        )
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
        raise _err(
            path,
            f"is corrupted: {problem} (its bytes changed after torch.save wrote them)",
            EARLIER + "; copy checkpoints with a checksum (sha256sum)",
            kind="corrupted",
        ) from None
    if isinstance(error, pickle.UnpicklingError):
        raise _err(
            path,
            f"refused by weights_only=True ({str(error).splitlines()[-1][:200]}), nothing in it was run",
            PLAIN_DATA_FIX,
            kind="hostile-pickle",
        ) from None
    if error is not None:
        first = (str(error).splitlines() or [type(error).__name__])[0]
        raise _err(
            path, f"torch.load failed ({type(error).__name__}: {first[:200]})", EARLIER, kind="load-failed"
        ) from None
    if accept is not None:
        accept(path, checkpoint)
    return checkpoint
