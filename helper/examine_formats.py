"""The doctor's examine steps for formats without a pickle of their own (safetensors, Hugging Face folders,
ONNX, NumPy) and for kinds that only have a cause and fix (``other``); ``.pt2`` and TorchScript:
``helper.examine_code``.

Each step is named by its row of ``helper.kinds.KINDS`` and runs in the
inspector child (``helper.inspector``). OK only when the format's own loader
accepted the file here: ``safetensors.safe_open`` (its own dtype table),
``onnx.load(load_external_data=False)`` and ``onnx.checker``, NumPy's
header reader. Never ``torch.export.load`` or ``torch.jit.load`` (both run
code from the file): a ``.pt2`` is checked as a zip and as JSON, a
TorchScript file as a zip and its pickles, and neither is called safe from a
stranger.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from helper.diagnosis import Diagnosis, said, say
from helper.examine_pickles import check_fit, guard, member_bytes, needed_globals
from helper.formats import (
    EARLIER,
    KINDS,
    CheckpointError,
    kind_error,
    open_torch_zip,
    read_json,
    safetensors_header,
)


def _safetensors_dtypes() -> dict[str, torch.dtype]:
    """safetensors' own table of its dtype names (every one it can load into this torch: an entry this torch
    lacks, such as a float8 type before torch 2.1, is ``None`` there and left out, so it is refused by name)."""
    from safetensors import torch as st

    return {name: dtype for name, dtype in st._TYPES.items() if isinstance(dtype, torch.dtype)}


def _tensor_shapes(path: Path, header: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Meta tensors of a safetensors header's shapes; a dtype safetensors cannot give torch is a ``CheckpointError``."""
    table = _safetensors_dtypes()
    unknown = sorted({dtype for _, dtype in header["tensors"].values() if dtype not in table})
    if unknown:
        raise CheckpointError(path, say("safetensors-dtype", dtype=unknown[0]), EARLIER)
    return {k: torch.empty(shape, dtype=table[dtype], device="meta") for k, (shape, dtype) in header["tensors"].items()}


def safetensors_file(d: Diagnosis, path: Path, config: dict[str, Any] | None) -> Diagnosis:
    """A safetensors file, validated by ``safetensors.safe_open``; with a config, the fit."""
    header = safetensors_header(path)  # validated by safetensors itself
    shapes = header["tensors"]
    count = sum(int(torch.Size(s).numel()) for s, _ in shapes.values())
    dtypes = sorted({t for _, t in shapes.values()})
    d.dtypes = dtypes
    d.note("safetensors", count=len(shapes), dtypes=dtypes, numbers=count, metadata=sorted(header["metadata"]))
    state = _tensor_shapes(path, header)
    d.ok(said("safetensors-ok"), KINDS["safetensors"].fix)
    return check_fit(d, state, config)


def _inside(folder: Path, path: Path) -> bool:
    """A plain file directly in ``folder``: no link, no path that leaves it."""
    return not path.is_symlink() and path.parent.resolve() == folder.resolve() and path.is_file()


def _shard_tensors(folder: Path, path: Path) -> dict[str, torch.Tensor]:
    """Names and shapes (meta tensors) of one weights file: safetensors, or a torch.save ``.bin`` checked first."""
    if path.suffix != ".bin":
        return _tensor_shapes(path, safetensors_header(path))  # validated by safetensors itself
    archive = open_torch_zip(path)
    needed = needed_globals(archive.scan, path)
    if needed:
        raise CheckpointError(path, say("bin-unsafe", names=needed), say("bin-unsafe-fix"))
    pkl = archive.members[archive.prefix + "data.pkl"]
    guard(member_bytes(path, pkl.start, pkl.size), path.name)
    return torch.load(path, map_location="meta", weights_only=True)


def _remote_code(folder: Path) -> list[str]:
    """The code a ``trust_remote_code=True`` load of the folder would run: ``auto_map`` targets and ``.py`` files."""
    found = sorted(p.name for p in folder.glob("*.py"))
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = None
    if isinstance(config, dict) and config.get("auto_map"):
        found.append("config.json auto_map " + json.dumps(config["auto_map"], sort_keys=True)[:200])
    return found


# The weights files from_pretrained looks for in a local folder, in its order (transformers' modeling_utils
# _get_resolved_checkpoint_files: SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME),
# unless config.json names one ("transformers_weights")
_HF_ORDER = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def _hf_candidates(folder: Path) -> list[str]:
    """The weights files of ``_HF_ORDER`` (or the one config.json names) present in ``folder``, in that order."""
    try:
        explicit = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("transformers_weights")
    except (OSError, ValueError, AttributeError):
        explicit = None
    names = [explicit] if isinstance(explicit, str) else _HF_ORDER
    return [n for n in names if (folder / n).is_file() or (folder / n).is_symlink()]


def _hf_weights(d: Diagnosis, folder: Path, name: str) -> Any:
    """(weight map, tensors) of one index and its shards, or of one weights file; ``None`` once ``d`` failed."""

    def no(cause: Any, fix: Any) -> None:
        d.fail(cause, fix)

    if not name.endswith(".index.json"):
        weight_map: Any = {k: name for k in _shard_tensors(folder, folder / name)}
    else:
        index = read_json(folder / name)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            return no(said("hf-bad-index", name=name), said("hf-bad-index-fix"))
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = folder / shard
        if Path(shard).name != shard or shard in ("", ".", "..") or shard_path.is_symlink():
            return no(said("hf-outside", what="shard", shard=shard), said("outside-fix"))
        if not shard_path.is_file():
            return no(said("hf-missing", shard=shard), said("copy-again"))
        tensors = _shard_tensors(folder, shard_path)
        wanted = {k for k, v in weight_map.items() if v == shard}
        if set(tensors) != wanted:
            return no(said("hf-keys", shard=shard, count=len(tensors), wanted=len(wanted)), said("copy-again"))
        state.update(tensors)
    return weight_map, state


def hf(d: Diagnosis, path: Path, config: dict[str, Any] | None) -> Diagnosis:
    """A Hugging Face folder or index: what from_pretrained loads (its order), every shard present, inside the
    folder, holding the keys the index names; no second index it would not pick, no other candidate that differs."""
    folder = path if path.is_dir() else path.parent
    found = _hf_candidates(folder) if path.is_dir() else [path.name]
    stray = sorted(p.name for p in folder.glob("*.index.json") if p.name not in found) if path.is_dir() else []
    if stray:
        return d.fail(said("hf-stray-index", names=stray, picked=found[0] if found else "none"), said("copy-again"))
    index_path = next((folder / n for n in found[:1] if n.endswith(".index.json")), None)
    if not found:  # none of the names from_pretrained looks for
        files = sorted([*folder.glob("*.safetensors"), *folder.glob("pytorch_model*.bin")])
        if len(files) != 1:
            return d.fail(said("hf-no-index", count=len(files)), said("hf-no-index-fix"))
        return d.fail(said("hf-not-picked", name=files[0].name, names=", ".join(_HF_ORDER)), said("hf-no-index-fix"))
    outside = next((n for n in found if path.is_dir() and not _inside(folder, folder / n)), None)
    if outside is not None:
        return d.fail(said("hf-outside", what="weights file", shard=outside), said("outside-fix"))
    got = _hf_weights(d, folder, found[0])
    if got is None:
        return d
    weight_map, state = got
    for other in found[1:]:  # a second candidate: another reader (use_safetensors=False) loads it
        also = _hf_weights(d, folder, other)
        if also is None:
            return d
        if {k: (v.shape, v.dtype) for k, v in also[1].items()} != {k: (v.shape, v.dtype) for k, v in state.items()}:
            return d.fail(said("hf-second", picked=found[0], other=other), said("copy-again"))
    d.note(
        "hf",
        count=len(weight_map),
        files=len(set(weight_map.values())),
        config="; config.json present" if (folder / "config.json").is_file() else "; no config.json",
    )
    code = _remote_code(folder)
    if code:
        d.note("remote-code", files=code)
        return d.fail(said("remote-code-cause", files=", ".join(code)), said("remote-code-fix"))
    d.ok(said("hf-ok", sharded="sharded " if index_path else ""), KINDS["hf-folder"].fix)
    return check_fit(d, state, config)


def onnx_model(d: Diagnosis, path: Path, config: dict[str, Any] | None = None) -> Diagnosis:
    """``onnx.load`` without external data, ``onnx.checker``, then every external-data file: a plain file in the
    model's folder, long enough."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors

    redo = said("onnx-redo")

    def damaged(exc: Exception) -> Diagnosis:
        if isinstance(exc, MemoryError) or "alloc failed" in str(exc).lower():  # protobuf's arena, at the limit
            raise MemoryError from None
        return d.fail(
            said("onnx-damaged", detail=f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"[:200]), redo
        )

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others
        return damaged(exc)
    external: dict[str, int] = {}  # file -> bytes the initializers need from it
    for tensor in _get_all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        name = info.get("location", "")
        try:
            end = int(info.get("offset") or 0) + int(info.get("length") or 0)
        except ValueError:
            return d.fail(said("onnx-damaged", detail=f"external data of {tensor.name!r} has a bad offset"), redo)
        external[name] = max(external.get(name, 0), end)
    for name, end in sorted(external.items()):
        data = path.parent / name
        if not name or Path(name).name != name or name in (".", "..") or data.is_symlink():
            return d.fail(said("onnx-outside", name=name), said("onnx-outside-fix"))
        if not data.is_file() or data.stat().st_size < end:
            return d.fail(said("onnx-missing", name=name), said("onnx-missing-fix", name=name, model=path.name))
    try:  # by path: onnx checks the external data against the model's folder too
        onnx.checker.check_model(str(path))
    except Exception as exc:  # ValidationError and others
        return damaged(exc)
    d.note(
        "onnx",
        ir_version=model.ir_version,
        opsets=sorted(f"{o.domain or 'ai.onnx'} {o.version}" for o in model.opset_import),
        nodes=len(model.graph.node),
    )
    for name, end in sorted(external.items()):
        d.note("onnx-external", name=name, end=end)
    return d.ok(KINDS["onnx"].what, KINDS["onnx"].fix)


def onnx_data(d: Diagnosis, path: Path, config: dict[str, Any] | None = None) -> Diagnosis:
    """An ONNX external-data file: healthy beside its model, which is the file to open."""
    return d.ok(KINDS["onnx-data"].what, said("onnx-data-fix", model=path.name[:-5]))


def other(d: Diagnosis, path: Path, config: dict[str, Any] | None = None) -> Diagnosis:
    """A kind without a step of its own: a healthy file of another format, or the cause and fix
    ``load_checkpoint`` gives for it."""
    if KINDS[d.kind].other_format:
        return d.ok(KINDS[d.kind].what, KINDS[d.kind].fix)
    return d.fail(KINDS[d.kind].sentence, kind_error(path, d.kind).fix)


def numpy_array(d: Diagnosis, path: Path, config: dict[str, Any] | None = None) -> Diagnosis:
    """A .npy file through NumPy's own reader, without unpickling: an object array's data is a pickle."""
    import numpy as np

    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            _, _, dtype = read(f)
        if dtype.hasobject:
            return d.fail(said("npy-object"), said("runs-code-ask"))
        np.load(path, allow_pickle=False, mmap_mode="r")  # the data fits the header: mapped, not read
    except ValueError as exc:
        return d.fail(said("npy-damaged", detail=(str(exc).splitlines() or [""])[0][:160]), EARLIER)
    return d.ok(KINDS["numpy"].what, KINDS["numpy"].fix)
