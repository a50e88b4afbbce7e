"""The opcode loop, and ``scan_pickle``: the guard that runs before any unpickler sees a pickle."""

from __future__ import annotations

import gc
import struct
from typing import TypeVar

from helper.pickle_guard import ops_containers, ops_control, ops_literals, ops_objects
from helper.pickle_guard.allowlist import torch_allowed_globals, torch_default_globals
from helper.pickle_guard.budget import KIND_BUDGET, KIND_HOSTILE, PickleBudget, PickleReport
from helper.pickle_guard.state import Handler, Scan

HANDLERS: dict[int, Handler] = {
    **ops_literals.HANDLERS,
    **ops_containers.HANDLERS,
    **ops_control.HANDLERS,
    **ops_objects.HANDLERS,
}  # every opcode of protocols 0-5 but STOP
_UNFORESEEN = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    OverflowError,
    struct.error,
    UnicodeError,
    RecursionError,
)
S = TypeVar("S", bound=Scan)


def as_bytes(data: bytes | bytearray | memoryview) -> bytes:
    """``data`` as ``bytes`` (copied unless it is already)."""
    return data if isinstance(data, bytes) else bytes(memoryview(data).cast("B"))


def walk(s: S) -> S:
    """Run the opcode loop on ``s`` with the cyclic garbage collector paused; failures are ``CheckpointError``.

    The abstract objects form no cycles, and the collector's passes over millions of them cost more
    than the walk. They are freed before the collector runs again (``s.memo_entries`` keeps the memo's
    size): a pass over the objects of a 13 kB state-dict pickle cost 0.4 ms, a fifth of its scan. Any
    exception a handler did not foresee becomes a ``malformed-pickle`` error.
    """
    collecting = gc.isenabled()
    gc.disable()
    try:
        try:
            _run(s)
        except _UNFORESEEN as exc:  # a case no handler foresaw: still only CheckpointError
            raise s.malformed(f"{type(exc).__name__} at byte {s.here}") from None
    finally:
        s.memo_entries = len(s.memo)
        s.stack, s.metastack, s.memo = [], [], {}  # freed now, by reference counts, not by the collector
        if collecting:
            gc.enable()
    return s


def _run(s: Scan) -> None:
    """The opcode loop: dispatch each opcode to its handler until STOP."""
    handlers, raw, n = HANDLERS, s.data, s.size
    while True:
        pos = s.pos
        if pos >= n:
            s.here = pos
            raise s.truncated()
        code = raw[pos]
        s.here, s.pos = pos, pos + 1
        s.ops += 1
        if code == 0x2E:  # STOP
            s.stop()
            return
        handler = handlers.get(code)
        if handler is None:
            raise s.malformed(f"unknown opcode {bytes([code])!r} at byte {pos}")
        handler(s)


def scan_pickle(
    data: bytes | bytearray | memoryview,
    *,
    allowed: frozenset[str] | None = None,
    budget: PickleBudget | None = None,
    name: str = "data.pkl",
    start: int = 0,
) -> PickleReport:
    """Check the pickle at ``data[start:]`` before any unpickler sees it; ``CheckpointError`` at the first problem.

    ``allowed``: exact ``module.name`` strings (``None``: what ``torch.load(weights_only=True)`` accepts on this
    torch, ``torch_allowed_globals()``). ``budget``: ``PickleBudget.for_size(len(data) - start)`` when ``None``.
    ``name`` is how the messages call the pickle. The error's ``kind`` is ``"hostile-pickle"``, ``"budget"``,
    ``"truncated"`` or ``"malformed-pickle"``. Nothing the pickle names is imported, nothing is called, no
    object it describes is built.
    """
    raw = as_bytes(data)
    if allowed is None:
        allowed, torch_default = torch_allowed_globals(), torch_default_globals()
    else:
        allowed = frozenset(allowed)
        try:
            torch_default = torch_default_globals() & allowed
        except ImportError:  # no torch: only the rules for builtins apply
            torch_default = frozenset()
    s = Scan(raw, start, allowed, budget or PickleBudget.for_size(len(raw) - start), name, torch_default)
    try:
        walk(s)
    except Exception as exc:
        if s.refused and getattr(exc, "kind", None) in (KIND_BUDGET, KIND_HOSTILE):
            raise s.refused_globals() from None  # what it names matters more than how far the scan got
        raise
    if s.refused:
        raise s.refused_globals()
    return PickleReport(
        globals=tuple(sorted(s.globals)),
        opcodes=s.ops,
        max_depth=s.max_depth,
        containers=s.containers,
        memo=s.memo_entries,
        memory=s.memory,
        alloc=s.alloc,
        protocol=s.proto,
        end=s.pos,
        calls=tuple(sorted(s.calls)),
        expanded=s.expanded,
        hashed=s.hashed,
        largest_key=s.largest_key,
        clashes=s.clashes,
        storages=s.storages,
        foreign_ids=s.foreign_ids,
        bytearrays=s.bytearrays,
    )
