"""Opcode handlers, control: the protocol, frames, MARKs, the stack and the memo."""

from __future__ import annotations

from functools import partial

from helper.pickle_guard import budget as b
from helper.pickle_guard.state import Handler, Scan, register
from helper.pickle_guard.values import U8, U32, U64

HANDLERS: dict[int, Handler] = {}
_op = partial(register, HANDLERS)


@_op(b"\x80")
def proto(s: Scan) -> None:
    """``PROTO``."""
    s.protocol(s.fixed(1, U8))


@_op(b"\x95")
def frame(s: Scan) -> None:
    """``FRAME``: a length the walker does not need."""
    s.fixed(8, U64)


@_op(b"(")
def mark(s: Scan) -> None:
    """``MARK``: a new stack frame, counted against ``max_marks``."""
    s.metastack.append(s.stack)
    s.stack = []
    if len(s.metastack) > s.budget.max_marks:
        raise s.over("this many MARKs open at once", len(s.metastack), s.budget.max_marks)
    s.cost(b.C_MARK)


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
    s.push(s.top())
    s.cost(b.C_SLOT)


@_op(b"h", b"j", b"g")
def get(s: Scan) -> None:
    """``BINGET``, ``LONG_BINGET``, ``GET``: a memo entry the pickle stored."""
    code = s.data[s.here]
    i = s.fixed(1, U8) if code == 0x68 else s.fixed(4, U32) if code == 0x6A else s.text_int()
    obj = s.memo.get(i)
    if obj is None:
        raise s.malformed(f"GET at byte {s.here} of memo entry {i}, never stored")
    s.push(obj)
    s.cost(b.C_SLOT)


@_op(b"q", b"r", b"p", b"\x94")
def put(s: Scan) -> None:
    """``BINPUT``, ``LONG_BINPUT``, ``PUT``, ``MEMOIZE``: a new entry counted against ``max_memo``."""
    code = s.data[s.here]
    i = (s.fixed(1, U8) if code == 0x71 else s.fixed(4, U32) if code == 0x72
         else s.text_int() if code == 0x70 else len(s.memo))
    if i < 0:
        s.negative_memo()
    top = s.top()
    if i not in s.memo:
        if len(s.memo) >= s.budget.max_memo:
            raise s.over("this many memo entries", len(s.memo) + 1, s.budget.max_memo)
        s.cost(b.C_MEMO)
    s.memo[i] = top
