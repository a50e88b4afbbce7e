"""The doctor's examine steps for archives that run code when loaded: ``.pt2`` (``torch.export``) and TorchScript.

Taught in notebooks/08_formats_safetensors_export.ipynb (a ``.pt2`` whose guards and constants run code)
and notebooks/12_troubleshooting.ipynb. Never ``torch.export.load`` or ``torch.jit.load``: both run code
from the file (guards are ``exec``'d, pickled constants and sample inputs unpickled, a scripted module's
``__setstate__`` runs while loading). A ``.pt2`` is checked as a zip and as JSON, a TorchScript file as a
zip and its pickles; neither is ever called safe from a stranger. Runs in the inspector child.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from helper.diagnosis import Diagnosis, said, say
from helper.examine_dcp import check_saved_bytes
from helper.examine_pickles import _budget_first, allowed_globals, member_bytes
from helper.formats import (
    EARLIER,
    CheckpointError,
    case_twins,
    check_zip,
)
from helper.pickle_guard import survey_pickle

_NATIVE = (".so", ".dll", ".dylib", ".pyd", ".py", ".pyc")


def _pt2_pickles(path: Path, members: dict[str, Any], prefix: str, code: list[str]) -> list[str]:
    """The members torch.export.load unpickles with torch.load (weights_only=False as its fallback): its sample
    inputs, and any other member that is a pickle or a torch.save zip, outside the weights and constants (whose
    pickled entries their tables name). Each is held to weights_only=True's rules; one that fails joins ``code``."""

    found = []
    for name, m in members.items():
        rest = name[len(prefix) :]
        if rest.startswith(("data/weights/", "data/constants/")) or not name.startswith(prefix):
            continue
        head = member_bytes(path, m.start, 2)
        if not rest.startswith("data/sample_inputs/") and head != b"PK" and head[:1] != b"\x80":
            continue
        found.append(rest)
        try:
            check_saved_bytes(member_bytes(path, m.start, m.size))
        except CheckpointError as exc:
            code.append(f"{rest} is a pickle that weights_only=True refuses ({exc.cause[:160]}), which it unpickles")
    return found


def pt2(d: Diagnosis, path: Path, config: dict[str, Any] | None = None) -> Diagnosis:
    """A ``.pt2`` checked as a zip (CRC-32s) and as JSON, never loaded: guards code, pickled weights or
    constants, or native code make it a problem; a whole one is still only as safe as who made it."""
    members = check_zip(path)
    d.note("crc-ok")
    names = list(members)
    formats = [n for n in names if n.endswith("/archive_format") and n.count("/") == 1]
    fake = None
    record = members[formats[0]] if len(formats) == 1 else None
    if record is None or member_bytes(path, record.start, min(record.size, 16)).strip() != b"pt2":
        fake = "no archive_format record reading pt2"
    prefix = formats[0][: -len("archive_format")] if formats else ""
    models = sorted(n for n in names if n.startswith(prefix + "models/") and n.endswith(".json"))
    if fake is None and not models:
        fake = "no models/*.json program"

    def load(name: str) -> Any:
        m = members[name]
        return json.loads(member_bytes(path, m.start, m.size))

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
                        ("custom_obj", "opaque_obj")
                    ):
                        code.append(f"{fqn!r} is a pickled object, which it unpickles")
    except (ValueError, AttributeError, TypeError, UnicodeDecodeError) as exc:
        fake = f"a record is not the JSON torch.export writes ({exc})"[:200]
    pickled = _pt2_pickles(path, members, prefix, code)
    if fake is not None:
        return d.fail(said("pt2-fake", detail=fake), said("pt2-redo"))
    if code:
        return d.fail(said("pt2-code", what="; ".join(code)[:300]), said("runs-code-ask"))
    d.note(
        "pt2",
        models=[n[len(prefix) + len("models/") :] for n in models],
        weights=weights,
        constants=constants,
        pickled=say("pt2-pickled", names=", ".join(pickled)) if pickled else "nothing pickled",
    )
    return d.ok(said("pt2-ok"), said("pt2-fix"))


_TS_MODULES = ("torch.jit._pickle.", "__torch__.")  # TorchScript's own pickled names (its C++ unpickler's)
_STORAGE = re.compile(r"/(data|constants)/\d+$")


def _torchscript_pickle(z: Any, name: str) -> set[str]:
    """The globals a TorchScript pickle names, after ``helper.pickle_guard``'s budget (``ValueError`` if it is
    not one torch.jit.save writes: a global outside weights_only's set and TorchScript's own)."""
    info = z.getinfo(name)
    if info.file_size > 1 << 30:
        raise ValueError(f"{name} is {info.file_size:,} bytes")
    data = z.read(info)
    _budget_first(data, name.rpartition("/")[2])
    names = survey_pickle(data).globals
    other = sorted(g for g in names - allowed_globals() if not g.startswith(_TS_MODULES))
    if other:
        raise ValueError(f"{name} names {', '.join(other)[:120]}, which torch.jit.load's unpickler does not know")
    return names


def _mentions(z: Any, info: Any, word: bytes) -> bool:
    """Whether the member's bytes (uncompressed, read in chunks) hold ``word``."""
    with z.open(info) as f:
        tail = b""
        while chunk := f.read(1 << 20):
            if word in tail + chunk:
                return True
            tail = chunk[-len(word) :]
    return False


def torchscript(d: Diagnosis, path: Path, config: dict[str, Any] | None = None) -> Diagnosis:
    """A TorchScript zip, never loaded (``torch.jit.load`` runs the file's ``__setstate__`` code): every member's
    CRC-32, no two names torch's reader could confuse, the records and pickles torch.jit.save writes, its code
    files listed. Code that runs while loading (``__setstate__``) is a problem; a whole one is still code."""
    import zipfile

    def fake(detail: str) -> Diagnosis:
        return d.fail(said("torchscript-fake", detail=detail[:160]), EARLIER)

    try:  # torch.jit.save deflates its code files: zipfile checks every member's CRC-32 (check_zip refuses them)
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
            if bad is not None:
                return fake(f"member {bad!r} fails its CRC-32 check")
            d.note("crc-ok")
            names = z.namelist()
            problem = case_twins(names)
            if problem is not None:
                return fake(problem)
            pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
            prefix = pickles[0][: -len("data.pkl")] if len(pickles) == 1 else ""
            version = z.read(prefix + "version").strip() if prefix + "version" in names else b""
            if not prefix or prefix + "constants.pkl" not in names or not version.isdigit():
                return fake("no single data.pkl beside constants.pkl and a version record")
            if not any(g.startswith("__torch__.") for g in _torchscript_pickle(z, prefix + "data.pkl")):
                return fake("data.pkl holds no scripted module")
            _torchscript_pickle(z, prefix + "constants.pkl")
            code = sorted(n for n in names if "/code/" in n.lower() and n.lower().endswith(".py"))
            if not code:
                return fake("no code/*.py")
            loading = [
                n
                for n in names
                if not _STORAGE.search(n.lower())
                and not n.endswith(".debug_pkl")
                and _mentions(z, z.getinfo(n), b"__setstate__")
            ]
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, KeyError, RuntimeError) as exc:
        return fake(str(exc) if type(exc) is ValueError else f"{type(exc).__name__}: {exc}")
    shown = [n[len(prefix) :] for n in code]
    d.note("torchscript", count=len(code), files=", ".join(shown[:6]) + (", ..." if len(shown) > 6 else ""))
    if loading:
        return d.fail(
            said("torchscript-setstate", files=", ".join(n[len(prefix) :] for n in loading)[:200]),
            said("runs-code-ask"),
        )
    return d.ok(said("torchscript-ok"), said("torchscript-fix"))
