"""Opcode handlers, control: the protocol, frames, MARKs, the stack and the memo."""

from __future__ import annotations

from functools import partial

from helper.pickle_guard import budget as b
from helper.pickle_guard.state import Handler, Scan, register
from helper.pickle_guard.values import U32, U64

HANDLERS: dict[int, Handler] = {}
_op = partial(register, HANDLERS)


@_op(b"\x80")
def proto(s: Scan) -> None:
    """``PROTO``."""
    s.protocol(s.byte())


@_op(b"\x95")
def frame(s: Scan) -> None:
    """``FRAME``: a length the walker does not need."""
    s.fixed(8, U64)


@_op(b"(")
def mark(s: Scan) -> None:
    """``MARK``: a new stack frame."""
    s.open_mark()


@_op(b"0")
def pop(s: Scan) -> None:
    """``POP``: the top item, or an empty MARK's frame."""
    if s.stack:
        s.stack.pop()
    else:
        s.pop_mark()


@_op(b"1")
def pop_mark(s: Scan) -> None:
    """``POP_MARK``."""
    s.pop_mark()


@_op(b"2")
def dup(s: Scan) -> None:
    """``DUP``."""
    top = s.top()  # first: a survey may close a MARK here
    s.stack.append(top)
    s.cost(b.C_SLOT)


@_op(b"h")
def binget(s: Scan) -> None:
    """``BINGET``: a memo entry the pickle stored (one-byte index)."""
    s.recall(s.byte())


@_op(b"j", b"g")
def get(s: Scan) -> None:
    """``LONG_BINGET``, ``GET``."""
    s.recall(s.fixed(4, U32) if s.data[s.here] == 0x6A else s.text_int())


@_op(b"q")
def binput(s: Scan) -> None:
    """``BINPUT``: the top item stored in the memo (one-byte index)."""
    s.remember(s.byte())


@_op(b"r", b"p", b"\x94")
def put(s: Scan) -> None:
    """``LONG_BINPUT``, ``PUT``, ``MEMOIZE``."""
    code = s.data[s.here]
    s.remember(s.fixed(4, U32) if code == 0x72 else s.text_int() if code == 0x70 else len(s.memo))
