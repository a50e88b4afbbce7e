"""A pickle's opcodes checked before any unpickler runs: exact globals, and a budget on every object it builds.

``scan_pickle(data)`` walks the bytes of a pickle (every protocol, 0-5) in
pure Python, keeping a small abstract stack and memo. It never imports or calls
anything the pickle names, and never builds the objects: it only counts what an
unpickler *would* build, and raises ``CheckpointError`` (``kind`` below) at the
first opcode that breaks a rule:

- **Globals** (``kind="hostile-pickle"``): every ``module.name`` must be in an
  exact allowlist (``allowed``; no prefix match); those that are not are named
  together in one error (``refused_globals``) once the scan ends or fails. A name with a dot in it
  (protocol 4 resolves ``os.system`` as an attribute path) and a module that is
  not a plain dotted identifier are refused. ``STACK_GLOBAL``'s two operands
  must be literal strings the pickle itself pushed (directly or through its
  memo); anything computed is refused. ``EXT1/2/4`` (the copyreg registry),
  ``INST``/``OBJ``/``PERSID`` (protocol 0/1 instance creation and text
  persistent ids) and out-of-band buffers are refused: ``torch.save`` never
  writes them.
- **Calls** (``REDUCE``, ``NEWOBJ``, ``NEWOBJ_EX``, ``BUILD``): a callable must
  be an allowed global pushed by the pickle. Those of torch's default allowlist
  that can allocate more than their arguments hold are checked one by one
  (``_CALLS``): ``bytearray`` only of bytes or a literal string, or of a literal
  int within the allocation budget; ``_codecs.encode`` only of a literal string
  to a latin-1/utf-8/ascii encoding (so 29 chained encodes are refused at the
  second); ``set``/``Counter``/``OrderedDict``/``torch.Size`` only of a
  container the pickle built (whose items are counted already), never of a
  string or a tensor; ``torch.Tensor``, the tensor classes and the storage
  classes only with no arguments or a container (``torch.UntypedStorage(10**10)``
  is refused); ``_rebuild_qtensor`` and ``_rebuild_device_tensor_from_cpu_tensor``
  only when the sizes they allocate are literal and within the allocation
  budget; ``_rebuild_from_type_v2`` only of one of torch's tensor rebuild
  functions, whose arguments are then checked by that function's rule. Any
  other global of torch's default set (a dtype, a layout...) cannot be called.
  A global outside torch's set (one the caller allows: ``add_safe_globals``, or
  DCP's metadata classes for the doctor) may be called with any arguments the
  pickle built; its result is counted as an object.
- **Shape**: a container changed after it was put inside another one (or used as
  a call's arguments), and a container put inside itself, are refused
  (``hostile-pickle``): ``pickle.dump`` and ``torch.save`` finish a container
  before they place it, so this only comes from a crafted file, and refusing it
  makes the depth below exact and cycles impossible.
- **Budget** (``kind="budget"``, ``PickleBudget``), checked as each opcode is read
  (``n`` = the pickle's length in bytes):

  ==================  ===================================  ======================================
  limit               ``PickleBudget.for_size(n)``         why
  ==================  ===================================  ======================================
  ``max_depth``       100, any size                        nesting of the built objects. CPython
                                                           recurses in C to hash, compare, repr
                                                           and free them: a tuple key nested 1M
                                                           deep crashed torch's unpickler
                                                           (SIGSEGV), a value 200k deep gave
                                                           ``RecursionError``; ``repr`` fails
                                                           near 1,000.
  ``max_marks``       100 open at once, any size           each open ``MARK`` is a list on torch's
                                                           unpickler's metastack (20M MARKs:
                                                           +1.3 GB); a real pickle opens one per
                                                           nesting level.
  ``max_containers``  64k + n/4, at most 1M                lists, dicts, sets, tuples, call
                                                           results (30M empty lists: 2.6 GB).
  ``max_memo``        64k + n/4, at most 1M                memo entries (about 100 bytes each).
  ``max_memory``      32 MiB + 64 n, at most 1 GiB         the bytes of every object built, at
                                                           CPython 3.11's sizes (empty list 56,
                                                           dict 64, set 216, str 49+len, memo
                                                           entry 100...), never decreased by POP.
  ``max_alloc``       1 MiB + n                            what ``bytearray``, ``_codecs.encode``
                                                           and the allocating tensor rebuilds ask
                                                           for (``load_checkpoint`` allows 1 MiB +
                                                           the file's size: tensor data lives in
                                                           the archive's members, not the pickle).
  ==================  ===================================  ======================================

  How they were chosen: the same counts on real pickles (``torch.save`` data.pkl, this machine,
  torch 2.14, Python 3.11) are at most: depth 8 (``make_checkpoint`` with an Adam state: 8; a
  state dict: 5); 37 bytes of objects per byte of pickle (a list of 10,000 one-item sets; a
  state dict 26, ``make_checkpoint`` with a 50-layer model, Adam and a 2,000-float history 19,
  a list of ints 13, a dict of strings 12); 16.8 containers and 16.8 memo entries per 100 bytes
  (10,000 empty dicts and 10,000 empty lists; a state dict 7.7 and 9.3). The limits leave 1.5x
  (containers, memo) and 1.7x (memory) over those worst shapes and 12x over depth, so a real pickle of
  the densest shape passes up to the ceilings (about 6 MB of pickle for the container ceiling, 29 MB
  for the memory one; a state dict, 13 MB and 41 MB); the ceilings keep the verdict on any pickle
  under two seconds here. What an attacker gets for the densest opcodes is then bounded:
  5M empty sets (5 MB) and 30M empty lists (30 MB) are refused at the 1,048,577th container, in
  about 1.7 s each, the scanner holding about 100 bytes per container counted (it keeps no item of a list,
  dict or set, the first 32 of a tuple, and turns the cyclic garbage collector off while it runs:
  its objects form no cycles); 20M MARKs at the 101st; a 1M-deep tuple at depth 101; 29 chained
  ``_codecs.encode`` at the second.

``allowed=None`` is the set torch's ``weights_only`` unpickler allows on this
torch: ``torch._weights_only_unpickler._get_allowed_globals()`` (private: no
public function lists torch's default set; the public
``torch.serialization.get_unsafe_globals_in_checkpoint`` computes its answer
from the same function, needs a ``torch.save`` zip and only understands
protocol 2's ``GLOBAL``) plus the public ``torch.serialization.get_safe_globals()``
(what ``add_safe_globals`` added), named ``module.qualname`` as torch names
them. Python 2 names (``__builtin__.set``) are mapped as torch maps them.
"""

from __future__ import annotations

import _compat_pickle
import gc
import re
import struct
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PickleBudget", "PickleReport", "scan_pickle", "torch_allowed_globals", "KIND_HOSTILE", "KIND_BUDGET",
           "KIND_TRUNCATED", "KIND_MALFORMED"]

KIND_HOSTILE = "hostile-pickle"   # names or calls something weights_only=True must never reach
KIND_BUDGET = "budget"            # would build more (deeper, bigger) than the budget for its size
KIND_TRUNCATED = "truncated"      # ends before its STOP opcode
KIND_MALFORMED = "malformed-pickle"  # not a pickle an unpickler would accept (unknown opcode, bad stack)

_FIX_HOSTILE = "do not load this file; ask for the weights as a state_dict (torch.save) or a safetensors file"
_FIX_BUDGET = ("do not load this file; if you made it yourself, store large data as tensors (their bytes are not "
               "part of the pickle) rather than as millions of small Python objects")


@dataclass(frozen=True)
class PickleBudget:
    """Limits on what a pickle may build; ``for_size(n)`` derives them from its length (see the module docstring)."""

    max_depth: int = 100
    max_marks: int = 100
    max_containers: int = 1 << 16
    max_memo: int = 1 << 16
    max_memory: int = 32 << 20
    max_alloc: int = 1 << 20

    @classmethod
    def for_size(cls, nbytes: int) -> "PickleBudget":
        """The budget for a pickle of ``nbytes`` bytes (the module docstring says how each figure was chosen)."""
        n = max(0, int(nbytes))
        return cls(max_containers=min((1 << 16) + n // 4, 1 << 20), max_memo=min((1 << 16) + n // 4, 1 << 20),
                   max_memory=min((32 << 20) + 64 * n, 1 << 30), max_alloc=(1 << 20) + n)


@dataclass(frozen=True)
class PickleReport:
    """What ``scan_pickle`` found: the globals named (sorted), opcodes read, deepest nesting, counts, bytes."""

    globals: tuple[str, ...]
    opcodes: int
    max_depth: int
    containers: int
    memo: int
    memory: int
    alloc: int
    protocol: int
    end: int  # offset just after STOP
    calls: tuple[str, ...] = field(default=())  # the globals called (REDUCE, NEWOBJ), sorted


def _error(name: str, kind: str, cause: str, fix: str) -> Exception:
    from helper.formats import CheckpointError  # imported here: helper.formats may import this module

    err = CheckpointError(None, f"{name}: {cause}", fix)
    err.kind = kind  # helper.formats' CheckpointError may not take kind= yet
    return err


# --------------------------------------------------------------------------------------------------
# The abstract values on the stack

class _Obj:
    """Something the unpickler would build: its kind, nesting depth, whether it is sealed (placed elsewhere)."""

    __slots__ = ("kind", "depth", "sealed", "value", "items", "n", "name", "numel")

    def __init__(self, kind: str, depth: int = 0, value: Any = None) -> None:
        self.kind = kind        # "lit" (str/bytes/int/float/bool/None), "list", "dict", "set", "tuple",
        self.depth = depth      # "frozenset", "global", "call", "storage", "mark"
        self.sealed = False
        self.value = value      # a literal's value (strings and bytes: only when short, else None)
        self.items: list[_Obj] | None = None  # a tuple's first items (up to _KEEP)
        self.n = 0              # items in a container
        self.name = ""          # a global's "module.name"; a call result: the callable's
        self.numel: int | None = None  # a tensor's element count, when its size is literal


_KEEP = 32
_NONE = _Obj("lit", 0, None)
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ENCODINGS = {"latin1", "latin-1", "latin_1", "iso-8859-1", "iso8859-1", "l1", "utf-8", "utf8", "utf_8", "ascii"}
_U8, _U16, _I32, _U32, _U64, _F64 = (struct.Struct(f).unpack_from for f in ("<B", "<H", "<i", "<I", "<Q", ">d"))

# CPython 3.11 (64-bit) sizes, rounded up: what each built object costs
_C_SLOT, _C_INT, _C_FLOAT, _C_LIST, _C_DICT, _C_SET, _C_TUPLE = 8, 32, 24, 56, 64, 216, 40
_C_ITEM_LIST, _C_ITEM_DICT, _C_ITEM_SET, _C_MEMO, _C_MARK, _C_CALL, _C_TENSOR = 9, 48, 64, 100, 64, 128, 400


def torch_allowed_globals() -> frozenset[str]:
    """The ``module.name`` globals ``torch.load(weights_only=True)`` accepts now (default set plus safe globals)."""
    import torch
    from torch import _weights_only_unpickler as wou

    names = set(wou._get_allowed_globals())
    for entry in torch.serialization.get_safe_globals():
        if isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[1], str):
            names.add(entry[1])
        elif hasattr(entry, "__qualname__"):
            names.add(f"{entry.__module__}.{entry.__qualname__}")
    return frozenset(names)


def _torch_default() -> frozenset[str]:
    from torch import _weights_only_unpickler as wou

    return frozenset(wou._get_allowed_globals())


_TORCH_CONSTRUCTORS: frozenset[str] | None = None


def _torch_constructors() -> frozenset[str]:
    """torch.Tensor, the tensor classes and the storage classes: calling one with a number allocates."""
    global _TORCH_CONSTRUCTORS
    if _TORCH_CONSTRUCTORS is None:
        import torch

        names = {f"{c.__module__}.{c.__name__}" for c in (*torch._tensor_classes, *torch._storage_classes)}
        _TORCH_CONSTRUCTORS = frozenset(names | {"torch.Tensor"})
    return _TORCH_CONSTRUCTORS


_REBUILD = {f"torch._utils.{n}" for n in (
    "_rebuild_parameter", "_rebuild_parameter_with_state", "_rebuild_qtensor", "_rebuild_tensor",
    "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_sparse_tensor", "_rebuild_meta_tensor_no_storage",
    "_rebuild_nested_tensor", "_rebuild_wrapper_subclass", "_rebuild_device_tensor_from_numpy",
    "_rebuild_device_tensor_from_cpu_tensor")}
_CONTAINER_CALLS = {"builtins.set", "builtins.frozenset", "collections.OrderedDict", "collections.Counter",
                    "torch.Size", "builtins.list", "builtins.tuple", "builtins.dict"}


class _Scan:
    def __init__(self, data: bytes | memoryview, start: int, allowed: frozenset[str], budget: PickleBudget,
                 name: str, torch_default: frozenset[str]) -> None:
        self.data, self.pos, self.allowed, self.budget, self.name = data, start, allowed, budget, name
        self.torch_default = torch_default
        self.stack: list[_Obj] = []
        self.metastack: list[list[_Obj]] = []
        self.memo: dict[int, _Obj] = {}
        self.globals: set[str] = set()
        self.calls: set[str] = set()
        self.refused: set[str] = set()  # globals outside the allowlist
        self.containers = self.memory = self.alloc = self.max_depth = self.ops = 0
        self.proto = 0

    # -- failures
    def hostile(self, cause: str) -> Exception:
        return _error(self.name, KIND_HOSTILE, f"refused before unpickling: {cause} (nothing in it was run)",
                      _FIX_HOSTILE)

    def over(self, what: str, value: int, limit: int) -> Exception:
        which = next(f for f in ("max_depth", "max_marks", "max_containers", "max_memo", "max_memory",
                                 "max_alloc") if getattr(self.budget, f) == limit)  # which limit was hit
        bomb = ", a memory bomb" if which in ("max_memory", "max_alloc") else ""
        err = _error(self.name, KIND_BUDGET, f"refused before unpickling: it would build {what} ({value:,}, the "
                     f"budget for a pickle of {self.nbytes:,} bytes is {limit:,}){bomb}; nothing was built",
                     _FIX_BUDGET)
        err.limit = which
        return err

    def refused_globals(self) -> Exception:
        names = sorted(self.refused)
        err = self.hostile(f"it names {', '.join(names)}, which {'is' if len(names) == 1 else 'are'} not on the "
                           "allowlist of weights_only=True (exact module.name)")
        err.refused_globals = tuple(names)
        return err

    def malformed(self, cause: str) -> Exception:
        return _error(self.name, KIND_MALFORMED, f"is not a valid pickle: {cause}", "use an earlier checkpoint "
                      "(CheckpointFolder.resume picks the newest good one)")

    # -- accounting
    def cost(self, nbytes: int) -> None:
        self.memory += nbytes
        if self.memory > self.budget.max_memory:
            raise self.over("objects of about this many bytes", self.memory, self.budget.max_memory)

    def container(self, kind: str, nbytes: int, depth: int = 1) -> _Obj:
        self.containers += 1
        if self.containers > self.budget.max_containers:
            raise self.over("this many containers (lists, dicts, sets, tuples, objects)", self.containers,
                            self.budget.max_containers)
        self.cost(nbytes)
        self.deep(depth)
        return _Obj(kind, depth)

    def deep(self, depth: int) -> None:
        if depth > self.max_depth:
            self.max_depth = depth
            if depth > self.budget.max_depth:
                raise self.over("objects nested this deep", depth, self.budget.max_depth)

    def allocate(self, nbytes: int, what: str) -> None:
        self.alloc += nbytes
        if self.alloc > self.budget.max_alloc:
            raise self.over(f"{what} asking for this many bytes", self.alloc, self.budget.max_alloc)
        self.cost(nbytes)

    def push(self, obj: _Obj) -> None:
        self.stack.append(obj)

    def pop(self) -> _Obj:
        if not self.stack:
            raise self.malformed(f"an opcode at byte {self.here} pops an empty stack")
        return self.stack.pop()

    def pop_mark(self) -> list[_Obj]:
        if not self.metastack:
            raise self.malformed(f"an opcode at byte {self.here} needs a MARK that is not there")
        items, self.stack = self.stack, self.metastack.pop()
        return items

    def top(self) -> _Obj:
        if not self.stack:
            raise self.malformed(f"an opcode at byte {self.here} needs an object on an empty stack")
        return self.stack[-1]

    # -- literals
    def lit_str(self, raw: bytes | memoryview, text: bool = True) -> _Obj:
        n = len(raw)
        if text:
            try:
                value = str(raw, "utf-8", "surrogatepass")
            except UnicodeDecodeError:
                raise self.malformed(f"a string at byte {self.here} is not UTF-8") from None
            self.cost(49 + n if value.isascii() else 80 + 4 * len(value))
        else:
            value = bytes(raw)
            self.cost(33 + n)
        obj = _Obj("lit", 0, value)
        return obj

    def lit(self, value: Any, nbytes: int = _C_INT) -> _Obj:
        self.cost(nbytes + _C_SLOT)
        return _Obj("lit", 0, value)

    # -- placing one object inside another
    def place(self, parent: _Obj, child: _Obj) -> None:
        if child is parent:
            raise self.hostile("a container is placed inside itself (a cycle; torch.save never writes one)")
        child.sealed = True
        if child.depth + 1 > parent.depth:
            parent.depth = child.depth + 1
            self.deep(parent.depth)

    def mutate(self, target: _Obj, op: str) -> None:
        if target.kind == "mark":
            raise self.malformed(f"{op} at byte {self.here} has no target")
        if target.sealed:
            raise self.hostile(f"{op} at byte {self.here} changes a container after it was placed inside another "
                               "(pickle.dump and torch.save never do; it would hide how deep the objects nest)")
        if target.kind in ("lit", "tuple", "global", "frozenset", "storage"):
            raise self.malformed(f"{op} at byte {self.here} targets a {target.kind}")

    # -- globals and calls
    def global_(self, module: Any, qual: Any) -> _Obj:
        if not (isinstance(module, str) and isinstance(qual, str)):
            raise self.hostile(f"STACK_GLOBAL at byte {self.here} names a global computed at load time, not two "
                               "literal strings")
        if self.proto < 3:
            if (module, qual) in _compat_pickle.NAME_MAPPING:
                module, qual = _compat_pickle.NAME_MAPPING[(module, qual)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        full = f"{module}.{qual}"
        shown = full if len(full) <= 120 else full[:117] + "..."
        self.globals.add(shown)
        if not _NAME.match(qual):
            raise self.hostile(f"it names the global {shown!r}: a name with a dot or odd characters (an attribute "
                               "path, which protocol 4 follows from an allowed module to anything)")
        if not _IDENT.match(module):
            raise self.hostile(f"it names the global {shown!r}, whose module is not a plain dotted name")
        if full not in self.allowed:  # collected: the error names them all, once the scan has ended
            self.refused.add(shown)
        obj = _Obj("global", 0)
        obj.name = full
        self.cost(_C_SLOT)
        return obj

    def call(self, func: _Obj, args: _Obj, op: str) -> _Obj:
        if func.kind != "global":
            raise self.hostile(f"{op} at byte {self.here} calls something that is not an allowed global")
        if args.kind != "tuple":
            raise self.malformed(f"{op} at byte {self.here} has arguments that are not a tuple")
        self.calls.add(func.name)
        result = self.container("call", _C_CALL, args.depth + 1)
        result.name = func.name
        self.place(result, args)
        self.check_call(func.name, args, result, op)
        return result

    def check_call(self, name: str, args: _Obj, result: _Obj, op: str) -> None:
        items = args.items if args.items is not None and len(args.items) == args.n else None

        def refuse(why: str) -> Exception:
            return self.hostile(f"{op} at byte {self.here} calls {name} {why}")

        def lit(i: int, kinds: tuple[type, ...]) -> Any:
            if items is None or i >= len(items) or items[i].kind != "lit" or not isinstance(items[i].value, kinds) \
                    or isinstance(items[i].value, bool) and bool not in kinds:
                return None
            return items[i].value

        if name == "builtins.bytearray":
            if args.n == 0:
                return
            if args.n == 1 and lit(0, (bytes, _Sized)) is not None:
                self.allocate(len(items[0].value), "bytearray")
                return
            if args.n == 1 and lit(0, (int,)) is not None and 0 <= items[0].value:
                self.allocate(items[0].value, "bytearray(N)")
                return
            if args.n in (2, 3) and lit(0, (str,)) is not None and all(lit(i, (str,)) for i in range(1, args.n)) \
                    and items[1].value.lower() in _ENCODINGS:
                self.allocate(4 * len(items[0].value), "bytearray")
                return
            raise refuse("of something other than bytes, a literal string or a literal size (a tensor or a "
                         "computed value could ask for any amount of memory)")
        if name == "_codecs.encode":
            if args.n in (2, 3) and lit(0, (str,)) is not None and all(lit(i, (str,)) for i in range(1, args.n)) \
                    and items[1].value.lower() in _ENCODINGS:
                size = 4 * len(items[0].value) if items[1].value.lower().startswith("utf") else len(items[0].value)
                self.allocate(size, "_codecs.encode")
                result.kind, result.value, result.depth = "lit", _Sized(size), 0  # bytes: only the length is kept
                return
            raise refuse("on something other than a literal string and a latin-1/utf-8/ascii encoding (chained "
                         "encodes grow without bound)")
        if name in _CONTAINER_CALLS:
            if args.n == 0:
                self.cost(_C_SET)
                return
            if args.n == 1 and items is not None and items[0].kind in ("list", "tuple", "dict", "set", "frozenset") \
                    and (name != "torch.Size" or items[0].kind in ("list", "tuple")):
                self.cost(_C_SET + _C_ITEM_SET * items[0].n)
                result.n = items[0].n
                return
            raise refuse("of something other than a list, tuple, dict or set the pickle built (a string or a "
                         "tensor would be expanded item by item)")
        if name in self.torch_default and name in _torch_constructors():
            if args.n == 0 or args.n == 1 and items is not None and items[0].kind in ("list", "tuple"):
                return
            raise refuse("with arguments (it would allocate as much memory as a number asks for)")
        if name == "torch._tensor._rebuild_from_type_v2":
            if items is None or args.n != 4 or items[0].kind != "global" or items[0].name not in _REBUILD \
                    or items[1].kind != "global" or items[2].kind != "tuple":
                raise refuse("with something other than one of torch's tensor rebuild functions and a tuple")
            self.check_call(items[0].name, items[2], result, f"{op} (through _rebuild_from_type_v2)")
            return
        if name in _REBUILD:
            self.cost(_C_TENSOR)
            if name in ("torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor",
                        "torch._utils._rebuild_tensor_v3", "torch._utils._rebuild_qtensor") and items is not None \
                    and len(items) > 2:
                result.numel = _numel(items[2])
            if name == "torch._utils._rebuild_qtensor":
                if result.numel is None:
                    raise refuse("with a size that is not a tuple of literal numbers (it allocates that size)")
                self.allocate(result.numel * 4, "a quantized tensor")
            elif name == "torch._utils._rebuild_device_tensor_from_cpu_tensor":
                if items is None or not items or items[0].numel is None:
                    raise refuse("on a tensor of unknown size (it converts, and may grow, the data)")
                self.allocate(items[0].numel * 16, "a dtype conversion")
            elif name in ("torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state") \
                    and items:
                result.numel = items[0].numel
            return
        if name in ("torch.nn.parameter.Parameter", "torch.device", "torch.serialization._get_layout",
                    "builtins.complex"):
            if name == "torch.nn.parameter.Parameter" or all(
                    items is not None and it.kind == "lit" and (it.value is None or isinstance(it.value, (str, int,
                                                                                                       float)))
                    and (not isinstance(it.value, str) or len(it.value) <= 64) for it in (items or [])) \
                    and items is not None:
                if name == "torch.nn.parameter.Parameter" and items:
                    result.numel = items[0].numel
                return
            raise refuse("with arguments that are not short literals")
        if name in self.torch_default:
            raise refuse("(torch.save never calls it; it is allowed only as a value)")
        # A global the caller allowed on purpose (add_safe_globals, DCP's classes): its result is one object.


class _Sized:
    """The value of an ``_codecs.encode`` result: bytes whose length is all that is kept."""

    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


def _numel(size: _Obj) -> int | None:
    if size.kind != "tuple" or size.items is None or len(size.items) != size.n:
        return None
    total = 1
    for it in size.items:
        if it.kind != "lit" or not isinstance(it.value, int) or isinstance(it.value, bool) or it.value < 0:
            return None
        total *= it.value
    return total


# --------------------------------------------------------------------------------------------------
# The opcodes

def _handlers() -> dict[int, Any]:
    """Opcode byte -> handler(scan). Each reads its argument at ``scan.pos`` and updates the abstract stack."""
    h: dict[int, Any] = {}

    def op(*codes: bytes):
        def register(fn):
            for c in codes:
                h[c[0]] = fn
            return fn
        return register

    @op(b"\x80")
    def proto(s: _Scan) -> None:
        s.proto = s.fixed(1, _U8)
        if s.proto > 5:
            raise s.malformed(f"unsupported pickle protocol {s.proto}")

    @op(b"\x95")
    def frame(s: _Scan) -> None:
        s.fixed(8, _U64)

    @op(b"(")
    def mark(s: _Scan) -> None:
        s.metastack.append(s.stack)
        s.stack = []
        if len(s.metastack) > s.budget.max_marks:
            raise s.over("this many MARKs open at once", len(s.metastack), s.budget.max_marks)
        s.cost(_C_MARK)

    @op(b"0")
    def pop(s: _Scan) -> None:
        if s.stack:
            s.stack.pop()
        else:
            s.pop_mark()

    @op(b"1")
    def pop_mark(s: _Scan) -> None:
        s.pop_mark()

    @op(b"2")
    def dup(s: _Scan) -> None:
        s.push(s.top())
        s.cost(_C_SLOT)

    @op(b"N")
    def none(s: _Scan) -> None:
        s.push(_NONE)
        s.cost(_C_SLOT)

    @op(b"\x88", b"\x89")
    def boolean(s: _Scan) -> None:
        s.push(_Obj("lit", 0, s.data[s.here] == 0x88))
        s.cost(_C_SLOT)

    @op(b"K")
    def binint1(s: _Scan) -> None:
        s.push(s.lit(s.fixed(1, _U8), 0))

    @op(b"M")
    def binint2(s: _Scan) -> None:
        s.push(s.lit(s.fixed(2, _U16)))

    @op(b"J")
    def binint(s: _Scan) -> None:
        s.push(s.lit(s.fixed(4, _I32)))

    @op(b"\x8a", b"\x8b")
    def long(s: _Scan) -> None:
        n = s.fixed(1, _U8) if s.data[s.here] == 0x8A else s.fixed(4, _I32)
        if n < 0:
            raise s.malformed("LONG4 with a negative length")
        raw = s.take(n)
        s.push(s.lit(int.from_bytes(raw, "little", signed=True) if n <= 64 else 1 << 600, 28 + n))

    @op(b"G")
    def binfloat(s: _Scan) -> None:
        s.push(s.lit(s.fixed(8, _F64), _C_FLOAT))

    @op(b"I", b"L", b"F")
    def text_number(s: _Scan) -> None:
        line = bytes(s.line()).strip()
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
        s.push(s.lit(value, 28 + len(line)))

    @op(b"X", b"\x8c", b"\x8d")
    def unicode(s: _Scan) -> None:
        code = s.data[s.here]
        n = s.fixed(4, _U32) if code == 0x58 else s.fixed(1, _U8) if code == 0x8C else s.fixed(8, _U64)
        s.push(s.lit_str(s.take(n)))

    @op(b"V")
    def unicode_text(s: _Scan) -> None:
        raw = bytes(s.line())
        try:
            value = raw.decode("raw-unicode-escape")
        except UnicodeDecodeError:
            raise s.malformed(f"a string at byte {s.here} does not decode") from None
        s.cost(80 + 4 * len(value))
        s.push(_Obj("lit", 0, value))

    @op(b"U", b"T")
    def binstring(s: _Scan) -> None:
        n = s.fixed(1, _U8) if s.data[s.here] == 0x55 else s.fixed(4, _I32)
        if n < 0:
            raise s.malformed("BINSTRING with a negative length")
        raw = bytes(s.take(n))
        s.cost(80 + 4 * n)
        s.push(_Obj("lit", 0, raw.decode("latin-1")))  # a Python 2 str: text (or bytes) once loaded

    @op(b"S")
    def string(s: _Scan) -> None:
        raw = bytes(s.line()).rstrip()
        if len(raw) < 2 or raw[0] != raw[-1] or raw[:1] not in (b"'", b'"'):
            raise s.malformed(f"STRING at byte {s.here} is not quoted")
        try:
            import codecs
            value = codecs.escape_decode(raw[1:-1])[0].decode("latin-1")
        except (ValueError, UnicodeDecodeError):
            raise s.malformed(f"STRING at byte {s.here} does not decode") from None
        s.cost(80 + 4 * len(value))
        s.push(_Obj("lit", 0, value))

    @op(b"B", b"C", b"\x8e", b"\x96")
    def binbytes(s: _Scan) -> None:
        code = s.data[s.here]
        n = s.fixed(4, _U32) if code == 0x42 else s.fixed(1, _U8) if code == 0x43 else s.fixed(8, _U64)
        raw = s.take(n)
        s.cost(57 + n)
        s.push(_Obj("lit", 0, bytes(raw) if n <= 256 else _Sized(n)))

    @op(b")")
    def empty_tuple(s: _Scan) -> None:
        obj = _Obj("tuple", 1)
        obj.items = []
        s.push(obj)
        s.cost(_C_SLOT)

    @op(b"]")
    def empty_list(s: _Scan) -> None:
        s.push(s.container("list", _C_LIST + _C_SLOT))

    @op(b"}")
    def empty_dict(s: _Scan) -> None:
        s.push(s.container("dict", _C_DICT + _C_SLOT))

    @op(b"\x8f")
    def empty_set(s: _Scan) -> None:
        s.push(s.container("set", _C_SET + _C_SLOT))

    @op(b"t", b"\x85", b"\x86", b"\x87")
    def tuple_(s: _Scan) -> None:
        code = s.data[s.here]
        if code == 0x74:
            items = s.pop_mark()
        else:
            n = code - 0x84
            if len(s.stack) < n:
                raise s.malformed(f"TUPLE{n} at byte {s.here} on a stack too short")
            items = s.stack[-n:]
            del s.stack[-n:]
        s.push(s.build("tuple", items, _C_TUPLE + 8 * len(items)))

    @op(b"l", b"d", b"\x91")
    def from_mark(s: _Scan) -> None:
        code = s.data[s.here]
        items = s.pop_mark()
        if code == 0x64 and len(items) % 2:
            raise s.malformed(f"DICT at byte {s.here} with an odd number of items")
        kind, each = {0x6C: ("list", _C_ITEM_LIST), 0x64: ("dict", _C_ITEM_DICT // 2),
                      0x91: ("frozenset", _C_ITEM_SET)}[code]
        s.push(s.build(kind, items, {"list": _C_LIST, "dict": _C_DICT, "frozenset": _C_SET}[kind]
                       + each * len(items)))

    @op(b"a")
    def append(s: _Scan) -> None:
        item = s.pop()
        s.add(s.top(), [item], "APPEND", _C_ITEM_LIST)

    @op(b"e", b"\x90")
    def appends(s: _Scan) -> None:
        items = s.pop_mark()
        s.add(s.top(), items, "APPENDS" if s.data[s.here] == 0x65 else "ADDITEMS",
              _C_ITEM_LIST if s.data[s.here] == 0x65 else _C_ITEM_SET)

    @op(b"s")
    def setitem(s: _Scan) -> None:
        value = s.pop()
        key = s.pop()
        s.add(s.top(), [key, value], "SETITEM", _C_ITEM_DICT // 2)

    @op(b"u")
    def setitems(s: _Scan) -> None:
        items = s.pop_mark()
        if len(items) % 2:
            raise s.malformed(f"SETITEMS at byte {s.here} with an odd number of items")
        s.add(s.top(), items, "SETITEMS", _C_ITEM_DICT // 2)

    @op(b"b")
    def build(s: _Scan) -> None:
        state = s.pop()
        target = s.top()
        s.mutate(target, "BUILD")
        if target.kind != "call":
            raise s.malformed(f"BUILD at byte {s.here} on a {target.kind}")
        s.place(target, state)

    @op(b"c")
    def global_(s: _Scan) -> None:
        module = s.text_line()
        qual = s.text_line()
        s.push(s.global_(module, qual))

    @op(b"\x93")
    def stack_global(s: _Scan) -> None:
        qual = s.pop()
        module = s.pop()
        if module.kind != "lit" or qual.kind != "lit":
            raise s.hostile(f"STACK_GLOBAL at byte {s.here} names a global computed at load time, not two literal "
                            "strings")
        s.push(s.global_(module.value, qual.value))

    @op(b"R")
    def reduce(s: _Scan) -> None:
        args = s.pop()
        func = s.pop()
        s.push(s.call(func, args, "REDUCE"))

    @op(b"\x81")
    def newobj(s: _Scan) -> None:
        args = s.pop()
        cls = s.pop()
        s.push(s.call(cls, args, "NEWOBJ"))

    @op(b"\x92")
    def newobj_ex(s: _Scan) -> None:
        kwargs = s.pop()
        args = s.pop()
        cls = s.pop()
        if kwargs.kind != "dict":
            raise s.malformed(f"NEWOBJ_EX at byte {s.here} with keyword arguments that are not a dict")
        result = s.call(cls, args, "NEWOBJ_EX")
        s.place(result, kwargs)
        s.push(result)

    @op(b"Q")
    def binpersid(s: _Scan) -> None:
        pid = s.pop()
        if pid.kind not in ("tuple", "lit"):
            raise s.malformed(f"BINPERSID at byte {s.here} with an id that is not a tuple")
        obj = s.container("storage", 200, pid.depth + 1)
        s.place(obj, pid)
        s.push(obj)

    @op(b"h", b"j", b"g")
    def get(s: _Scan) -> None:
        code = s.data[s.here]
        i = s.fixed(1, _U8) if code == 0x68 else s.fixed(4, _U32) if code == 0x6A else s.text_int()
        obj = s.memo.get(i)
        if obj is None:
            raise s.malformed(f"GET at byte {s.here} of memo entry {i}, never stored")
        s.push(obj)
        s.cost(_C_SLOT)

    @op(b"q", b"r", b"p", b"\x94")
    def put(s: _Scan) -> None:
        code = s.data[s.here]
        i = (s.fixed(1, _U8) if code == 0x71 else s.fixed(4, _U32) if code == 0x72
             else s.text_int() if code == 0x70 else len(s.memo))
        if i < 0:
            raise s.malformed(f"PUT at byte {s.here} with a negative index")
        top = s.top()
        if top.kind == "mark":
            raise s.malformed(f"PUT at byte {s.here} of a MARK")
        if i not in s.memo:
            if len(s.memo) >= s.budget.max_memo:
                raise s.over("this many memo entries", len(s.memo) + 1, s.budget.max_memo)
            s.cost(_C_MEMO)
        s.memo[i] = top

    @op(b"i", b"o")
    def inst(s: _Scan) -> None:
        raise s.hostile(f"{'INST' if s.data[s.here] == 0x69 else 'OBJ'} at byte {s.here}: protocol 0/1 instance "
                        "creation, which torch.save never writes")

    @op(b"\x82", b"\x83", b"\x84")
    def ext(s: _Scan) -> None:
        raise s.hostile(f"EXT at byte {s.here}: a global from copyreg's extension registry, which torch.save "
                        "never writes")

    @op(b"P")
    def persid(s: _Scan) -> None:
        raise s.hostile(f"PERSID at byte {s.here}: a text persistent id, which torch.save never writes")

    @op(b"\x97", b"\x98")
    def buffer(s: _Scan) -> None:
        raise s.hostile(f"an out-of-band buffer opcode at byte {s.here}, which torch.save never writes")

    return h


_HANDLERS = _handlers()


def _scan_methods() -> None:
    """Readers and builders the handlers share (attached to ``_Scan``)."""

    def fixed(s: _Scan, n: int, unpack: Any) -> Any:
        if s.pos + n > s.size:
            raise s.truncated()
        value = unpack(s.data, s.pos)[0]
        s.pos += n
        return value

    def take(s: _Scan, n: int) -> Any:
        if s.pos + n > s.size:
            raise s.truncated()
        raw = s.data[s.pos:s.pos + n]
        s.pos += n
        return raw

    def line(s: _Scan) -> Any:
        end = s.find_newline(s.pos)
        if end < 0:
            raise s.truncated()
        raw = s.data[s.pos:end]
        s.pos = end + 1
        return raw

    def text_line(s: _Scan) -> str:
        raw = bytes(s.line())
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise s.hostile(f"GLOBAL at byte {s.here} names a global that is not UTF-8") from None

    def text_int(s: _Scan) -> int:
        raw = bytes(s.line())
        try:
            return int(raw)
        except ValueError:
            raise s.malformed(f"a memo index at byte {s.here} does not parse") from None

    def truncated(s: _Scan) -> Exception:
        return _error(s.name, KIND_TRUNCATED, f"is cut short: its pickle ends inside an opcode at byte {s.here} "
                      "(before STOP)", "use an earlier checkpoint (CheckpointFolder.resume picks the newest good one)")

    def build(s: _Scan, kind: str, items: list[_Obj], nbytes: int) -> _Obj:
        obj = s.container(kind, nbytes)
        for item in items:
            if item.kind == "mark":
                raise s.malformed(f"a MARK inside a {kind} at byte {s.here}")
            s.place(obj, item)
        obj.n = len(items) // 2 if kind == "dict" else len(items)
        if kind == "tuple":
            obj.items = items[:_KEEP]
        return obj

    def add(s: _Scan, target: _Obj, items: list[_Obj], op: str, each: int) -> None:
        s.mutate(target, op)
        for item in items:
            if item.kind == "mark":
                raise s.malformed(f"a MARK inside {op} at byte {s.here}")
            s.place(target, item)
        target.n += len(items)
        s.cost(each * len(items))

    for fn in (fixed, take, line, text_line, text_int, truncated, build, add):
        setattr(_Scan, fn.__name__, fn)


_scan_methods()


def scan_pickle(data: bytes | bytearray | memoryview, *, allowed: frozenset[str] | None = None,
                budget: PickleBudget | None = None, name: str = "data.pkl", start: int = 0) -> PickleReport:
    """Check the pickle at ``data[start:]`` before any unpickler sees it; ``CheckpointError`` at the first problem.

    ``allowed``: exact ``module.name`` strings (``None``: what ``torch.load(weights_only=True)`` accepts on this
    torch, ``torch_allowed_globals()``). ``budget``: ``PickleBudget.for_size(len(data) - start)`` when ``None``.
    ``name`` is how the messages call the pickle. The error's ``kind`` is ``"hostile-pickle"``, ``"budget"``,
    ``"truncated"`` or ``"malformed-pickle"``. Nothing the pickle names is imported, nothing is called, no
    object it describes is built.
    """
    view = memoryview(data).cast("B") if not isinstance(data, bytes) else data
    if allowed is None:
        allowed = torch_allowed_globals()
        torch_default = _torch_default()
    else:
        allowed = frozenset(allowed)
        try:
            torch_default = _torch_default() & allowed
        except ImportError:  # no torch: only the rules for builtins apply
            torch_default = frozenset()
    size = len(view) - start
    s = _Scan(view, start, allowed, budget or PickleBudget.for_size(size), name, torch_default)
    s.size, s.nbytes = len(view), size
    raw = bytes(view) if not isinstance(view, bytes) else view
    s.find_newline = lambda pos: raw.find(b"\n", pos)
    s.data = raw
    collecting = gc.isenabled()
    gc.disable()  # the abstract objects form no cycles; the collector's passes over millions of them cost more
    try:
        try:
            _run(s, raw)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError, struct.error,
                UnicodeError, RecursionError) as exc:  # a case no handler foresaw: still only CheckpointError
            raise s.malformed(f"{type(exc).__name__} at byte {s.here}") from None
    except Exception as exc:
        if s.refused and getattr(exc, "kind", None) in (KIND_BUDGET, KIND_HOSTILE):
            raise s.refused_globals() from None  # what it names matters more than how far the scan got
        raise
    finally:
        if collecting:
            gc.enable()
    if s.refused:
        raise s.refused_globals()
    return PickleReport(globals=tuple(sorted(s.globals)), opcodes=s.ops, max_depth=s.max_depth,
                        containers=s.containers, memo=len(s.memo), memory=s.memory, alloc=s.alloc, protocol=s.proto,
                        end=s.pos, calls=tuple(sorted(s.calls)))


def _run(s: _Scan, raw: bytes) -> None:
    """The opcode loop: dispatch each opcode to its handler until STOP."""
    handlers, n = _HANDLERS, len(raw)
    while True:
        pos = s.pos
        if pos >= n:
            s.here = pos
            raise s.truncated()
        code = raw[pos]
        s.here, s.pos = pos, pos + 1
        s.ops += 1
        if code == 0x2E:  # STOP
            result = s.pop()
            if result.kind == "mark":
                raise s.malformed("STOP with a MARK on top of the stack")
            return
        handler = handlers.get(code)
        if handler is None:
            raise s.malformed(f"unknown opcode {bytes([code])!r} at byte {pos}")
        handler(s)
