"""The walker's state: the abstract stack and memo, the budget's counters, and the rules every opcode shares.

The opcode handlers (``ops_*.py``) read their arguments and call these methods; every rule of the guard
lives in a method, so ``survey.Survey`` can relax the rules without a second walker.
"""

from __future__ import annotations

import _compat_pickle
from collections.abc import Callable
from typing import Any

from helper.pickle_guard import budget as b
from helper.pickle_guard.budget import PickleBudget, pickle_error
from helper.pickle_guard.hashing import HashRules
from helper.pickle_guard.reading import Reading
from helper.pickle_guard.values import IDENT, KEEP, NAME, Obj, storage_ref


class Scan(HashRules, Reading):
    """One walk over one pickle: position, stack, memo, what was named and called, and the budget's counters."""

    # Slots: the walker reads these millions of times, and an instance dict of more than 30 keys is no
    # longer a shared-key one (CPython 3.11), which made every read of them slower (+0.35 ms a scan).
    __slots__ = (
        "data", "pos", "here", "allowed", "budget", "name", "torch_default", "max_expanded", "size", "nbytes",
        "stack", "metastack", "memo", "memo_entries", "globals", "calls", "refused", "containers", "memory",
        "alloc", "max_depth", "ops", "expanded", "hashed", "largest_key", "clashes", "proto", "storages",
        "foreign_ids", "bytearrays", "max_memory",
    )  # fmt: skip

    def __init__(
        self,
        data: bytes,
        start: int,
        allowed: frozenset[str],
        budget: PickleBudget,
        name: str,
        torch_default: frozenset[str],
    ) -> None:
        self.data, self.pos, self.here, self.allowed, self.budget, self.name = data, start, start, allowed, budget, name
        self.torch_default = torch_default
        self.max_expanded = budget.max_expanded  # read on every item placed
        self.max_memory = budget.max_memory  # read on every object counted
        self.size, self.nbytes = len(data), len(data) - start
        self.stack: list[Obj] = []
        self.metastack: list[list[Obj]] = []
        self.memo: dict[int, Obj] = {}
        self.memo_entries = 0  # the memo's size once the walk is over (walk() frees the memo)
        self.globals: set[str] = set()
        self.calls: set[str] = set()
        self.refused: set[str] = set()  # globals outside the allowlist
        self.containers = self.memory = self.alloc = self.max_depth = self.ops = 0
        self.expanded = self.hashed = self.largest_key = self.clashes = 0
        self.proto = 0
        self.storages: dict[str, tuple[str, int]] = {}  # torch's storage references: key -> (type, numel)
        self.foreign_ids = 0  # persistent ids that are not torch's storage references
        self.bytearrays = 0  # bytes asked for by bytearray(N) of a literal N

    # -- failures
    def hostile(self, cause: str) -> Exception:
        """The error for something ``weights_only=True`` must never reach."""
        return pickle_error(
            self.name, b.KIND_HOSTILE, f"refused before unpickling: {cause} (nothing in it was run)", b.FIX_HOSTILE
        )

    def over(self, what: str, value: int, limit: int, which: str = "") -> Exception:
        """The error for a budget limit passed (``err.limit`` names it)."""
        which = which or next(f for f in b.LIMITS if getattr(self.budget, f) == limit)  # which limit was hit
        bomb = (
            ", a memory bomb"
            if which in ("max_memory", "max_alloc")
            else ", a hash bomb"
            if which in ("max_expanded", "max_hashed", "max_key", "max_clashes")
            else ""
        )
        err = pickle_error(
            self.name,
            b.KIND_BUDGET,
            f"refused before unpickling: it would build {what} ({value:,}, "
            f"the budget for a pickle of {self.nbytes:,} bytes is {limit:,}){bomb}; nothing was built",
            b.FIX_BUDGET,
        )
        err.limit = which  # type: ignore[attr-defined]
        return err

    def refused_globals(self) -> Exception:
        """The error naming every global outside the allowlist (``err.refused_globals``)."""
        names = sorted(self.refused)
        err = self.hostile(
            f"it names {', '.join(names)}, which {'is' if len(names) == 1 else 'are'} not on the "
            "allowlist of weights_only=True (exact module.name)"
        )
        err.refused_globals = tuple(names)  # type: ignore[attr-defined]
        return err

    def malformed(self, cause: str) -> Exception:
        """The error for bytes no unpickler would accept."""
        return pickle_error(self.name, b.KIND_MALFORMED, f"is not a valid pickle: {cause}", b.FIX_DAMAGED)

    def truncated(self) -> Exception:
        """The error for a pickle that ends inside an opcode (before STOP)."""
        return pickle_error(
            self.name,
            b.KIND_TRUNCATED,
            f"is cut short: its pickle ends inside an opcode at byte {self.here} (before STOP)",
            b.FIX_DAMAGED,
        )

    # -- accounting
    def cost(self, nbytes: int) -> None:
        """Count ``nbytes`` of built objects against ``max_memory``."""
        self.memory += nbytes
        if self.memory > self.max_memory:
            raise self.over("objects of about this many bytes", self.memory, self.max_memory)

    def container(self, kind: str, nbytes: int, depth: int = 1) -> Obj:
        """A new container (or call result, or storage), counted against ``max_containers``."""
        self.containers += 1
        if self.containers > self.budget.max_containers:
            raise self.over(
                "this many containers (lists, dicts, sets, tuples, objects)",
                self.containers,
                self.budget.max_containers,
            )
        self.cost(nbytes)
        self.deep(depth)
        return Obj(kind, depth)

    def deep(self, depth: int) -> None:
        """Note a nesting depth, against ``max_depth``."""
        if depth > self.max_depth:
            self.max_depth = depth
            if depth > self.budget.max_depth:
                raise self.over("objects nested this deep", depth, self.budget.max_depth)

    def allocate(self, nbytes: int, what: str) -> None:
        """Count memory a call asks for against ``max_alloc`` (and ``max_memory``)."""
        self.alloc += nbytes
        if self.alloc > self.budget.max_alloc:
            raise self.over(f"{what} asking for this many bytes", self.alloc, self.budget.max_alloc)
        self.cost(nbytes)

    # -- the stack
    def push(self, obj: Obj) -> None:
        """Push ``obj``."""
        self.stack.append(obj)

    def pop(self) -> Obj:
        """Pop the top of the stack (malformed when empty)."""
        if not self.stack:
            raise self.malformed(f"an opcode at byte {self.here} pops an empty stack")
        return self.stack.pop()

    def open_mark(self) -> None:
        """A new stack frame above a MARK, counted against ``max_marks``."""
        self.metastack.append(self.stack)
        self.stack = []
        if len(self.metastack) > self.budget.max_marks:
            raise self.over("this many MARKs open at once", len(self.metastack), self.budget.max_marks)
        self.cost(b.C_MARK)

    def pop_mark(self) -> list[Obj]:
        """The items above the newest MARK, which is closed."""
        if not self.metastack:
            raise self.malformed(f"an opcode at byte {self.here} needs a MARK that is not there")
        items, self.stack = self.stack, self.metastack.pop()
        return items

    def short_stack(self, n: int) -> list[Obj]:
        """``TUPLE1``-``TUPLE3`` with fewer than ``n`` items above the newest MARK."""
        raise self.malformed(f"TUPLE{n} at byte {self.here} on a stack too short")

    def top(self) -> Obj:
        """The top of the stack, left there."""
        if not self.stack:
            raise self.malformed(f"an opcode at byte {self.here} needs an object on an empty stack")
        return self.stack[-1]

    # -- the memo
    def recall(self, i: int) -> None:
        """``GET``: push memo entry ``i``, which the pickle must have stored."""
        obj = self.memo.get(i)
        if obj is None:
            raise self.malformed(f"GET at byte {self.here} of memo entry {i}, never stored")
        self.stack.append(obj)
        self.cost(b.C_SLOT)

    def remember(self, i: int) -> None:
        """``PUT``: the top item stored as memo entry ``i``, a new entry counted against ``max_memo``."""
        if i < 0:
            raise self.malformed(f"PUT at byte {self.here} with a negative index")
        top = self.top()
        if i not in self.memo:
            if len(self.memo) >= self.budget.max_memo:
                raise self.over("this many memo entries", len(self.memo) + 1, self.budget.max_memo)
            self.cost(b.C_MEMO)
        self.memo[i] = top

    # -- reading arguments
    # -- literals
    def lit(self, value: Any, nbytes: int = b.C_INT) -> Obj:
        """A number, counted as ``nbytes`` plus its stack slot (``cost``, inlined: the commonest object)."""
        self.memory += nbytes + b.C_SLOT
        if self.memory > self.max_memory:
            raise self.over("objects of about this many bytes", self.memory, self.max_memory)
        return Obj("lit", 0, value)

    def lit_text(self, value: str, nbytes: int) -> Obj:
        """A string, counted as ``nbytes``."""
        self.cost(nbytes)
        return Obj("lit", 0, value)

    def lit_str(self, raw: bytes) -> Obj:
        """A UTF-8 string argument (``BINUNICODE`` and its kin)."""
        try:
            value = str(raw, "utf-8", "surrogatepass")
        except UnicodeDecodeError:
            raise self.malformed(f"a string at byte {self.here} is not UTF-8") from None
        return self.lit_text(value, 49 + len(raw) if value.isascii() else 80 + 4 * len(value))

    # -- containers: building, filling, placing
    def build(self, kind: str, items: list[Obj], nbytes: int) -> Obj:
        """A container built at once from ``items`` (``TUPLE``, ``LIST``, ``DICT``, ``FROZENSET``)."""
        obj = self.container(kind, nbytes)
        self.place_all(obj, items)
        obj.n = len(items) // 2 if kind == "dict" else len(items)
        if kind == "tuple":
            obj.items = items[:KEEP]
            if len(items) > KEEP:  # a short tuple keeps its items: noted only if a call hashes them (rehash)
                self.note_items(obj, items)
        elif kind == "dict":
            self.hash_keys(obj, items[::2])
        elif kind == "frozenset":
            self.hash_keys(obj, items)
        elif items:  # a list keeps its first item (a pair's key, should the list be a pair)
            obj.value = items[0]
            self.note_items(obj, items)
        return obj

    def add(self, target: Obj, items: list[Obj], op: str, each: int) -> None:
        """``items`` added to an existing container (``APPEND``, ``SETITEMS``...), ``each`` bytes apiece."""
        self.mutate(target, op)
        self.place_all(target, items)
        if op == "SETITEMS" or op == "SETITEM":
            self.hash_keys(target, items[::2])
        elif op == "ADDITEMS":
            self.hash_keys(target, items)
        elif items:
            if target.n == 0 and target.kind == "list":
                target.value = items[0]
            self.note_items(target, items)
        target.n += len(items)
        self.cost(each * len(items))

    def place_all(self, parent: Obj, items: list[Obj]) -> None:
        """``place`` for each of ``items`` (inlined: this is the walker's hottest loop)."""
        depth, size = parent.depth, parent.size
        for child in items:
            if child is parent:
                raise self.hostile("a container is placed inside itself (a cycle; torch.save never writes one)")
            child.sealed = True
            if child.depth >= depth:
                depth = child.depth + 1
            size += child.size
        if depth > parent.depth:
            parent.depth = depth
            self.deep(depth)
        parent.size = size
        if size > self.max_expanded:
            raise self.over(
                "an object that expands to this many objects through memo references (hashing, "
                "comparing or printing it walks every one)",
                size,
                self.max_expanded,
                "max_expanded",
            )

    def place(self, parent: Obj, child: Obj) -> None:
        """``child`` goes inside ``parent``: sealed from now on, ``parent`` at least one deeper and as much bigger
        as ``child`` expands to (a container is never bigger than max_expanded plus a child: no need to saturate)."""
        self.place_all(parent, [child])

    def mutate(self, target: Obj, op: str) -> None:
        """Refuse changing a sealed container, or something that is not a mutable container."""
        if target.sealed:
            raise self.hostile(
                f"{op} at byte {self.here} changes a container after it was placed inside another "
                "(pickle.dump and torch.save never do; it would hide how deep the objects nest)"
            )
        if target.kind in ("lit", "tuple", "global", "frozenset", "storage"):
            raise self.malformed(f"{op} at byte {self.here} targets a {target.kind}")

    def odd_items(self, op: str) -> None:
        """A ``DICT`` or ``SETITEMS`` with a key and no value."""
        raise self.malformed(f"{op} at byte {self.here} with an odd number of items")

    def set_state(self, target: Obj, state: Obj) -> None:
        """``BUILD``: ``state`` set on ``target``, which must be an object a call made."""
        self.mutate(target, "BUILD")
        if target.kind != "call":
            raise self.malformed(f"BUILD at byte {self.here} on a {target.kind}")
        self.place(target, state)

    # -- globals and calls
    def global_(self, module: Any, qual: Any) -> Obj:
        """A global named by ``GLOBAL`` or ``STACK_GLOBAL``: exact names, refused ones collected."""
        if not (isinstance(module, str) and isinstance(qual, str)):
            raise self.hostile(
                f"STACK_GLOBAL at byte {self.here} names a global computed at load time, not two literal strings"
            )
        if self.proto < 3:
            if (module, qual) in _compat_pickle.NAME_MAPPING:
                module, qual = _compat_pickle.NAME_MAPPING[(module, qual)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        full = f"{module}.{qual}"
        shown = full if len(full) <= 120 else full[:117] + "..."
        self.globals.add(shown)
        if not NAME.match(qual):
            raise self.hostile(
                f"it names the global {shown!r}: a name with a dot or odd characters (an attribute "
                "path, which protocol 4 follows from an allowed module to anything)"
            )
        if not IDENT.match(module):
            raise self.hostile(f"it names the global {shown!r}, whose module is not a plain dotted name")
        if full not in self.allowed:  # collected: the error names them all, once the scan has ended
            self.refused.add(shown)
        obj = Obj("global", 0)
        obj.name = full
        self.cost(b.C_SLOT)
        return obj

    def stack_global(self, module: Obj, qual: Obj) -> Obj:
        """``STACK_GLOBAL``: both operands must be literal strings the pickle pushed."""
        if module.kind != "lit" or qual.kind != "lit":
            raise self.hostile(
                f"STACK_GLOBAL at byte {self.here} names a global computed at load time, not two literal strings"
            )
        return self.global_(module.value, qual.value)

    def call(self, func: Obj, args: Obj, op: str) -> Obj:
        """``REDUCE``/``NEWOBJ``: an allowed global called on a tuple, by the rules of ``calls.check_call``."""
        from helper.pickle_guard.calls import check_call

        if func.kind != "global":
            raise self.hostile(f"{op} at byte {self.here} calls something that is not an allowed global")
        if args.kind != "tuple":
            raise self.malformed(f"{op} at byte {self.here} has arguments that are not a tuple")
        self.calls.add(func.name)
        result = self.container("call", b.C_CALL, args.depth + 1)
        result.name = func.name
        self.place(result, args)
        check_call(self, func.name, args, result, op)
        return result

    def keyword_arguments(self, kwargs: Obj) -> None:
        """``NEWOBJ_EX``'s keyword arguments must be a dict."""
        if kwargs.kind != "dict":
            raise self.malformed(f"NEWOBJ_EX at byte {self.here} with keyword arguments that are not a dict")

    def persistent(self, pid: Obj) -> Obj:
        """``BINPERSID``: a storage reference (torch's tuple, or a literal)."""
        if pid.kind not in ("tuple", "lit"):
            raise self.malformed(f"BINPERSID at byte {self.here} with an id that is not a tuple")
        ref = storage_ref(pid)
        if ref is None:
            self.foreign_ids += 1
        else:
            self.storages[ref[0]] = ref[1:]
        obj = self.container("storage", 200, pid.depth + 1)
        self.place(obj, pid)
        return obj

    def never_written(self, what: str) -> None:
        """An opcode ``torch.save`` never writes (``what`` says which and why): refused."""
        raise self.hostile(f"{what}, which torch.save never writes")

    def protocol(self, proto: int) -> None:
        """``PROTO``: protocols 0 to 5."""
        self.proto = proto
        if proto > 5:
            raise self.malformed(f"unsupported pickle protocol {proto}")

    def stop(self) -> None:
        """``STOP``: the pickle's value is on the stack."""
        self.expanded = self.pop().size


Handler = Callable[[Scan], None]


def register(table: dict[int, Handler], *codes: bytes) -> Callable[[Handler], Handler]:
    """A decorator that files a handler in ``table`` under each opcode byte of ``codes``."""

    def file(fn: Handler) -> Handler:
        for code in codes:
            table[code[0]] = fn
        return fn

    return file
