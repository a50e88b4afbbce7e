"""A DCP folder's non-tensor values, checked as ``torch.distributed.checkpoint.load`` would read them.

DCP stores every value that is not a tensor (a learning rate, a step count, a
list) as a "bytes" entry: ``.metadata`` marks its key ``BytesStorageMetadata``
and ``storage_data`` gives the shard file, offset and length of a
``torch.save`` zip written for it. ``dcp.load`` (``DefaultLoadPlanner.load_bytes``)
and ``dcp_to_torch_save`` read each one with ``torch.load(value,
weights_only=False)``: whatever the pickle names runs. A key the metadata marks
as bytes is read as bytes even where the caller passes a tensor for it.

``bytes_problem`` reads each entry's bytes from its shard (inside the folder:
``helper.examine_pickles.dcp`` has checked every byte range first) and holds
them to ``weights_only=True``'s rules before anything unpickles them: the zip
checks of ``helper.formats.open_torch_zip`` (no second ``data.pkl`` in another
case, every CRC-32) and ``helper.pickle_guard``'s budget and allowlist on its
pickle (``check_saved_bytes``, which the ``.pt2`` step uses for the pickles
``torch.export.load`` reads the same way). Runs in the doctor's child.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from helper.formats import CheckpointError, open_torch_zip


def bytes_entries(metadata: Any) -> list[tuple[str, Any]]:
    """``(key, storage info)`` of every bytes entry, in key order; a bytes key with no byte range gets ``None``."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    ranges = metadata.storage_data or {}
    by_fqn: dict[str, Any] = {}
    for index, item in ranges.items():
        by_fqn.setdefault(getattr(index, "fqn", None), item)
    keys = sorted(str(k) for k, v in (metadata.state_dict_metadata or {}).items()
                  if isinstance(v, BytesStorageMetadata))
    return [(key, by_fqn.get(key)) for key in keys]


def _check(folder: Path, item: Any) -> None:
    """``CheckpointError`` unless the entry's bytes are a torch.save zip whose pickle weights_only=True accepts."""
    if item is None:
        raise CheckpointError(None, "no byte range in .metadata", "")
    if getattr(item, "transform_descriptors", None):
        raise CheckpointError(None, f"its bytes are transformed ({', '.join(map(str, item.transform_descriptors))}), "
                              "so they cannot be checked before dcp.load unpickles them", "")
    with open(folder / item.relative_path, "rb") as f:
        f.seek(item.offset)
        check_saved_bytes(f.read(item.length))


def check_saved_bytes(data: bytes) -> None:
    """``CheckpointError`` unless ``data`` (bytes that a reader hands to ``torch.load(..., weights_only=False)``:
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
    """(bytes entries, the key of the first that fails, why) for a DCP folder's metadata; (n, None, None) if none fails."""
    entries = bytes_entries(metadata)
    for key, item in entries:
        try:
            _check(folder, item)
        except CheckpointError as exc:
            return len(entries), key, exc.cause
        except (OSError, ValueError) as exc:
            return len(entries), key, f"{type(exc).__name__}: {exc}"[:160]
    return len(entries), None, None
