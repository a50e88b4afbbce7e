"""Opcode handlers, literals: numbers, strings and bytes, each counted at its CPython size."""

from __future__ import annotations

import codecs
from functools import partial
from typing import Any

from helper.pickle_guard import budget as b
from helper.pickle_guard.state import Handler, Scan, register
from helper.pickle_guard.values import F64, HUGE, I32, NONE, U16, U32, U64, Obj, Sized

HANDLERS: dict[int, Handler] = {}
_op = partial(register, HANDLERS)


@_op(b"N")
def none(s: Scan) -> None:
    """``NONE``."""
    s.stack.append(NONE)
    s.cost(b.C_SLOT)


@_op(b"\x88", b"\x89")
def boolean(s: Scan) -> None:
    """``NEWTRUE``, ``NEWFALSE``."""
    s.stack.append(Obj("lit", 0, s.data[s.here] == 0x88))
    s.cost(b.C_SLOT)


@_op(b"K")
def binint1(s: Scan) -> None:
    """``BININT1``: a small int (CPython caches it: no object)."""
    s.stack.append(s.lit(s.byte(), 0))


@_op(b"M")
def binint2(s: Scan) -> None:
    """``BININT2``."""
    s.stack.append(s.lit(s.fixed(2, U16)))


@_op(b"J")
def binint(s: Scan) -> None:
    """``BININT``."""
    s.stack.append(s.lit(s.fixed(4, I32)))


@_op(b"\x8a", b"\x8b")
def long(s: Scan) -> None:
    """``LONG1``, ``LONG4``: the value is kept up to 64 bytes (a longer one stands for a huge number)."""
    n = s.byte() if s.data[s.here] == 0x8A else s.fixed(4, I32)
    if n < 0:
        raise s.malformed("LONG4 with a negative length")
    raw = s.take(n)
    s.stack.append(s.lit(int.from_bytes(raw, "little", signed=True) if n <= 64 else HUGE, 28 + n))


@_op(b"G")
def binfloat(s: Scan) -> None:
    """``BINFLOAT``."""
    s.stack.append(s.lit(s.fixed(8, F64), b.C_FLOAT))


@_op(b"I", b"L", b"F")
def text_number(s: Scan) -> None:
    """``INT`` (``00``/``01`` are booleans), ``LONG``, ``FLOAT``: protocol 0's numbers as text."""
    line = s.line().strip()
    code = s.data[s.here]
    try:
        if code == 0x46:  # F
            value: Any = float(line)
        elif code == 0x49 and line in (b"00", b"01"):
            value = line == b"01"
        else:
            value = int(line.rstrip(b"L") if code == 0x4C else line)
    except ValueError:
        raise s.malformed(f"a number at byte {s.here} does not parse") from None
    s.stack.append(s.lit(value, 28 + len(line)))


@_op(b"X", b"\x8c", b"\x8d")
def unicode(s: Scan) -> None:
    """``BINUNICODE``, ``SHORT_BINUNICODE``, ``BINUNICODE8``."""
    code = s.data[s.here]
    n = s.fixed(4, U32) if code == 0x58 else s.byte() if code == 0x8C else s.fixed(8, U64)
    s.stack.append(s.lit_str(s.take(n)))


@_op(b"V")
def unicode_text(s: Scan) -> None:
    """``UNICODE``: protocol 0's raw-unicode-escaped text."""
    try:
        value = s.line().decode("raw-unicode-escape")
    except UnicodeDecodeError:
        raise s.malformed(f"a string at byte {s.here} does not decode") from None
    s.stack.append(s.lit_text(value, 80 + 4 * len(value)))


@_op(b"U", b"T")
def binstring(s: Scan) -> None:
    """``SHORT_BINSTRING``, ``BINSTRING``: a Python 2 str (text, or bytes, once loaded)."""
    n = s.byte() if s.data[s.here] == 0x55 else s.fixed(4, I32)
    if n < 0:
        raise s.malformed("BINSTRING with a negative length")
    raw = s.take(n)
    s.stack.append(s.lit_text(raw.decode("latin-1"), 80 + 4 * n))


@_op(b"S")
def string(s: Scan) -> None:
    """``STRING``: a quoted, escaped Python 2 str."""
    raw = s.line().rstrip()
    if len(raw) < 2 or raw[0] != raw[-1] or raw[:1] not in (b"'", b'"'):
        raise s.malformed(f"STRING at byte {s.here} is not quoted")
    try:
        value = codecs.escape_decode(raw[1:-1])[0].decode("latin-1")
    except (ValueError, UnicodeDecodeError):
        raise s.malformed(f"STRING at byte {s.here} does not decode") from None
    s.stack.append(s.lit_text(value, 80 + 4 * len(value)))


@_op(b"B", b"C", b"\x8e", b"\x96")
def binbytes(s: Scan) -> None:
    """``BINBYTES``, ``SHORT_BINBYTES``, ``BINBYTES8``, ``BYTEARRAY8``: short ones kept, long ones as a length."""
    code = s.data[s.here]
    n = s.fixed(4, U32) if code == 0x42 else s.byte() if code == 0x43 else s.fixed(8, U64)
    raw = s.take(n)
    s.cost(57 + n)
    s.stack.append(Obj("lit", 0, bytes(raw) if n <= 256 else Sized(n)))
