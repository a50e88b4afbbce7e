"""Loading a checkpoint with every check: what the file is, its pickle, its archive, its digests, its CRC-32s.

Taught in notebooks/07_crash_safe_checkpoints.ipynb, section 5 (every broken file named for what it
is), and notebooks/06_safe_loading.ipynb, section 7 (never fall back to ``weights_only=False``).

``load_verified`` first recognises what the path really is (``helper.formats``: one table of file
kinds shared with the doctor), reads every byte of the file but the large tensors' data once
(``formats.Snapshot``: ``pread`` from the open file, never a mapping another process could truncate
into a SIGBUS), checks data.pkl's opcodes there with ``helper.pickle_guard`` (exact globals, call
rules, a budget on depth, containers, memo, memory and allocations) before any other parser reads it,
validates the archive on the same bytes (structure, records, storage sizes: the guard's walk gives
them, ``survey_of``, so data.pkl is walked once), compares the digest record
(``helper.digest_record``), and loads with ``weights_only=True`` through ``formats.SnapshotReader``:
torch.load reads the very bytes the checks read (the zip directory is read twice and must agree, so a
writer cannot slip a pickle in between), and only the large tensors' data from the file, whose CRC-32
is taken as torch.load reads each storage (``torch.load`` never checks them, so a flipped byte would
load silently as wrong weights; bytes that fail are refused even where the file reads correctly
afterwards). Every failure, ``RecursionError`` and
``MemoryError`` included, is a ``CheckpointError`` naming the file, the cause and the fix, with a
``kind`` code. ``helper.checkpoint.load_checkpoint`` adds the checks of the checkpoint dict itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
import sys
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, cast

import torch

from helper.atomic_save import _err
from helper.crc_tap import CrcTap as _CrcTap  # a module global: tests replace it here
from helper.digest_record import digest_problem
from helper.formats import (
    EARLIER,
    CheckpointError,
    Snapshot,
    crc_problem,
    kind_error,
    open_torch_zip,
    read_directory,
    sniff,
)
from helper.kinds import META_CAUSE, META_FIX, PLAIN_DATA_FIX, PLAIN_DATA_SAVE_FIX
from helper.pickle_guard import (
    KIND_HOSTILE,
    KIND_MALFORMED,
    KIND_TRUNCATED,
    PickleBudget,
    PickleScan,
    scan_pickle,
    survey_of,
    torch_allowed_globals,
)

__all__ = ["load_verified", "verify_zip"]

PathLike = str | os.PathLike[str]


def verify_zip(path: PathLike) -> str | None:
    """``None`` if ``path`` passes every check ``load_checkpoint`` makes before unpickling, else the cause."""
    try:
        with open(path, "rb") as f:
            allowed = torch_allowed_globals()
            snapshot = _snapshot(Path(path), f)
            scan = _prescan(Path(path), snapshot, allowed)
            archive = _validated(Path(path), f, snapshot, scan, check_data_crc=True)
            problem = digest_problem(archive, snapshot)
            if problem is not None:
                return f"is corrupted: {problem}"
            _refuse_unsafe(Path(path), archive, allowed)
    except CheckpointError as exc:
        return exc.cause
    except OSError as exc:
        return f"could not be read ({exc.strerror or type(exc).__name__})"
    return None


def _snapshot(path: Path, f: Any, directory: tuple[list[zipfile.ZipInfo], int] | None = None) -> Snapshot:
    """The bytes every check before ``torch.load`` reads, read once from the open file ``f`` (``Snapshot``).

    ``directory``: the zip directory of ``f`` if the caller has read it (``_directory``). ``CheckpointError``
    if the file was rewritten between that read and the snapshot: the directory torch.load would parse
    (the snapshot's) must be the one the checks use."""
    if directory is None:
        try:
            directory = read_directory(path, f)
        except CheckpointError as exc:
            raise _renamed(exc, path) from None
    snapshot = Snapshot.read(f, *directory)
    if snapshot.changed():
        raise _err(
            path,
            "changed while it was being read (its zip directory differs between two reads: another process is "
            "writing it)",
            "load it again once the process writing it is done (save_checkpoint replaces a file in one rename)",
            kind="load-failed",
        )
    return snapshot


def _directory(path: Path, f: Any) -> tuple[list[zipfile.ZipInfo], int] | None:
    """The zip directory of the open file ``f`` (read once per load: sniff and the snapshot share it), or
    ``None`` where ``zipfile`` cannot read one (``sniff`` then names what the file is)."""
    try:
        return read_directory(path, f)
    except CheckpointError:
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


def _validated(path: Path, f: Any, snapshot: Snapshot, scan: Any, *, check_data_crc: bool = False) -> Any:
    """``open_torch_zip`` on ``snapshot`` (no mapping of the file), with the guard's ``scan`` if it has one.

    With ``check_data_crc``, the tensors' CRC-32s are then checked by reading them from ``f``."""
    try:
        archive = open_torch_zip(path, check_data_crc=False, snapshot=snapshot, scan=scan)
        if check_data_crc:
            problem = crc_problem(_fd_path(f, path), archive.tensor_members())
            if problem is not None:
                raise _err(
                    path,
                    f"is corrupted: {problem} (its bytes changed after torch.save wrote them)",
                    EARLIER + "; copy checkpoints with a checksum (sha256sum)",
                    kind="corrupted",
                )
    except CheckpointError as exc:
        raise _renamed(exc, path) from None
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


def _prescan(path: Path, snapshot: Snapshot, allowed: frozenset[str]) -> PickleScan | None:
    """``helper.pickle_guard``'s budget and rules on data.pkl, before anything else parses it; its survey.

    Runs first, so that no other reader (``open_torch_zip``, torch's unpickler) walks a pickle that would
    build millions of objects. A data.pkl that is not intact (its CRC-32 fails, it is compressed, its
    sizes do not fit the file) is left to ``open_torch_zip``, which names the damage; so is a pickle that
    is merely malformed (``None`` is returned then: ``open_torch_zip`` surveys it itself). Globals outside
    the allowlist give the message ``_refuse_unsafe`` gives (the names it pickles), whatever else the
    pickle holds. Returns the survey of data.pkl (``survey_of``): one walk serves both.
    """
    pickles = [i for i in snapshot.infos if i.filename.endswith("/data.pkl") and i.filename.count("/") == 1]
    if len(pickles) != 1 or pickles[0].compress_type != zipfile.ZIP_STORED or pickles[0].file_size > snapshot.size:
        return None
    info = pickles[0]
    data = snapshot.member(info)
    if data is None or len(data) != info.file_size or zlib.crc32(data) != info.CRC:
        return None
    size = snapshot.size
    budget = dataclasses.replace(PickleBudget.for_size(len(data)), max_alloc=(1 << 20) + size)  # what the file holds
    try:
        report = scan_pickle(data, allowed=allowed, budget=budget, name="data.pkl")
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
            return None
        names = getattr(exc, "refused_globals", ())
        if names:
            raise _err(
                path,
                f"refused by weights_only=True: it pickles {', '.join(names)}, not plain data (nothing in it was run)",
                PLAIN_DATA_SAVE_FIX,
                kind=KIND_HOSTILE,
            ) from None
        raise _err(path, exc.cause, exc.fix, kind=kind) from None
    return None if report.foreign_ids else survey_of(report)  # a foreign id: open_torch_zip names it


def _swapped(archive: Any) -> bool:
    """Whether torch.load swaps the tensors' bytes (a file written on a machine of the other byte order) before
    the CRC-32 tap sees them: the tap cannot judge those, the file is read instead."""
    order = archive.records.get("byteorder")
    return order is not None and order != sys.byteorder


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
    try:
        with contextlib.ExitStack() as stack:
            try:
                f = stack.enter_context(open(path, "rb"))
                directory = _directory(path, f)
            except OSError:  # a folder, a missing file...: sniff names it
                f, directory = None, None
            kind = sniff(path, None if directory is None else [info.filename for info in directory[0]])
            if kind != "torch-zip":
                err = kind_error(path, kind)
                raise _err(path, err.cause, err.fix, kind=_SNIFFED_KIND.get(kind, "not-a-checkpoint"))
            if f is None or directory is None:
                raise _err(path, "changed while it was being read", EARLIER, kind="load-failed")
            return _load(path, f, directory, map_location, verify, accept)
    except CheckpointError:
        raise
    except (Exception, RecursionError, MemoryError) as exc:  # anything torch or Python raises on a crafted file
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise _err(
            path, f"could not be loaded ({type(exc).__name__}: {first[:200]})", EARLIER, kind="load-failed"
        ) from None


def _load(
    path: Path,
    f: Any,
    directory: tuple[list[zipfile.ZipInfo], int],
    map_location: Any,
    verify: bool,
    accept: Callable[[Path, Any], None] | None,
) -> Any:
    allowed = torch_allowed_globals()  # one allowlist per load, for the guard and the check after it
    snapshot = _snapshot(path, f, directory)  # one read of every byte but the large tensors'
    scan = _prescan(path, snapshot, allowed)
    archive = _validated(path, f, snapshot, scan)
    problem = digest_problem(archive, snapshot)
    if problem is not None:
        raise _err(
            path,
            f"is corrupted: {problem}",
            EARLIER + "; copy checkpoints with a checksum (sha256sum)",
            kind="swapped" if "swapped" in problem else "corrupted",
        )
    _refuse_unsafe(path, archive, allowed)
    members = archive.tensor_members()
    threaded = sum(m.size for m in members if m.size >= _CrcTap.THREAD_FROM)
    tap = _CrcTap(map_location, threaded) if verify and not _meta(map_location) else None
    checkpoint, error, problem = None, None, None
    try:
        checked = cast(IO[bytes], snapshot.reader(f))  # torch.load reads the bytes the checks read (tensors': f's)
        checkpoint = torch.load(checked, map_location=map_location if tap is None else tap, weights_only=True)
    except (Exception, RecursionError, MemoryError) as exc:  # judged below, once the CRCs are known
        error = exc
    finally:
        if tap is not None:
            tap.finish()
    if verify and (tap is None or error is not None or tap.failed or _swapped(archive)):
        problem = crc_problem(_fd_path(f, path), members)  # nothing the tap can judge: read the file (rare)
    elif verify and tap is not None and not tap.agrees(members):  # torch.load's bytes are not the zip's: refused
        problem = crc_problem(_fd_path(f, path), members)  # which member, if the file itself is damaged
        if problem is None:  # the file is sound now: it changed while torch.load read it
            raise _err(
                path,
                "changed while it was being read (the tensor bytes torch.load read fail their CRC-32 check, "
                "the file's own bytes pass it now: another process wrote it meanwhile)",
                "load it again once the process writing it is done (save_checkpoint replaces a file in one rename)",
                kind="load-failed",
            )
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
