"""``survey_pickle``: what a pickle names and asks for, listed by the same walker with the guard's rules relaxed.

The doctor and ``helper.formats`` need the facts of a pickle the guard may refuse: every global it
names (to say which), where it ends (a legacy file is five pickles in a row), the storages it declares
and their sizes, the strings it holds, what ``bytearray(N)`` asks for, whether a tensor has no data.
``Survey`` is ``Scan`` with no budget and no allowlist: it reads every opcode as an unpickler would and
fails (``ValueError``) only on bytes that are not a pickle. It has no budget: run the guard first on a
stranger's pickle (``scan_pickle`` refuses 30M empty lists at the 1,048,577th, in 0.4 s; the survey walks
all of them, 4.4 s and +229 MB here).
"""

from __future__ import annotations

import _compat_pickle
import codecs
from dataclasses import dataclass, field
from typing import Any

from helper.pickle_guard import budget as b
from helper.pickle_guard.allowlist import storage_itemsizes
from helper.pickle_guard.budget import PickleBudget, PickleReport
from helper.pickle_guard.state import Scan
from helper.pickle_guard.values import KEEP, Obj, storage_ref
from helper.pickle_guard.walk import as_bytes, walk

_META = "torch._utils._rebuild_meta_tensor_no_storage"
FOREIGN_ID = "a persistent id that is not a torch storage reference"
_SHARED: dict[str, Obj] = {}  # the survey's one list, one dict, one call result...: it never changes them
_SMALL = [Obj("lit", 0, i) for i in range(256)]  # one value per small int: it never changes a literal either
_EMPTY_FRAME: list[Obj] = []  # stands for an empty frame below a MARK; never the current frame, never changed


@dataclass
class PickleScan:
    """What a pickle names and asks for: ``globals`` (``module.name``), ``storages`` (key -> (type, numel)),
    ``allocates`` (bytes requested by ``bytearray(N)``), ``meta`` (tensors without data), ``end`` (after STOP)."""

    globals: set[str] = field(default_factory=set)
    storages: dict[str, tuple[str, int]] = field(default_factory=dict)
    allocates: int = 0
    meta: bool = False
    end: int = 0
    strings: list[str] = field(default_factory=list)
    dotted: set[str] = field(default_factory=set)  # globals whose name (after the module) holds a dot: never allowed


def global_name(module: Any, qual: Any) -> str:
    """``module.qual`` as Python 3 names it (Python 2 names mapped at every protocol), or a placeholder."""
    if not (isinstance(module, str) and isinstance(qual, str)):
        return "<a global computed at load time>"
    module, qual = _compat_pickle.NAME_MAPPING.get((module, qual), (module, qual))
    return f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{qual}"


class Survey(Scan):
    """``Scan`` without the guard's rules: every global is listed (none refused), any call is read, no budget."""

    __slots__ = ("found",)

    def __init__(self, data: bytes, start: int) -> None:
        super().__init__(data, start, frozenset(), PickleBudget.unlimited(), "pickle", frozenset())
        self.found = PickleScan(globals=self.globals)  # EXT adds its placeholder name to self.globals

    def container(self, kind: str, nbytes: int, depth: int = 1) -> Obj:
        """A tuple (its items matter: call arguments, storage ids); any other container is one shared value, so
        30M memoized empty lists cost the survey a memo entry each, no object (it keeps nothing of them)."""
        if kind == "tuple":
            return Obj(kind, depth)
        shared = _SHARED.get(kind)
        return shared if shared is not None else _SHARED.setdefault(kind, Obj(kind, 1))

    # No budget: what the guard counts, the survey skips (it runs as fast as the walker it replaced).
    def cost(self, nbytes: int) -> None:
        """Nothing counted."""

    def lit(self, value: Any, nbytes: int = 0) -> Obj:
        """A number (one shared value per small int: the survey never changes a literal)."""
        if type(value) is int and 0 <= value < 256:
            return _SMALL[value]
        return Obj("lit", 0, value)

    def build(self, kind: str, items: list[Obj], nbytes: int) -> Obj:
        """A tuple keeps its first items; any other container is the shared one."""
        if kind != "tuple":
            return self.container(kind, nbytes)
        obj = Obj("tuple", 1)
        obj.items, obj.n = items[:KEEP], len(items)
        return obj

    def add(self, target: Obj, items: list[Obj], op: str, each: int) -> None:
        """Items added to anything."""

    def recall(self, i: int) -> None:
        """``GET``: memo entry ``i``, which the pickle must have stored."""
        obj = self.memo.get(i)
        if obj is None:
            raise self.malformed(f"GET at byte {self.here} of memo entry {i}, never stored")
        self.stack.append(obj)

    def remember(self, i: int) -> None:
        """``PUT``: the top item as memo entry ``i`` (any index; a MARK stays open, as ``pickletools`` has it)."""
        self.memo[i] = self.stack[-1] if self.stack or not self.metastack else Obj("mark")

    def malformed(self, cause: str) -> Exception:
        """Not a pickle: ``ValueError`` (the survey's only failure)."""
        return ValueError(f"a malformed pickle ({cause})")

    def truncated(self) -> Exception:
        """Cut short: ``ValueError``."""
        return self.malformed(f"it ends inside an opcode at byte {self.here}, before STOP")

    hostile = malformed  # the guard's refusals the survey still meets are bytes an unpickler rejects as well

    def text_line(self) -> str:
        """A line naming a module or a global, decoded as ``pickletools`` decodes it."""
        try:
            return codecs.escape_decode(self.line())[0].decode("ascii")
        except (ValueError, UnicodeDecodeError):
            raise self.malformed(f"a global at byte {self.here} is not ASCII text") from None

    def lit_text(self, value: str, nbytes: int) -> Obj:
        """A string, listed in ``strings`` (a ``STRING`` must be ASCII once unescaped, as ``pickletools`` reads it)."""
        if self.data[self.here] == 0x53 and not value.isascii():
            raise self.malformed(f"STRING at byte {self.here} is not ASCII")
        self.found.strings.append(value)
        return Obj("lit", 0, value)

    # MARKs: no limit, so an empty frame below a MARK is one shared marker (20M MARKs: 160 MB, not 1.4 GB)
    def open_mark(self) -> None:
        """A new stack frame (the one below, if empty, kept as the shared marker)."""
        self.metastack.append(self.stack if self.stack else _EMPTY_FRAME)
        self.stack = []

    def close_mark(self) -> None:
        """Back to the frame below the newest MARK."""
        frame = self.metastack.pop()
        self.stack = [] if frame is _EMPTY_FRAME else frame

    def pop_mark(self) -> list[Obj]:
        """The items above the newest MARK, which is closed."""
        if not self.metastack:
            raise self.malformed(f"an opcode at byte {self.here} needs a MARK that is not there")
        items = self.stack
        self.close_mark()
        return items

    def pop(self) -> Obj:
        """The top item; on an empty frame, its MARK itself (``pickletools`` keeps MARKs on the one stack)."""
        if self.stack:
            return self.stack.pop()
        if not self.metastack:
            raise self.malformed(f"an opcode at byte {self.here} pops an empty stack")
        self.close_mark()
        return Obj("mark")

    def top(self) -> Obj:
        """The top item; on an empty frame, its MARK, replaced by the item the opcode leaves there."""
        if self.stack or not self.metastack:
            return super().top()
        self.close_mark()
        self.stack.append(Obj("mark"))
        return self.stack[-1]

    def short_stack(self, n: int) -> list[Obj]:
        """``TUPLE1``-``TUPLE3`` take MARKs as items, as ``pickletools`` does."""
        return [self.pop() for _ in range(n)][::-1]

    def place(self, parent: Obj, child: Obj) -> None:
        """No rule on how objects nest."""

    def mutate(self, target: Obj, op: str) -> None:
        """No rule on which containers change."""

    def odd_items(self, op: str) -> None:
        """A key without a value is not the survey's concern."""

    def set_state(self, target: Obj, state: Obj) -> None:
        """``BUILD`` on anything."""

    def keyword_arguments(self, kwargs: Obj) -> None:
        """Keyword arguments of any kind."""

    def never_written(self, what: str) -> None:
        """Read on as an unpickler would."""

    def protocol(self, proto: int) -> None:
        """Any protocol number."""
        self.proto = proto

    def stop(self) -> None:
        """``STOP`` needs nothing on the stack."""

    def global_(self, module: Any, qual: Any) -> Obj:
        """``GLOBAL``, ``INST``: split where ``pickletools`` splits them (at the first space) and listed."""
        module, _, qual = f"{module} {qual}".partition(" ")
        return self.listed(module, qual)

    def listed(self, module: Any, qual: Any) -> Obj:
        """Every global listed, those whose name holds a dot also in ``dotted``."""
        full = global_name(module, qual)
        self.found.globals.add(full)
        if isinstance(qual, str) and "." in qual:
            self.found.dotted.add(full)
        obj = Obj("global", 0)
        obj.name = full
        return obj

    def stack_global(self, module: Obj, qual: Obj) -> Obj:
        """``STACK_GLOBAL`` of anything (a computed name is listed as such)."""
        return self.listed(module.value if module.kind == "lit" else None, qual.value if qual.kind == "lit" else None)

    def call(self, func: Obj, args: Obj, op: str) -> Obj:
        """Any call; ``REDUCE`` of ``bytearray(N)`` adds N to ``allocates``, of the meta rebuild sets ``meta``."""
        name = func.name if func.kind == "global" else ""
        if op == "REDUCE" and name == "builtins.bytearray" and args.kind == "tuple" and args.items:
            first = args.items[0]
            if first.kind == "lit" and isinstance(first.value, int):
                self.found.allocates += first.value
        if op == "REDUCE" and name == _META:
            self.found.meta = True
        return self.container("call", b.C_CALL)

    def persistent(self, pid: Obj) -> Obj:
        """``BINPERSID`` must be torch's storage reference: ``('storage', <storage class>, key, location, numel)``."""
        ref = storage_ref(pid)
        if ref is None:
            raise self.malformed(FOREIGN_ID)
        key, kind, numel = ref
        self.found.storages[key] = (kind, numel)
        return self.container("storage", 200)


def survey_pickle(data: bytes | bytearray | memoryview, start: int = 0) -> PickleScan:
    """List what the pickle at ``data[start:]`` names and asks for (nothing is imported, called or built).

    ``ValueError`` for bytes that are not a pickle. No allowlist and no budget: see the module docstring.
    """
    s = walk(Survey(as_bytes(data), start))
    s.found.end = s.pos
    return s.found


def survey_of(report: PickleReport) -> PickleScan:
    """The survey of a pickle ``scan_pickle`` has passed, from the guard's own walk: no second walk.

    ``load_checkpoint`` needs both the guard's verdict and the survey's facts of one ``data.pkl``; the
    guard notes the storages it meets and what ``bytearray(N)`` asks for, so the survey's facts come from
    the same walk. (Its ``globals`` are all allowed ones, by then; ``strings`` are left empty: only a
    legacy file's storage keys need them.) ``ValueError`` where the survey would raise it: a persistent id
    that is not torch's storage reference.
    """
    if report.foreign_ids:
        raise ValueError(f"a malformed pickle ({FOREIGN_ID})")
    return PickleScan(
        globals=set(report.globals),
        storages=dict(report.storages),
        allocates=report.bytearrays,
        meta=_META in report.calls,
        end=report.end,
    )


def storage_bytes(scan: PickleScan) -> dict[str, int]:
    """Bytes each storage the pickle declares takes (``ValueError`` for an unknown storage type)."""
    sizes, table = {}, storage_itemsizes()
    for key, (kind, numel) in scan.storages.items():
        if kind not in table or numel < 0:
            raise ValueError(f"storage {key!r} has an unknown type {kind!r}")
        sizes[key] = numel * table[kind]
    return sizes
