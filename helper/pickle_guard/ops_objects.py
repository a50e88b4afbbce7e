"""Opcode handlers, objects: globals, calls, ``BUILD``, persistent ids, and the opcodes torch.save never writes.

The guard refuses the last group at once (``Scan.never_written``); a survey reads them as an unpickler would.
"""

from __future__ import annotations

from functools import partial

from helper.pickle_guard import budget as b
from helper.pickle_guard.state import Handler, Scan, register
from helper.pickle_guard.values import I32, U16

HANDLERS: dict[int, Handler] = {}
_op = partial(register, HANDLERS)


@_op(b"b")
def build(s: Scan) -> None:
    """``BUILD``: state set on the object below it."""
    state = s.pop()
    s.set_state(s.top(), state)


@_op(b"c")
def global_(s: Scan) -> None:
    """``GLOBAL``: module and name as two lines."""
    module = s.text_line()
    qual = s.text_line()
    s.stack.append(s.global_(module, qual))


@_op(b"\x93")
def stack_global(s: Scan) -> None:
    """``STACK_GLOBAL``: module and name from the stack."""
    qual = s.pop()
    module = s.pop()
    s.stack.append(s.stack_global(module, qual))


@_op(b"R")
def reduce(s: Scan) -> None:
    """``REDUCE``: a callable and its argument tuple."""
    args = s.pop()
    func = s.pop()
    s.stack.append(s.call(func, args, "REDUCE"))


@_op(b"\x81")
def newobj(s: Scan) -> None:
    """``NEWOBJ``: a class and its argument tuple."""
    args = s.pop()
    cls = s.pop()
    s.stack.append(s.call(cls, args, "NEWOBJ"))


@_op(b"\x92")
def newobj_ex(s: Scan) -> None:
    """``NEWOBJ_EX``: a class, its argument tuple and its keyword arguments."""
    kwargs = s.pop()
    args = s.pop()
    cls = s.pop()
    s.keyword_arguments(kwargs)
    result = s.call(cls, args, "NEWOBJ_EX")
    s.place(result, kwargs)
    s.stack.append(result)


@_op(b"Q")
def binpersid(s: Scan) -> None:
    """``BINPERSID``: torch's reference to a storage."""
    storage = s.persistent(s.pop())
    s.stack.append(storage)


@_op(b"i")
def inst(s: Scan) -> None:
    """``INST``: protocol 0's instance creation (module, name, arguments above a MARK)."""
    s.never_written(f"INST at byte {s.here}: protocol 0/1 instance creation")
    module = s.text_line()
    qual = s.text_line()
    s.pop_mark()
    s.stack.append(s.global_(module, qual))


@_op(b"o")
def obj(s: Scan) -> None:
    """``OBJ``: protocol 1's instance creation (class and arguments above a MARK)."""
    s.never_written(f"OBJ at byte {s.here}: protocol 0/1 instance creation")
    s.pop_mark()
    s.stack.append(s.container("call", b.C_CALL))


@_op(b"\x82", b"\x83", b"\x84")
def ext(s: Scan) -> None:
    """``EXT1``, ``EXT2``, ``EXT4``: a global by its code in copyreg's registry."""
    s.never_written(f"EXT at byte {s.here}: a global from copyreg's extension registry")
    code = s.data[s.here]
    n = s.byte() if code == 0x82 else s.fixed(2, U16) if code == 0x83 else s.fixed(4, I32)
    s.globals.add(f"<extension code {n}>")
    s.stack.append(s.container("call", b.C_CALL))


@_op(b"P")
def persid(s: Scan) -> None:
    """``PERSID``: a persistent id as a line of text."""
    s.never_written(f"PERSID at byte {s.here}: a text persistent id")
    s.text_line()
    s.stack.append(s.container("storage", 200))


@_op(b"\x97", b"\x98")
def buffer(s: Scan) -> None:
    """``NEXT_BUFFER``, ``READONLY_BUFFER``: protocol 5's out-of-band buffers."""
    s.never_written(f"an out-of-band buffer opcode at byte {s.here}")
    value = s.pop() if s.data[s.here] == 0x98 else s.container("call", b.C_CALL)
    s.stack.append(value)
