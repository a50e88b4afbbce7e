"""Hash bombs: what the unpickler hashes and compares, predicted from the abstract values.

A dict key or set member is hashed as it goes in, and compared with every earlier key of the same
hash. Two ways to make that slow from a tiny pickle: a key that expands (through memo references)
to a huge tree, which ``hash`` walks in full (tuples do not cache their hash); and many unequal keys
of one hash, which make each insert compare with all the earlier ones (quadratic). ``Scan`` bounds
the first with each object's expanded size (``Obj.size``); this module finds the second.

``plain(obj)``: a key that cannot take part in a planned pile-up, so it is not tracked. An int of
magnitude below P = 2**61 - 1 hashes to itself: two such share a hash only when equal (or -1 and -2).
A float hashes to its 53-bit mantissa times a power of two modulo P, the exponent taken modulo 61, so
only the floats m * 2**(r + 61 j) of a few residues r share a hash: a few hundred at most, each compared
in O(1). str and bytes hashes are keyed per process while ``sys.flags.hash_randomization`` is on (no
file can plan them); globals, tensors and storages hash by address; lists, dicts and sets are
unhashable (the unpickler fails at once). ``key_hash(obj)`` of any other key: the hash it will have
when it can be planned and computed (ints past P, tuples, ``complex``/``torch.Size``/``tuple``/
``frozenset`` calls of literals), ``None`` when no one can plan it (a tuple holding a tensor), or
``OPAQUE`` for a value-hashed key the scanner cannot compute (an int past 64 bytes, whose value it did
not keep; a frozenset; a tuple past its first ``KEEP`` items; ``tuple()``/``torch.Size()`` of a list).
``Keys`` counts, per container, the tracked keys whose hash an earlier one had, plus every opaque
key: ``clash``. A plain key meets at most one plain key of its hash (an equal one), so only tracked
keys can pile up.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from helper.pickle_guard.values import HUGE, KEEP, Obj, Sized

if TYPE_CHECKING:
    from helper.pickle_guard.budget import PickleBudget

P = (1 << 61) - 1  # CPython's int hash is the value modulo P
SALTED = bool(sys.flags.hash_randomization)  # str/bytes hashes keyed per process: no one can plan them
OPAQUE = object()
_VALUE_CALLS = frozenset({"builtins.complex", "torch.Size", "builtins.tuple", "builtins.frozenset"})


class _Opaque(Exception):
    """The value decides the hash, but the scanner did not keep it."""


class _Unplanned(Exception):
    """No one can plan the hash (an address, a keyed hash), or the key is unhashable: harmless."""


class Keys:
    """What a container's keys (or a list's items, should it become a set) hash to: the largest expanded
    size, the planned hashes seen, and how many keys clashed (equal planned hash, or opaque)."""

    __slots__ = ("big", "clash", "hashes")

    def __init__(self) -> None:
        self.big = 0
        self.clash = 0
        self.hashes: set[int] | None = None

    def note(self, h: Any) -> int:
        """Count a key of hash ``h`` (an int, or ``OPAQUE``); the clashes so far."""
        if h is OPAQUE:
            self.clash += 1
        elif self.hashes is None:
            self.hashes = {h}
        elif h in self.hashes:
            self.clash += 1
        else:
            self.hashes.add(h)
        return self.clash


def plain(obj: Obj) -> bool:
    """A leaf whose hash no one can plan (the common case, tested first and fast)."""
    if obj.kind != "lit":
        return obj.kind in ("global", "storage", "list", "dict", "set")
    v = obj.value
    t = type(v)
    if t is int:
        return -P < v < P
    if t is str or t is bytes or t is Sized:
        return SALTED
    return t is float or v is None or t is bool


def key_hash(obj: Obj) -> Any:
    """The planned hash of ``obj`` as a key (not ``plain``), ``None`` when no one can plan it, or ``OPAQUE``."""
    try:
        return hash(_value(obj))
    except _Unplanned:
        return None
    except _Opaque:
        return OPAQUE
    except (TypeError, ValueError, OverflowError):  # unhashable or not buildable: the unpickler fails at once
        return None


def _value(obj: Obj) -> Any:
    """The value ``obj`` stands for, as far as its hash goes (``_Opaque``/``_Unplanned`` when unknown)."""
    kind = obj.kind
    if kind == "lit":
        if obj.value is HUGE or type(obj.value) is Sized and not SALTED:
            raise _Opaque
        if type(obj.value) is Sized:  # bytes whose hash is keyed per process (an _codecs.encode result)
            raise _Unplanned
        return obj.value
    if kind == "tuple":
        return tuple(_values(obj.items, obj.n))
    if kind == "call" and obj.name in _VALUE_CALLS:
        items = obj.items
        if obj.name != "builtins.complex" and items and items[0].kind in ("list", "dict", "set", "frozenset"):
            raise _Opaque  # tuple(), torch.Size(), frozenset() of a container whose items were not kept
        args = _values(items, len(items) if items is not None else -1)
        if obj.name == "builtins.complex":
            return complex(*args)
        return frozenset(args[0]) if obj.name == "builtins.frozenset" else tuple(args[0])
    if kind == "frozenset":
        raise _Opaque
    raise _Unplanned  # a global, a tensor, another call's object: hashed by address; a list: unhashable


def _values(items: list[Obj] | None, n: int) -> list[Any]:
    """The values of ``items`` (all ``n`` of them kept); an unplanned item makes the whole unplanned."""
    if items is None or len(items) != n:
        if n > KEEP:  # the items past KEEP may be unplanned, but the first ones decide nothing: opaque
            raise _Opaque
        raise _Unplanned
    out, opaque = [], False
    for item in items:
        try:
            out.append(_value(item))
        except _Opaque:
            opaque = True
    if opaque:
        raise _Opaque
    return out


class HashRules:
    """``Scan``'s rules on what the unpickler hashes: each key's expanded size and the sum of them, and the
    clashing keys of each container (``over`` and ``budget`` are ``Scan``'s)."""

    budget: PickleBudget
    hashed: int
    largest_key: int
    clashes: int

    def over(self, what: str, value: int, limit: int, which: str = "") -> Exception:
        """The budget error (``Scan.over``)."""
        raise NotImplementedError

    def hash_keys(self, target: Obj, keys: list[Obj]) -> None:
        """``keys`` hashed into ``target`` (dict keys, set members): their expanded sizes, their planned hashes."""
        budget, stats, hashed = self.budget, getattr(target, "keys", None), 0
        for key in keys:
            size = key.size
            hashed += size
            if size == 1:  # the common key first: a string (salted), an int below P, a float
                t = type(key.value)  # only a literal's value is a str, int or float
                if t is str and SALTED or t is float or t is int and -P < key.value < P or plain(key):
                    continue
            if size > self.largest_key:
                self.largest_key = size
                if size > budget.max_key:
                    raise self.over(
                        "a dict key or set member that expands to this many objects (hashing it walks every one)",
                        size,
                        budget.max_key,
                        "max_key",
                    )
            h = key_hash(key)
            if h is not None:
                if stats is None:
                    stats = target.keys = Keys()
                self.clashed(stats.note(h))
        self.hashed += hashed
        if self.hashed > budget.max_hashed:
            raise self.over(
                "dict keys and set members whose expanded sizes sum to this many objects (each is hashed)",
                self.hashed,
                budget.max_hashed,
                "max_hashed",
            )

    def clashed(self, n: int) -> None:
        """A container now holds ``n`` clashing keys (equal planned hash, or unknown), against ``max_clashes``."""
        if n > self.clashes:
            self.clashes = n
            if n > self.budget.max_clashes:
                raise self.over(
                    "this many keys in one dict or set that hash alike or whose hash it cannot know "
                    "(each insert compares a key with every earlier one of its hash)",
                    n,
                    self.budget.max_clashes,
                    "max_clashes",
                )

    def note_items(self, target: Obj, items: list[Obj]) -> None:
        """``items`` of a list or tuple, noted as ``hash_keys`` would (in case ``set()`` or ``dict()`` hashes
        them, or the keys of the pairs they are), but not checked yet."""
        stats = getattr(target, "keys", None)
        for item in items:
            size = item.size
            if size == 1:  # the common item first, as in hash_keys
                t = type(item.value)
                if t is float or t is int and -P < item.value < P or t is str and SALTED or plain(item):
                    continue
            if stats is None:
                stats = target.keys = Keys()
            if size > stats.big:
                stats.big = size
            h = key_hash(item)
            if h is not None:
                stats.note(h)
            first = (
                item.value if item.kind == "list" else item.items[0] if item.kind == "tuple" and item.items else None
            )
            if first is not None and not plain(first):
                h = key_hash(first)
                if h is not None:
                    stats.note(h)

    def rehash(self, arg: Obj) -> None:
        """A call that hashes ``arg``'s items (``set``, ``frozenset``, ``Counter``) or the keys of its pairs or of
        a mapping (``dict``, ``OrderedDict``): the items' sizes and planned hashes, as ``hash_keys`` checks."""
        if (
            arg.kind == "tuple"
            and getattr(arg, "keys", None) is None
            and arg.items is not None
            and len(arg.items) == arg.n
        ):
            self.note_items(arg, arg.items)
        stats: Keys | None = getattr(arg, "keys", None)
        if arg.kind in ("list", "tuple") and stats is not None:
            if stats.big > self.budget.max_key:
                raise self.over(
                    "a dict key or set member that expands to this many objects (hashing it walks every one)",
                    stats.big,
                    self.budget.max_key,
                    "max_key",
                )
            self.clashed(stats.clash)
        self.hashed += arg.size  # a mapping's keys were checked as it was built; hashing them again costs as much
        if self.hashed > self.budget.max_hashed:
            raise self.over(
                "dict keys and set members whose expanded sizes sum to this many objects (each is hashed)",
                self.hashed,
                self.budget.max_hashed,
                "max_hashed",
            )
