"""The abstract values the walker keeps in place of the objects a pickle would build."""

from __future__ import annotations

import re
import struct
from typing import Any

KEEP = 32  # a tuple keeps its first KEEP items (enough for every call rule and torch's persistent ids)
IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ENCODINGS = frozenset(
    {"latin1", "latin-1", "latin_1", "iso-8859-1", "iso8859-1", "l1", "utf-8", "utf8", "utf_8", "ascii"}
)
U8, U16, I32, U32, U64, F64 = (struct.Struct(f).unpack_from for f in ("<B", "<H", "<i", "<I", "<Q", ">d"))
HUGE = 1 << 600  # stands for an int of more than 64 bytes, whose value is not kept (tested by identity)


class Obj:
    """Something the unpickler would build: its kind, nesting depth, whether it is sealed (placed elsewhere)."""

    __slots__ = ("depth", "items", "keys", "kind", "n", "name", "numel", "sealed", "size", "value")
    keys: Any  # hashing.Keys, set only on the objects that need one (see below)

    def __init__(self, kind: str, depth: int = 0, value: Any = None) -> None:
        self.kind = kind  # "lit" (str/bytes/int/float/bool/None), "list", "dict", "set", "tuple",
        self.depth = depth  # "frozenset", "global", "call", "storage"
        self.sealed = False
        self.value = value  # a literal's value (bytes: only when short, else a Sized)
        self.items: list[Obj] | None = None  # a tuple's first items (up to KEEP)
        self.n = 0  # items in a container
        self.name = ""  # a global's "module.name"; a call result: the callable's
        self.numel: int | None = None  # a tensor's element count, when its size is literal
        self.size = 1  # expanded size: 1 + its items' expanded sizes (a memo reference counts in full)
        # self.keys: hashing.Keys of its keys (a dict, a set) or items (a list, a tuple), set when there are
        # any worth noting; unset until then (read with getattr: one attribute fewer to set on every object)


NONE = Obj("lit", 0, None)


class Sized:
    """The value of long bytes or an ``_codecs.encode`` result: bytes whose length is all that is kept."""

    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


def numel(size: Obj) -> int | None:
    """The element count a literal size tuple gives (``None`` when any part of it is not a literal count)."""
    if size.kind != "tuple" or size.items is None or len(size.items) != size.n:
        return None
    total = 1
    for it in size.items:
        if it.kind != "lit" or not isinstance(it.value, int) or isinstance(it.value, bool) or it.value < 0:
            return None
        total *= it.value
    return total


def storage_ref(pid: Obj) -> tuple[str, str, int] | None:
    """``(key, storage type, numel)`` when ``pid`` is torch's storage reference,
    ``('storage', <storage class>, key, location, numel)`` with literal key and count, else ``None``."""
    items = pid.items if pid.kind == "tuple" and pid.n >= 5 else None
    if items is None or not (
        items[0].kind == "lit"
        and items[0].value == "storage"
        and items[1].kind == "global"
        and items[2].kind == "lit"
        and isinstance(items[2].value, str)
        and items[4].kind == "lit"
        and isinstance(items[4].value, int)
    ):
        return None
    return items[2].value, items[1].name.rpartition(".")[2], items[4].value


def literal(items: list[Obj] | None, i: int, kinds: tuple[type, ...]) -> Any:
    """``items[i]``'s value when it is a literal of one of ``kinds`` (a bool only if ``bool`` is named), else None."""
    if (
        items is None
        or i >= len(items)
        or items[i].kind != "lit"
        or not isinstance(items[i].value, kinds)
        or isinstance(items[i].value, bool)
        and bool not in kinds
    ):
        return None
    return items[i].value
