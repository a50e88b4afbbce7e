"""The table of file kinds: one row per kind, how it is recognised, what it is, the fix, how it is examined.

``KINDS`` is shared by ``helper.checkpoint.load_checkpoint`` (the cause and
fix of its ``CheckpointError``) and ``helper.doctor`` (whose child runs the
row's examine step, a function of ``helper.examine_pickles`` or
``helper.examine_formats`` named by ``Kind.examine``). ``sniff`` checks the
rows in order and names the first whose ``recognise`` step accepts the file,
from the file system, its first 64 bytes and a zip's directory; the last row
accepts anything. Adding a kind is one row here plus its row in
``tests/test_formats.py`` (``MAKERS``), which fails for a kind without one.
"""

from __future__ import annotations

import os
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from helper.formats import CheckpointError

EARLIER = "use an earlier checkpoint (CheckpointFolder.resume picks the newest good one)"
# Sentences both load_checkpoint and the doctor say (each once, here)
META_CAUSE = "holds tensors on the meta device: shapes without data"
META_FIX = f"save the real weights (model.to('cpu').state_dict()), or {EARLIER}"
PLAIN_DATA_FIX = "store only tensors and plain data (dict, list, str, int, float)"
PLAIN_DATA_SAVE_FIX = f"{PLAIN_DATA_FIX}; save_checkpoint refuses such objects at save time"
PathLike = str | os.PathLike[str]

_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."  # pickle of torch's legacy MAGIC_NUMBER
_ONNX_FIELDS = {0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72}  # ModelProto fields 2-8 and 14, after ir_version
# The records torch.save writes beside data.pkl, by their name after the archive's folder
RECORDS = (".format_version", ".storage_alignment", "byteorder", "version", ".data/serialization_id", ".data/version")
_PICKLE_0_STARTS = (b"(", b"}", b"]", b")", b"c", b"I", b"V", b"S", b"N", b"X", b"K")  # protocol 0/1 first opcodes


class Probe:
    """What the recognise steps look at, each read once and only when a step asks: the path, its size, its
    first 64 bytes, and a zip's member names (``None`` for a zip whose directory cannot be read)."""

    def __init__(self, path: Path, names: list[str] | None = None):
        """``names``: the zip's member names where the caller has read its directory already."""
        self.path = path
        if names is not None:
            self.__dict__["names"] = names  # the cached property, read already

    @cached_property
    def size(self) -> int:
        return self.path.stat().st_size

    @cached_property
    def head(self) -> bytes:
        with open(self.path, "rb") as f:
            return f.read(64)

    @cached_property
    def text(self) -> str | None:
        """The first bytes as UTF-8, ``None`` where they are not."""
        try:
            return self.head.decode("utf-8")
        except UnicodeDecodeError:
            return None

    @cached_property
    def is_zip(self) -> bool:
        head = self.head
        return head[:4] in (b"PK\x03\x04", b"PK\x05\x06") or (len(head) < 4 and b"PK\x03\x04".startswith(head))

    @cached_property
    def names(self) -> list[str] | None:
        try:
            with zipfile.ZipFile(self.path) as z:
                return z.namelist()
        except Exception:  # zipfile raises many kinds on a damaged directory
            return None

    def members(self) -> list[str]:
        """A readable zip's member names, else none."""
        return (self.names or []) if self.is_zip else []


Recognise = Callable[[Probe], bool]


@dataclass(frozen=True)
class Kind:
    """One kind of file: ``what`` it is (a clause without "is"), the ``fix``, whether it is a healthy file of
    another format, its ``recognise`` step and the name of its ``examine`` step in the doctor's child.

    ``verb`` joins ``what`` into the ``cause`` a ``CheckpointError`` gives ("is a folder, ..."); two kinds
    are not something a file is ("no such file"), and have none."""

    what: str
    fix: str
    recognise: Recognise
    examine: str = "other"
    other_format: bool = False
    verb: str = "is "

    @property
    def cause(self) -> str:
        """The cause as ``load_checkpoint`` gives it after the file's name: "is a folder, not a checkpoint file"."""
        return self.verb + self.what

    @property
    def sentence(self) -> str:
        """The cause as a sentence of its own: "the file is a folder, ..." (or "no such file")."""
        return f"the file {self.cause}" if self.verb else self.what


def _is_dir(p: Probe) -> bool:
    return p.path.is_dir()


def _missing(p: Probe) -> bool:
    return not p.path.exists()


def _not_a_file(p: Probe) -> bool:
    return not p.path.is_dir() and not p.path.is_file()


def _dcp(p: Probe) -> bool:
    return _is_dir(p) and (p.path / ".metadata").is_file()


def _dcp_incomplete(p: Probe) -> bool:
    return _is_dir(p) and any(p.path.glob("*.distcp"))


def _hf_folder(p: Probe) -> bool:
    return _is_dir(p) and (p.path / "config.json").is_file()


def _damaged_zip(p: Probe) -> bool:
    return p.is_zip and p.names is None


def _torch_export(p: Probe) -> bool:
    return any(n.endswith("/archive_format") for n in p.members())


def _torchscript(p: Probe) -> bool:
    names = p.members()
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def _torch_zip(p: Probe) -> bool:
    return any(n.endswith("data.pkl") for n in p.members())


def _incomplete_torch_zip(p: Probe) -> bool:
    return any(n.endswith(tuple("/" + r for r in RECORDS)) for n in p.members())


def _safetensors(p: Probe) -> bool:
    head = p.head
    return len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] <= p.size - 8


def _pickle(p: Probe) -> bool:
    """A PROTO opcode (protocol 2-5), or a protocol 0 or 1 pickle that is the whole file (under 16 MiB)."""
    head = p.head
    if len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return True
    if p.size >= 16 << 20 or head[:1] not in _PICKLE_0_STARTS:
        return False
    from helper.pickle_guard import survey_pickle

    try:
        return survey_pickle(p.path.read_bytes()).end == p.size
    except Exception:  # not a pickle after all
        return False


def _onnx(p: Probe) -> bool:
    head = p.head
    return len(head) > 2 and head[0] == 0x08 and 3 <= head[1] <= 30 and head[2] in _ONNX_FIELDS


def _onnx_data(p: Probe) -> bool:
    return p.path.name.endswith(".onnx.data") and p.path.with_name(p.path.name[:-5]).is_file()


def _html(p: Probe) -> bool:
    return p.text is not None and p.text.lstrip().lower().startswith(("<!doctype html", "<html"))


def _hf_index(p: Probe) -> bool:
    return p.text is not None and p.path.name.endswith(".index.json") and p.text.lstrip().startswith("{")


def _text(p: Probe) -> bool:
    return p.text is not None and all(ch.isprintable() or ch in "\r\n\t" for ch in p.text)


def _starts(prefix: bytes) -> Recognise:
    return lambda p: p.head.startswith(prefix)


_DCP_FIX = (
    "load it with torch.distributed.checkpoint.load(state_dict, checkpoint_id=folder), or convert it "
    "once with torch.distributed.checkpoint.format_utils.dcp_to_torch_save(folder, 'model.pt')"
)
_HF_FIX = (
    "load the folder with transformers' AutoModel.from_pretrained(folder), or each shard with "
    "safetensors.torch.load_file(shard) (a .bin one: torch.load(shard, weights_only=True)); the index's "
    "weight_map says which shard holds which key"
)

# The rows in the order ``sniff`` checks them: the folder and file-system kinds, then by content.
KINDS: dict[str, Kind] = {
    "missing": Kind("no such file", "check the path, or train and save a checkpoint first", _missing, verb=""),
    "not-a-file": Kind("not a regular file", "pass the path of a checkpoint file", _not_a_file, verb=""),
    "dcp": Kind(
        "a torch.distributed.checkpoint (DCP) folder, not a torch.save file",
        _DCP_FIX,
        _dcp,
        examine="dcp",
        other_format=True,
    ),
    "dcp-incomplete": Kind(
        "a DCP folder without its .metadata file: the save never finished (rank 0 writes .metadata last)",
        "use an earlier checkpoint folder; the shards alone cannot be loaded",
        _dcp_incomplete,
        examine="dcp",
    ),
    "hf-folder": Kind(
        "a Hugging Face model folder (config.json and its weights), not a torch.save file",
        _HF_FIX,
        _hf_folder,
        examine="hf",
        other_format=True,
    ),
    "directory": Kind("a folder, not a checkpoint file", "pass the path of a file inside it{listing}", _is_dir),
    "empty": Kind("empty (0 bytes): the save that wrote it never finished", EARLIER, lambda p: p.size == 0),
    "damaged-zip": Kind(
        "truncated or damaged: a zip archive whose directory (at the end of the file) is missing, "
        "as when a save is killed half way or a copy is cut short",
        EARLIER,
        _damaged_zip,
    ),
    "torch-export": Kind(
        "a torch.export program (.pt2): a graph and its weights",
        "load it with torch.export.load(path), not torch.load, and only if you made it or trust "
        "who did: torch.export.load runs code from the file (its guards, pickled constants)",
        _torch_export,
        examine="pt2",
        other_format=True,
    ),
    "torchscript": Kind(
        "a TorchScript archive (torch.jit.save), not a checkpoint dict",
        "load it with torch.jit.load(path) only if you made it or trust who did (it runs code "
        "from the file); save training checkpoints with save_checkpoint",
        _torchscript,
        examine="torchscript",
        other_format=True,
    ),
    "torch-zip": Kind(
        "a torch.save archive",
        "torch.load(path, map_location='cpu', weights_only=True)",
        _torch_zip,
        examine="torch_zip",
        other_format=True,
    ),
    "incomplete-torch-zip": Kind(
        "an incomplete torch.save archive: torch.save's bookkeeping records but no "
        "data.pkl, as when torch.save raised part way (a value it could not pickle)",
        EARLIER,
        _incomplete_torch_zip,
    ),
    "zip": Kind(
        "a zip archive, but not one torch.save wrote (no data.pkl inside)", "check the path", lambda p: p.is_zip
    ),
    "legacy": Kind(
        "in PyTorch's legacy format (before 1.6, or _use_new_zipfile_serialization=False), which has no checksums",
        "convert it once: torch.save(torch.load(path, weights_only=True), new_path)",
        _starts(_LEGACY_MAGIC),
        examine="legacy",
    ),
    "safetensors": Kind(
        "a safetensors file (tensors only), not a torch.save file, whatever its name says",
        "load it with safetensors.torch.load_file(path), and name it .safetensors",
        _safetensors,
        examine="safetensors_file",
        other_format=True,
    ),
    "numpy": Kind(
        "a NumPy .npy file, not a torch.save file",
        "load it with numpy.load(path)",
        _starts(b"\x93NUMPY"),
        examine="numpy_array",
        other_format=True,
    ),
    "pickle": Kind(
        "a plain pickle (pickle.dump), not a torch.save file; unpickling it could run code",
        "re-create it with torch.save from tensors and plain data",
        _pickle,
        examine="plain_pickle",
    ),
    "onnx": Kind(
        "an ONNX model (a graph for inference runtimes), not a torch.save file",
        "run it with onnxruntime.InferenceSession(path); it has no optimizer state to resume from",
        _onnx,
        examine="onnx_model",
        other_format=True,
    ),
    "onnx-data": Kind(
        "the external-data file of an ONNX model (raw tensor bytes, no structure of its own)",
        "keep it next to its .onnx file and open that one (onnxruntime.InferenceSession)",
        _onnx_data,
        examine="onnx_data",
        other_format=True,
    ),
    "git-lfs-pointer": Kind(
        "a Git LFS pointer (a small text file), not the checkpoint itself",
        "fetch the real file: git lfs pull",
        _starts(b"version https://git-lfs"),
    ),
    "html": Kind("an HTML page (a failed download?), not a checkpoint", "download the file again", _html),
    "hf-index": Kind(
        "a Hugging Face sharded-weights index (model.safetensors.index.json), not a checkpoint",
        _HF_FIX,
        _hf_index,
        examine="hf",
        other_format=True,
    ),
    "text": Kind("a text file, not a checkpoint", "check the path", _text),
    "unknown": Kind("not a torch.save file (unknown format)", "check the path, or " + EARLIER, lambda p: True),
}


def sniff(path: PathLike, names: list[str] | None = None) -> str:
    """What ``path`` really is: the first row of ``KINDS`` whose recognise step accepts it (a key of ``KINDS``).

    ``names``: the zip's member names, where the caller has read its directory already."""
    probe = Probe(Path(path), names)
    return next(code for code, row in KINDS.items() if row.recognise(probe))


def kind_error(path: Path, kind: str) -> CheckpointError:
    """The ``CheckpointError`` ``load_checkpoint`` raises for a file of ``kind`` (anything but a torch.save zip)."""
    from helper.formats import CheckpointError

    fix = KINDS[kind].fix
    if kind == "directory":
        names = sorted(p.name for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        fix = fix.format(listing=f" (it holds {shown})" if names else " (it is empty)")
    return CheckpointError(path, KINDS[kind].cause, fix, kind=kind)
