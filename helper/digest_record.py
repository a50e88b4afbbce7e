"""The digest record ``save_checkpoint`` adds to a checkpoint, and its comparison on loading.

Taught in notebooks/07_crash_safe_checkpoints.ipynb, section 5 (a renamed or swapped member is refused).

The record (``DIGEST_RECORD``) holds each storage's CRC-32 and size under its name, and data.pkl's,
taken from the zip's own directory (nothing is read back), so a member renamed or swapped is refused.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from typing import Any

__all__ = ["DIGEST_RECORD", "append_digests", "digest_problem"]

# The record save_checkpoint adds to the zip: {"version": 1, "pickle": crc, "storages": {key: [crc, size]}}.
# The CRC-32s are those torch.save wrote into the zip's directory (nothing is read back to make it); what
# the record adds is which name each belongs to: swap two members' names (their CRCs stay valid) and
# the record disagrees. It is not a signature: whoever crafts a file can write a record that fits.
DIGEST_RECORD = ".data/helper_digests.json"


def append_digests(f: Any) -> None:
    f.seek(0)
    with zipfile.ZipFile(f, "a") as z:
        infos = z.infolist()
        pickles = [i for i in infos if i.filename.endswith("/data.pkl") and i.filename.count("/") == 1]
        if len(pickles) != 1:
            return  # not a torch.save zip: load_checkpoint will say what it is
        prefix = pickles[0].filename[: -len("data.pkl")]
        storages = {
            i.filename[len(prefix) + 5 :]: [i.CRC, i.file_size]
            for i in infos
            if i.filename.startswith(prefix + "data/")
        }
        record = json.dumps(
            {"version": 1, "pickle": pickles[0].CRC, "storages": storages}, sort_keys=True, separators=(",", ":")
        ).encode()
        info = zipfile.ZipInfo(prefix + DIGEST_RECORD, date_time=(1980, 1, 1, 0, 0, 0))
        z.writestr(info, record)
        z.filelist[-1].external_attr = 0  # as torch.save writes (writestr may set permissions)
        z.filelist[-1].create_system = 0


def digest_problem(archive: Any, snapshot: Any = None) -> str | None:
    """The first disagreement between the digest record (if the file has one) and the zip's members, or ``None``.

    ``snapshot``: the ``formats.Snapshot`` the caller checked and loads from (the record is read there, so
    it is that file's, even if the path was replaced meanwhile); ``None``: read the record from the path."""
    record_member = archive.members.get(archive.prefix + DIGEST_RECORD)
    if record_member is None:
        return None
    try:
        start, end = record_member.start, record_member.start + record_member.size
        if snapshot is None:
            with open(archive.path, "rb") as f:
                f.seek(start)
                raw = f.read(record_member.size)
        else:
            raw = bytes(snapshot.view[start:end])
        if zlib.crc32(raw) != record_member.crc:
            return f"its digest record {DIGEST_RECORD!r} fails its CRC-32 check"
        record = json.loads(raw)
        saved = {k: (int(v[0]), int(v[1])) for k, v in record["storages"].items()}
        pickle_crc = int(record["pickle"])
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        return f"its digest record {DIGEST_RECORD!r} is unreadable ({type(exc).__name__})"
    pkl = archive.members[archive.prefix + "data.pkl"]
    if pkl.crc != pickle_crc:
        return "data.pkl is not the pickle save_checkpoint wrote (its CRC-32 differs from the digest record's)"
    found = {m.name[len(archive.prefix) + 5 :]: (m.crc, m.size) for m in archive.tensor_members()}
    by_digest = {v: k for k, v in saved.items()}
    for key in sorted(set(saved) | set(found), key=lambda k: (len(k), k)):
        if found.get(key) != saved.get(key):
            if key not in found:
                return f"storage {key!r} that save_checkpoint wrote is missing"
            if key not in saved:
                return f"member 'data/{key}' was not written by save_checkpoint"
            other = by_digest.get(found[key])
            return (
                f"member 'data/{key}' holds the bytes save_checkpoint wrote as 'data/{other}': members were "
                "renamed or swapped"
                if other is not None
                else f"member 'data/{key}' is not the one save_checkpoint wrote (its CRC-32 or size differs)"
            )
    return None
