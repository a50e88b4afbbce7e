"""Whether a checkpoint file's bytes can be trusted, decided before anything is unpickled.

The table of file kinds and ``sniff`` live in ``helper.kinds`` (re-exported
here, with ``CheckpointError``). For ``torch.save`` files,
``open_torch_zip`` validates the archive more strictly than ``torch.load``
(no compressed or directory members, local headers that agree with the
central directory, sizes that agree with the pickle, a ``version`` record,
every CRC-32) and ``helper.pickle_guard.survey_pickle`` walks
``data.pkl``'s opcodes without executing them: the globals it names (every
protocol), the storages it declares and the memory it would ask for
(``bytearray(N)``), so a tiny file cannot allocate gigabytes.
"""

from __future__ import annotations

import bisect
import contextlib
import io
import json
import mmap
import os
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helper.kinds import EARLIER, KINDS, RECORDS, Kind, PathLike, Probe, kind_error, sniff  # noqa: F401 (re-exported)
from helper.paths import display_path
from helper.pickle_guard import PickleScan, storage_bytes, survey_pickle

try:  # ISA-L's CRC-32: same polynomial as zlib's, about 7x faster (make benchmark); optional
    from isal.isal_zlib import crc32 as _crc32
except ImportError:
    from zlib import crc32 as _crc32


class CheckpointError(Exception):
    """A checkpoint file could not be used. The message names the file, the cause and a fix.

    ``kind`` is a short code for the kind of failure (a key of ``KINDS`` where one applies), "" if unset.
    """

    def __init__(self, path: PathLike | None, cause: str, fix: str, *, kind: str = ""):
        self.path, self.cause, self.fix, self.kind = (None if path is None else Path(path)), cause, fix, kind
        where = "the checkpoint" if path is None else display_path(path, full_outside=True)
        super().__init__(f"{where}: {cause}. Fix: {fix}")


# --------------------------------------------------------------------------------------------------
# A pickle's opcodes: listed by helper.pickle_guard's walker (the one opcode walker), re-exported here


# --------------------------------------------------------------------------------------------------
# A torch.save zip, validated before torch.load sees it


@dataclass
class Member:
    name: str
    start: int  # of its data
    size: int
    crc: int


@dataclass
class TorchZip:
    """A validated ``torch.save`` archive: its members (data offsets), records, and the scan of ``data.pkl``."""

    path: Path
    prefix: str
    members: dict[str, Member]
    records: dict[str, str]
    scan: PickleScan

    def tensor_members(self) -> list[Member]:
        return [m for n, m in self.members.items() if n.startswith(self.prefix + "data/")]


_CHUNK = 1 << 20


def crc_problem(path: PathLike, members: list[Member], view: memoryview | None = None) -> str | None:
    """The first member whose bytes do not match their CRC-32, as a sentence, or ``None``.

    Without ``view`` the file is read in 1 MiB chunks into one reused buffer: no page of the file is
    mapped (a file cut short meanwhile gives a short read, not a SIGBUS), and a thread running this
    beside ``torch.load`` costs it less than mapping the file did (``make benchmark``).
    """
    if view is None:
        buffer = memoryview(bytearray(_CHUNK))
        with open(path, "rb", buffering=0) as f:
            for m in members:
                crc, left = 0, m.size
                f.seek(m.start)
                while left:
                    got = f.readinto(buffer[: min(_CHUNK, left)])
                    if not got:
                        return f"member {m.name!r} is cut short (the file ends inside it)"
                    crc, left = _crc32(buffer[:got], crc), left - got
                if crc != m.crc:
                    return f"member {m.name!r} fails its CRC-32 check"
        return None
    for m in members:
        if _crc32(view[m.start : m.start + m.size]) != m.crc:
            return f"member {m.name!r} fails its CRC-32 check"
    return None


def _corrupt(path: Path, problem: str) -> CheckpointError:
    why = (
        "its bytes changed after torch.save wrote them"
        if "CRC-32" in problem
        else "torch.save never writes this: a damaged or crafted file"
    )
    return CheckpointError(
        path, f"is corrupted: {problem} ({why})", EARLIER + "; copy checkpoints with a checksum (sha256sum)"
    )


def _central_directory(view: memoryview, size: int) -> tuple[int, int]:
    """Offset of the central directory and its number of entries, from the end records (torch.save writes
    zip64 ones), checked for agreement and for a single disk (torch's zip reader refuses more)."""
    if size < 22 or bytes(view[size - 22 : size - 18]) != b"PK\x05\x06":
        raise ValueError("the end-of-archive record is not where torch.save puts it (no zip comment)")
    disk, cd_disk, here, total, cd_size, cd_offset, comment = struct.unpack("<HHHHIIH", view[size - 18 : size])
    end = size - 22
    if size >= 98 and bytes(view[size - 42 : size - 38]) == b"PK\x06\x07":  # zip64 locator and end record
        end = size - 98
        on_disk, where, disks = struct.unpack("<IQI", view[size - 38 : size - 22])
        if where != end or bytes(view[end : end + 4]) != b"PK\x06\x06":
            raise ValueError("the zip64 end record is not where its locator says")
        disk64, cd_disk64 = struct.unpack("<II", view[end + 16 : end + 24])
        if (on_disk, disks, disk64, cd_disk64) != (0, 1, 0, 0):
            raise ValueError("the zip64 end records name more than one disk (torch.save writes one)")
        here64, total64, size64, offset64 = struct.unpack("<QQQQ", view[end + 24 : end + 56])
        if (
            (here64, total64) != (here, total)
            and here != 0xFFFF
            or (size64, offset64) != (cd_size, cd_offset)
            and 0xFFFFFFFF not in (cd_size, cd_offset)
        ):
            raise ValueError("the zip64 end record disagrees with the end-of-archive record")
        here, total, cd_size, cd_offset = here64, total64, size64, offset64
    if disk or cd_disk or comment or here != total or cd_offset + cd_size != end:
        raise ValueError("the end-of-archive record disagrees with the central directory")
    return cd_offset, total


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")  # miniz folds ASCII only


def case_twins(names: Any) -> str | None:
    """The first two member names that differ only in ASCII letter case, as a sentence, or ``None``."""
    folded: dict[str, str] = {}
    for name in names:
        other = folded.setdefault(name.translate(_ASCII_LOWER), name)
        if other != name:
            return (
                f"members {other!r} and {name!r} differ only in letter case; torch's zip reader ignores case, "
                "so it may read either one"
            )
    return None


def read_directory(path: Path, f: Any = None) -> tuple[list[zipfile.ZipInfo], int]:
    """The zip directory of ``path`` (read from the open file ``f`` if given) and where it starts.

    ``CheckpointError`` (the ``damaged-zip`` cause) if ``zipfile`` cannot read it."""
    try:
        with zipfile.ZipFile(path if f is None else f) as z:
            return z.infolist(), z.start_dir
    except Exception as exc:  # zipfile raises many kinds on a damaged directory
        raise CheckpointError(path, KINDS["damaged-zip"].cause + f" ({type(exc).__name__}: {exc})", EARLIER) from None


_HOLE_FROM = 4096  # tensor members larger than this are not read into a Snapshot
_EXTRA_GUESS = 128  # torch.save's extra field pads each member's data to 64 bytes: under 128 bytes


class Sparse:
    """Bytes of a file at their offsets, read in pieces (``segments``); the bytes between them read as zeros.

    Sliced like the ``memoryview`` of a mapped file (``view[a:b]``, ``len(view)``): a slice inside one
    piece is a view of it, one across pieces or holes is assembled."""

    def __init__(self, segments: list[tuple[int, bytes]], size: int) -> None:
        self.segments, self.size = sorted(segments, key=lambda s: s[0]), size
        self.starts = [start for start, _ in self.segments]

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key: slice) -> memoryview | bytes:
        start, stop, _ = key.indices(self.size)
        if stop <= start:
            return b""
        whole = self.piece(start, stop - start)
        if whole is not None and len(whole) == stop - start:
            return whole
        out = bytearray(stop - start)
        for first, data in self.segments[max(bisect.bisect_right(self.starts, start) - 1, 0) :]:
            if first >= stop:
                break
            lo, hi = max(start, first), min(stop, first + len(data))
            if lo < hi:
                out[lo - start : hi - start] = data[lo - first : hi - first]
        return bytes(out)

    def release(self) -> None:
        """Nothing to release (a ``memoryview`` of a mapped file has to be)."""

    def piece(self, at: int, n: int) -> memoryview | None:
        """The bytes from ``at`` (at most ``n``) that one segment holds, or ``None`` where ``at`` is in a hole."""
        i = bisect.bisect_right(self.starts, at) - 1
        if i < 0:
            return None
        first, data = self.segments[i]
        if at >= first + len(data):
            return None
        return memoryview(data)[at - first : min(at - first + n, len(data))]

    def next_start(self, at: int) -> int:
        """Where the next segment after ``at`` starts (the end of the file if none does)."""
        i = bisect.bisect_right(self.starts, at)
        return self.starts[i] if i < len(self.starts) else self.size


@dataclass
class Snapshot:
    """Every byte of an open zip file but its large tensor members' data, read once into memory.

    ``Snapshot.read`` reads the file, open already, with ``pread``, never through a mapping of the file:
    another process truncating the file (``open(path, "wb")``) meanwhile gives short reads, which the
    checks name, not a SIGBUS. The large tensor members' data (larger than ``_HOLE_FROM`` bytes) is not
    read: it reads as zeros, and only CRC-32s taken elsewhere vouch for it. ``load_checkpoint``'s guard
    and ``open_torch_zip`` then check the same bytes.
    """

    view: Sparse
    size: int  # of the file when it was read
    infos: list[zipfile.ZipInfo]  # its directory, as zipfile read it
    start_dir: int

    @classmethod
    def read(cls, f: Any, infos: list[zipfile.ZipInfo], start_dir: int) -> Snapshot:
        """The snapshot of the open file ``f``, whose directory ``zipfile`` read as ``infos``.

        One read per large tensor member (from the end of the last one to just past its local header and
        the extra field torch.save writes) and one for the rest of the file: about 100 small reads for a
        384 MB checkpoint."""
        size = os.fstat(f.fileno()).st_size
        segments: list[tuple[int, bytes]] = []
        pos = 0
        for info in sorted(infos, key=lambda i: i.header_offset):
            at = info.header_offset
            if info.file_size <= _HOLE_FROM or not info.filename.partition("/")[2].startswith("data/"):
                continue
            if at < pos or at + 30 > size:
                continue  # overlapping or outside the file: the checks name it
            end = min(at + 30 + len(info.orig_filename.encode("utf-8")) + _EXTRA_GUESS, size)
            segments.append((pos, _read_at(f, end - pos, pos)))
            start = _data_start(segments[-1][1][at - pos : at - pos + 30], at)
            if start is None:
                pos = end
                continue  # not a local header: the checks name it
            if start >= start_dir:
                pos = end
                continue  # data at or past the zip directory (crafted): read it all, the checks name it
            # a longer extra field than torch.save writes (start > end) is left unread: no check reads its bytes;
            # the zip directory and the end records are always read (the hole stops where the directory starts)
            pos = max(min(start + info.file_size, size, start_dir), end)
        segments.append((pos, _read_at(f, size - pos, pos)))
        return cls(Sparse(segments, size), size, infos, start_dir)

    def member(self, info: zipfile.ZipInfo) -> bytes | None:
        """A small member's bytes, where its local header says they start (``None`` if it is not a header)."""
        start = _data_start(bytes(self.view[info.header_offset : info.header_offset + 30]), info.header_offset)
        return None if start is None else bytes(self.view[start : start + info.file_size])

    def reader(self, f: Any) -> SnapshotReader:
        """A file object for ``torch.load``: the snapshot's bytes where it has them, ``f``'s elsewhere."""
        return SnapshotReader(self, f)

    def changed(self) -> bool:
        """Whether the zip directory in the snapshot differs from ``infos``, the one read before it (another
        process rewrote the file in between). The checks use ``infos`` and ``torch.load`` parses the
        snapshot's: they must be the same directory, or torch could look up a data.pkl no check has seen."""
        try:
            with zipfile.ZipFile(self.reader(None)) as z:
                again, start_dir = z.infolist(), z.start_dir
        except Exception:  # zipfile raises many kinds on a damaged directory
            return True
        return start_dir != self.start_dir or [_entry(i) for i in again] != [_entry(i) for i in self.infos]


def _entry(info: zipfile.ZipInfo) -> tuple[Any, ...]:
    """Every field of a directory entry that says where a member is, what it is and how it is stored."""
    return (
        info.orig_filename,
        info.header_offset,
        info.file_size,
        info.compress_size,
        info.CRC,
        info.compress_type,
        info.flag_bits,
        info.external_attr,
        info.internal_attr,
        info.volume,
        info.extra,
    )


class SnapshotReader(io.RawIOBase):
    """The file as checked: ``torch.load`` reading this reads the snapshot's bytes (the zip's directory and
    headers, ``data.pkl``, the records: what the guard and ``open_torch_zip`` checked) and only the large
    tensors' data from the file itself (``pread`` from its descriptor), where a CRC-32 tap checks it.

    Without it, ``torch.load`` would read the file again after the checks, and another process could
    change ``data.pkl`` in between (a pickle the guard never saw). It costs about 0.5 ms on a 384 MB
    checkpoint (214 reads, 98 of them from the file).
    """

    def __init__(self, snapshot: Snapshot, f: Any) -> None:
        """``f``: the open file the holes are read from; ``None``: holes read as zeros (the snapshot alone)."""
        super().__init__()
        self.view, self.size, self.pos = snapshot.view, snapshot.size, 0
        self.fd = None if f is None else f.fileno()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise OSError(22, "Invalid argument: a negative position")
        self.pos = base + offset
        return self.pos

    def readinto(self, buffer: Any) -> int:
        """Up to ``len(buffer)`` bytes from the position, piece by piece: from a snapshot segment where one
        holds them, else from the file (a hole: tensor data). The file is as long as it was when checked."""
        out = memoryview(buffer).cast("B")
        n = max(0, min(len(out), self.size - self.pos))
        done = 0
        while done < n:
            at = self.pos + done
            piece = self.view.piece(at, n - done)
            if piece is not None:
                out[done : done + len(piece)] = piece
                done += len(piece)
                continue
            upto = min(self.view.next_start(at), self.pos + n)
            if self.fd is None:
                out[done : done + upto - at] = bytes(upto - at)
                done += upto - at
                continue
            got = _preadinto(self.fd, out[done : done + upto - at], at)
            done += got
            if got < upto - at:
                break  # the file is shorter now than when it was checked: torch.load names what is missing
        self.pos += done
        return done


def _read_at(f: Any, n: int, offset: int) -> bytes:
    """``n`` bytes of ``f`` from ``offset`` (fewer where the file ends, cut short meanwhile: the checks say so)."""
    buffer = bytearray(max(n, 0))
    return bytes(buffer[: _preadinto(f.fileno(), memoryview(buffer), offset)])


def _preadinto(fd: int, view: memoryview, offset: int) -> int:
    """Fill ``view`` from the file ``fd`` at ``offset`` until it ends; how many bytes were read."""
    done = 0
    while done < len(view):
        if hasattr(os, "preadv"):  # straight into the view, without the file position
            got = os.preadv(fd, [view[done:]], offset + done)
        else:  # Windows: nothing else reads this descriptor meanwhile
            os.lseek(fd, offset + done, os.SEEK_SET)
            part = os.read(fd, len(view) - done)
            view[done : done + len(part)] = part
            got = len(part)
        if not got:
            break
        done += got
    return done


def _data_start(header: bytes, offset: int) -> int | None:
    """Where a member's data starts, from its 30-byte local header at ``offset`` (``None`` if it is not one)."""
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        return None
    return offset + 30 + int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little")


def _read_zip(
    path: Path, validate: Callable[[memoryview, int, dict[str, Member]], Any], snapshot: Snapshot | None = None
) -> Any:
    """Check a zip's end records and every member against its local header, then call ``validate``.

    Members must be stored (not compressed), carry no directory, attribute
    or encryption bits, have local headers that agree with the central
    directory, lie inside the file without overlapping, and have names that
    differ in more than letter case (torch's reader, miniz, finds a record by
    its name in any case: of ``data.pkl`` and ``DATA.PKL`` it may read either).
    Without ``snapshot`` the file at ``path`` is mapped; with one, its bytes are read there.
    """
    infos, start_dir = (snapshot.infos, snapshot.start_dir) if snapshot is not None else read_directory(path)
    with contextlib.ExitStack() as stack:
        view: Any
        if snapshot is not None:
            view, size = snapshot.view, snapshot.size
        else:
            f = stack.enter_context(open(path, "rb"))
            view = memoryview(stack.enter_context(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)))
            size = len(view)
        try:
            cd_offset, entries = _central_directory(view, size)
            if cd_offset != start_dir:
                raise ValueError("the central directory is not where the end record says")
            if entries != len(infos):  # torch's zip reader would see only the first `entries`
                raise ValueError(f"the end record counts {entries} members, the central directory holds {len(infos)}")
            ordered = sorted(infos, key=lambda i: i.header_offset)
            if ordered and ordered[0].header_offset != 0:  # torch.load takes a file not starting PK\3\4 as legacy
                raise ValueError(
                    f"{ordered[0].header_offset} bytes come before the first member (torch.save writes none)"
                )
            members: dict[str, Member] = {}
            ends = 0
            for info in ordered:
                members[info.filename] = member = _member(view, info, cd_offset, ends, members)
                ends = member.start + member.size
            twins = case_twins(members)
            if twins is not None:
                raise ValueError(twins)
            return validate(view, size, members)
        except (ValueError, struct.error, IndexError, KeyError, EOFError) as exc:
            raise _corrupt(path, str(exc) or type(exc).__name__) from None
        finally:
            view.release()


def _member(view: memoryview, info: zipfile.ZipInfo, cd_offset: int, ends: int, seen: dict[str, Member]) -> Member:
    name, start = info.filename, info.header_offset
    if (
        info.compress_type != zipfile.ZIP_STORED
        or info.external_attr
        or info.internal_attr
        or info.flag_bits & ~0x808
        or info.volume
        or name.endswith("/")
        or name in seen
    ):
        raise ValueError(
            f"member {name!r} has attributes torch.save never writes (compressed, a folder, encrypted or repeated)"
        )
    if start < ends or bytes(view[start : start + 4]) != b"PK\x03\x04":
        raise ValueError(f"the local header of member {name!r} is damaged")
    flags, method = struct.unpack("<HH", view[start + 6 : start + 10])
    name_len, extra_len = struct.unpack("<HH", view[start + 26 : start + 30])
    data = start + 30 + name_len + extra_len
    if (
        flags != info.flag_bits
        or method != 0
        or bytes(view[start + 30 : data - extra_len]) != info.orig_filename.encode("utf-8")
    ):
        raise ValueError(f"the local header of member {name!r} disagrees with the directory")
    if info.compress_size != info.file_size or data + info.file_size > cd_offset:
        raise ValueError(f"member {name!r} runs past its space in the file")
    return Member(name, data, info.file_size, info.CRC)


def check_zip(path: PathLike) -> dict[str, Member]:
    """Validate any zip that PyTorch wrote (``torch.export``, TorchScript): structure and every CRC-32."""

    def validate(view: memoryview, size: int, members: dict[str, Member]) -> dict[str, Member]:
        problem = crc_problem(path, list(members.values()), view)
        if problem is not None:
            raise ValueError(problem)
        return members

    return _read_zip(Path(path), validate)


# Every name torch.save writes after its archive's folder (torch/serialization.py ``_save``, and the version
# records of its zip writer), plus the digest record helper.checkpoint.save_checkpoint adds (DIGEST_RECORD there)
_SAVED_NAMES = frozenset({"data.pkl", *RECORDS, ".data/helper_digests.json"})


def _saved_name(name: str, prefix: str) -> bool:
    """Whether torch.save writes ``name`` in an archive whose folder is ``prefix``: a record, or ``data/<key>``."""
    rest = name[len(prefix) :] if name.startswith(prefix) else None
    key = rest[5:] if rest is not None and rest.startswith("data/") else ""
    return rest in _SAVED_NAMES or (key.isascii() and key.isdigit() and key == str(int(key)))


def open_torch_zip(
    path: PathLike,
    *,
    check_data_crc: bool = True,
    on_tensor_members: Callable[[list[Member]], None] | None = None,
    snapshot: Snapshot | None = None,
    scan: PickleScan | None = None,
) -> TorchZip:
    """Validate a ``torch.save`` archive before unpickling it; ``CheckpointError`` names the first problem.

    The zip checks of ``_read_zip``, then: one ``data.pkl``, no member but the
    records torch.save writes beside it (``_saved_name``), a ``version``
    record, the CRC-32 of ``data.pkl`` and the small records, the pickle's
    opcodes (storages it names exist with the sizes it declares; no more
    memory asked for than the file holds) and, with ``check_data_crc``, the
    CRC-32 of every tensor's bytes. ``on_tensor_members`` is called with the tensor
    members as soon as the zip structure is known to be sound, before the pickle is
    scanned (``load_checkpoint`` starts its CRC-32 thread there). ``snapshot``: the
    file's bytes, read already (``Snapshot``; ``check_data_crc`` must then be False:
    it lacks the large tensors' bytes). ``scan``: the survey of this very ``data.pkl``
    where the caller has one (``survey_of`` the guard's report), so it is not walked
    twice.
    """
    if snapshot is not None and check_data_crc:
        raise ValueError("a Snapshot lacks the large tensors' bytes: check them with check_data_crc=False")
    path = Path(path)

    def validate(view: memoryview, size: int, members: dict[str, Member]) -> TorchZip:
        pickles = [n for n in members if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ValueError("no single <name>/data.pkl record")
        prefix = pickles[0][: -len("data.pkl")]
        stray = next((n for n in members if not _saved_name(n, prefix)), None)
        if stray is not None:
            raise ValueError(f"member {stray!r} is not a record torch.save writes beside {prefix}data.pkl")
        if prefix + "version" not in members:
            raise ValueError("the 'version' record torch.save writes is missing")
        if on_tensor_members is not None:
            on_tensor_members([m for n, m in members.items() if n.startswith(prefix + "data/")])
        problem = crc_problem(path, [m for n, m in members.items() if not n.startswith(prefix + "data/")], view)
        if problem is not None:
            raise ValueError(problem)
        records = {
            n[len(prefix) :]: bytes(view[m.start : m.start + min(m.size, 64)]).decode("ascii", "replace").strip()
            for n, m in members.items()
            if n[len(prefix) :] in RECORDS
        }
        pkl = members[prefix + "data.pkl"]
        survey = scan if scan is not None else survey_pickle(bytes(view[pkl.start : pkl.start + pkl.size]))
        for key, nbytes in storage_bytes(survey).items():
            member = members.get(f"{prefix}data/{key}")
            if member is None or member.size != nbytes:
                raise ValueError(
                    f"storage {key!r} declares {nbytes} bytes but the archive holds "
                    f"{'none' if member is None else member.size}"
                )
        if survey.allocates > size:
            raise CheckpointError(
                path,
                f"refused: its pickle asks for {survey.allocates:,} bytes (bytearray) from a "
                f"file of {size:,} bytes, a memory bomb (nothing was allocated)",
                "do not load this file; ask for the weights as a state_dict or safetensors file",
            )
        archive = TorchZip(path, prefix, members, records, survey)
        problem = crc_problem(path, archive.tensor_members(), view) if check_data_crc else None
        if problem is not None:
            raise ValueError(problem)
        return archive

    return _read_zip(path, validate, snapshot)


def check_legacy(path: PathLike) -> PickleScan:
    """Validate a legacy-format file (pickles, then each storage as its size and bytes) before unpickling it.

    Returns the scan of the main pickle; ``CheckpointError`` for anything that
    does not add up (storages whose sizes disagree, more bytes asked for than
    the file holds, bytes left over or missing).
    """
    path = Path(path)
    data = path.read_bytes()
    try:
        pos = 0
        for _ in range(3):  # magic number, protocol version, system info
            pos = survey_pickle(data, pos).end
        main = survey_pickle(data, pos)
        keys = survey_pickle(data, main.end)
        pos, sizes = keys.end, storage_bytes(main)
        if survey_pickle(data, 0).allocates or main.allocates > len(data) or sum(sizes.values()) > len(data):
            raise CheckpointError(
                path,
                f"refused: it asks for more memory ({main.allocates + sum(sizes.values()):,} "
                f"bytes) than the file holds ({len(data):,} bytes), a memory bomb",
                "do not load this file",
            )
        for key in keys.strings:
            kind, numel = main.storages[key]
            (count,) = struct.unpack("<q", data[pos : pos + 8])
            if count != numel:
                raise ValueError(f"storage {key!r} holds {count} elements where the pickle says {numel}")
            pos += 8 + sizes[key]
        if pos != len(data) or set(keys.strings) != set(main.storages):
            raise ValueError("its storages do not add up to the file's length")
        return main
    except (ValueError, struct.error, KeyError, IndexError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            path, f"is corrupted: {exc} (legacy format: no checksums to say where)", EARLIER
        ) from None


def safetensors_header(path: Path) -> dict[str, Any]:
    """The header of a safetensors file once ``safetensors`` itself has validated it (``CheckpointError`` if not)."""
    from safetensors import safe_open

    try:
        with safe_open(path, "pt") as f:
            keys = list(f.keys())
            metadata = f.metadata() or {}
            shapes = {k: (f.get_slice(k).get_shape(), f.get_slice(k).get_dtype()) for k in keys}
    except Exception as exc:  # safetensors raises SafetensorError and others; its message is the cause
        raise CheckpointError(
            path,
            f"is not a valid safetensors file ({str(exc).splitlines()[0][:160]})" + _safetensors_truncated(path),
            EARLIER,
        ) from None
    return {"tensors": shapes, "metadata": metadata}


def _safetensors_truncated(path: Path) -> str:
    """``": truncated ..."`` when the header promises more bytes than the file has (else "")."""
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(min(length, 100 << 20)))
        end = 8 + length + max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__")
        size = path.stat().st_size
        return f": truncated, the header promises {end} bytes but the file has {size}" if end > size else ""
    except Exception:  # the header itself is unreadable: safetensors' message says enough
        return ""


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(path, f"is not valid JSON ({exc})", "restore the file from where it came") from None
