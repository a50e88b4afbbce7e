"""Which globals torch's ``weights_only`` unpickler accepts, and which of them allocate when called.

The one place in the course that reads torch's default allowlist. No public function lists it:
``torch.serialization.get_unsafe_globals_in_checkpoint`` computes its answer from the same private
``torch._weights_only_unpickler._get_allowed_globals()``, but needs a ``torch.save`` zip and only
understands protocol 2's ``GLOBAL``; ``torch.serialization.get_safe_globals()`` (public) lists only
what ``add_safe_globals`` added. ``tests/test_pickle_survey.py`` checks the private set against the
public function on every name in it, so a torch that renames or changes it fails there, loudly.
"""

from __future__ import annotations

from functools import lru_cache

REBUILD = frozenset(
    f"torch._utils.{n}"
    for n in (
        "_rebuild_parameter",
        "_rebuild_parameter_with_state",
        "_rebuild_qtensor",
        "_rebuild_tensor",
        "_rebuild_tensor_v2",
        "_rebuild_tensor_v3",
        "_rebuild_sparse_tensor",
        "_rebuild_meta_tensor_no_storage",
        "_rebuild_nested_tensor",
        "_rebuild_wrapper_subclass",
        "_rebuild_device_tensor_from_numpy",
        "_rebuild_device_tensor_from_cpu_tensor",
    )
)
CONTAINER_CALLS = frozenset(
    {
        "builtins.set",
        "builtins.frozenset",
        "collections.OrderedDict",
        "collections.Counter",
        "torch.Size",
        "builtins.list",
        "builtins.tuple",
        "builtins.dict",
    }
)


def torch_default_globals() -> frozenset[str]:
    """torch's own default allowlist (``module.name``), read from the private function nothing public exposes."""
    from torch import _weights_only_unpickler as wou

    return frozenset(wou._get_allowed_globals())


def torch_allowed_globals() -> frozenset[str]:
    """The ``module.name`` globals ``torch.load(weights_only=True)`` accepts now (default set plus safe globals)."""
    import torch

    names = set(torch_default_globals())
    for entry in torch.serialization.get_safe_globals():
        if isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[1], str):
            names.add(entry[1])
        elif hasattr(entry, "__qualname__"):
            names.add(f"{entry.__module__}.{entry.__qualname__}")
    return frozenset(names)


@lru_cache(maxsize=1)
def torch_constructors() -> frozenset[str]:
    """torch.Tensor, the tensor classes and the storage classes: calling one with a number allocates."""
    import torch

    names = {f"{c.__module__}.{c.__name__}" for c in (*torch._tensor_classes, *torch._storage_classes)}
    return frozenset(names | {"torch.Tensor"})


@lru_cache(maxsize=1)
def storage_itemsizes() -> dict[str, int]:
    """Storage type name (``FloatStorage``, ``UntypedStorage``...) -> bytes per element, as torch maps them."""
    import torch

    sizes = {name: dtype.itemsize for dtype, name in torch.storage._dtype_to_storage_type_map().items()}
    sizes["UntypedStorage"] = 1
    return sizes
