"""The CRC-32 of every storage, taken from the bytes ``torch.load`` reads: the check behind ``load_checkpoint``.

Taught in notebooks/07_crash_safe_checkpoints.ipynb, section 5 (a flipped byte is caught on loading).
torch's zip reader does not check the CRC-32s the zip stores; this ``map_location`` wrapper takes them as
torch.load hands each storage over, so nothing is read twice (``helper.checked_load`` compares them with
the zip's directory and reads the file again only when they disagree).
"""

from __future__ import annotations

import collections
import ctypes
import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

try:  # ISA-L's CRC-32 (same polynomial as zlib's, faster), as helper.formats uses
    from isal.isal_zlib import crc32 as _crc32
except ImportError:
    from zlib import crc32 as _crc32

__all__ = ["CrcTap"]


class CrcTap:
    """A ``map_location`` for ``torch.load`` that takes the CRC-32 of each storage as torch.load reads it from the
    file (before it is moved anywhere), then places it as the caller's ``map_location`` would.

    torch.load calls it once per storage record, so what it saw is every tensor byte that was loaded: no
    second read of the file, no walk through the result. Storages of 1 MiB or more are checked by a thread
    while torch.load reads the next records (its reads release the GIL), handed over in batches of
    ``BATCH`` bytes (one wake-up per batch: 1-1.5 ms less than one per storage on a 384 MB file, ``make
    benchmark``), smaller ones at once. (Where the
    file's byte order differs from this machine's, torch swaps the bytes first; the CRC-32s then disagree
    and the file is read to decide.)
    """

    THREAD_FROM = 1 << 20
    BATCH = 16 << 20

    def __init__(self, map_location: Any, expected: int | None = None) -> None:
        """``expected``: how many bytes the storages of ``THREAD_FROM`` bytes or more hold in all, where the
        caller knows (the zip's members): the last ``BATCH`` bytes are then handed over storage by storage,
        so that the thread's work left when torch.load returns is one storage, not a batch."""
        self.map_location = map_location
        self.left = expected if expected is not None else 1 << 62
        self.failed = False  # the thread raised (its CRC-32s are missing)
        self.seen: collections.Counter[tuple[int, int]] = collections.Counter()
        self.queue: queue.SimpleQueue[list[Any] | None] = queue.SimpleQueue()
        self.batch: list[Any] = []  # storages for the thread, handed over once they add up to BATCH bytes
        self.batched = 0
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
        while (batch := self.queue.get()) is not None:
            for storage in batch:
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
                self.batch.append(storage)  # kept alive by the batch until its CRC-32 is taken
                self.batched += n
                self.left -= n
                if self.batched >= self.BATCH or self.left < self.BATCH:
                    self.queue.put(self.batch)
                    self.batch, self.batched = [], 0
        where = self.map_location
        if where is None:
            return torch.serialization.default_restore_location(storage, location)
        if isinstance(where, dict):
            return torch.serialization.default_restore_location(storage, where.get(location, location))
        if isinstance(where, (str, bytes, torch.device)):
            return torch.serialization.default_restore_location(
                storage, str(where) if isinstance(where, torch.device) else where
            )
        result = where(storage, location)
        return torch.serialization.default_restore_location(storage, location) if result is None else result

    def finish(self) -> None:
        """Wait for the thread's last CRC-32 (always called, so no thread outlives the load)."""
        if self.worker is not None:
            if self.batch:
                self.queue.put(self.batch)
                self.batch, self.batched = [], 0
            self.queue.put(None)
            try:
                self.seen += self.worker.result()
            except Exception:  # the thread failed: what it saw is missing; the caller reads the file instead
                self.failed = True
            finally:
                if self.pool is not None:
                    self.pool.shutdown()
                self.pool = self.worker = None

    def agrees(self, members: list[Any]) -> bool:
        """Did torch.load read exactly the bytes (CRC-32 and size) of the zip's tensor members?"""
        return self.seen == collections.Counter((m.crc, m.size) for m in members if m.size)
