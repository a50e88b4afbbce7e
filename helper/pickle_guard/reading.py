"""Reading an opcode's argument from the pickle's bytes: fixed-size numbers, lengths, lines, text.

A part of the walker's state (``state.Scan``), kept apart so each file reads in one sitting. Every read
checks the end of the data first: a pickle cut short is "truncated", never an IndexError.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Reading:
    """The reads an opcode handler makes; ``state.Scan`` provides the position, the data and the failures."""

    data: bytes
    pos: int
    size: int
    here: int

    def truncated(self) -> Exception:  # state.Scan's
        raise NotImplementedError

    def malformed(self, cause: str) -> Exception:  # state.Scan's
        raise NotImplementedError

    def hostile(self, cause: str) -> Exception:  # state.Scan's
        raise NotImplementedError

    def fixed(self, n: int, unpack: Callable[[bytes, int], tuple[Any, ...]]) -> Any:
        """A fixed-size argument of ``n`` bytes, decoded by ``unpack``."""
        if self.pos + n > self.size:
            raise self.truncated()
        value = unpack(self.data, self.pos)[0]
        self.pos += n
        return value

    def byte(self) -> int:
        """A one-byte argument (the commonest: ``BININT1``, ``BINPUT``, ``BINGET``, short lengths)."""
        pos = self.pos
        if pos >= self.size:
            raise self.truncated()
        self.pos = pos + 1
        return self.data[pos]

    def take(self, n: int) -> bytes:
        """The next ``n`` bytes."""
        if self.pos + n > self.size:
            raise self.truncated()
        raw = self.data[self.pos : self.pos + n]
        self.pos += n
        return raw

    def line(self) -> bytes:
        """The bytes up to the next newline (which is skipped)."""
        end = self.data.find(b"\n", self.pos)
        if end < 0:
            raise self.truncated()
        raw = self.data[self.pos : end]
        self.pos = end + 1
        return raw

    def text_line(self) -> str:
        """A line naming a module or a global (``GLOBAL``, ``INST``)."""
        try:
            return self.line().decode("utf-8")
        except UnicodeDecodeError:
            raise self.hostile(f"GLOBAL at byte {self.here} names a global that is not UTF-8") from None

    def text_int(self) -> int:
        """A line holding a memo index (``GET``, ``PUT``)."""
        try:
            return int(self.line())
        except ValueError:
            raise self.malformed(f"a memo index at byte {self.here} does not parse") from None
