"""helper.kinds' table of file kinds: every kind is recognised by ``sniff`` (asserted by its code), examined by the
doctor's child, and has a row here; a kind added to ``KINDS`` without a row in ``MAKERS`` fails
``test_every_kind_has_a_row``."""

from __future__ import annotations

import io
import itertools
import json
import os
import pickle
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from helper.formats import KINDS, CheckpointError, kind_error, sniff


def _torch_zip(path: Path) -> None:
    torch.save({"w": torch.ones(2)}, path)


def _rezip(path: Path, keep: Callable[[str], bool]) -> None:
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buffer)
    with zipfile.ZipFile(buffer) as z, zipfile.ZipFile(path, "w") as out:
        for name in z.namelist():
            if keep(name):
                out.writestr(zipfile.ZipInfo(name), z.read(name))


def _dcp(path: Path, complete: bool = True) -> None:
    import torch.distributed.checkpoint as dcp

    dcp.save({"w": torch.ones(2)}, checkpoint_id=path)
    if not complete:
        (path / ".metadata").unlink()


def _hf_folder(path: Path) -> None:
    from safetensors.torch import save_file

    path.mkdir()
    save_file({"w": torch.ones(2)}, path / "model.safetensors")
    (path / "config.json").write_text("{}")


def _hf_index(path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2)}, path.parent / "model-00001-of-00001.safetensors")
    path.write_text(json.dumps({"weight_map": {"w": "model-00001-of-00001.safetensors"}}))


def _onnx(path: Path, external: bool = False) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(np.eye(2, dtype=np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, path, save_as_external_data=external, location=f"{path.name}.data", size_threshold=0)


def _pt2(path: Path) -> None:
    torch.export.save(torch.export.export(torch.nn.Linear(2, 2), (torch.randn(1, 2),)), path)


def _torchscript(path: Path) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace is deprecated: still what writes this kind
        torch.jit.save(torch.jit.trace(torch.nn.Linear(2, 2), torch.randn(1, 2)), path)


def _safetensors(path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2)}, path)


def _write(data: bytes | str) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        path.write_bytes(data if isinstance(data, bytes) else data.encode())

    return make


def _zip_of(names: dict[str, bytes]) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        with zipfile.ZipFile(path, "w") as out:
            for name, data in names.items():
                out.writestr(name, data)

    return make


def _numpy(path: Path) -> None:
    import numpy as np

    with open(path, "wb") as f:
        np.save(f, np.ones(2))


def _fifo(path: Path) -> None:
    import os

    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes on this system")
    os.mkfifo(path)


# kind: (file name, how to make it, healthy in the doctor's eyes)
MAKERS: dict[str, tuple[str, Callable[[Path], None], bool]] = {
    "missing": ("nothing_here.pt", lambda p: None, False),
    "not-a-file": ("pipe.pt", _fifo, False),
    "directory": ("folder", lambda p: p.mkdir(), False),
    "dcp": ("dcp", _dcp, True),
    "dcp-incomplete": ("dcp_cut", lambda p: _dcp(p, complete=False), False),
    "hf-folder": ("hf", _hf_folder, True),
    "hf-index": ("model.safetensors.index.json", _hf_index, True),
    "empty": ("empty.pt", _write(b""), False),
    "damaged-zip": ("cut.pt", lambda p: (_torch_zip(p), p.write_bytes(p.read_bytes()[:200])), False),
    "torch-zip": ("model.pt", _torch_zip, True),
    "incomplete-torch-zip": (
        "no_pkl.pt",
        lambda p: _rezip(p, lambda n: not n.endswith(("data.pkl", "/data/0"))),
        False,
    ),
    "torch-export": ("model.pt2", _pt2, True),
    "torchscript": ("script.pt", _torchscript, True),
    "zip": ("other.zip", _zip_of({"readme.txt": b"hello"}), False),
    "legacy": ("legacy.pt", lambda p: torch.save({"w": torch.ones(2)}, p, _use_new_zipfile_serialization=False), True),
    "safetensors": ("model.bin", _safetensors, True),
    "onnx": ("model.onnx", _onnx, True),
    "onnx-data": ("ext.onnx.data", lambda p: _onnx(p.with_name("ext.onnx"), external=True), True),
    "numpy": ("array.npy", _numpy, True),
    "pickle": ("plain.pkl", _write(pickle.dumps({"w": [1.0, 2.0]}, protocol=4)), False),
    "git-lfs-pointer": ("lfs.pt", _write("version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 1\n"), False),
    "html": ("page.pt", _write("<!DOCTYPE html><html><body>Not found</body></html>"), False),
    "text": ("notes.pt", _write("these are my notes\n"), False),
    "unknown": ("noise.pt", _write(bytes(range(256)) * 4), False),
}


def test_every_kind_has_a_row():
    """A kind added to KINDS needs its row in MAKERS (and so a file that proves sniff recognises it)."""
    assert set(MAKERS) == set(KINDS), set(KINDS) ^ set(MAKERS)


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("kinds")
    paths = {}
    for kind, (name, make, _) in MAKERS.items():
        (root / kind).mkdir()
        paths[kind] = root / kind / name
        make(paths[kind])
    return paths


@pytest.mark.parametrize("kind", list(MAKERS))
def test_sniff_names_every_kind(made, kind):
    assert sniff(made[kind]) == kind


@pytest.mark.parametrize("kind", list(MAKERS))
def test_the_doctor_examines_every_kind(made, kind):
    from helper.doctor import diagnose

    d = diagnose(made[kind])
    assert d.kind == kind and d.healthy == MAKERS[kind][2], d.report()
    assert d.report().splitlines()[-1].startswith(("OK: ", "PROBLEM: ")) and "Fix: " in d.verdict(), d.report()


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_row_names_an_examine_step(kind):
    """Each row's examine step is a function of the doctor's child (a typo fails here, not in a user's run)."""
    from helper.inspector import step

    assert callable(step(kind))


def test_a_row_naming_no_step_fails(monkeypatch):
    import dataclasses

    from helper import inspector

    monkeypatch.setitem(KINDS, "text", dataclasses.replace(KINDS["text"], examine="no_such_step"))
    with pytest.raises(LookupError, match="no_such_step"):
        inspector.step("text")


@pytest.mark.parametrize("kind", [k for k, row in KINDS.items() if not row.other_format])
def test_kind_error_carries_its_kind(made, kind):
    error = kind_error(made[kind], kind)
    assert isinstance(error, CheckpointError) and error.kind == kind and error.cause == KINDS[kind].cause


@pytest.mark.parametrize("kind", list(KINDS))
def test_causes_are_written_once_without_is(kind):
    """A row says what the file is; "is " is added once, by ``Kind.cause`` (load_checkpoint's wording)."""
    row = KINDS[kind]
    assert not row.what.startswith("is ") and row.cause.endswith(row.what)
    assert row.sentence == (f"the file is {row.what}" if row.verb else row.what)


def test_checkpoint_error_kind_defaults_to_empty():
    assert CheckpointError(None, "a cause", "a fix").kind == ""
    assert CheckpointError(None, "a cause", "a fix", kind="budget").kind == "budget"


def test_safetensors_header_gives_safetensors_own_dtype_names(tmp_path):
    """Every dtype safetensors can write comes back under its own name (no silent uint8 in the doctor)."""
    from safetensors.torch import _TYPES, save_file

    from helper.formats import safetensors_header

    tensors = {name.lower(): torch.zeros(2, dtype=dtype) for name, dtype in _TYPES.items()}
    save_file(tensors, tmp_path / "all.safetensors")
    header = safetensors_header(tmp_path / "all.safetensors")
    assert {dtype for _, dtype in header["tensors"].values()} == set(_TYPES)


def test_scan_records_dotted_global_names():
    """protocol 4's STACK_GLOBAL resolves 'os.system' under any module: the scan names it as dotted."""
    from helper.pickle_guard import survey_pickle as scan_pickle

    m, n = b"torch.distributed.checkpoint.filesystem", b"os.system"
    data = b"\x80\x04\x8c%c%s\x8c%c%s\x93\x8c\x04true\x85R." % (len(m), m, len(n), n)
    scan = scan_pickle(data)
    assert scan.dotted == {"torch.distributed.checkpoint.filesystem.os.system"}
    assert scan_pickle(pickle.dumps(struct.Struct, protocol=4)).dotted == set()


def _shadowed(src: Path, out: Path, extra: dict[str, bytes]) -> Path:
    """``src`` (a torch.save zip) rewritten by torch's own writer with ``extra`` members (names after the
    archive's folder) written first, as a crafted file would hold them."""
    with zipfile.ZipFile(src) as z:
        prefix = z.namelist()[0].split("/")[0] + "/"
        records = {i.filename[len(prefix) :]: z.read(i) for i in z.infolist()}
    writer = torch._C.PyTorchFileWriter(str(out))
    for name, data in [*extra.items(), *records.items()]:
        if name != ".data/serialization_id":  # the writer adds its own
            writer.write_record(name, data, len(data))
    writer.write_end_of_file()
    del writer
    return out


def test_members_torch_reads_whatever_their_case_are_refused(tmp_path):
    """Attack finding F1: torch's zip reader (miniz) finds a record by its name in any case, so a second
    ``DATA.PKL`` (or ``DATA/0``) beside the checked ``data.pkl`` is what torch.load may unpickle. A name that
    differs only in case, or any name torch.save never writes, is refused by load_checkpoint and the doctor."""
    from helper.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
    from helper.doctor import diagnose
    from helper.models import build_model

    src = tmp_path / "ck.pt"
    save_checkpoint(make_checkpoint(build_model({"arch": "mlp", "hidden": [8]}), epoch=3), src)
    other = torch.load(src, weights_only=True)
    other["epoch"] = 999
    buffer = io.BytesIO()
    torch.save(other, buffer)
    with zipfile.ZipFile(buffer) as z:
        hostile = z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))
    bomb = b"\x80\x02}q\x00X\x01\x00\x00\x00xq\x01c__builtin__\nbytearray\nq\x02J\x00F\xc3#\x85q\x03Rq\x04s."
    casings = [
        name for name in ("".join(c) for c in itertools.product(*zip("data.pkl", "DATA.PKL"))) if name != "data.pkl"
    ]  # every other one: miniz's case-blind binary search lands on one of them
    cases = {
        "swap": dict.fromkeys(casings, hostile),
        "bomb": {"Data.pkl": bomb},
        "storage": {"DATA/0": b"\0" * 32},
        "stray": {"data/0x": b"\0"},
        "code": {"code/evil.py": b"print(1)"},
    }
    swapped = _shadowed(src, tmp_path / "swap.pt", cases["swap"])
    assert torch.load(swapped, weights_only=True)["epoch"] == 999  # the attack is real: torch reads the shadow
    for number, extra in enumerate(cases.values()):
        path = _shadowed(src, tmp_path / f"case{number}.pt", extra)
        with pytest.raises(CheckpointError) as caught:
            load_checkpoint(path)
        cause = caught.value.cause
        assert caught.value.kind == "corrupted" and ("letter case" in cause or "torch.save writes" in cause), cause
        d = diagnose(path)
        assert not d.healthy and d.cause.startswith(cause), d.report()
    assert load_checkpoint(src)["epoch"] == 3 and diagnose(src).healthy


def test_sparse_reads_pieces_and_zeros_between_them():
    """formats.Sparse, the snapshot's view: a slice inside a piece is a view of it, one across pieces or
    holes is assembled, holes read as zeros, and nothing past the end is invented."""
    from helper.formats import Sparse

    view = Sparse([(10, b"world"), (0, b"hello")], 20)
    assert len(view) == 20 and bytes(view[0:5]) == b"hello" and bytes(view[11:14]) == b"orl"
    assert bytes(view[3:12]) == b"lo\0\0\0\0\0wo" and bytes(view[15:20]) == b"\0" * 5
    assert bytes(view[18:40]) == b"\0\0" and view[7:7] == b"" and bytes(view[-3:]) == b"\0" * 3


def test_the_snapshot_reads_what_the_mapped_file_holds(tmp_path):
    """load_checkpoint validates a Snapshot (pread, no mapping) where the doctor maps the file: on a real
    checkpoint and on one whose tensor members have a longer extra field than the snapshot reads past a
    header, both see the same members, records and storages, and the file loads."""
    from helper import formats
    from helper.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
    from helper.formats import Snapshot, open_torch_zip, read_directory
    from helper.models import build_model

    good = save_checkpoint(make_checkpoint(build_model({"arch": "cnn"}), epoch=4), tmp_path / "good.pt")
    long_extra = tmp_path / "long_extra.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(long_extra, "w", zipfile.ZIP_STORED) as out:
        for info in src.infolist():
            data = src.read(info)
            copy = zipfile.ZipInfo(info.filename, date_time=info.date_time)
            if info.file_size > 4096 and "/data/" in info.filename:
                copy.extra = struct.pack("<HH", 0xCAFE, 400) + bytes(400)  # a private extra field, 404 bytes
            out.writestr(copy, data)
    raw = bytearray(long_extra.read_bytes())
    with zipfile.ZipFile(long_extra) as z:
        at = z.start_dir
    while raw[at : at + 4] == b"PK\x01\x02":  # zipfile always writes file attributes; torch.save writes none
        raw[at + 38 : at + 42] = bytes(4)
        at += 46 + sum(struct.unpack("<HHH", raw[at + 28 : at + 34]))
    long_extra.write_bytes(raw)
    for path in (good, long_extra):
        mapped = open_torch_zip(path, check_data_crc=True)
        with open(path, "rb") as f:
            snapshot = Snapshot.read(f, *read_directory(path, f))
        read = open_torch_zip(path, check_data_crc=False, snapshot=snapshot)
        assert read.members == mapped.members and read.records == mapped.records
        assert read.scan.storages == mapped.scan.storages and len(read.tensor_members()) >= 4
        assert load_checkpoint(path)["epoch"] == 4
    with zipfile.ZipFile(long_extra) as z, open(long_extra, "rb") as f:
        extras = [struct.unpack("<H", os.pread(f.fileno(), 2, i.header_offset + 28))[0] for i in z.infolist()]
    assert max(extras) == 404 > formats._EXTRA_GUESS  # past what the snapshot reads of a header


def test_the_snapshot_reader_reads_the_file_as_checked(tmp_path):
    """SnapshotReader, what torch.load reads in load_checkpoint: on an unchanged file, any read (across
    snapshot pieces and tensor holes, past the end, after each kind of seek) gives the file's bytes."""
    import random

    from helper.checkpoint import make_checkpoint, save_checkpoint
    from helper.formats import Snapshot, read_directory
    from helper.models import build_model

    path = save_checkpoint(make_checkpoint(build_model({"arch": "cnn"}), epoch=1), tmp_path / "c.pt")
    raw = path.read_bytes()
    with open(path, "rb") as f:
        snapshot = Snapshot.read(f, *read_directory(path, f))
        assert sum(len(data) for _, data in snapshot.view.segments) < len(raw) // 2  # holes were left unread
        reader = snapshot.reader(f)
        assert reader.read() == raw and reader.read(10) == b"" and reader.tell() == len(raw)
        rng = random.Random(3)
        for _ in range(500):
            at, n = rng.randrange(len(raw) + 10), rng.randrange(1, 70000)
            reader.seek(at)
            assert reader.read(n) == raw[at : at + n], (at, n)
        assert reader.seek(-4, io.SEEK_END) == len(raw) - 4 and reader.read() == raw[-4:]
        reader.seek(100)
        assert reader.seek(5, io.SEEK_CUR) == 105 and reader.read(3) == raw[105:108]
        with pytest.raises(OSError):
            reader.seek(-1)
