"""Where a process's memory is and which file pages are cached (Linux ``/proc``, ``mincore``, ``fadvise``).

The probes behind lesson 10's loading table (``helper.loading_bench``) and the
page-cache cells of lessons 07 and 10
(``notebooks/10_big_models_fast_loading.ipynb``, "peak, held and private
memory"; ``notebooks/07_crash_safe_checkpoints.ipynb``, the page cache). Off
Linux the ``/proc`` figures are ``None`` and the page-cache calls answer
"unknown" (1.0 resident, nothing evicted).

RSS (resident set size: the process's memory that is in RAM) counts two kinds of
pages: private (anonymous) memory, which a load has to allocate and fill, and the
pages of a memory-mapped file, which belong to the page cache and which the
kernel can drop and read again. Lesson 10's table reports three figures: ``peak``, the growth
of the RSS *high-water mark* (``ru_maxrss``) during the load; ``held``, the
growth of the *current* RSS (``VmRSS`` in ``/proc/self/status``) after a first
touch of every weight, which can be lower than the peak once the load freed
what it no longer needs; and ``priv.``, the growth of private memory
(``RssAnon``) at that moment. ``/proc`` is Linux's: on macOS ``held`` and
``priv.`` are left blank (``None``) and only the peak is measured; Windows has
no ``fork``, so the table runs on Linux and macOS only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = [
    "MB",
    "peak_mb",
    "status_mb",
    "private_mb",
    "current_mb",
    "grown",
    "mapped_file",
    "resident_fraction",
    "evict_from_page_cache",
    "read_seconds",
]

MB = 2**20


def peak_mb() -> float | None:
    """This process's RSS high-water mark in MB (``ru_maxrss``: KiB on Linux, bytes on macOS); None on Windows."""
    try:
        import resource  # Unix only
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MB if sys.platform == "darwin" else peak / 1024


def status_mb(field: str) -> float | None:
    """A memory figure of this process in MB from Linux's ``/proc/self/status`` (``VmRSS``, ``RssAnon``...).

    None elsewhere: macOS and Windows have no ``/proc``.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def private_mb() -> float | None:
    """This process's private (anonymous) resident memory in MB; None off Linux."""
    return status_mb("RssAnon")


def current_mb() -> float | None:
    """This process's current RSS in MB (``VmRSS``: private memory plus resident mapped file pages); None off Linux."""
    return status_mb("VmRSS")


def grown(now: float | None, before: float | None) -> float | None:
    """``now - before``, or None when either figure is unknown."""
    return None if now is None or before is None else now - before


def mapped_file(tensor: torch.Tensor) -> str | None:
    """The file whose memory mapping holds ``tensor``'s data (from ``/proc/self/maps``); None for private memory."""
    address = tensor.data_ptr()
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                low, high = (int(x, 16) for x in fields[0].split("-"))
                if low <= address < high:
                    name = fields[5].strip() if len(fields) == 6 else ""
                    return name if name.startswith("/") else None
    except OSError:
        pass
    return None


def resident_fraction(path: str | os.PathLike[str]) -> float:
    """Fraction of ``path``'s pages now in the page cache (``mincore`` on a mapping; 1.0 where unknown)."""
    import ctypes
    import mmap

    size = os.path.getsize(path)
    if size == 0 or not sys.platform.startswith("linux"):
        return 1.0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    vector = (ctypes.c_ubyte * pages)()
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as mapped:
        start = (ctypes.c_ubyte * 1).from_buffer(mapped)  # a pointer to the mapping; nothing is read
        result = libc.mincore(ctypes.addressof(start), size, vector)
        del start  # the mapping can close only once no pointer into it is left
    if result != 0:
        return 1.0
    return sum(v & 1 for v in vector) / pages


def evict_from_page_cache(path: str | os.PathLike[str]) -> bool:
    """Ask Linux to drop ``path``'s pages from the page cache (no root needed); True where they are gone.

    ``posix_fadvise(POSIX_FADV_DONTNEED)`` drops only clean, unmapped pages of
    this one file, so the next read of it is cold. On file systems that keep
    files in memory (tmpfs) nothing can be dropped and this returns False.
    """
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return resident_fraction(path) < 0.05


def read_seconds(path: str | os.PathLike[str]) -> float:
    """Seconds ``cat path > /dev/null`` takes (Python's own ``readinto`` loop where ``cat`` is missing)."""
    start = time.perf_counter()
    if shutil.which("cat"):
        with open(os.devnull, "wb") as null:
            subprocess.run(["cat", os.fspath(path)], stdout=null, check=True)
    else:
        buffer = bytearray(8 * MB)
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buffer):
                pass
    return time.perf_counter() - start
