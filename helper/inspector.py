"""The doctor's child: examines a file's bytes in a process with limits, and answers with a value.

``helper.doctor.diagnose`` never parses a file itself. On Linux it starts
``serve()`` once (``python -P -c ...``: the working folder is not on its
path), which imports torch and the format libraries and forks a worker
(``_Worker``) ahead of the first request. The worker answers requests (one
JSON line each) one at a time, each under fresh ``resource.setrlimit`` limits
counted from where it stands (address space: what it holds plus
``limits["memory"]``; CPU: what it used plus ``limits["cpu"]`` seconds;
main-thread stack; no core file): it examines the file (``examine``) and writes
JSON lines, ``{"kind": ...}`` as soon as the kind is known, then
``{"result": <Diagnosis as JSON>}``. The server kills a worker that outlives
``limits["wall"]`` and answers with what it wrote and how it ended; the doctor
turns a signal (SIGSEGV, SIGBUS, SIGXCPU, ...), a timeout or an end without a
result into a verdict, and the server forks a new worker. A worker also retires
after a memory error, after growing by 256 MiB, or after 200 requests. No
file's code ever runs in a worker, so reusing one risks nothing the limits do
not bound; it makes a call cost a few milliseconds instead of a ``fork`` of a
process holding torch (35 ms here, and as much again in copy-on-write faults).
Nothing crosses the boundary as a pickle, and neither process imports a module
the file names.

On macOS and Windows ``run_once()`` does the same for one request in a fresh
interpreter: ``fork`` after importing system frameworks is unsafe on macOS
(whose kernel also ignores ``RLIMIT_AS``), and Windows has neither ``fork`` nor
``resource`` (only the wall-time limit applies there).

The examination, one step per file kind (``EXAMINE``; the kinds and their
recognition are ``helper.formats.KINDS`` and ``sniff``): OK only when the
format's own loader accepted the file here (``torch.load(weights_only=True)``
after the opcode scan and ``helper.pickle_guard``'s budget;
``safetensors.safe_open``; ``onnx.load(load_external_data=False)`` and
``onnx.checker``; DCP ``.metadata`` through an unpickler that knows DCP's own
classes only; ``torch.jit.load`` for TorchScript). Never ``torch.export.load``:
a ``.pt2`` is checked as a zip and as JSON, and is never called safe.
"""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import select
import signal
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from helper.doctor import Diagnosis, say
from helper.formats import (EARLIER, KINDS, CheckpointError, check_legacy, check_zip, kind_error, open_torch_zip,
                            read_json, safetensors_header, scan_pickle, shown_path, sniff)

STATE_DICT_KEYS = ("model", "model_state", "model_state_dict", "state_dict", "net", "weights")


def _cause(kind: str) -> str:
    """A kind's cause as a clause ("a safetensors file ..."), without the leading "is "."""
    return KINDS[kind].cause.removeprefix("is ")


def _allowed_globals() -> set[str]:
    """What ``weights_only=True`` allows in this process (torch's own set: nothing the user added)."""
    allowed = set(torch._weights_only_unpickler._get_allowed_globals())
    return allowed | {f"{g.__module__}.{g.__qualname__}" for g in torch.serialization.get_safe_globals()
                      if hasattr(g, "__qualname__")}


def _guard(data: bytes, name: str, allowed: frozenset[str] | None = None, *, allocations: bool = True) -> None:
    """``helper.pickle_guard``'s budget on the pickle before any unpickler runs (``CheckpointError`` if not).
    ``allocations=False`` leaves what ``bytearray`` and the like ask for to a later check that says it in
    the words lesson 07 uses ("a memory bomb")."""
    import dataclasses

    from helper.pickle_guard import PickleBudget, scan_pickle as guard

    budget = PickleBudget.for_size(len(data))
    if not allocations:
        budget = dataclasses.replace(budget, max_alloc=1 << 62)
    guard(data, allowed=allowed, budget=budget, name=name)


# --------------------------------------------------------------------------------------------------
# Loaded objects: what is in them, where the weights are, whether they fit


def _tensors(obj: Any, out: list[torch.Tensor], depth: int = 0) -> None:
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif depth < 8 and isinstance(obj, dict):
        for value in obj.values():
            _tensors(value, out, depth + 1)
    elif depth < 8 and isinstance(obj, (list, tuple)):
        for value in obj:
            _tensors(value, out, depth + 1)


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) for k in obj) and all(
        isinstance(v, torch.Tensor) for v in obj.values())


def _find_state_dict(obj: Any) -> tuple[str | None, dict[str, torch.Tensor] | None]:
    """The model weights in a loaded object: the object itself, or its ``model``-like entry."""
    if _is_state_dict(obj):
        return "", obj
    if isinstance(obj, dict):
        for key in (*STATE_DICT_KEYS, *obj):
            if key in obj and _is_state_dict(obj[key]) and not str(key).startswith("optim"):
                return str(key), obj[key]
    return None, None


def _check_fit(d: Diagnosis, state: dict[str, torch.Tensor], config: dict[str, Any] | None) -> Diagnosis:
    if config is None:
        return d
    from helper.checkpoint import find_mismatch
    from helper.models import build_model

    found = find_mismatch(build_model(config), state)
    if found is None:
        d.note("fits", config=json.dumps(config, sort_keys=True))
        return d
    rows = found.table(limit=len(found.rows))
    if found.hint:  # the prefix explains every row: a few are enough
        rows = rows if len(rows) <= 5 else [*rows[:4], f"... ({len(rows) - 1} rows in all)"]
    for row in rows:
        d.note("text", text=row)
    d.facts["mismatch"] = found.summary
    return d.fail(say("mismatch", summary=found.summary, hint=f": {found.hint[0]}" if found.hint else ""), found.fix)


def _lightning(d: Diagnosis, obj: dict[str, Any], config: dict[str, Any] | None) -> Diagnosis:
    state = obj["state_dict"]
    heads = {k.split(".", 1)[0] for k in state}
    prefix = f"{heads.pop()}." if len(heads) == 1 and all("." in k for k in state) else None
    version = obj.get("pytorch-lightning_version", obj.get("lightning_version", "?"))
    d.note("lightning", version=version,
           prefix=f", every key prefixed {prefix!r} (the LightningModule's attribute)" if prefix else "")
    d.facts["weights_at"] = "state_dict"
    if prefix is None:
        return d.ok(say("lightning-no-prefix"), say("lightning-no-prefix-fix"))
    d.ok(say("lightning-ok", prefix=prefix), say("lightning-fix", prefix=prefix))
    return _check_fit(d, {k[len(prefix):]: v for k, v in state.items()}, config)


def _describe_loaded(d: Diagnosis, obj: Any, locations: set[str], config: dict[str, Any] | None) -> Diagnosis:
    tensors: list[torch.Tensor] = []
    _tensors(obj, tensors)
    if isinstance(obj, dict):
        d.note("keys", keys=[str(k) if not isinstance(k, (int, float)) else k for k in list(obj)[:12]],
               more=" ..." if len(obj) > 12 else "")
    else:
        d.note("holds", type=type(obj).__name__)
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in tensors})
    d.facts.update(devices=sorted(locations), dtypes=dtypes)
    d.note("tensors", count=len(tensors), devices=sorted(locations) or ["-"], dtypes=dtypes or ["-"])
    if any(t.is_meta for t in tensors):
        return d.fail(say("meta"), say("meta-fix"))
    if isinstance(obj, dict) and _is_state_dict(obj.get("state_dict")) and any(
            k in obj for k in ("pytorch-lightning_version", "lightning_version")):
        return _lightning(d, obj, config)
    where, state = _find_state_dict(obj)
    if state is None:
        return d.ok(say("no-state-dict"), say("loads-fix", then=""))
    d.facts["weights_at"] = where
    label = "the file itself" if where == "" else f"entry {where!r}"
    count = sum(t.numel() for t in state.values() if t.is_floating_point())
    d.note("weights", label=label, count=len(state), numbers=count)
    if locations - {"cpu"}:
        d.note("saved-on", devices=sorted(locations - {"cpu"}))
    d.ok(say("loads", where=f"; its weights are in checkpoint[{where!r}]" if where else ""),
         say("loads-fix", then=f", then model.load_state_dict(checkpoint[{where!r}])" if where else ""))
    return _check_fit(d, state, config)


def _load(d: Diagnosis, path: Path, scan: Any, pickles: list[bytes], config: dict[str, Any] | None) -> Diagnosis:
    """Load with weights_only=True once the opcodes showed nothing beyond plain data is needed."""
    d.dotted = sorted(scan.dotted)
    needed = sorted(set(scan.globals - _allowed_globals()) | scan.dotted)
    if needed:
        d.needed = needed  # the doctor's process decides the advice: it has the user's classes imported
        return d
    if scan.meta:
        return d.fail(say("meta"), say("meta-fix"))
    for data in pickles:
        _guard(data, path.name)
    locations: set[str] = set()

    def record(storage: Any, location: str) -> Any:  # storages arrive on the CPU: note where they were saved
        locations.add(location)
        return storage

    try:
        obj = torch.load(path, map_location=record, weights_only=True)
    except pickle.UnpicklingError as exc:
        return d.fail(say("refused", detail=str(exc).splitlines()[-1][:160]), say("runs-code"))
    except MemoryError:
        raise
    except Exception as exc:  # a damaged file that passed every check still fails in many ways
        if "can't allocate memory" in str(exc):
            raise MemoryError from None
        return d.fail(say("load-failed", detail=(str(exc).splitlines() or [""])[0][:160]), EARLIER)
    return _describe_loaded(d, obj, locations, config)


# --------------------------------------------------------------------------------------------------
# One examine step per kind of file


def _writer(records: dict[str, str]) -> dict[str, str]:
    """What the records say about the PyTorch that wrote the file (the file never names its version)."""
    since = "2.1" if "byteorder" in records else "1.6"  # zip format: default since 1.6; byteorder: since 2.1
    shown = ", ".join(f"{k}={v}" for k, v in records.items() if k not in (".data/serialization_id", ".data/version"))
    return {"since": since, "records": shown}


def _member_bytes(path: Path, start: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(size)


def _stored_pickle(path: Path) -> bytes | None:
    """The bytes of a torch.save zip's data.pkl (stored, as torch.save writes it), or None where the zip is not
    whole enough to say: ``open_torch_zip`` then names the damage."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            infos = [i for i in z.infolist() if i.filename.endswith("/data.pkl") and i.filename.count("/") == 1]
            if len(infos) != 1 or infos[0].compress_type != zipfile.ZIP_STORED:
                return None
            if infos[0].file_size > path.stat().st_size:
                return None
            return z.read(infos[0])
    except Exception:  # zipfile raises many kinds on a damaged file
        return None


def _budget_first(data: bytes, name: str) -> None:
    """``helper.pickle_guard``'s budget before any other reader walks the pickle (30M empty lists cost
    ``scan_pickle`` 50 s and 1.5 GiB, the guard 2 s). The globals a pickle names are left to the doctor's
    own analysis (which turns them into advice), so they are allowed here for the budget's sake only."""
    try:
        _guard(data, name, allocations=False)
    except CheckpointError as exc:
        names = getattr(exc, "refused_globals", ())
        if not names:
            raise
        _guard(data, name, allowed=frozenset(_allowed_globals() | set(names)), allocations=False)


def _torch_zip(d: Diagnosis, path: Path, config: dict[str, Any] | None) -> Diagnosis:
    from helper.checkpoint import _digest_problem

    data = _stored_pickle(path)
    if data is not None:
        _budget_first(data, "data.pkl")
    archive = open_torch_zip(path)
    problem = _digest_problem(archive)  # save_checkpoint's record: which bytes belong to which name
    if problem is not None:
        raise CheckpointError(path, f"is corrupted: {problem}", EARLIER, kind="swapped")
    d.note("writer", **_writer(archive.records))
    d.note("crc-ok")
    pkl = archive.members[archive.prefix + "data.pkl"]
    return _load(d, path, archive.scan, [_member_bytes(path, pkl.start, pkl.size)], config)


def _legacy(d: Diagnosis, path: Path, config: dict[str, Any] | None) -> Diagnosis:
    d.note("legacy")
    scan = check_legacy(path)
    data, pos = path.read_bytes(), 0
    for _ in range(3):  # magic number, protocol version, system info: the main pickle follows
        pos = scan_pickle(data, pos).end
    d = _load(d, path, scan, [data[pos:scan_pickle(data, pos).end]], config)
    if d.healthy and d.cause:
        d.ok(say("legacy-ok"), say("legacy-fix"))
    return d


def _plain_pickle(d: Diagnosis, path: Path, config: dict[str, Any] | None) -> Diagnosis:
    try:
        scan = scan_pickle(path.read_bytes())
    except (ValueError, IndexError, KeyError) as exc:
        return d.fail(say("pickle-malformed", cause=_cause("pickle"), detail=exc), KINDS["pickle"].fix)
    names = sorted(scan.globals)
    d.facts.update(kind_cause=_cause("pickle"), kind_fix=KINDS["pickle"].fix,
                   allowed=sorted(set(names) & _allowed_globals()))
    d.dotted = sorted(scan.dotted)
    if names:
        d.needed = names  # the doctor's process decides
        return d
    d.note("pickle-names", names=names)
    return d.fail(say("pickle", cause=_cause("pickle")), KINDS["pickle"].fix)


def _safetensors_dtypes() -> dict[str, torch.dtype]:
    """safetensors' own table of its dtype names (every one it can load into torch)."""
    from safetensors import torch as st

    return dict(st._TYPES)


def _tensor_shapes(path: Path, header: dict[str, Any]) -> dict[str, torch.Tensor]:
    table = _safetensors_dtypes()
    unknown = sorted({dtype for _, dtype in header["tensors"].values() if dtype not in table})
    if unknown:
        raise CheckpointError(path, say("safetensors-dtype", dtype=unknown[0]), EARLIER)
    return {k: torch.empty(shape, dtype=table[dtype], device="meta") for k, (shape, dtype) in header["tensors"].items()}


def _safetensors(d: Diagnosis, path: Path, config: dict[str, Any] | None) -> Diagnosis:
    header = safetensors_header(path)  # validated by safetensors itself
    shapes = header["tensors"]
    count = sum(int(torch.Size(s).numel()) for s, _ in shapes.values())
    dtypes = sorted({t for _, t in shapes.values()})
    d.facts["dtypes"] = dtypes
    d.note("safetensors", count=len(shapes), dtypes=dtypes, numbers=count, metadata=sorted(header["metadata"]))
    state = _tensor_shapes(path, header)
    d.ok(say("safetensors-ok"), KINDS["safetensors"].fix)
    return _check_fit(d, state, config)


def _inside(folder: Path, path: Path) -> bool:
    """A plain file directly in ``folder``: no link, no path that leaves it."""
    return not path.is_symlink() and path.parent.resolve() == folder.resolve() and path.is_file()


def _shard_tensors(folder: Path, path: Path) -> dict[str, torch.Tensor]:
    """Names and shapes (meta tensors) of one weights file: safetensors, or a torch.save ``.bin`` checked first."""
    if path.suffix != ".bin":
        return _tensor_shapes(path, safetensors_header(path))  # validated by safetensors itself
    archive = open_torch_zip(path)
    needed = sorted(set(archive.scan.globals - _allowed_globals()) | archive.scan.dotted)
    if needed:
        raise CheckpointError(path, say("bin-unsafe", names=needed), say("bin-unsafe-fix"))
    pkl = archive.members[archive.prefix + "data.pkl"]
    _guard(_member_bytes(path, pkl.start, pkl.size), path.name)
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


def _hf(d: Diagnosis, path: Path, config: dict[str, Any] | None) -> Diagnosis:
    folder = path if path.is_dir() else path.parent
    index_path = path if path.is_file() else next(iter(sorted(folder.glob("*.index.json"))), None)
    if index_path is None:  # one unsharded weights file, or none
        files = sorted([*folder.glob("*.safetensors"), *folder.glob("pytorch_model*.bin")])
        if len(files) != 1:
            return d.fail(say("hf-no-index", count=len(files)), say("hf-no-index-fix"))
        if not _inside(folder, files[0]):
            return d.fail(say("hf-outside", what="weights file", shard=files[0].name), say("outside-fix"))
        weight_map = {k: files[0].name for k in _shard_tensors(folder, files[0])}
    else:
        index = read_json(index_path)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            return d.fail(say("hf-bad-index", name=index_path.name), say("hf-bad-index-fix"))
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = folder / shard
        if Path(shard).name != shard or shard in ("", ".", "..") or shard_path.is_symlink():
            return d.fail(say("hf-outside", what="shard", shard=shard), say("outside-fix"))
        if not shard_path.is_file():
            return d.fail(say("hf-missing", shard=shard), say("copy-again"))
        tensors = _shard_tensors(folder, shard_path)
        wanted = {k for k, v in weight_map.items() if v == shard}
        if set(tensors) != wanted:
            return d.fail(say("hf-keys", shard=shard, count=len(tensors), wanted=len(wanted)), say("copy-again"))
        state.update(tensors)
    d.note("hf", count=len(weight_map), files=len(set(weight_map.values())),
           config="; config.json present" if (folder / "config.json").is_file() else "; no config.json")
    code = _remote_code(folder)
    if code:
        d.note("remote-code", files=code)
        return d.fail(say("remote-code-cause", files=", ".join(code)), say("remote-code-fix"))
    d.ok(say("hf-ok", sharded="sharded " if index_path else ""), KINDS["hf-folder"].fix)
    return _check_fit(d, state, config)


def _dcp_classes() -> dict[str, Any]:
    """Every global a DCP ``.metadata`` pickle written by this torch may name, by exact ``module.name``."""
    from torch.distributed.checkpoint import filesystem, metadata

    classes: list[Any] = [metadata.Metadata, metadata.MetadataIndex, metadata.ChunkStorageMetadata,
                          metadata.TensorStorageMetadata, metadata.BytesStorageMetadata, metadata.TensorProperties,
                          metadata.StorageMeta, metadata._MEM_FORMAT_ENCODING, filesystem._StorageInfo]
    table = {f"{c.__module__}.{c.__qualname__}": c for c in classes}
    table["torch.Size"] = torch.Size
    table["torch.serialization._get_layout"] = torch.serialization._get_layout  # torch's layouts by name
    table.update({f"torch.{name}": value for name, value in vars(torch).items() if isinstance(value, torch.dtype)})
    import collections
    import pathlib

    for name in ("PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"):
        table[f"pathlib.{name}"] = getattr(pathlib, name)
    table["collections.OrderedDict"] = collections.OrderedDict
    return table


class _DCPUnpickler(pickle.Unpickler):
    """Unpickles a DCP ``.metadata`` file, knowing DCP's own metadata classes only (exact names, no import)."""

    def __init__(self, data: bytes, classes: dict[str, Any]):
        super().__init__(io.BytesIO(data))
        self.classes = classes

    def find_class(self, module: str, name: str) -> Any:
        found = self.classes.get(f"{module}.{name}") if "." not in name else None
        if found is None:
            raise pickle.UnpicklingError(f"{module}.{name} is not a DCP metadata class")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("a persistent id: DCP metadata has none")


def _dcp(d: Diagnosis, path: Path) -> Diagnosis:
    shards = sorted(p.name for p in path.glob("*.distcp"))
    d.note("dcp-shards", shards=shards)
    if d.kind == "dcp-incomplete":
        return d.fail(_cause("dcp-incomplete"), KINDS["dcp-incomplete"].fix)
    d.note("dcp-metadata")
    meta_path = path / ".metadata"
    if meta_path.is_symlink():
        return d.fail(say("dcp-outside", shard=".metadata"), say("earlier-folder"))
    raw = meta_path.read_bytes()
    try:
        scan = scan_pickle(raw)
    except (ValueError, IndexError, KeyError) as exc:
        return d.fail(say("dcp-damaged", detail=exc), say("earlier-folder"))
    classes = _dcp_classes()
    unsafe = sorted(g for g in scan.globals if g not in classes or g in scan.dotted)
    if unsafe:
        return d.fail(say("dcp-unsafe", names=unsafe), say("dcp-unsafe-fix"))
    _guard(raw, ".metadata", allowed=frozenset(classes))
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import Metadata

    try:
        metadata = _DCPUnpickler(raw, classes).load()
    except (pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError, KeyError, EOFError) as exc:
        return d.fail(say("dcp-damaged", detail=f"{type(exc).__name__}: {exc}"[:160]), say("earlier-folder"))
    if not isinstance(metadata, Metadata) or not isinstance(metadata.storage_data or {}, dict):
        return d.fail(say("dcp-not-metadata", type=type(metadata).__name__), say("earlier-folder"))
    ranges = metadata.storage_data or {}
    for item in ranges.values():
        if not (isinstance(item, _StorageInfo) and isinstance(item.relative_path, str)
                and isinstance(item.offset, int) and isinstance(item.length, int) and item.offset >= 0
                and item.length >= 0):
            return d.fail(say("dcp-not-metadata", type=f"byte range {item!r}"[:120]), say("earlier-folder"))
        shard = path / item.relative_path
        if Path(item.relative_path).name != item.relative_path or item.relative_path in ("", ".", "..") \
                or shard.is_symlink():
            return d.fail(say("dcp-outside", shard=item.relative_path), say("earlier-folder"))
        if not shard.is_file():
            return d.fail(say("dcp-missing", shard=item.relative_path), say("earlier-folder"))
        if shard.stat().st_size < item.offset + item.length:
            return d.fail(say("dcp-short", shard=item.relative_path), say("earlier-folder"))
    d.note("dcp-ranges", count=len(ranges), files=len({i.relative_path for i in ranges.values()}))
    return d.ok(say("dcp-ok"), KINDS["dcp"].fix)


def _onnx(d: Diagnosis, path: Path) -> Diagnosis:
    """``onnx.load`` without external data, ``onnx.checker``, then every external-data file: a plain file in the
    model's folder, long enough."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors

    redo = say("onnx-redo")

    def damaged(exc: Exception) -> Diagnosis:
        if isinstance(exc, MemoryError) or "alloc failed" in str(exc).lower():  # protobuf's arena, at the limit
            raise MemoryError from None
        return d.fail(say("onnx-damaged", detail=f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"[:200]),
                      redo)

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
            return d.fail(say("onnx-damaged", detail=f"external data of {tensor.name!r} has a bad offset"), redo)
        external[name] = max(external.get(name, 0), end)
    for name, end in sorted(external.items()):
        data = path.parent / name
        if not name or Path(name).name != name or name in (".", "..") or data.is_symlink():
            return d.fail(say("onnx-outside", name=name), say("onnx-outside-fix"))
        if not data.is_file() or data.stat().st_size < end:
            return d.fail(say("onnx-missing", name=name), say("onnx-missing-fix", name=name, model=path.name))
    try:  # by path: onnx checks the external data against the model's folder too
        onnx.checker.check_model(str(path))
    except Exception as exc:  # ValidationError and others
        return damaged(exc)
    d.note("onnx", ir_version=model.ir_version, opsets=sorted(f"{o.domain or 'ai.onnx'} {o.version}"
                                                              for o in model.opset_import),
           nodes=len(model.graph.node))
    for name, end in sorted(external.items()):
        d.note("onnx-external", name=name, end=end)
    return d.ok(_cause("onnx"), KINDS["onnx"].fix)


_NATIVE = (".so", ".dll", ".dylib", ".pyd", ".py", ".pyc")


def _pt2(d: Diagnosis, path: Path) -> Diagnosis:
    """A ``.pt2`` checked as a zip (CRC-32s) and as JSON, never loaded: guards code, pickled weights or
    constants, or native code make it a problem; a whole one is still only as safe as who made it."""
    members = check_zip(path)
    d.note("crc-ok")
    names = list(members)
    formats = [n for n in names if n.endswith("/archive_format") and n.count("/") == 1]
    fake = None
    record = members[formats[0]] if len(formats) == 1 else None
    if record is None or _member_bytes(path, record.start, min(record.size, 16)).strip() != b"pt2":
        fake = "no archive_format record reading pt2"
    prefix = formats[0][:-len("archive_format")] if formats else ""
    models = sorted(n for n in names if n.startswith(prefix + "models/") and n.endswith(".json"))
    if fake is None and not models:
        fake = "no models/*.json program"

    def load(name: str) -> Any:
        m = members[name]
        return json.loads(_member_bytes(path, m.start, m.size))

    code, weights, constants = [], 0, 0
    try:
        for name in models:
            program = load(name)
            if not isinstance(program, dict) or not isinstance(program.get("graph_module"), dict):
                fake = f"{name} is not a serialized program"
                break
            if program.get("guards_code"):
                code.append(f"{name} carries guards code, which torch.export.load exec's")
        for name in names:
            if name.endswith(_NATIVE):
                code.append(f"member {name} is code")
            if name.startswith(prefix + "data/") and name.endswith("_config.json"):
                config = load(name).get("config", {})
                config = json.loads(config) if isinstance(config, str) else config
                for fqn, entry in (config or {}).items():
                    weights += "weights" in name
                    constants += "constants" in name
                    if not isinstance(entry, dict):
                        fake = f"{name} is not a weights table"
                    elif entry.get("use_pickle") or str(entry.get("path_name", "")).startswith(
                            ("custom_obj", "opaque_obj")):
                        code.append(f"{fqn!r} is a pickled object, which it unpickles")
    except (ValueError, AttributeError, TypeError, UnicodeDecodeError) as exc:
        fake = f"a record is not the JSON torch.export writes ({exc})"[:200]
    if fake is not None:
        return d.fail(say("pt2-fake", detail=fake), say("pt2-redo"))
    if code:
        return d.fail(say("pt2-code", what="; ".join(code)[:300]), say("runs-code-ask"))
    d.note("pt2", models=[n[len(prefix) + len("models/"):] for n in models], weights=weights, constants=constants)
    return d.ok(say("pt2-ok"), say("pt2-fix"))


def _torchscript(d: Diagnosis, path: Path) -> Diagnosis:
    import zipfile

    try:  # torch.jit.save deflates its code files: zipfile checks every member's CRC-32 (check_zip refuses them)
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        return d.fail(say("torchscript-fake", detail=f"{type(exc).__name__}: {exc}"[:160]), EARLIER)
    if bad is not None:
        return d.fail(say("torchscript-fake", detail=f"member {bad!r} fails its CRC-32 check"), EARLIER)
    d.note("crc-ok")
    try:
        module = torch.jit.load(str(path), map_location="cpu")
        methods = sorted(module._c._method_names())
    except MemoryError:
        raise
    except Exception as exc:  # torch.jit.load raises RuntimeError and others on what it cannot read
        return d.fail(say("torchscript-fake", detail=(str(exc).strip().splitlines() or [""])[0][:160]), EARLIER)
    d.note("torchscript", methods=f"methods {methods}")
    return d.ok(say("torchscript-ok"), KINDS["torchscript"].fix)


def _onnx_data(d: Diagnosis, path: Path) -> Diagnosis:
    return d.ok(_cause("onnx-data"), say("onnx-data-fix", model=path.name[:-5]))


def _other(d: Diagnosis, path: Path) -> Diagnosis:
    """A kind without a step of its own: a healthy file of another format, or the error ``load_checkpoint``
    gives for it."""
    if KINDS[d.kind].other_format:
        return d.ok(_cause(d.kind), KINDS[d.kind].fix)
    error = kind_error(path, d.kind)
    return d.fail(f"the file {error.cause}" if error.cause.startswith("is ") else error.cause, error.fix)


def _numpy(d: Diagnosis, path: Path) -> Diagnosis:
    """A .npy file through NumPy's own reader, without unpickling: an object array's data is a pickle."""
    import numpy as np

    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            _, _, dtype = read(f)
        if dtype.hasobject:
            return d.fail(say("npy-object"), say("runs-code-ask"))
        np.load(path, allow_pickle=False, mmap_mode="r")  # the data fits the header: mapped, not read
    except ValueError as exc:
        return d.fail(say("npy-damaged", detail=(str(exc).splitlines() or [""])[0][:160]), EARLIER)
    return d.ok(_cause("numpy"), KINDS["numpy"].fix)


Step = Callable[[Diagnosis, Path, "dict[str, Any] | None"], Diagnosis]
# The examine step of each kind that has one (the others: ``_other``); tests/test_formats.py checks every kind.
EXAMINE: dict[str, Step] = {
    "torch-zip": _torch_zip, "legacy": _legacy, "pickle": _plain_pickle, "safetensors": _safetensors,
    "hf-index": _hf, "hf-folder": _hf, "dcp": lambda d, p, c: _dcp(d, p), "dcp-incomplete": lambda d, p, c: _dcp(d, p),
    "onnx": lambda d, p, c: _onnx(d, p), "onnx-data": lambda d, p, c: _onnx_data(d, p),
    "torch-export": lambda d, p, c: _pt2(d, p), "torchscript": lambda d, p, c: _torchscript(d, p),
    "numpy": lambda d, p, c: _numpy(d, p),
}


def examine(path: str | Path, config: dict[str, Any] | None = None,
            tell: Callable[[dict[str, Any]], None] = lambda message: None) -> Diagnosis:
    """Examine ``path`` in this process (the child): the kind (told at once), then the diagnosis.
    ``diagnose`` is what to call; this runs only where a crash costs nothing."""
    path = Path(path)
    kind = sniff(path)
    tell({"kind": kind})
    d = Diagnosis(shown_path(path), kind)
    try:
        return EXAMINE.get(kind, lambda d, p, c: _other(d, p))(d, path, config)
    except CheckpointError as exc:
        return d.fail(exc.cause, exc.fix)
    except MemoryError:
        d.facts["memory_error"] = True
        return d.fail("", "")
    except OSError as exc:
        if exc.errno != errno.ENOMEM:
            return d.fail(say("failed", detail=f"{type(exc).__name__}: {exc}"[:160]), EARLIER)
        d.facts["memory_error"] = True
        return d.fail("", "")
    except (Exception, RecursionError) as exc:  # never a traceback: say what failed
        return d.fail(say("failed", detail=f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:160]}"),
                      EARLIER)


# --------------------------------------------------------------------------------------------------
# The process side: limits, the child, the server


def _address_space() -> int:
    """Bytes of address space this process holds now (Linux ``VmSize``), 0 where unknown."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _resident() -> int:
    """Bytes resident now (Linux ``VmRSS``), 0 where unknown."""
    try:
        with open("/proc/self/status") as f:
            return next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:")), 0)
    except OSError:
        return 0


def _peak_resident() -> int:
    """Peak bytes resident in this process (``ru_maxrss``: KiB on Linux, bytes on macOS), 0 where unknown."""
    try:
        import resource
    except ImportError:
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def set_limits(limits: dict[str, int]) -> None:
    """``setrlimit`` in this (child) process: address space = now + ``memory``, CPU = used + ``cpu`` seconds,
    ``stack``, no core file.
    A limit the system does not support (or will not lower) is skipped."""
    try:
        import resource
    except ImportError:  # Windows
        return
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = int(usage.ru_utime + usage.ru_stime) + 1  # RLIMIT_CPU counts the process's whole life: a worker's too
    wanted = [(getattr(resource, "RLIMIT_CORE", None), 0),
              (getattr(resource, "RLIMIT_CPU", None), used + limits["cpu"]),
              (getattr(resource, "RLIMIT_STACK", None), limits["stack"])]
    if _address_space():
        wanted.append((getattr(resource, "RLIMIT_AS", None), _address_space() + limits["memory"]))
    for which, value in wanted:
        if which is None:
            continue
        try:
            soft, hard = resource.getrlimit(which)
            value = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(which, (value, hard))
        except (ValueError, OSError):
            pass


_RETIRE_GROWTH = 256 << 20  # a worker that grew by more than this over its start is replaced after its answer
_RETIRE_AFTER = 200  # requests a worker answers before it is replaced


def _child(request: dict[str, Any], out: Any, first_rss: int = 0, served: int = 0) -> bool:
    """In the child: limits, then ``examine``, each message one JSON line on ``out``. True if this worker should
    be replaced after this answer (it grew, or answered enough)."""
    def tell(message: dict[str, Any]) -> None:
        out.write(json.dumps(message) + "\n")
        out.flush()

    set_limits(request["limits"])
    torch.set_num_threads(1)
    import time
    import warnings

    start, cpu = _resident(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = examine(request["path"], request.get("config"), tell)
    d.facts["inspector"] = {"rss_start": start, "rss_peak": _peak_resident(), "cpu_s": time.process_time() - cpu}
    retire = (_resident() - (first_rss or start) > _RETIRE_GROWTH or served + 1 >= _RETIRE_AFTER
              or bool(d.facts.get("memory_error")))
    tell({"result": d.to_json(), "retire": retire})
    return retire


class _Worker:
    """A child forked from the server ahead of its first request; it answers requests one at a time, each under
    fresh limits (CPU and address space counted from where it stands), until a request crashes it, runs past a
    limit, or it retires (``_child``). A crash therefore costs that one verdict, never the server or the doctor;
    what the child holds between requests is the doctor's own state (no file's code ever runs in it)."""

    def __init__(self) -> None:
        request_read, self.request_write = os.pipe()
        self.read, result_write = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the child
            try:
                os.close(self.request_write)
                os.close(self.read)
                devnull = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(devnull, fd)
                out, first, served = os.fdopen(result_write, "w"), _resident(), 0
                with os.fdopen(request_read, "rb") as requests:
                    for line in requests:
                        if _child(json.loads(line), out, first, served):
                            break
                        served += 1
            finally:
                os._exit(0)
        os.close(request_read)
        os.close(result_write)
        self.pending, self.alive = b"", True

    def run(self, request: dict[str, Any]) -> dict[str, Any]:
        """Hand ``request`` over, read messages until its result line (or EOF, or the wall limit)."""
        import time

        try:
            os.write(self.request_write, (json.dumps(request) + "\n").encode())
        except OSError:  # it died between requests: no verdict from it
            return self._ended(b"", timed_out=False)
        deadline, data, start = time.monotonic() + request["limits"]["wall"], self.pending, 0
        while True:
            newline = data.find(b"\n", start)
            while newline >= 0:  # every complete line: the result line ends this request's messages
                if data.startswith(b'{"result": ', start):
                    output, self.pending = data[:newline + 1], data[newline + 1:]
                    if data[start:newline].endswith(b'"retire": true}'):
                        self.close()
                    return {"output": output.decode("utf-8", "replace"), "exit": 0, "timed_out": False}
                start, newline = newline + 1, data.find(b"\n", newline + 1)
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.read], [], [], left)[0]:
                os.kill(self.pid, signal.SIGKILL)
                return self._ended(data, timed_out=True)
            chunk = os.read(self.read, 1 << 16)
            if not chunk:
                return self._ended(data, timed_out=False)
            if len(data) < 64 << 20:  # a result is kilobytes; more is not kept
                data += chunk

    def _ended(self, data: bytes, timed_out: bool) -> dict[str, Any]:
        _, status = os.waitpid(self.pid, 0)
        self.alive = False
        os.close(self.request_write)
        os.close(self.read)
        return {"output": data.decode("utf-8", "replace"), "exit": os.waitstatus_to_exitcode(status),
                "timed_out": timed_out}

    def close(self) -> None:
        if self.alive:
            self.alive = False
            os.close(self.request_write)  # the child reads EOF and exits
            os.close(self.read)
            os.waitpid(self.pid, 0)


def _warm_up() -> None:
    """Import what the examine steps use, and examine one small file of our own, so each child starts warm."""
    import gc
    import tempfile

    import helper.checkpoint  # noqa: F401 - the fit check
    import helper.models  # noqa: F401
    import safetensors.torch  # noqa: F401
    import torch.distributed.checkpoint.filesystem  # noqa: F401
    try:
        import onnx.checker  # noqa: F401
        import onnx.external_data_helper  # noqa: F401
    except ImportError:
        pass
    with tempfile.TemporaryDirectory() as folder:
        torch.save({"w": torch.zeros(2)}, Path(folder) / "warm.pt")
        examine(Path(folder) / "warm.pt", {"arch": "mlp"})
    gc.freeze()  # a child's collections then skip (and do not copy) the server's objects


def serve() -> None:
    """Answer requests (JSON lines on stdin) until stdin closes, each by a limited child forked ahead of time.
    The first request is answered before the server warms up (``python -m helper.doctor`` asks only one)."""
    protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything a library prints goes to stderr, not into the replies
    worker, warm = _Worker(), False
    for line in sys.stdin:
        try:
            reply = worker.run(json.loads(line))
        except Exception as exc:  # a broken request: answer, do not die
            reply = {"output": "", "exit": None, "timed_out": False, "error": repr(exc)}
        protocol.write(json.dumps(reply) + "\n")
        protocol.flush()
        if not warm:
            warm = True
            worker.close()
            _warm_up()
        if not worker.alive:
            worker = _Worker()
    worker.close()


def run_once() -> None:
    """macOS and Windows: this fresh interpreter is the child; the request is on stdin, the messages go to stdout."""
    request = json.loads(sys.stdin.read())
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    _child(request, out)

