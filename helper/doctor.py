"""A checkpoint doctor: say what a file or folder is, and what is wrong with it, without running it.

    python -m helper.doctor PATH [--config JSON]

or, from Python, ``diagnose(path, config=None)``. It names the format (a
``torch.save`` zip and the records it carries, the legacy format, safetensors,
a ``torch.export`` ``.pt2``, a DCP folder, ...), checks the zip's CRC-32s, lists
the globals a pickle needs (``torch.serialization.get_unsafe_globals_in_checkpoint``
reads the pickle's opcodes, it unpickles nothing), and only when that list is
empty loads the file with ``torch.load(..., weights_only=True)`` to report its
keys, tensor devices and dtypes and parameter count. Given a model config
(``helper.models.build_model``), it lists missing, unexpected and wrongly
shaped keys and recognises a ``module.`` / ``_orig_mod.`` prefix.

The report ends with one line, the cause and the fix; the exit code is 0 for
a healthy file and 1 otherwise. Nothing beyond ``weights_only=True`` is ever
unpickled. File-kind detection reuses ``helper.checkpoint.sniff`` and adds the
``torch.export`` archive and an incomplete DCP folder, which ``sniff`` does not name.
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
import struct
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from helper.checkpoint import EARLIER, KINDS, sniff, state_dict_mismatch, verify_zip
from helper.models import build_model
from helper.paths import display_path

__all__ = ["Diagnosis", "diagnose", "detect_kind", "main"]

# Files of another kind that are fine in themselves: the last line says how to load them.
HOW_TO_LOAD = {
    "safetensors": "load it with safetensors.torch.load_file(path) (or safe_open for lazy access)",
    "torch-export": "load it with torch.export.load(path), not torch.load",
    "dcp": "load it with torch.distributed.checkpoint.load(state_dict, checkpoint_id=folder), or convert it "
           "once with torch.distributed.checkpoint.format_utils.dcp_to_torch_save(folder, 'model.pt')",
    "torchscript": "load it with torch.jit.load(path)",
    "numpy": "load it with numpy.load(path)",
}
# Modules whose globals run code when unpickled: never allowlist them.
DANGEROUS = ("builtins.", "os.", "posix.", "nt.", "subprocess.", "sys.", "shutil.", "runpy.", "importlib.",
             "pickle.", "codecs.", "webbrowser.", "socket.")
STATE_DICT_KEYS = ("model", "model_state", "model_state_dict", "state_dict", "net", "weights")


@dataclass
class Diagnosis:
    """What the doctor found: ``kind`` (see ``detect_kind``), ``healthy``, report ``lines``, ``cause`` and ``fix``."""

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


def _zip_names(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as z:
        return z.namelist()


def detect_kind(path: str | Path) -> str:
    """``helper.checkpoint.sniff``'s kinds, plus ``"torch-export"`` (a ``.pt2``) and ``"dcp-incomplete"``.

    Reads only the file system, the first bytes and a zip's directory.
    """
    path = Path(path)
    kind = sniff(path)
    if kind in ("zip", "incomplete-torch-zip") and any(n.endswith("/archive_format") for n in _zip_names(path)):
        return "torch-export"
    if kind == "directory" and any(path.glob("*.distcp")):
        return "dcp-incomplete"
    return kind


def _records(path: Path) -> dict[str, str]:
    """The small bookkeeping records ``torch.save`` writes next to ``data.pkl``."""
    wanted = (".format_version", ".storage_alignment", "byteorder", "version", ".data/serialization_id")
    found = {}
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            record = name.split("/", 1)[-1]
            if record in wanted:
                found[record] = z.read(name)[:64].decode("ascii", "replace").strip()
    return found


def _writer(records: dict[str, str]) -> str:
    """What the records say about the PyTorch that wrote the file (the file never names its version)."""
    since = "2.1" if "byteorder" in records else "1.6"  # zip format: default since 1.6; byteorder: since 2.1
    shown = ", ".join(f"{k}={v}" for k, v in records.items() if k != ".data/serialization_id")
    return f"written by PyTorch {since} or later ({shown})"


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
    model = build_model(config)
    table = state_dict_mismatch(model, state)
    if table is None:
        d.lines.append(f"fits config {json.dumps(config, sort_keys=True)}: every key and shape matches")
        return d
    summary, *rows = table.splitlines()
    hint = rows[-1] if rows and rows[-1].startswith(("every saved key", "the model's keys")) else None
    if hint:  # the prefix explains every row: a few are enough
        rows = rows[:-1] if len(rows) <= 5 else [*rows[:4], f"... ({len(rows) - 2} rows in all)"]
    d.lines += rows
    if hint:
        return d.fail(f"the weights do not fit the model ({summary}): {hint.split(';')[0]}", hint.split("; ", 1)[1])
    return d.fail(f"the weights do not fit the model ({summary})",
                  "build the model from the config the file was saved with, or load the matching keys on purpose "
                  "with load_state_dict(..., strict=False) and check what it returns")


def _describe_loaded(d: Diagnosis, obj: Any, locations: set[str], config: dict[str, Any] | None) -> Diagnosis:
    tensors: list[torch.Tensor] = []
    _tensors(obj, tensors)
    if isinstance(obj, dict):
        d.lines.append(f"top-level keys: {list(obj)[:12]}" + (" ..." if len(obj) > 12 else ""))
    else:
        d.lines.append(f"holds a {type(obj).__name__}")
    d.lines.append(f"tensors: {len(tensors)}, devices {sorted(locations) or ['-']}, "
                   f"dtypes {sorted({str(t.dtype).removeprefix('torch.') for t in tensors}) or ['-']}")
    where, state = _find_state_dict(obj)
    if state is None:
        d.cause = "loads with weights_only=True; no model state_dict found in it"
        return d
    label = "the file itself" if where == "" else f"entry {where!r}"
    count = sum(t.numel() for t in state.values() if t.is_floating_point())
    d.lines.append(f"model weights: {label}, {len(state)} tensors, {count} numbers (floating point)")
    if locations - {"cpu"}:
        d.lines.append(f"saved on {sorted(locations - {'cpu'})}: load with map_location='cpu' where there is no GPU")
    d.cause = "loads with weights_only=True" + (f"; its weights are in checkpoint[{where!r}]" if where else "")
    d.fix = ("torch.load(path, map_location='cpu', weights_only=True)"
             + (f", then model.load_state_dict(checkpoint[{where!r}])" if where else ""))
    return _check_fit(d, state, config)


def _load_weights_only(d: Diagnosis, path: Path, config: dict[str, Any] | None) -> Diagnosis:
    locations: set[str] = set()

    def record(storage: Any, location: str) -> Any:  # storages arrive on the CPU: note where they were saved
        locations.add(location)
        return storage

    try:
        obj = torch.load(path, map_location=record, weights_only=True)
    except pickle.UnpicklingError as exc:
        return _refused(d, sorted(set(re.findall(r"GLOBAL (\S+) was not an allowed global", str(exc)))))
    except Exception as exc:  # a damaged archive fails in many ways
        return d.fail(f"torch.load(weights_only=True) failed: {str(exc).splitlines()[0][:120]}", EARLIER)
    return _describe_loaded(d, obj, locations, config)


def _refused(d: Diagnosis, needed: list[str]) -> Diagnosis:
    d.lines.append(f"weights_only=True refuses it; the pickle names {needed}")
    dangerous = [g for g in needed if g.startswith(DANGEROUS) or "." not in g]
    if dangerous:
        return d.fail(f"the pickle calls {dangerous}, which would run code when loaded",
                      "do not load it; ask for the weights as a state_dict or a safetensors file")
    main = [g for g in needed if g.startswith("__main__.")]
    if main:
        d.lines.append(f"{main} lived in a script's __main__: only a process that defines them can load it "
                       "(AttributeError: Can't get attribute ... on <module '__main__'>)")
    return d.fail("it pickles whole objects (classes, not plain data), refused by weights_only=True",
                  "if you trust the file, load it once inside torch.serialization.safe_globals([...those classes]) "
                  "and re-save model.state_dict() with its config")


def _torch_zip(d: Diagnosis, path: Path, config: dict[str, Any] | None) -> Diagnosis:
    d.lines.append(_writer(_records(path)))
    problem = verify_zip(path)
    if problem is not None:
        d.lines.append(f"CRC-32 check: {problem}")
        return d.fail(f"corrupted: {problem} (its bytes changed after torch.save wrote them)", EARLIER)
    d.lines.append("CRC-32 check: every member matches")
    needed = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))  # reads opcodes, runs nothing
    if needed:
        return _refused(d, needed)
    return _load_weights_only(d, path, config)


def _safetensors(d: Diagnosis, path: Path, config: dict[str, Any] | None) -> Diagnosis:
    size = path.stat().st_size
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        try:
            header = json.loads(f.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return d.fail("safetensors header is not valid JSON (truncated or damaged)", EARLIER)
    metadata = header.pop("__metadata__", None) or {}
    end = max((info["data_offsets"][1] for info in header.values()), default=0)
    dtypes = sorted({info["dtype"] for info in header.values()})
    count = sum(int(torch.Size(info["shape"]).numel()) for info in header.values())
    d.lines.append(f"header: {length} bytes, {len(header)} tensors, dtypes {dtypes}, {count} numbers, "
                   f"metadata keys {sorted(metadata)}")
    if 8 + length + end != size:
        return d.fail(f"the header promises {8 + length + end} bytes but the file has {size} (truncated?)", EARLIER)
    d.cause, d.fix = "a complete safetensors file (tensors only, nothing to unpickle)", HOW_TO_LOAD["safetensors"]
    dtype = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
    state = {k: torch.empty(v["shape"], dtype=dtype.get(v["dtype"], torch.float32), device="meta")
             for k, v in header.items()}
    return _check_fit(d, state, config)


def _folder(d: Diagnosis, path: Path) -> Diagnosis:
    shards = sorted(p.name for p in path.glob("*.distcp"))
    d.lines.append(f"shard files: {shards}")
    if d.kind == "dcp-incomplete":
        return d.fail("a DCP folder without its .metadata file: the save never finished (rank 0 writes .metadata "
                      "last)", "use an earlier checkpoint folder; the shards alone cannot be loaded")
    d.lines.append(".metadata present (written last, after every shard)")
    d.cause, d.fix = "a complete torch.distributed.checkpoint (DCP) folder", HOW_TO_LOAD["dcp"]
    return d


def diagnose(path: str | Path, config: dict[str, Any] | None = None) -> Diagnosis:
    """Examine ``path`` without running anything in it; ``config`` (a ``build_model`` dict) checks the fit."""
    path = Path(path)
    kind = detect_kind(path)
    d = Diagnosis(display_path(path), kind)
    if kind == "torch-zip":
        return _torch_zip(d, path, config)
    if kind == "legacy":
        d.lines.append("PyTorch's legacy format (before 1.6, or _use_new_zipfile_serialization=False): no CRCs")
        d = _load_weights_only(d, path, config)
        if d.healthy:
            d.fix = "convert it once: torch.save(torch.load(path, weights_only=True), new_path)"
        return d
    if kind == "safetensors":
        return _safetensors(d, path, config)
    if kind in ("dcp", "dcp-incomplete"):
        return _folder(d, path)
    if kind == "torch-export":
        problem = verify_zip(path)
        d.lines.append(f"CRC-32 check: {problem or 'every member matches'}")
        if problem is not None:
            return d.fail(f"corrupted: {problem}", EARLIER)
        d.cause, d.fix = "a torch.export program (.pt2): a graph and its weights", HOW_TO_LOAD["torch-export"]
        return d
    if kind in HOW_TO_LOAD:
        d.cause, d.fix = f"a {kind} file, not a torch.save checkpoint", HOW_TO_LOAD[kind]
        return d
    cause, fix = KINDS[kind]
    return d.fail(f"the file {cause}" if cause.startswith("is ") else cause,
                  fix.format(listing="") if kind == "directory" else fix)


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
