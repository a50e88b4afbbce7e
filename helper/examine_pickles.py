"""The doctor's examine steps for files that hold a pickle: torch.save zips, legacy files, plain pickles.

Each step (``torch_zip``, ``legacy``, ``plain_pickle``; DCP folders: ``helper.examine_dcp``) is named by
its row of ``helper.kinds.KINDS`` and runs in the inspector child
(``helper.inspector``): it fills a ``Diagnosis`` and returns it. OK only when
the format's own loader accepted the file here: ``torch.load(weights_only=True)``
after the opcode scan and ``helper.pickle_guard``'s budget. The globals a pickle
needs beyond ``weights_only``'s set are left to the doctor's process
(``Diagnosis.needed``), which has the user's classes imported.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch

from helper.diagnosis import Diagnosis, said
from helper.formats import EARLIER, KINDS, CheckpointError, check_legacy, open_torch_zip
from helper.pickle_guard import survey_pickle

STATE_DICT_KEYS = ("model", "model_state", "model_state_dict", "state_dict", "net", "weights")


def allowed_globals() -> frozenset[str]:
    """What ``weights_only=True`` allows in this process: ``helper.pickle_guard``'s one definition (torch's own
    set, plus what ``add_safe_globals`` added: nothing, in the child)."""
    from helper.pickle_guard import torch_allowed_globals

    return torch_allowed_globals()


def needed_globals(scan: Any, zipped: Path | None = None) -> list[str]:
    """The globals a pickle names beyond what ``weights_only=True`` allows, dotted names always included.

    For a torch.save zip (``zipped``, its path) torch's public
    ``torch.serialization.get_unsafe_globals_in_checkpoint`` answers wherever it can read the pickle: it
    reads the opcodes torch.save writes (protocol 2) and raises on any other (protocol 4's
    ``STACK_GLOBAL``, protocol 0's ``INST``). There, and for legacy files and plain pickles, which it does
    not read, the opcode scan answers against ``allowed_globals``.
    """
    if zipped is not None:
        try:
            return sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(str(zipped))) | scan.dotted)
        except (pickle.UnpicklingError, ValueError, RuntimeError, EOFError, UnicodeDecodeError):
            pass  # an opcode it does not read: the scan below saw every one
    return sorted((scan.globals - allowed_globals()) | scan.dotted)


def guard(data: bytes, name: str, allowed: frozenset[str] | None = None, *, allocations: bool = True) -> None:
    """``helper.pickle_guard``'s budget on the pickle before any unpickler runs (``CheckpointError`` if not).
    ``allocations=False`` leaves what ``bytearray`` and the like ask for to a later check that says it in
    the words lesson 07 uses ("a memory bomb")."""
    import dataclasses

    from helper.pickle_guard import PickleBudget
    from helper.pickle_guard import scan_pickle as guard

    budget = PickleBudget.for_size(len(data))
    if not allocations:
        budget = dataclasses.replace(budget, max_alloc=1 << 62)
    guard(data, allowed=allowed, budget=budget, name=name)


# --------------------------------------------------------------------------------------------------
# Loaded objects: what is in them, where the weights are, whether they fit


def _tensors(obj: Any, out: list[torch.Tensor], depth: int = 0) -> None:
    """Every tensor in ``obj``, through dicts, lists and tuples up to 8 deep, appended to ``out``."""
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif depth < 8 and isinstance(obj, dict):
        for value in obj.values():
            _tensors(value, out, depth + 1)
    elif depth < 8 and isinstance(obj, (list, tuple)):
        for value in obj:
            _tensors(value, out, depth + 1)


def _is_state_dict(obj: Any) -> bool:
    """A non-empty dict of names to tensors."""
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def _find_state_dict(obj: Any) -> tuple[str | None, dict[str, torch.Tensor] | None]:
    """The model weights in a loaded object: the object itself, or its ``model``-like entry."""
    if _is_state_dict(obj):
        return "", obj
    if isinstance(obj, dict):
        for key in (*STATE_DICT_KEYS, *obj):
            if key in obj and _is_state_dict(obj[key]) and not str(key).startswith("optim"):
                return str(key), obj[key]
    return None, None


def check_fit(d: Diagnosis, state: dict[str, torch.Tensor], config: dict[str, Any] | None) -> Diagnosis:
    """With a model ``config``: do the weights fit ``build_model(config)``? A mismatch is the verdict, with a table."""
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
    d.mismatch = found.summary
    return d.fail(said("mismatch", summary=found.summary, hint=f": {found.hint[0]}" if found.hint else ""), found.fix)


def _lightning(d: Diagnosis, obj: dict[str, Any], config: dict[str, Any] | None) -> Diagnosis:
    """A Lightning checkpoint: the prefix its keys share, and the plain model's weights without it."""
    state = obj["state_dict"]
    heads = {k.split(".", 1)[0] for k in state}
    prefix = f"{heads.pop()}." if len(heads) == 1 and all("." in k for k in state) else None
    version = obj.get("pytorch-lightning_version", obj.get("lightning_version", "?"))
    d.note(
        "lightning",
        version=version,
        prefix=f", every key prefixed {prefix!r} (the LightningModule's attribute)" if prefix else "",
    )
    d.weights_at = "state_dict"
    if prefix is None:
        return d.ok(said("lightning-no-prefix"), said("lightning-no-prefix-fix"))
    d.ok(said("lightning-ok", prefix=prefix), said("lightning-fix", prefix=prefix))
    return check_fit(d, {k[len(prefix) :]: v for k, v in state.items()}, config)


def _describe_loaded(d: Diagnosis, obj: Any, locations: set[str], config: dict[str, Any] | None) -> Diagnosis:
    """What a loaded object holds (keys, tensors, devices, dtypes, where the weights sit), then the verdict."""
    tensors: list[torch.Tensor] = []
    _tensors(obj, tensors)
    if isinstance(obj, dict):
        d.note(
            "keys",
            keys=[str(k) if not isinstance(k, (int, float)) else k for k in list(obj)[:12]],
            more=" ..." if len(obj) > 12 else "",
        )
    else:
        d.note("holds", type=type(obj).__name__)
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in tensors})
    d.devices, d.dtypes = sorted(locations), dtypes
    d.note("tensors", count=len(tensors), devices=sorted(locations) or ["-"], dtypes=dtypes or ["-"])
    if any(t.is_meta for t in tensors):
        return d.fail(said("meta"), said("meta-fix"))
    if (
        isinstance(obj, dict)
        and _is_state_dict(obj.get("state_dict"))
        and any(k in obj for k in ("pytorch-lightning_version", "lightning_version"))
    ):
        return _lightning(d, obj, config)
    where, state = _find_state_dict(obj)
    if state is None:
        return d.ok(said("no-state-dict"), said("loads-fix", then=""))
    d.weights_at = where
    label = "the file itself" if where == "" else f"entry {where!r}"
    count = sum(t.numel() for t in state.values() if t.is_floating_point())
    d.note("weights", label=label, count=len(state), numbers=count)
    if locations - {"cpu"}:
        d.note("saved-on", devices=sorted(locations - {"cpu"}))
    d.ok(
        said("loads", where=f"; its weights are in checkpoint[{where!r}]" if where else ""),
        said("loads-fix", then=f", then model.load_state_dict(checkpoint[{where!r}])" if where else ""),
    )
    return check_fit(d, state, config)


def _load(
    d: Diagnosis, path: Path, scan: Any, pickles: list[bytes], config: dict[str, Any] | None, zipped: bool = False
) -> Diagnosis:
    """Load with weights_only=True once the opcodes showed nothing beyond plain data is needed."""
    d.dotted = sorted(scan.dotted)
    needed = needed_globals(scan, path if zipped else None)
    if needed:
        d.needed = needed  # the doctor's process decides the advice: it has the user's classes imported
        return d
    if scan.meta:
        return d.fail(said("meta"), said("meta-fix"))
    for data in pickles:
        guard(data, path.name)
    locations: set[str] = set()

    def record(storage: Any, location: str) -> Any:  # storages arrive on the CPU: note where they were saved
        locations.add(location)
        return storage

    try:
        obj = torch.load(path, map_location=record, weights_only=True)
    except pickle.UnpicklingError as exc:
        return d.fail(said("refused", detail=str(exc).splitlines()[-1][:160]), said("runs-code"))
    except MemoryError:
        raise
    except Exception as exc:  # a damaged file that passed every check still fails in many ways
        if "can't allocate memory" in str(exc):
            raise MemoryError from None
        return d.fail(said("load-failed", detail=(str(exc).splitlines() or [""])[0][:160]), EARLIER)
    return _describe_loaded(d, obj, locations, config)


# --------------------------------------------------------------------------------------------------
# One examine step per kind of file


def _writer(records: dict[str, str]) -> dict[str, str]:
    """What the records say about the PyTorch that wrote the file (the file never names its version)."""
    since = "2.1" if "byteorder" in records else "1.6"  # zip format: default since 1.6; byteorder: since 2.1
    shown = ", ".join(f"{k}={v}" for k, v in records.items() if k not in (".data/serialization_id", ".data/version"))
    return {"since": since, "records": shown}


def member_bytes(path: Path, start: int, size: int) -> bytes:
    """``size`` bytes of ``path`` from ``start`` (a zip member's data), read without mapping the file."""
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
    the old survey 50 s and 1.5 GiB, the guard 2 s). The globals a pickle names are left to the doctor's
    own analysis (which turns them into advice), so they are allowed here for the budget's sake only."""
    try:
        guard(data, name, allocations=False)
    except CheckpointError as exc:
        names = getattr(exc, "refused_globals", ())
        if not names:
            raise
        guard(data, name, allowed=frozenset(allowed_globals() | set(names)), allocations=False)


def torch_zip(d: Diagnosis, path: Path, config: dict[str, Any] | None) -> Diagnosis:
    """A torch.save zip: the budget on data.pkl, the archive's checks, save_checkpoint's digest record, then load."""
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
    return _load(d, path, archive.scan, [member_bytes(path, pkl.start, pkl.size)], config, zipped=True)


def legacy(d: Diagnosis, path: Path, config: dict[str, Any] | None) -> Diagnosis:
    """A legacy-format file: its pickles and storages add up, then load; OK says it has no checksums."""
    d.note("legacy")
    scan = check_legacy(path)
    data, pos = path.read_bytes(), 0
    for _ in range(3):  # magic number, protocol version, system info: the main pickle follows
        pos = survey_pickle(data, pos).end
    d = _load(d, path, scan, [data[pos : survey_pickle(data, pos).end]], config)
    if d.healthy and d.cause:
        d.ok(said("legacy-ok"), said("legacy-fix"))
    return d


def plain_pickle(d: Diagnosis, path: Path, config: dict[str, Any] | None) -> Diagnosis:
    """A plain pickle: never loaded; the globals it names go to the doctor's process to decide."""
    try:
        scan = survey_pickle(path.read_bytes())
    except (ValueError, IndexError, KeyError) as exc:
        return d.fail(said("pickle-malformed", sentence=KINDS["pickle"].sentence, detail=exc), KINDS["pickle"].fix)
    names = sorted(scan.globals)
    d.facts.update(allowed=sorted(set(names) & allowed_globals()))
    d.dotted = sorted(scan.dotted)
    if names:
        d.needed = names  # the doctor's process decides
        return d
    d.note("pickle-names", names=names)
    return d.fail(KINDS["pickle"].sentence, KINDS["pickle"].fix)
