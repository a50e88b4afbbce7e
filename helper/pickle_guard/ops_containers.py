"""Opcode handlers, containers: tuples, lists, dicts and sets, built at once or filled item by item."""

from __future__ import annotations

from functools import partial

from helper.pickle_guard import budget as b
from helper.pickle_guard.state import Handler, Scan, register
from helper.pickle_guard.values import Obj

HANDLERS: dict[int, Handler] = {}
_op = partial(register, HANDLERS)
_FROM_MARK = {
    0x6C: ("list", b.C_LIST, b.C_ITEM_LIST),
    0x64: ("dict", b.C_DICT, b.C_ITEM_DICT // 2),
    0x91: ("frozenset", b.C_SET, b.C_ITEM_SET),
}


@_op(b")")
def empty_tuple(s: Scan) -> None:
    """``EMPTY_TUPLE`` (CPython shares one: no container counted)."""
    obj = Obj("tuple", 1)
    obj.items = []
    s.stack.append(obj)
    s.cost(b.C_SLOT)


@_op(b"]")
def empty_list(s: Scan) -> None:
    """``EMPTY_LIST``."""
    s.stack.append(s.container("list", b.C_LIST + b.C_SLOT))


@_op(b"}")
def empty_dict(s: Scan) -> None:
    """``EMPTY_DICT``."""
    s.stack.append(s.container("dict", b.C_DICT + b.C_SLOT))


@_op(b"\x8f")
def empty_set(s: Scan) -> None:
    """``EMPTY_SET``."""
    s.stack.append(s.container("set", b.C_SET + b.C_SLOT))


@_op(b"t")
def tuple_mark(s: Scan) -> None:
    """``TUPLE``: the items above a MARK."""
    items = s.pop_mark()
    s.stack.append(s.build("tuple", items, b.C_TUPLE + 8 * len(items)))


@_op(b"\x85", b"\x86", b"\x87")
def tuple_n(s: Scan) -> None:
    """``TUPLE1``-``TUPLE3``: the top one to three items."""
    n = s.data[s.here] - 0x84
    stack = s.stack
    if len(stack) < n:
        items = s.short_stack(n)
    else:
        items = stack[-n:]
        del stack[-n:]
    s.stack.append(s.build("tuple", items, b.C_TUPLE + 8 * n))


@_op(b"l", b"d", b"\x91")
def from_mark(s: Scan) -> None:
    """``LIST``, ``DICT``, ``FROZENSET``: the items above a MARK."""
    code = s.data[s.here]
    items = s.pop_mark()
    if code == 0x64 and len(items) % 2:
        s.odd_items("DICT")
    kind, base, each = _FROM_MARK[code]
    s.stack.append(s.build(kind, items, base + each * len(items)))


@_op(b"a")
def append(s: Scan) -> None:
    """``APPEND``."""
    item = s.pop()
    s.add(s.top(), [item], "APPEND", b.C_ITEM_LIST)


@_op(b"e", b"\x90")
def appends(s: Scan) -> None:
    """``APPENDS``, ``ADDITEMS``: the items above a MARK."""
    items = s.pop_mark()
    if s.data[s.here] == 0x65:
        s.add(s.top(), items, "APPENDS", b.C_ITEM_LIST)
    else:
        s.add(s.top(), items, "ADDITEMS", b.C_ITEM_SET)


@_op(b"s")
def setitem(s: Scan) -> None:
    """``SETITEM``."""
    value = s.pop()
    key = s.pop()
    s.add(s.top(), [key, value], "SETITEM", b.C_ITEM_DICT // 2)


@_op(b"u")
def setitems(s: Scan) -> None:
    """``SETITEMS``: the key/value pairs above a MARK."""
    items = s.pop_mark()
    if len(items) % 2:
        s.odd_items("SETITEMS")
    s.add(s.top(), items, "SETITEMS", b.C_ITEM_DICT // 2)
