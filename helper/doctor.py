"""A checkpoint doctor: say what a file or folder is, and what is wrong with it, without running it.

    python -m helper.doctor PATH [--config JSON]

or, from Python, ``diagnose(path, config=None)``. It names the format with the
table of file kinds it shares with ``load_checkpoint`` (``helper.formats``):
a ``torch.save`` zip, the legacy format, safetensors, a Hugging Face sharded
folder or index, a Lightning checkpoint, a ``torch.export`` ``.pt2``, a DCP
folder, an ONNX model, ... It validates the file before anything is
unpickled (structure, CRC-32s, the pickle's opcodes and the memory they ask
for), names the globals a pickle needs and allowlists only plain-data classes
and ``nn.Module`` classes it can find, and only when nothing beyond
``weights_only=True`` is needed loads the file to report its keys, devices,
dtypes and parameter count. Given a model config (``helper.models.build_model``)
it checks the fit and recognises a ``module.`` / ``_orig_mod.`` / ``model.``
prefix.

The report ends with one line, the cause and the fix; the exit code is 0 for a
healthy file and 1 otherwise. "OK" is printed only after the doctor has done
what it recommends, or the equivalent checks. It never ends in a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import pickle
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from helper.checkpoint import _allowed_globals, find_mismatch
from helper.formats import (EARLIER, KINDS, CheckpointError, check_legacy, check_zip, kind_error, open_torch_zip,
                            read_json, safetensors_header, scan_pickle, shown_path, sniff)
from helper.models import build_model
from helper.paths import REPO_ROOT

__all__ = ["Diagnosis", "diagnose", "detect_kind", "main", "allowlistable"]

STATE_DICT_KEYS = ("model", "model_state", "model_state_dict", "state_dict", "net", "weights")
# Classes known to rebuild plain data when unpickled: the only globals, besides nn.Module classes
# that can be found, that the doctor will suggest for torch.serialization.safe_globals.
PLAIN_DATA = {
    "argparse.Namespace", "collections.defaultdict", "datetime.datetime", "datetime.date", "datetime.timedelta",
    "datetime.timezone", "pathlib.PosixPath", "pathlib.WindowsPath", "pathlib.PurePosixPath",
    "pathlib.PureWindowsPath", "numpy.ndarray", "numpy.dtype", "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct", "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
    "lightning.fabric.utilities.data.AttributeDict", "pytorch_lightning.utilities.parsing.AttributeDict",
    "builtins.list", "builtins.dict", "builtins.tuple", "builtins.int", "builtins.float", "builtins.str",
    "builtins.frozenset",
}
_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


@dataclass
class Diagnosis:
    """What the doctor found: ``kind`` (see ``sniff``), ``healthy``, report ``lines``, ``cause`` and ``fix``."""

    path: str
    kind: str
    healthy: bool = True
    lines: list[str] = field(default_factory=list)
    cause: str = ""
    fix: str = ""

    @property
    def exit_code(self) -> int:
        return 0 if self.healthy else 1

    def verdict(self) -> str:
        """The last line: OK or PROBLEM, the cause, and the fix."""
        head = "OK" if self.healthy else "PROBLEM"
        return f"{head}: {self.cause}. Fix: {self.fix}" if self.fix else f"{head}: {self.cause}"

    def report(self) -> str:
        return "\n".join([f"{self.path}: {self.kind}", *(f"  {line}" for line in self.lines), self.verdict()])

    def fail(self, cause: str, fix: str) -> Diagnosis:
        self.healthy, self.cause, self.fix = False, cause, fix
        return self

    def ok(self, cause: str, fix: str) -> Diagnosis:
        self.cause, self.fix = cause, fix
        return self


def detect_kind(path: str | Path) -> str:
    """The kind of ``path`` (``helper.formats.sniff``; kept under this name for older code)."""
    return sniff(path)


# --------------------------------------------------------------------------------------------------
# Which globals may be suggested for safe_globals: an allowlist, never a denylist


def _user_module(module: str) -> bool:
    """Is ``module`` the user's own code (found in this folder or the course's), not an installed package?"""
    try:
        spec = importlib.util.find_spec(module.split(".")[0])
    except (ImportError, ValueError):
        return False
    origin = Path(spec.origin).resolve() if spec and spec.origin else None
    return origin is not None and "-packages" not in str(origin) and any(
        origin.is_relative_to(root) for root in (Path.cwd().resolve(), REPO_ROOT))


def allowlistable(name: str) -> bool:
    """May ``name`` (``module.qualname``) be suggested for ``safe_globals``? Plain data or a findable nn.Module class.

    Nothing is imported but the user's own modules (never an installed
    package the file names); functions and anything unknown are refused.
    """
    if name in PLAIN_DATA or (name.startswith("numpy.dtypes.") and name.endswith("DType")):
        return True
    module, _, attr = name.rpartition(".")
    if module not in sys.modules:
        if not _user_module(module):
            return False
        try:
            importlib.import_module(module)
        except Exception:
            return False
    obj: Any = sys.modules[module]
    for part in attr.split("."):
        obj = getattr(obj, part, None)
    return isinstance(obj, type) and issubclass(obj, nn.Module)


def _refused(d: Diagnosis, needed: list[str]) -> Diagnosis:
    d.lines.append(f"weights_only=True refuses it; the pickle names {needed}")
    unsafe = [g for g in needed if not allowlistable(g)]
    if any(g.startswith("__main__.") for g in needed):
        d.lines.append("classes from a script's __main__: only a process that defines them can load the file "
                       "(AttributeError: Can't get attribute ... on <module '__main__'>)")
    if unsafe:
        return d.fail(f"the pickle names {unsafe}, not known plain data or nn.Module classes: loading it "
                      "could run code", "do not load this file; it can run code. Ask for the weights as a "
                      "state_dict or a safetensors file")
    return d.fail("it pickles whole objects (classes, not plain data), refused by weights_only=True",
                  "if you trust the file, load it once inside torch.serialization.safe_globals([...those classes]) "
                  "and re-save model.state_dict() with its config")


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
    found = find_mismatch(build_model(config), state)
    if found is None:
        d.lines.append(f"fits config {json.dumps(config, sort_keys=True)}: every key and shape matches")
        return d
    rows = found.table(limit=len(found.rows))
    if found.hint:  # the prefix explains every row: a few are enough
        rows = rows if len(rows) <= 5 else [*rows[:4], f"... ({len(rows) - 1} rows in all)"]
    d.lines += rows
    cause = f"the weights do not fit the model ({found.summary})" + (f": {found.hint[0]}" if found.hint else "")
    return d.fail(cause, found.fix)


def _lightning(d: Diagnosis, obj: dict[str, Any], config: dict[str, Any] | None) -> Diagnosis:
    state = obj["state_dict"]
    heads = {k.split(".", 1)[0] for k in state}
    prefix = f"{heads.pop()}." if len(heads) == 1 and all("." in k for k in state) else None
    version = obj.get("pytorch-lightning_version", obj.get("lightning_version", "?"))
    d.lines.append(f"a PyTorch Lightning checkpoint (Lightning {version}): weights in checkpoint['state_dict']"
                   + (f", every key prefixed {prefix!r} (the LightningModule's attribute)" if prefix else ""))
    if prefix is None:
        return d.ok("a Lightning checkpoint whose keys share no single prefix",
                    "rebuild your LightningModule and call YourModule.load_from_checkpoint(path)")
    d.ok(f"a Lightning checkpoint; the plain model's weights are checkpoint['state_dict'] without {prefix!r}",
         "checkpoint = torch.load(path, map_location='cpu', weights_only=True); state = checkpoint['state_dict']; "
         f"torch.nn.modules.utils.consume_prefix_in_state_dict_if_present(state, {prefix!r}); "
         "model.load_state_dict(state)")
    return _check_fit(d, {k[len(prefix):]: v for k, v in state.items()}, config)


def _describe_loaded(d: Diagnosis, obj: Any, locations: set[str], config: dict[str, Any] | None) -> Diagnosis:
    tensors: list[torch.Tensor] = []
    _tensors(obj, tensors)
    if isinstance(obj, dict):
        d.lines.append(f"top-level keys: {list(obj)[:12]}" + (" ..." if len(obj) > 12 else ""))
    else:
        d.lines.append(f"holds a {type(obj).__name__}")
    d.lines.append(f"tensors: {len(tensors)}, devices {sorted(locations) or ['-']}, "
                   f"dtypes {sorted({str(t.dtype).removeprefix('torch.') for t in tensors}) or ['-']}")
    if any(t.is_meta for t in tensors):
        return d.fail("it holds tensors on the meta device: shapes without data, nothing to load",
                      "save the real weights (model.to('cpu').state_dict()), or " + EARLIER)
    if isinstance(obj, dict) and _is_state_dict(obj.get("state_dict")) and any(
            k in obj for k in ("pytorch-lightning_version", "lightning_version")):
        return _lightning(d, obj, config)
    where, state = _find_state_dict(obj)
    if state is None:
        return d.ok("loads with weights_only=True; no model state_dict found in it",
                    "torch.load(path, map_location='cpu', weights_only=True)")
    label = "the file itself" if where == "" else f"entry {where!r}"
    count = sum(t.numel() for t in state.values() if t.is_floating_point())
    d.lines.append(f"model weights: {label}, {len(state)} tensors, {count} numbers (floating point)")
    if locations - {"cpu"}:
        d.lines.append(f"saved on {sorted(locations - {'cpu'})}: load with map_location='cpu' where there is no GPU")
    d.ok("loads with weights_only=True" + (f"; its weights are in checkpoint[{where!r}]" if where else ""),
         "torch.load(path, map_location='cpu', weights_only=True)"
         + (f", then model.load_state_dict(checkpoint[{where!r}])" if where else ""))
    return _check_fit(d, state, config)


def _load(d: Diagnosis, path: Path, globals_: set[str], meta: bool, config: dict[str, Any] | None) -> Diagnosis:
    """Load with weights_only=True once the opcodes showed nothing beyond plain data is needed."""
    needed = sorted(globals_ - _allowed_globals())
    if needed:
        return _refused(d, needed)
    if meta:
        return d.fail("it holds tensors on the meta device: shapes without data, nothing to load",
                      "save the real weights (model.to('cpu').state_dict()), or " + EARLIER)
    locations: set[str] = set()

    def record(storage: Any, location: str) -> Any:  # storages arrive on the CPU: note where they were saved
        locations.add(location)
        return storage

    try:
        obj = torch.load(path, map_location=record, weights_only=True)
    except pickle.UnpicklingError as exc:
        return d.fail(f"refused by weights_only=True ({str(exc).splitlines()[-1][:160]})",
                      "do not load this file; it can run code")
    except Exception as exc:  # a damaged file that passed every check still fails in many ways
        return d.fail(f"torch.load(weights_only=True) failed: {(str(exc).splitlines() or [''])[0][:160]}", EARLIER)
    return _describe_loaded(d, obj, locations, config)


# --------------------------------------------------------------------------------------------------
# One check per kind of file


def _writer(records: dict[str, str]) -> str:
    """What the records say about the PyTorch that wrote the file (the file never names its version)."""
    since = "2.1" if "byteorder" in records else "1.6"  # zip format: default since 1.6; byteorder: since 2.1
    shown = ", ".join(f"{k}={v}" for k, v in records.items() if k not in (".data/serialization_id", ".data/version"))
    return f"written by PyTorch {since} or later ({shown})"


def _torch_zip(d: Diagnosis, path: Path, config: dict[str, Any] | None) -> Diagnosis:
    archive = open_torch_zip(path)
    d.lines.append(_writer(archive.records))
    d.lines.append("CRC-32 check: every member matches")
    return _load(d, path, archive.scan.globals, archive.scan.meta, config)


def _legacy(d: Diagnosis, path: Path, config: dict[str, Any] | None) -> Diagnosis:
    d.lines.append("PyTorch's legacy format (before 1.6, or _use_new_zipfile_serialization=False): no CRCs")
    scan = check_legacy(path)
    d = _load(d, path, scan.globals, scan.meta, config)
    if d.healthy:
        d.fix = KINDS["legacy"].fix
    return d


def _plain_pickle(d: Diagnosis, path: Path, config: dict[str, Any] | None) -> Diagnosis:
    try:
        names = sorted(scan_pickle(path.read_bytes()).globals)
    except (ValueError, IndexError, KeyError) as exc:
        return d.fail(f"the file {KINDS['pickle'].cause}, and it is malformed ({exc})", KINDS["pickle"].fix)
    d.lines.append(f"the pickle names {names}")
    unsafe = [g for g in names if not allowlistable(g) and g not in _allowed_globals()]
    if unsafe:
        return d.fail(f"a plain pickle that names {unsafe}: loading it could run code",
                      "do not load this file; it can run code. " + KINDS["pickle"].fix)
    return d.fail(f"the file {KINDS['pickle'].cause}", KINDS["pickle"].fix)


def _tensor_shapes(header: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k: torch.empty(shape, dtype=_SAFETENSORS_DTYPES.get(dtype, torch.uint8), device="meta")
            for k, (shape, dtype) in header["tensors"].items()}


def _safetensors(d: Diagnosis, path: Path, config: dict[str, Any] | None) -> Diagnosis:
    header = safetensors_header(path)  # validated by safetensors itself
    shapes = header["tensors"]
    count = sum(int(torch.Size(s).numel()) for s, _ in shapes.values())
    d.lines.append(f"header: {len(shapes)} tensors, dtypes {sorted({t for _, t in shapes.values()})}, "
                   f"{count} numbers, metadata keys {sorted(header['metadata'])}; validated by safetensors")
    d.ok("a complete safetensors file (tensors only, nothing to unpickle)", KINDS["safetensors"].fix)
    return _check_fit(d, _tensor_shapes(header), config)


def _shard_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Names and shapes (meta tensors) of one weights file: safetensors, or a torch.save ``.bin`` checked first."""
    if path.suffix != ".bin":
        return _tensor_shapes(safetensors_header(path))  # validated by safetensors itself
    archive = open_torch_zip(path)
    needed = sorted(archive.scan.globals - _allowed_globals())
    if needed:
        raise CheckpointError(path, f"its pickle names {needed}, not plain data", "do not load this file; it can "
                              "run code. Ask for the safetensors weights (save_pretrained's default)")
    return torch.load(path, map_location="meta", weights_only=True)


def _hf(d: Diagnosis, path: Path, config: dict[str, Any] | None) -> Diagnosis:
    folder = path if path.is_dir() else path.parent
    index_path = path if path.is_file() else next(iter(sorted(folder.glob("*.index.json"))), None)
    if index_path is None:  # one unsharded weights file, or none
        files = sorted([*folder.glob("*.safetensors"), *folder.glob("pytorch_model*.bin")])
        if len(files) != 1:
            return d.fail(f"a model folder with config.json and {len(files)} weights files but no index",
                          "copy the weights too: save_pretrained writes model.safetensors (or shards and "
                          "model.safetensors.index.json) next to config.json")
        weight_map = {k: files[0].name for k in _shard_tensors(files[0])}
    else:
        index = read_json(index_path)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            return d.fail(f"{index_path.name} has no weight_map of key -> shard file", "restore the index file")
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = folder / shard
        if Path(shard).name != shard or not shard_path.is_file():
            return d.fail(f"shard {shard} named by the index is missing", "copy the whole folder again")
        tensors = _shard_tensors(shard_path)
        wanted = {k for k, v in weight_map.items() if v == shard}
        if set(tensors) != wanted:
            return d.fail(f"shard {shard} holds {len(tensors)} tensors where the index names "
                          f"{len(wanted)} (the keys do not add up)", "copy the whole folder again")
        state.update(tensors)
    d.lines.append(f"{len(weight_map)} tensors in {len(set(weight_map.values()))} weights file(s), each validated; "
                   "the keys match the index" + ("; config.json present" if (folder / "config.json").is_file()
                                                   else "; no config.json"))
    d.ok(f"a complete Hugging Face {'sharded ' if index_path else ''}weights folder", KINDS["hf-folder"].fix)
    return _check_fit(d, state, config)


_DCP_MODULES = ("torch.distributed.checkpoint.metadata.", "torch.distributed.checkpoint.filesystem.",
                "torch.distributed.checkpoint.planner.")


def _dcp_global(name: str) -> bool:
    return name.startswith(_DCP_MODULES) or name in _allowed_globals() or name in PLAIN_DATA


class _DCPUnpickler(pickle.Unpickler):
    """Unpickles a DCP ``.metadata`` file, but only torch's own metadata classes and dtypes."""

    def find_class(self, module: str, name: str) -> Any:
        full = f"{module}.{name}"
        if _dcp_global(full):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{full} is not a DCP metadata class")


def _dcp(d: Diagnosis, path: Path) -> Diagnosis:
    shards = sorted(p.name for p in path.glob("*.distcp"))
    d.lines.append(f"shard files: {shards}")
    if d.kind == "dcp-incomplete":
        return d.fail(KINDS["dcp-incomplete"].cause.removeprefix("is "), KINDS["dcp-incomplete"].fix)
    d.lines.append(".metadata present (written last, after every shard)")
    raw = (path / ".metadata").read_bytes()
    try:
        scan = scan_pickle(raw)
    except (ValueError, IndexError, KeyError) as exc:
        return d.fail(f"the .metadata file is damaged ({exc})", "use an earlier checkpoint folder")
    unsafe = sorted(g for g in scan.globals if not _dcp_global(g))
    if unsafe:
        return d.fail(f"the .metadata pickle names {unsafe}: dcp.load unpickles it with pickle.load, which "
                      "would run them", "do not load this folder; it can run code")
    import io

    metadata = _DCPUnpickler(io.BytesIO(raw)).load()
    ranges = getattr(metadata, "storage_data", None) or {}
    for item in ranges.values():
        shard = path / item.relative_path
        if not shard.is_file():
            return d.fail(f"shard {item.relative_path} that .metadata names is missing",
                          "use an earlier checkpoint folder")
        if shard.stat().st_size < item.offset + item.length:
            return d.fail(f"shard {item.relative_path} is shorter than the byte ranges .metadata gives it (cut?)",
                          "use an earlier checkpoint folder")
    d.lines.append(f"{len(ranges)} byte ranges in {len({i.relative_path for i in ranges.values()})} shard file(s), "
                   "every one present in full")
    return d.ok("a complete torch.distributed.checkpoint (DCP) folder", KINDS["dcp"].fix)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return value, pos
        if shift > 63:
            raise ValueError("a varint longer than 10 bytes")


def _fields(data: bytes) -> list[tuple[int, Any]]:
    """The protobuf fields of ``data`` as (number, value): an int for varints, bytes for length-delimited."""
    fields, pos = [], 0
    while pos < len(data):
        tag, pos = _varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire in (1, 5):
            value, pos = None, pos + (8 if wire == 1 else 4)
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos:pos + length], pos + length
        else:
            raise ValueError(f"wire type {wire}")
        if pos > len(data):
            raise ValueError("a field runs past the end of the file")
        fields.append((number, value))
    return fields


def _onnx(d: Diagnosis, path: Path) -> Diagnosis:
    """Walk the ModelProto's fields to the end of the file; it must hold a graph whose external data exists."""
    redo = "export the model again with torch.onnx.export"
    try:
        model = dict(_fields(path.read_bytes()))
        graph = _fields(model[7]) if isinstance(model.get(7), bytes) else None
        if graph is None:
            return d.fail("an ONNX file without a graph", redo)
        external: dict[str, int] = {}  # file -> bytes the initializers need from it
        for tensor in (v for n, v in graph if n == 5 and isinstance(v, bytes)):  # GraphProto.initializer
            entries = [dict(_fields(e)) for n, e in _fields(tensor) if n == 13]  # TensorProto.external_data
            info = {e.get(1, b"").decode(): e.get(2, b"").decode() for e in entries}
            if "location" in info:
                end = int(info.get("offset", 0) or 0) + int(info.get("length", 0) or 0)
                external[info["location"]] = max(external.get(info["location"], 0), end)
    except (ValueError, IndexError, KeyError, UnicodeDecodeError, TypeError) as exc:
        return d.fail(f"a damaged ONNX file ({exc})", redo)
    d.lines.append(f"ONNX ir_version {model.get(1)}, a graph of {len(model[7])} bytes; every field is whole")
    for name, end in sorted(external.items()):
        data = path.parent / name
        if Path(name).name != name or not data.is_file() or data.stat().st_size < end:
            return d.fail(f"its weights live in the external-data file {name}, which is missing or short next to it",
                          f"copy {name} next to {path.name} (an .onnx and its .onnx.data travel together)")
        d.lines.append(f"external data: {name}, {end} bytes needed, present")
    return d.ok(KINDS["onnx"].cause.removeprefix("is "), KINDS["onnx"].fix)


def _zip_program(d: Diagnosis, path: Path) -> Diagnosis:
    check_zip(path)
    d.lines.append("CRC-32 check: every member matches")
    return d.ok(KINDS[d.kind].cause.removeprefix("is "), KINDS[d.kind].fix)


def diagnose(path: str | Path, config: dict[str, Any] | None = None) -> Diagnosis:
    """Examine ``path`` without running anything in it; ``config`` (a ``build_model`` dict) checks the fit."""
    path = Path(path)
    kind = sniff(path)
    d = Diagnosis(shown_path(path), kind)
    checks = {"torch-zip": lambda: _torch_zip(d, path, config), "legacy": lambda: _legacy(d, path, config),
              "pickle": lambda: _plain_pickle(d, path, config), "safetensors": lambda: _safetensors(d, path, config),
              "hf-index": lambda: _hf(d, path, config), "hf-folder": lambda: _hf(d, path, config),
              "dcp": lambda: _dcp(d, path), "dcp-incomplete": lambda: _dcp(d, path), "onnx": lambda: _onnx(d, path),
              "torch-export": lambda: _zip_program(d, path), "torchscript": lambda: _zip_program(d, path),
              "onnx-data": lambda: d.ok(KINDS["onnx-data"].cause.removeprefix("is "), f"keep it next to "
                                        f"{path.name[:-5]} and open that file (onnxruntime.InferenceSession)")}
    try:
        if kind in checks:
            return checks[kind]()
        if KINDS[kind].other_format:
            return d.ok(KINDS[kind].cause.removeprefix("is "), KINDS[kind].fix)
        error = kind_error(path, kind)
        return d.fail(f"the file {error.cause}" if error.cause.startswith("is ") else error.cause, error.fix)
    except CheckpointError as exc:
        return d.fail(exc.cause, exc.fix)
    except (Exception, RecursionError) as exc:  # never a traceback: say what failed
        return d.fail(f"could not be examined ({type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:160]})",
                      EARLIER)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helper.doctor", description=__doc__.splitlines()[0])
    parser.add_argument("path", help="a checkpoint file or folder")
    parser.add_argument("--config", type=json.loads, help='model config as JSON, e.g. \'{"arch": "mlp"}\'')
    args = parser.parse_args(argv)
    diagnosis = diagnose(args.path, args.config)
    print(diagnosis.report())
    return diagnosis.exit_code


if __name__ == "__main__":
    sys.exit(main())
