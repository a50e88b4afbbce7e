"""The failure kinds, the budget and the report of ``helper.pickle_guard`` (the package docstring says why)."""

from __future__ import annotations

from dataclasses import dataclass, field

KIND_HOSTILE = "hostile-pickle"  # names or calls something weights_only=True must never reach
KIND_BUDGET = "budget"  # would build more (deeper, bigger) than the budget for its size
KIND_TRUNCATED = "truncated"  # ends before its STOP opcode
KIND_MALFORMED = "malformed-pickle"  # not a pickle an unpickler would accept (unknown opcode, bad stack)

FIX_HOSTILE = "do not load this file; ask for the weights as a state_dict (torch.save) or a safetensors file"
FIX_BUDGET = (
    "do not load this file; if you made it yourself, store large data as tensors (their bytes are not "
    "part of the pickle) rather than as millions of small Python objects"
)
FIX_DAMAGED = "use an earlier checkpoint (CheckpointFolder.resume picks the newest good one)"

# CPython 3.11 (64-bit) sizes, rounded up: what each built object costs
C_SLOT, C_INT, C_FLOAT, C_LIST, C_DICT, C_SET, C_TUPLE = 8, 32, 24, 56, 64, 216, 40
C_ITEM_LIST, C_ITEM_DICT, C_ITEM_SET, C_MEMO, C_MARK, C_CALL, C_TENSOR = 9, 48, 64, 100, 64, 128, 400

LIMITS = (
    "max_depth",
    "max_marks",
    "max_containers",
    "max_memo",
    "max_memory",
    "max_alloc",
    "max_expanded",
    "max_hashed",
    "max_key",
    "max_clashes",
)


@dataclass(frozen=True)
class PickleBudget:
    """Limits on what a pickle may build; ``for_size(n)`` derives them from its length (see the package docstring)."""

    max_depth: int = 100
    max_marks: int = 100
    max_containers: int = 1 << 16
    max_memo: int = 1 << 16
    max_memory: int = 32 << 20
    max_alloc: int = 1 << 20
    max_expanded: int = 1 << 20
    max_hashed: int = 1 << 20
    max_key: int = 1024
    max_clashes: int = 32

    @classmethod
    def for_size(cls, nbytes: int) -> PickleBudget:
        """The budget for a pickle of ``nbytes`` bytes (the package docstring says how each figure was chosen)."""
        n = max(0, int(nbytes))
        return cls(
            max_containers=min((1 << 16) + n // 4, 1 << 20),
            max_memo=min((1 << 16) + n // 4, 1 << 20),
            max_memory=min((32 << 20) + 64 * n, 1 << 30),
            max_alloc=(1 << 20) + n,
            max_expanded=min((1 << 20) + 16 * n, 1 << 26),
            max_hashed=min((1 << 20) + 2 * n, 1 << 25),
        )

    @classmethod
    def unlimited(cls) -> PickleBudget:
        """No limit at all: for a survey of a pickle the guard has already passed (or that is only listed)."""
        big = 1 << 62
        return cls(
            max_depth=big,
            max_marks=big,
            max_containers=big,
            max_memo=big,
            max_memory=big,
            max_alloc=big,
            max_expanded=big,
            max_hashed=big,
            max_key=big,
            max_clashes=big,
        )


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
    expanded: int = 0  # the value's expanded size (memo references counted in full)
    hashed: int = 0  # expanded sizes of every key hashed, summed
    largest_key: int = 0  # the largest expanded size of a key
    clashes: int = 0  # the most keys of one container that clashed (equal planned hash, or opaque)
    storages: dict[str, tuple[str, int]] = field(default_factory=dict, compare=False)  # key -> (type, numel)
    foreign_ids: int = 0  # persistent ids that are not torch's storage references
    bytearrays: int = 0  # bytes asked for by bytearray(N) of a literal N


def pickle_error(name: str, kind: str, cause: str, fix: str) -> Exception:
    """A ``CheckpointError`` about the pickle called ``name``, with ``kind`` set (one of the ``KIND_*`` codes)."""
    from helper.formats import CheckpointError  # imported here: helper.formats imports this package

    err = CheckpointError(None, f"{name}: {cause}", fix)
    err.kind = kind  # helper.formats' CheckpointError may not take kind= yet
    return err
