"""The doctor's examine step for a DCP folder (``dcp``): ``.metadata`` through an unpickler that knows DCP's
own classes only, every byte range inside the folder, and its non-tensor values, checked as
``torch.distributed.checkpoint.load`` would read them (taught in notebooks/11_distributed_checkpoints.ipynb
and notebooks/12_troubleshooting.ipynb, section 27).

DCP stores every value that is not a tensor (a learning rate, a step count, a
list) as a "bytes" entry: ``.metadata`` marks its key ``BytesStorageMetadata``
and ``storage_data`` gives the shard file, offset and length of a
``torch.save`` zip written for it. ``dcp.load`` (``DefaultLoadPlanner.load_bytes``)
and ``dcp_to_torch_save`` read each one with ``torch.load`` and
``weights_only=False``: whatever the pickle names runs. A key the metadata marks
as bytes is read as bytes even where the caller passes a tensor for it.

``bytes_problem`` reads each entry's bytes from its shard (inside the folder:
``dcp`` below has checked every byte range first) and holds
them to ``weights_only=True``'s rules before anything unpickles them: the zip
checks of ``helper.formats.open_torch_zip`` (no second ``data.pkl`` in another
case, every CRC-32) and ``helper.pickle_guard``'s budget and allowlist on its
pickle (``check_saved_bytes``, which the ``.pt2`` step uses for the pickles
``torch.export.load`` reads the same way). Runs in the doctor's child.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from helper.diagnosis import Diagnosis, said
from helper.examine_pickles import guard
from helper.formats import KINDS, CheckpointError, open_torch_zip
from helper.pickle_guard import survey_pickle


def bytes_entries(metadata: Any) -> list[tuple[str, Any]]:
    """``(key, storage info)`` of every bytes entry, in key order; a bytes key with no byte range gets ``None``."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    ranges = metadata.storage_data or {}
    by_fqn: dict[str, Any] = {}
    for index, item in ranges.items():
        by_fqn.setdefault(str(getattr(index, "fqn", "")), item)
    keys = sorted(
        str(k) for k, v in (metadata.state_dict_metadata or {}).items() if isinstance(v, BytesStorageMetadata)
    )
    return [(key, by_fqn.get(key)) for key in keys]


def _check(folder: Path, item: Any) -> None:
    """``CheckpointError`` unless the entry's bytes are a torch.save zip whose pickle weights_only=True accepts."""
    if item is None:
        raise CheckpointError(None, "no byte range in .metadata", "")
    if getattr(item, "transform_descriptors", None):
        raise CheckpointError(
            None,
            f"its bytes are transformed ({', '.join(map(str, item.transform_descriptors))}), "
            "so they cannot be checked before dcp.load unpickles them",
            "",
        )
    with open(folder / item.relative_path, "rb") as f:
        f.seek(item.offset)
        check_saved_bytes(f.read(item.length))


def check_saved_bytes(data: bytes) -> None:
    """``CheckpointError`` unless ``data`` (bytes that a reader hands to ``torch.load`` with ``weights_only=False``:
    a DCP value, a ``.pt2``'s sample inputs) is a torch.save zip whose pickle weights_only=True accepts."""
    from helper.examine_pickles import guard

    if not data.startswith(b"PK\x03\x04"):
        raise CheckpointError(None, "not a torch.save zip (torch.load would unpickle it as a legacy file)", "")
    guard(_pickle_of(data), "data.pkl")  # the budget and allowlist, before any slower reader walks it
    fd, name = tempfile.mkstemp(suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        open_torch_zip(name)  # the zip's own checks: one data.pkl in any case, its CRC-32s, its storages
    finally:
        os.unlink(name)


def _pickle_of(data: bytes) -> bytes:
    """The bytes of the zip's one stored ``<folder>/data.pkl`` (``CheckpointError`` where there is not one)."""
    import io
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            infos = [i for i in z.infolist() if i.filename.endswith("/data.pkl") and i.filename.count("/") == 1]
            if len(infos) != 1 or infos[0].compress_type != zipfile.ZIP_STORED or infos[0].file_size > len(data):
                raise CheckpointError(None, "not one stored data.pkl in its torch.save zip", "")
            return z.read(infos[0])
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise CheckpointError(None, f"a damaged zip ({type(exc).__name__}: {exc})"[:160], "") from None


def bytes_problem(folder: Path, metadata: Any) -> tuple[int, str | None, str | None]:
    """(bytes entries, the key of the first that fails, why) for a DCP folder's metadata;
    (n, None, None) if none fails."""
    entries = bytes_entries(metadata)
    for key, item in entries:
        try:
            _check(folder, item)
        except CheckpointError as exc:
            return len(entries), key, exc.cause
        except (OSError, ValueError) as exc:
            return len(entries), key, f"{type(exc).__name__}: {exc}"[:160]
    return len(entries), None, None


def _dcp_classes() -> dict[str, Any]:
    """Every global a DCP ``.metadata`` pickle written by this torch may name, by exact ``module.name``."""
    from torch.distributed.checkpoint import filesystem, metadata

    classes: list[Any] = [
        metadata.Metadata,
        metadata.MetadataIndex,
        metadata.ChunkStorageMetadata,
        metadata.TensorStorageMetadata,
        metadata.BytesStorageMetadata,
        metadata.TensorProperties,
        metadata.StorageMeta,
        metadata._MEM_FORMAT_ENCODING,
        filesystem._StorageInfo,
    ]
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


def dcp(d: Diagnosis, path: Path, config: dict[str, Any] | None = None) -> Diagnosis:
    """A DCP folder: ``.metadata`` through an unpickler that knows DCP's classes only, then every byte range."""
    shards = sorted(p.name for p in path.glob("*.distcp"))
    d.note("dcp-shards", shards=shards)
    if d.kind == "dcp-incomplete":
        return d.fail(KINDS["dcp-incomplete"].what, KINDS["dcp-incomplete"].fix)
    d.note("dcp-metadata")
    meta_path = path / ".metadata"
    if meta_path.is_symlink():
        return d.fail(said("dcp-outside", shard=".metadata"), said("earlier-folder"))
    raw = meta_path.read_bytes()
    try:
        scan = survey_pickle(raw)
    except (ValueError, IndexError, KeyError) as exc:
        return d.fail(said("dcp-damaged", detail=exc), said("earlier-folder"))
    classes = _dcp_classes()
    unsafe = sorted(g for g in scan.globals if g not in classes or g in scan.dotted)
    if unsafe:
        return d.fail(said("dcp-unsafe", names=unsafe), said("dcp-unsafe-fix"))
    guard(raw, ".metadata", allowed=frozenset(classes))
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import Metadata

    try:
        metadata = _DCPUnpickler(raw, classes).load()
    except (pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError, KeyError, EOFError) as exc:
        return d.fail(said("dcp-damaged", detail=f"{type(exc).__name__}: {exc}"[:160]), said("earlier-folder"))
    if not isinstance(metadata, Metadata) or not isinstance(metadata.storage_data or {}, dict):
        return d.fail(said("dcp-not-metadata", type=type(metadata).__name__), said("earlier-folder"))
    ranges = metadata.storage_data or {}
    for item in ranges.values():
        if not (
            isinstance(item, _StorageInfo)
            and isinstance(item.relative_path, str)
            and isinstance(item.offset, int)
            and isinstance(item.length, int)
            and item.offset >= 0
            and item.length >= 0
        ):
            return d.fail(said("dcp-not-metadata", type=f"byte range {item!r}"[:120]), said("earlier-folder"))
        shard = path / item.relative_path
        if (
            Path(item.relative_path).name != item.relative_path
            or item.relative_path in ("", ".", "..")
            or shard.is_symlink()
        ):
            return d.fail(said("dcp-outside", shard=item.relative_path), said("earlier-folder"))
        if not shard.is_file():
            return d.fail(said("dcp-missing", shard=item.relative_path), said("earlier-folder"))
        if shard.stat().st_size < item.offset + item.length:
            return d.fail(said("dcp-short", shard=item.relative_path), said("earlier-folder"))
    d.note("dcp-ranges", count=len(ranges), files=len({i.relative_path for i in ranges.values()}))

    count, key, why = bytes_problem(path, metadata)  # non-tensor values: dcp.load unpickles them, weights_only=False
    if key is not None:
        return d.fail(said("dcp-bytes-unsafe", fqn=key, detail=why), said("dcp-unsafe-fix"))
    if count:
        d.note("dcp-bytes", count=count)
    return d.ok(said("dcp-ok"), KINDS["dcp"].fix)
