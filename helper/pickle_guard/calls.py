"""The rules for calling each allowed global that can allocate more than its arguments hold.

``check_call`` is given a call the walker has already counted (``result``); each rule below either
counts what the call allocates or refuses it. A global outside torch's default set (one the caller
allowed on purpose: ``add_safe_globals``, DCP's classes) may be called with any arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from helper.pickle_guard import budget as b
from helper.pickle_guard.allowlist import CONTAINER_CALLS, REBUILD, torch_constructors
from helper.pickle_guard.values import ENCODINGS, Obj, Sized, literal, numel

if TYPE_CHECKING:
    from helper.pickle_guard.state import Scan

_SIZED_REBUILDS = (
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_tensor",
    "torch._utils._rebuild_tensor_v3",
    "torch._utils._rebuild_qtensor",
)
_PARAMETERS = ("torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state")
_SHORT_LITERALS = (
    "torch.nn.parameter.Parameter",
    "torch.device",
    "torch.serialization._get_layout",
    "builtins.complex",
)
_HASHING = frozenset(
    {"builtins.set", "builtins.frozenset", "collections.Counter", "collections.OrderedDict", "builtins.dict"}
)  # they hash their argument's items (or its pairs' keys)
_BY_VALUE = frozenset({"builtins.complex", "torch.Size", "builtins.tuple", "builtins.frozenset"})  # hashed by value


class _Call:
    """One call under check: the walker, the callable's name, its arguments and result, how it was called."""

    def __init__(self, s: Scan, name: str, args: Obj, result: Obj, op: str) -> None:
        self.s, self.name, self.args, self.result, self.op = s, name, args, result, op
        self.items = args.items if args.items is not None and len(args.items) == args.n else None

    def refuse(self, why: str) -> Exception:
        """The error refusing this call, ``why`` saying of what."""
        return self.s.hostile(f"{self.op} at byte {self.s.here} calls {self.name} {why}")

    def lit(self, i: int, kinds: tuple[type, ...]) -> object:
        """Argument ``i``'s literal value of one of ``kinds``, or None."""
        return literal(self.items, i, kinds)

    def value(self, i: int) -> Any:
        """Argument ``i``'s value (the caller has checked it with ``lit``)."""
        assert self.items is not None
        return self.items[i].value

    def text_and_encoding(self) -> bool:
        """The arguments are a literal string and a literal latin-1/utf-8/ascii encoding (and errors)."""
        n = self.args.n
        return (
            n in (2, 3)
            and self.lit(0, (str,)) is not None
            and all(self.lit(i, (str,)) for i in range(1, n))
            and self.value(1).lower() in ENCODINGS
        )


def _bytearray(c: _Call) -> None:
    """``bytearray()``, of bytes, of a literal string and encoding, or of a literal size."""
    if c.args.n == 0:
        return
    if c.args.n == 1 and c.lit(0, (bytes, Sized)) is not None:
        return c.s.allocate(len(c.value(0)), "bytearray")
    if c.args.n == 1 and c.lit(0, (int,)) is not None and 0 <= c.value(0):
        c.s.bytearrays += c.value(0)
        return c.s.allocate(c.value(0), "bytearray(N)")
    if c.text_and_encoding():
        return c.s.allocate(4 * len(c.value(0)), "bytearray")
    raise c.refuse(
        "of something other than bytes, a literal string or a literal size (a tensor or a computed value "
        "could ask for any amount of memory)"
    )


def _encode(c: _Call) -> None:
    """``_codecs.encode`` of a literal string: its result is bytes of a known length, never encoded again."""
    if not c.text_and_encoding():
        raise c.refuse(
            "on something other than a literal string and a latin-1/utf-8/ascii encoding (chained "
            "encodes grow without bound)"
        )
    text, encoding = c.value(0), c.value(1).lower()
    size = 4 * len(text) if encoding.startswith("utf") else len(text)
    c.s.allocate(size, "_codecs.encode")
    c.result.kind, c.result.value, c.result.depth = "lit", Sized(size), 0  # bytes: only the length is kept


def _container(c: _Call) -> None:
    """``set``, ``OrderedDict``, ``torch.Size``...: of nothing, or of a container the pickle built."""
    if c.args.n == 0:
        return c.s.cost(b.C_SET)
    items = c.items
    if (
        c.args.n == 1
        and items is not None
        and items[0].kind in ("list", "tuple", "dict", "set", "frozenset")
        and (c.name != "torch.Size" or items[0].kind in ("list", "tuple"))
    ):
        c.s.cost(b.C_SET + b.C_ITEM_SET * items[0].n)
        c.result.n = items[0].n
        if c.name in _HASHING:
            c.s.rehash(items[0])
        if c.name in _BY_VALUE:
            c.result.items = items  # its hash is its argument's (hashing.key_hash)
        return None
    raise c.refuse(
        "of something other than a list, tuple, dict or set the pickle built (a string or a tensor "
        "would be expanded item by item)"
    )


def _constructor(c: _Call) -> None:
    """``torch.Tensor``, a tensor or storage class: with no arguments or a container, never a number."""
    if c.args.n == 0 or c.args.n == 1 and c.items is not None and c.items[0].kind in ("list", "tuple"):
        return
    raise c.refuse("with arguments (it would allocate as much memory as a number asks for)")


def _from_type(c: _Call) -> None:
    """``_rebuild_from_type_v2``: one of torch's tensor rebuild functions, checked by its own rule."""
    items = c.items
    if (
        items is None
        or c.args.n != 4
        or items[0].kind != "global"
        or items[0].name not in REBUILD
        or items[1].kind != "global"
        or items[2].kind != "tuple"
    ):
        raise c.refuse("with something other than one of torch's tensor rebuild functions and a tuple")
    check_call(c.s, items[0].name, items[2], c.result, f"{c.op} (through _rebuild_from_type_v2)")


def _rebuild(c: _Call) -> None:
    """A tensor rebuild: its element count noted; the ones that allocate, counted."""
    c.s.cost(b.C_TENSOR)
    items = c.items
    if c.name in _SIZED_REBUILDS and items is not None and len(items) > 2:
        c.result.numel = numel(items[2])
    if c.name == "torch._utils._rebuild_qtensor":
        if c.result.numel is None:
            raise c.refuse("with a size that is not a tuple of literal numbers (it allocates that size)")
        c.s.allocate(c.result.numel * 4, "a quantized tensor")
    elif c.name == "torch._utils._rebuild_device_tensor_from_cpu_tensor":
        if items is None or not items or items[0].numel is None:
            raise c.refuse("on a tensor of unknown size (it converts, and may grow, the data)")
        c.s.allocate(items[0].numel * 16, "a dtype conversion")
    elif c.name in _PARAMETERS and items:
        c.result.numel = items[0].numel


def _short_literals(c: _Call) -> None:
    """``Parameter`` (of anything built), ``torch.device`` and the like (of short literals only)."""
    items = c.items
    short = items is not None and all(
        it.kind == "lit"
        and (it.value is None or isinstance(it.value, (str, int, float)))
        and (not isinstance(it.value, str) or len(it.value) <= 64)
        for it in items
    )
    if items is not None and (c.name == "torch.nn.parameter.Parameter" or short):
        if c.name == "torch.nn.parameter.Parameter" and items:
            c.result.numel = items[0].numel
        if c.name in _BY_VALUE:
            c.result.items = items  # complex(): its hash is its value's (hashing.key_hash)
        return
    raise c.refuse("with arguments that are not short literals")


_RULES: dict[str, Callable[[_Call], None]] = {
    "builtins.bytearray": _bytearray,
    "_codecs.encode": _encode,
    "torch._tensor._rebuild_from_type_v2": _from_type,
}
_RULES.update({name: _container for name in CONTAINER_CALLS})
_RULES.update({name: _rebuild for name in REBUILD})
_RULES.update({name: _short_literals for name in _SHORT_LITERALS})


def check_call(s: Scan, name: str, args: Obj, result: Obj, op: str) -> None:
    """Apply ``name``'s rule to a call of it on ``args``; refuse calling any other global of torch's default set."""
    rule = _RULES.get(name)
    if rule is None and name in s.torch_default:
        rule = _constructor if name in torch_constructors() else _never_called
    if rule is not None:
        rule(_Call(s, name, args, result, op))
    # else: a global the caller allowed on purpose (add_safe_globals, DCP's classes): its result is one object


def _never_called(c: _Call) -> None:
    """Any other global of torch's default set (a dtype, a layout...): a value, never called."""
    raise c.refuse("(torch.save never calls it; it is allowed only as a value)")
