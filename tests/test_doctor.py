"""helper.doctor on a table of good and broken files, each made here in tmp_path."""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from helper.doctor import detect_kind, diagnose, main
from helper.models import build_model
from helper.paths import DATA_DIR, REPO_ROOT

MLP = {"arch": "mlp"}
MARKER = "doctor_payload_ran"


class Payload:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("doctor")
    torch.manual_seed(0)
    model = build_model(MLP)
    state = model.state_dict()
    made: dict[str, Path] = {}

    def save(name: str, obj, **kwargs) -> Path:
        made[name] = root / f"{name}.pt"
        torch.save(obj, made[name], **kwargs)
        return made[name]

    good = save("good", state)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    save("checkpoint", {"epoch": 2, "model": state, "optimizer": optimizer.state_dict(), "config": MLP})
    save("whole_module", model)
    save("payload", {"weights": state, "x": Payload(root / MARKER)})
    save("legacy", state, _use_new_zipfile_serialization=False)
    save("prefixed", {f"module.{k}": v for k, v in state.items()})
    save("compiled", {f"_orig_mod.{k}": v for k, v in state.items()})
    save("wrong_shapes", build_model({"arch": "mlp", "hidden": [32]}).state_dict())
    data = good.read_bytes()
    made["truncated"] = root / "truncated.pt"
    made["truncated"].write_bytes(data[: len(data) // 2])
    flipped = bytearray(data)
    flipped[data.find(b"data/0") + 200] ^= 0x01  # inside the first tensor's bytes
    made["flipped"] = root / "flipped.pt"
    made["flipped"].write_bytes(bytes(flipped))
    made["empty"] = root / "empty.pt"
    made["empty"].touch()
    made["text"] = root / "notes.pt"
    made["text"].write_text("these are my notes, not weights\n")
    made["safetensors"] = root / "model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, made["safetensors"])
    made["safetensors_cut"] = root / "cut.safetensors"
    made["safetensors_cut"].write_bytes(made["safetensors"].read_bytes()[:-100])
    import torch.distributed.checkpoint as dcp

    for name in ("dcp", "dcp_incomplete", "dcp_missing_shard", "dcp_cut_shard"):
        made[name] = root / name
        dcp.save({"model": {k: v.clone() for k, v in state.items()}}, checkpoint_id=made[name])
        shard = sorted(made[name].glob("*.distcp"))[0]
    (made["dcp_incomplete"] / ".metadata").unlink()
    next(made["dcp_missing_shard"].glob("*.distcp")).unlink()
    shard = next(made["dcp_cut_shard"].glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:100])
    made["cuda"] = DATA_DIR / "digits_mlp_cuda_state_dict.pt"
    return made


# name: (kind, healthy, words the last line must hold)
TABLE = {
    "good": ("torch-zip", True, "loads with weights_only=True"),
    "checkpoint": ("torch-zip", True, "checkpoint['model']"),
    "cuda": ("torch-zip", True, "map_location='cpu'"),
    "legacy": ("legacy", True, "convert it once"),
    "safetensors": ("safetensors", True, "safetensors.torch.load_file"),
    "dcp": ("dcp", True, "dcp_to_torch_save"),
    "whole_module": ("torch-zip", False, "refused by weights_only=True"),
    "payload": ("torch-zip", False, "do not load this file; it can run code"),
    "truncated": ("damaged-zip", False, "truncated"),
    "flipped": ("torch-zip", False, "fails its CRC-32 check"),
    "empty": ("empty", False, "empty (0 bytes)"),
    "text": ("text", False, "text file"),
    "safetensors_cut": ("safetensors", False, "truncated"),
    "dcp_incomplete": ("dcp-incomplete", False, ".metadata"),
    "dcp_missing_shard": ("dcp", False, "is missing"),
    "dcp_cut_shard": ("dcp", False, "shorter than the byte ranges"),
    "prefixed": ("torch-zip", False, "'module.'"),
    "compiled": ("torch-zip", False, "'_orig_mod.'"),
    "wrong_shapes": ("torch-zip", False, "3 wrong shape"),
}


@pytest.mark.parametrize("name", list(TABLE))
def test_table_of_files(files, name):
    kind, healthy, words = TABLE[name]
    d = diagnose(files[name], MLP)
    assert (d.kind, d.healthy, d.exit_code) == (kind, healthy, 0 if healthy else 1), d.report()
    last = d.report().splitlines()[-1]
    assert last.startswith("OK: " if healthy else "PROBLEM: ") and "Fix: " in last, last
    assert words in last, last


def test_payload_never_runs(files):
    marker = files["payload"].parent / MARKER
    d = diagnose(files["payload"], MLP)
    assert "os.mkdir" in d.report() or "posix.mkdir" in d.report(), d.report()
    assert not marker.exists(), "the doctor unpickled the payload"


def test_payload_would_run_under_plain_pickle(files, tmp_path):
    """The marker check can fail: plain unpickling of the same payload does create the marker."""
    marker = files["payload"].parent / MARKER
    pickle.loads(pickle.dumps(Payload(marker)))  # made here, a harmless mkdir: proves the marker would show
    assert marker.exists()
    marker.rmdir()


def test_whole_module_names_its_classes(files):
    report = diagnose(files["whole_module"]).report()
    assert "helper.models.MLP" in report and "torch.nn.modules.linear.Linear" in report


def test_cuda_file_on_any_machine(files):
    report = diagnose(files["cuda"]).report()
    assert "devices ['cuda:0']" in report and "4810 numbers" in report


def test_without_config_no_fit_check(files):
    d = diagnose(files["wrong_shapes"])
    assert d.healthy and "fits config" not in d.report()


def test_kinds_beyond_sniff(files, tmp_path):
    program = torch.export.export(torch.nn.Linear(3, 2), (torch.randn(1, 3),))
    torch.export.save(program, tmp_path / "m.pt2")
    assert detect_kind(tmp_path / "m.pt2") == "torch-export"
    assert diagnose(tmp_path / "m.pt2").healthy
    assert detect_kind(files["dcp_incomplete"]) == "dcp-incomplete"
    assert detect_kind(tmp_path / "nothing_here.pt") == "missing"
    assert diagnose(tmp_path / "nothing_here.pt").exit_code == 1


def test_main_exit_codes(files, capsys):
    assert main([str(files["good"]), "--config", '{"arch": "mlp"}']) == 0
    assert main([str(files["prefixed"]), "--config", '{"arch": "mlp"}']) == 1
    assert "consume_prefix_in_state_dict_if_present" in capsys.readouterr().out


def test_cli_in_a_fresh_process(files):
    """``python -m helper.doctor`` on its own: a problem found is exit status 1 and the PROBLEM line.
    (Every exit status is tested in-process above; lesson 12 runs it fresh on a healthy file: status 0.)"""
    bad = subprocess.run(
        [sys.executable, "-m", "helper.doctor", str(files["truncated"])], capture_output=True, text=True, cwd=REPO_ROOT
    )
    assert bad.returncode == 1 and bad.stdout.splitlines()[-1].startswith("PROBLEM: "), bad.stdout + bad.stderr


# ---------------------------------------------------------------------------------------------
# "OK" means proven, and every fix works when followed


def test_meta_tensors_are_not_ok(tmp_path):
    torch.save(build_model(MLP).to("meta").state_dict(), tmp_path / "meta.pt")
    d = diagnose(tmp_path / "meta.pt", MLP)
    assert not d.healthy and "meta device" in d.cause, d.report()


def safetensors_bytes(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


@pytest.mark.parametrize(
    "header, data",
    [
        ({"w": {"dtype": "F32", "shape": [2]}}, bytes(8)),  # no data_offsets
        ({"w": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 8]}}, bytes(8)),
        (
            {
                "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "v": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
            },
            bytes(12),
        ),  # overlapping
        ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8)),  # size disagrees with shape
        ({"w": {"dtype": "Q99", "shape": [2], "data_offsets": [0, 8]}}, bytes(8)),  # no such dtype
    ],
)
def test_safetensors_headers_that_safetensors_rejects_are_problems(tmp_path, header, data):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(safetensors_bytes(header, data))
    d = diagnose(path)
    assert d.kind == "safetensors" and not d.healthy and "not a valid safetensors file" in d.cause, d.report()


@pytest.mark.parametrize("dtype", ["F8_E8M0", "Q9"])
def test_a_safetensors_dtype_torch_cannot_hold_is_a_clear_problem(tmp_path, dtype):
    """safetensors' own dtype table decides: a dtype it knows but cannot give torch, or one it does not know,
    is a PROBLEM that names it (once a silent uint8)."""
    from safetensors.torch import _TYPES

    if dtype in _TYPES:
        pytest.skip(f"this safetensors loads {dtype} into torch")
    header = json.dumps({"w": {"dtype": dtype, "shape": [2], "data_offsets": [0, 2]}}).encode()
    header += b" " * (-len(header) % 8)
    path = tmp_path / f"{dtype}.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(2))
    d = diagnose(path)
    assert d.kind == "safetensors" and not d.healthy and dtype in d.cause, d.report()


def test_torch_public_unsafe_globals_answer_where_they_can(tmp_path):
    """torch's public get_unsafe_globals_in_checkpoint names what the opcode scan names for the pickles torch.save
    writes; it cannot read protocol 4, where the scan answers alone."""
    import argparse
    import collections

    from helper.examine_pickles import needed_globals
    from helper.formats import open_torch_zip

    made = {
        "plain": {"w": torch.ones(2)},
        "module": torch.nn.Linear(2, 2),
        "objects": {"w": torch.ones(2), "args": argparse.Namespace(lr=0.1), "od": collections.OrderedDict(a=1)},
    }
    for name, obj in made.items():
        path = tmp_path / f"{name}.pt"
        torch.save(obj, path)
        scan = open_torch_zip(path).scan
        assert needed_globals(scan, path) == needed_globals(scan), name
    assert needed_globals(open_torch_zip(tmp_path / "plain.pt").scan, tmp_path / "plain.pt") == []
    proto4 = tmp_path / "p4.pt"
    torch.save({"args": argparse.Namespace(lr=0.1)}, proto4, pickle_protocol=4)
    with pytest.raises(pickle.UnpicklingError):
        torch.serialization.get_unsafe_globals_in_checkpoint(str(proto4))
    assert needed_globals(open_torch_zip(proto4).scan, proto4) == ["argparse.Namespace"]


def test_a_zip_without_its_version_record_is_a_problem(files, tmp_path):
    with zipfile.ZipFile(files["good"]) as z:
        records = {n: z.read(n) for n in z.namelist() if not n.endswith("/version")}
    with zipfile.ZipFile(tmp_path / "no_version.pt", "w") as out:
        for name, data in records.items():
            out.writestr(zipfile.ZipInfo(name), data)
            out.filelist[-1].external_attr = 0
    d = diagnose(tmp_path / "no_version.pt")
    assert not d.healthy and "'version' record" in d.cause, d.report()


def hf_folder(root: Path, state: dict) -> Path:
    """A transformers-style sharded folder: two safetensors shards, the index, config.json."""
    root.mkdir()
    keys = list(state)
    weight_map = {}
    for i, part in enumerate((keys[:2], keys[2:])):
        shard = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({k: state[k].contiguous() for k in part}, root / shard)
        weight_map.update({k: shard for k in part})
    total = sum(t.numel() * t.element_size() for t in state.values())
    (root / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    (root / "config.json").write_text(json.dumps({"model_type": "mlp"}))
    return root


def test_hugging_face_sharded_folder_and_index(tmp_path):
    state = build_model(MLP).state_dict()
    folder = hf_folder(tmp_path / "hf", state)
    for path, kind in ((folder, "hf-folder"), (folder / "model.safetensors.index.json", "hf-index")):
        d = diagnose(path, MLP)
        assert (d.kind, d.healthy) == (kind, True), d.report()
        assert "fits config" in d.report() and "load_file" in d.fix
    # the fix, followed: each shard with safetensors, the index says which key lives where
    from safetensors.torch import load_file

    index = json.loads((folder / "model.safetensors.index.json").read_text())
    loaded = {}
    for shard in set(index["weight_map"].values()):
        loaded.update(load_file(folder / shard))
    model = build_model(MLP)
    model.load_state_dict(loaded)
    assert all(torch.equal(model.state_dict()[k], state[k]) for k in state)
    # a missing shard, and a shard whose keys do not add up
    shards = sorted(folder.glob("*.safetensors"))
    shards[1].rename(tmp_path / "away.safetensors")
    assert "is missing" in diagnose(folder).cause
    save_file({"other": torch.zeros(1)}, shards[1])
    assert "do not add up" in diagnose(folder).cause


def test_hf_folder_examines_what_from_pretrained_loads(tmp_path):
    """Attack finding F6: from_pretrained picks its weights by name (model.safetensors, its index,
    pytorch_model.bin, its index). An index it would not pick beside the real one, a .bin index beside no
    safetensors file, or a second candidate that differs: the doctor examines what it loads, in its order."""
    state = build_model(MLP).state_dict()
    folder = hf_folder(tmp_path / "decoy", state)
    (folder / "model.safetensors.index.json").rename(folder / "a.index.json")  # read first in sorted order
    zeros = {k: torch.zeros_like(v) for k, v in state.items()}
    torch.save({"x": torch.zeros(1)}, folder / "pytorch_model.bin")
    (folder / "pytorch_model.bin.index.json").write_text(
        json.dumps({"weight_map": dict.fromkeys(state, "pytorch_model.bin")})
    )
    d = diagnose(folder)
    assert not d.healthy and "a.index.json" in d.cause and "pytorch_model.bin" in d.cause, d.report()
    (folder / "a.index.json").unlink()
    d = diagnose(folder)  # now the .bin index is what from_pretrained loads: its shard is examined
    assert not d.healthy and "pytorch_model.bin" in d.cause and "do not add up" in d.cause, d.report()
    torch.save(zeros, folder / "pytorch_model.bin")
    assert diagnose(folder).healthy
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "model.safetensors")
    assert diagnose(folder, MLP).healthy  # both candidates hold the same keys, shapes and dtypes
    torch.save({k: v.half() for k, v in zeros.items()}, folder / "pytorch_model.bin")
    d = diagnose(folder)
    assert not d.healthy and "model.safetensors" in d.cause and "differ" in d.cause, d.report()
    for name in ("pytorch_model.bin", "pytorch_model.bin.index.json"):
        (folder / name).unlink()
    assert diagnose(folder, MLP).healthy
    for shard in folder.glob("model-*.safetensors"):
        shard.unlink()
    (folder / "model.safetensors").rename(folder / "weights.safetensors")  # a name from_pretrained never reads
    d = diagnose(folder)
    assert not d.healthy and "weights.safetensors" in d.cause, d.report()


def lightning_like(path: Path, state: dict) -> Path:
    torch.save(
        {
            "epoch": 2,
            "global_step": 40,
            "pytorch-lightning_version": "2.5.0",
            "state_dict": {f"model.{k}": v for k, v in state.items()},
            "loops": {"fit_loop": {"state_dict": {}}},
            "callbacks": {"ModelCheckpoint": {"best_model_score": None}},
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1, 2, 3]}]}],
            "lr_schedulers": [],
            "hyper_parameters": {"lr": 0.1},
        },
        path,
    )
    return path


def test_lightning_checkpoint_names_the_prefix_and_a_fix_that_works(tmp_path):
    state = build_model(MLP).state_dict()
    path = lightning_like(tmp_path / "epoch=2-step=40.ckpt", state)
    d = diagnose(path, MLP)
    assert d.healthy and "'model.'" in d.report() and "fits config" in d.report(), d.report()
    model = build_model(MLP)
    exec(d.fix, {"torch": torch, "path": path, "model": model})  # the printed fix, run as it stands
    assert all(torch.equal(model.state_dict()[k], state[k]) for k in state)
    plain = build_model(MLP)  # the fix the doctor used to print fails:
    with pytest.raises(RuntimeError, match="Missing key"):
        plain.load_state_dict(torch.load(path, weights_only=True)["state_dict"])


def onnx_model(path: Path, external: str | None = None) -> Path:
    """A small ONNX model written by onnx itself (y = x @ w), its initializer ``w`` in ``external`` if given."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    if external is None:
        onnx.save(model, path)
    else:
        onnx.save(model, path, save_as_external_data=True, location=external, size_threshold=0)
    return path


def test_onnx_file_is_recognised_and_checked(tmp_path):
    onnx_model(tmp_path / "model.onnx")
    d = diagnose(tmp_path / "model.onnx")
    assert (d.kind, d.healthy) == ("onnx", True) and "onnxruntime" in d.fix, d.report()
    onnx_model(tmp_path / "ext.onnx", external="ext.onnx.data")
    assert diagnose(tmp_path / "ext.onnx").healthy
    data = (tmp_path / "ext.onnx.data").read_bytes()
    (tmp_path / "ext.onnx.data").unlink()
    d = diagnose(tmp_path / "ext.onnx")
    assert not d.healthy and "ext.onnx.data" in d.cause, d.report()  # the graph without its weights
    (tmp_path / "ext.onnx.data").write_bytes(data)
    d = diagnose(tmp_path / "ext.onnx.data")
    assert (d.kind, d.healthy) == ("onnx-data", True) and "ext.onnx" in d.fix, d.report()
    (tmp_path / "cut.onnx").write_bytes((tmp_path / "model.onnx").read_bytes()[:40])
    d = diagnose(tmp_path / "cut.onnx")
    assert (d.kind, d.healthy) == ("onnx", False), d.report()


def test_the_printed_fixes_work(files, tmp_path, monkeypatch):
    reference = torch.load(files["good"], weights_only=True)

    def fits(state) -> bool:
        model = build_model(MLP)
        model.load_state_dict(state)
        return all(torch.equal(model.state_dict()[k], reference[k]) for k in reference)

    # a fix reads '<the load call>, then model.load_state_dict(checkpoint[...])'
    for name in ("good", "checkpoint"):
        load, _, then = diagnose(files[name]).fix.partition(", then ")
        checkpoint = eval(load, {"torch": torch, "path": files[name]})
        if then:
            model = build_model(MLP)
            exec(then, {"model": model, "checkpoint": checkpoint})
            checkpoint = model.state_dict()
        assert fits(checkpoint), name
    # the prefix: strip it with consume_prefix_in_state_dict_if_present
    for name in ("prefixed", "compiled"):
        fix = diagnose(files[name], MLP).fix.removeprefix("strip it: ")
        state = torch.load(files[name], weights_only=True)
        exec(fix, {"torch": torch, "state_dict": state})
        assert fits(state), name
    # legacy: convert it once
    fix = diagnose(files["legacy"]).fix.removeprefix("convert it once: ")
    exec(fix, {"torch": torch, "path": files["legacy"], "new_path": tmp_path / "converted.pt"})
    assert fits(torch.load(tmp_path / "converted.pt", weights_only=True))
    assert diagnose(tmp_path / "converted.pt").healthy
    # safetensors
    assert "safetensors.torch.load_file(path)" in diagnose(files["safetensors"]).fix
    from safetensors.torch import load_file

    assert fits(load_file(files["safetensors"]))
    # DCP: convert it once with dcp_to_torch_save
    fix = diagnose(files["dcp"]).fix
    assert "dcp_to_torch_save(folder, 'model.pt')" in fix
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    monkeypatch.chdir(tmp_path)
    dcp_to_torch_save(files["dcp"], "model.pt")
    assert fits(torch.load(tmp_path / "model.pt", weights_only=True)["model"])


# ---------------------------------------------------------------------------------------------
# Hostile files (issue 24): each fails on the doctor before the inspector child, passes after.
# Every payload is harmless: it creates a marker file in tmp_path.


def rezip(
    source: Path,
    target: Path,
    replace: dict[str, bytes] | None = None,
    drop: tuple[str, ...] = (),
    add: dict[str, bytes] | None = None,
) -> Path:
    """``source``'s members, some replaced, dropped or added, written as torch's writers write them (stored,
    no attributes): every CRC-32 valid."""
    with zipfile.ZipFile(source) as z:
        records = {n: z.read(n) for n in z.namelist() if not n.endswith(drop or ("\0",))}
    records.update(replace or {})
    records.update(add or {})
    with zipfile.ZipFile(target, "w") as out:
        for name, data in records.items():
            out.writestr(zipfile.ZipInfo(name), data)
            out.filelist[-1].external_attr = 0
    return target


def dcp_folder(root: Path) -> Path:
    import torch.distributed.checkpoint as dcp

    dcp.save({"w": torch.ones(2)}, checkpoint_id=root)
    return root


def stack_global_call(module: str, name: str, arg: str) -> bytes:
    """The issue's reproducer: protocol 4, STACK_GLOBAL of ``module`` / ``name`` (a dotted name), called on ``arg``."""
    m, n, c = module.encode(), name.encode(), arg.encode()
    return b"\x80\x04\x8c%c%s\x8c%c%s\x93\x8c%c%s\x85R." % (len(m), m, len(n), n, len(c), c)


def test_case1_dcp_metadata_cannot_run_code(tmp_path):
    """A dotted STACK_GLOBAL under an allowed module prefix resolved os.system and ran it; then said OK."""
    folder = dcp_folder(tmp_path / "dcp")
    marker = tmp_path / "dcp_payload_ran"
    (folder / ".metadata").write_bytes(
        stack_global_call("torch.distributed.checkpoint.filesystem", "os.system", f"touch {marker}")
    )
    d = diagnose(folder)
    assert not marker.exists(), "the doctor ran the .metadata payload"
    assert not d.healthy and "do not load" in d.fix and "os.system" in d.cause, d.report()


def test_case1_dcp_metadata_that_is_not_metadata(tmp_path):
    """.metadata = None, a 2 GB bytearray, and a shard path that leaves the folder: none is OK."""
    import pickle as pickle_module

    folder = dcp_folder(tmp_path / "dcp")
    good = (folder / ".metadata").read_bytes()
    (folder / ".metadata").write_bytes(pickle_module.dumps(None))
    d = diagnose(folder)
    assert not d.healthy and "NoneType" in d.cause, d.report()
    (folder / ".metadata").write_bytes(b"\x80\x02cbuiltins\nbytearray\nJ\x00\x94\x35\x77\x85R.")  # bytearray(2e9)
    d = diagnose(folder)
    assert not d.healthy and "bytearray" in d.cause, d.report()
    metadata = pickle_module.loads(good)  # our own file, just written by dcp.save
    shard = next(iter(metadata.storage_data.values())).relative_path
    (tmp_path / "outside.distcp").write_bytes((folder / shard).read_bytes())
    for item in metadata.storage_data.values():
        item.relative_path = "../outside.distcp"
    (folder / ".metadata").write_bytes(pickle_module.dumps(metadata))
    d = diagnose(folder)
    assert not d.healthy and "../outside.distcp" in d.cause, d.report()


@pytest.mark.filterwarnings("ignore::UserWarning")  # dcp: "torch.distributed is disabled ..., single process"
def test_dcp_non_tensor_values_are_held_to_weights_only(tmp_path):
    """Attack finding F3: DCP stores a non-tensor value as a torch.save zip that dcp.load and dcp_to_torch_save
    unpickle with weights_only=False. A payload there (even under a tensor's key) is a problem, and following the
    old advice runs it; plain values pass and the report says they are unpickled."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    marker = tmp_path / MARKER
    model = torch.nn.Linear(2, 2)
    dcp.save({"model": {"weight": Payload(marker), "bias": torch.zeros(2)}}, checkpoint_id=tmp_path / "hostile")
    d = diagnose(tmp_path / "hostile")
    assert not d.healthy and "'model.weight'" in d.cause and "weights_only=False" in d.cause, d.report()
    assert d.fix == "do not load this folder; it can run code" and not marker.exists(), d.report()
    dcp_to_torch_save(tmp_path / "hostile", tmp_path / "converted.pt")  # made by this test: a harmless mkdir
    assert marker.exists()
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.rand(1, 2)).sum().backward()
    optimizer.step()
    dcp.save(
        {"model": model.state_dict(), "optim": optimizer.state_dict(), "epoch": 3}, checkpoint_id=tmp_path / "plain"
    )
    d = diagnose(tmp_path / "plain")
    assert d.healthy and any("weights_only=False" in line for line in d.lines), d.report()


def test_case2_a_module_the_file_names_is_never_imported(tmp_path):
    """A Lightning-style checkpoint whose hyper-parameter is mycfg.Config, a mycfg.py in the working folder:
    the doctor (run as the CLI from that folder) must answer without running mycfg.py."""
    import types

    marker = tmp_path / "mycfg_ran"
    fake = types.ModuleType("mycfg")  # pickled by name only; this process never imports a real mycfg

    class Config:
        lr = 0.1

    Config.__module__, Config.__qualname__ = "mycfg", "Config"
    fake.Config = Config
    sys.modules["mycfg"] = fake
    try:
        path = lightning_like(tmp_path / "run.ckpt", build_model(MLP).state_dict())
        checkpoint = torch.load(path, weights_only=True)
        checkpoint["hyper_parameters"] = {"cfg": Config()}
        torch.save(checkpoint, path)
    finally:
        del sys.modules["mycfg"]
    (tmp_path / "mycfg.py").write_text(f"open({str(marker)!r}, 'w').close()\n\nclass Config:\n    pass\n")
    run = subprocess.run(
        [sys.executable, "-m", "helper.doctor", str(path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert not marker.exists(), "the doctor imported mycfg.py from the working folder"
    assert run.returncode == 1 and "mycfg.Config" in run.stdout and "do not load" in run.stdout, run.stdout + run.stderr


def export_program(path: Path) -> Path:
    program = torch.export.export(torch.nn.Linear(3, 2), (torch.randn(1, 3),))
    torch.export.save(program, path)
    return path


def test_case3_a_pt2_is_never_called_safe(tmp_path):
    """A .pt2 runs code in torch.export.load (guards are exec'd, some constants unpickled): a whole one is
    'not safe from a stranger', one with guards code or a pickled constant is a problem."""
    good = export_program(tmp_path / "good.pt2")
    d = diagnose(good)
    assert "not safe from a stranger" in d.cause and "trust" in d.fix, d.report()
    with zipfile.ZipFile(good) as z:
        model_json = next(n for n in z.namelist() if n.endswith("models/model.json"))
        program = json.loads(z.read(model_json))
        constants = next(n for n in z.namelist() if n.endswith("model_constants_config.json"))
    marker = tmp_path / "guard_ran"
    program["guards_code"] = [f"__import__('os').system('touch {marker}') == 0"]
    d = diagnose(rezip(good, tmp_path / "guards.pt2", {model_json: json.dumps(program).encode()}))
    assert not d.healthy and "guards code" in d.cause and "do not load" in d.fix, d.report()
    prefix = constants[: -len("data/constants/model_constants_config.json")]
    config = {"config": json.dumps({"obj": {"path_name": "opaque_obj_0", "tensor_meta": None}})}
    d = diagnose(
        rezip(
            good,
            tmp_path / "opaque.pt2",
            {constants: json.dumps(config).encode()},
            add={f"{prefix}data/constants/opaque_obj_0": pickle.dumps(None)},
        )
    )
    assert not d.healthy and "pickled object" in d.cause, d.report()
    assert not marker.exists()


def test_pt2_sample_inputs_are_pickles_held_to_weights_only(tmp_path):
    """Attack finding F9: torch.export.load unpickles a .pt2's data/sample_inputs/*.pt (torch.load, falling back to
    weights_only=False). The report lists it, never says "nothing pickled", and a payload there is a problem."""
    import io

    good = export_program(tmp_path / "good.pt2")
    d = diagnose(good)
    assert d.healthy and "data/sample_inputs/model.pt" in d.report() and "nothing pickled" not in d.report()
    with zipfile.ZipFile(good) as z:
        inputs = next(n for n in z.namelist() if "/data/sample_inputs/" in n)
    marker = tmp_path / MARKER
    buffer = io.BytesIO()
    torch.save(((torch.zeros(1, 3),), {"note": Payload(marker)}), buffer)
    planted = rezip(good, tmp_path / "planted.pt2", {inputs: buffer.getvalue()})
    d = diagnose(planted)
    assert not d.healthy and "sample_inputs/model.pt" in d.cause and "do not load" in d.fix, d.report()
    assert "nothing pickled" not in d.report() and not marker.exists()
    torch.export.load(planted)  # made by this test: the payload (a harmless mkdir) runs, as the verdict says
    assert marker.exists()


def test_case5_trust_remote_code_folder_is_flagged(tmp_path):
    state = build_model(MLP).state_dict()
    folder = hf_folder(tmp_path / "hf", state)
    assert diagnose(folder).healthy
    marker = tmp_path / "remote_code_ran"
    (folder / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    d = diagnose(folder)
    assert not d.healthy and "trust_remote_code=True" in d.verdict() and "modeling_evil.py" in d.cause, d.report()
    assert not marker.exists()


def peak_of_a_fresh_doctor(path: Path) -> dict:
    """diagnose(path) in a fresh process: its verdict, the doctor process's own peak growth and the child's."""
    code = (
        "import json, resource, sys; from helper.doctor import diagnose; "
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; d = diagnose(sys.argv[1]); "
        "print(json.dumps({'verdict': d.verdict(), 'healthy': d.healthy, "
        "'inspector': getattr(d, 'facts', {}).get('inspector'), "
        "'parent_growth': (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024}))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_case11_a_huge_safetensors_header_costs_bounded_memory(tmp_path):
    """A 90 MB header (1.5M empty tensors) took the doctor +1.16 GB and 13.5 s: now the doctor's own process
    grows by little, and the child ends in a verdict inside its limit."""
    entry = '"t%07d":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}'
    header = ("{" + ",".join(entry % i for i in range(1_500_000)) + "}").encode()
    path = tmp_path / "huge_header.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    assert len(header) > 80 << 20
    result = peak_of_a_fresh_doctor(path)
    assert result["parent_growth"] < 128 << 20, result
    assert result["verdict"].startswith(("OK: ", "PROBLEM: ")), result
    inspector = result["inspector"]
    if inspector is not None:  # a verdict from the child: its growth stayed under its limit
        from helper.doctor import LIMITS

        bound = LIMITS["memory"] + LIMITS["per_file_byte"] * path.stat().st_size
        assert inspector["rss_peak"] - inspector["rss_start"] < bound, result


def test_case11_a_huge_onnx_file_costs_bounded_memory(tmp_path):
    """A 40 MB ONNX file of 20M empty nodes took the hand-written parser +1.29 GB: now the doctor's own process
    grows by little and the child, at its memory limit, ends in a verdict."""
    graph = b"\x0a\x00" * 20_000_000  # GraphProto.node, empty, 20M times
    size, length = len(graph), b""
    while size >= 0x80:
        length, size = length + bytes([size & 0x7F | 0x80]), size >> 7
    path = tmp_path / "huge.onnx"
    path.write_bytes(b"\x08\x08\x3a" + length + bytes([size]) + graph + b"\x42\x02\x10\x11")
    result = peak_of_a_fresh_doctor(path)
    assert result["parent_growth"] < 128 << 20, result
    assert result["verdict"].startswith("PROBLEM: "), result


def onnx_junk_graph() -> bytes:
    """A ModelProto whose graph holds a node of bytes protobuf cannot parse (field number 0)."""

    def field(number: int, payload: bytes) -> bytes:
        return bytes([number << 3 | 2, len(payload)]) + payload

    graph = field(1, b"\x00\x00\x00") + field(2, b"main")
    return b"\x08\x08" + field(2, b"pytorch") + field(7, graph) + field(8, b"\x10\x11")


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.trace is deprecated, still what makes the file
def test_case13_ok_only_when_the_formats_own_loader_accepts(tmp_path):
    """A junk ONNX graph, a fake .pt2 and a fake TorchScript zip: their own loaders refuse them, so no OK."""
    import onnx

    (tmp_path / "junk.onnx").write_bytes(onnx_junk_graph())
    from google.protobuf.message import DecodeError

    with pytest.raises(DecodeError):
        onnx.load(tmp_path / "junk.onnx")
    d = diagnose(tmp_path / "junk.onnx")
    assert (d.kind, d.healthy) == ("onnx", False), d.report()
    with zipfile.ZipFile(tmp_path / "fake.pt2", "w") as z:
        z.writestr("m/archive_format", "pt2")
        z.writestr("m/models/model.json", "{}")
        for info in z.filelist:
            info.external_attr = 0
    d = diagnose(tmp_path / "fake.pt2")
    assert (d.kind, d.healthy) == ("torch-export", False), d.report()
    with zipfile.ZipFile(tmp_path / "fake_script.pt", "w") as z:
        z.writestr("m/constants.pkl", b"\x80\x02}q\x00.")
        z.writestr("m/code/__torch__.py", "junk")
        z.writestr("m/data.pkl", b"\x80\x02}q\x00.")
        for info in z.filelist:
            info.external_attr = 0
    with pytest.raises(RuntimeError):
        torch.jit.load(tmp_path / "fake_script.pt")
    d = diagnose(tmp_path / "fake_script.pt")
    assert (d.kind, d.healthy) == ("torchscript", False), d.report()
    script = tmp_path / "real_script.pt"
    torch.jit.save(torch.jit.trace(torch.nn.Linear(2, 2), torch.randn(1, 2)), script)
    d = diagnose(script)
    assert (d.kind, d.healthy) == ("torchscript", True), d.report()


class SetstateWrites(torch.nn.Module):
    """Scripted, its ``__setstate__`` creates a marker file (torch.from_file maps it shared, fill_ writes it) while
    torch.jit.load loads it: code a TorchScript file runs when loaded, not only when called (attack finding F2)."""

    def __init__(self, marker: str):
        super().__init__()
        self.w = torch.ones(2)
        self.marker = marker

    @torch.jit.export
    def __getstate__(self):
        return (self.w, self.training, self.marker)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool, str]):
        x = torch.from_file(state[2], shared=True, size=4, dtype=torch.uint8)
        x.fill_(65)
        self.w = state[0] + x.sum().float() * 0
        self.training = state[1]
        self.marker = state[2]

    def forward(self, x):
        return x + self.w


@pytest.mark.filterwarnings("ignore::FutureWarning")  # TorchScript is deprecated, still what makes the file
def test_torchscript_is_never_loaded_nor_called_safe(tmp_path):
    """The doctor never calls torch.jit.load: a file whose __setstate__ writes a file is a problem and writes
    nothing while examined; a plain scripted module is whole but not safe from a stranger, and the fix (load it
    only if you made it) works. torch.jit.load, run here on the file this test made, runs the code."""
    marker = tmp_path / "setstate_ran"
    torch.jit.save(torch.jit.script(SetstateWrites(str(marker))), str(tmp_path / "setstate.pt"))
    d = diagnose(tmp_path / "setstate.pt")
    assert (d.kind, d.healthy) == ("torchscript", False) and "__setstate__" in d.cause, d.report()
    assert "do not load" in d.fix and not marker.exists(), d.report()
    torch.jit.load(str(tmp_path / "setstate.pt"))  # made by this test: the code runs as the verdict says
    assert marker.read_bytes() == b"AAAA"
    model = torch.nn.Linear(2, 2)
    torch.jit.save(torch.jit.script(model), str(tmp_path / "plain.pt"))
    d = diagnose(tmp_path / "plain.pt")
    assert (d.kind, d.healthy) == ("torchscript", True) and "not safe from a stranger" in d.cause, d.report()
    assert d.said_fix[0] == "torchscript-fix" and "only if you made it" in d.fix, d.report()
    assert any("code file" in line for line in d.lines), d.report()
    scripted = torch.jit.load(str(tmp_path / "plain.pt"), map_location="cpu")  # the fix, followed (made here)
    x = torch.rand(3, 2)
    assert torch.equal(scripted(x), model(x))


def test_case13_links_and_paths_that_leave_the_folder(tmp_path):
    """ONNX external data and HF shards that are links or paths out of the folder are refused, and the advice
    never says to copy a file from outside."""
    folder = tmp_path / "model"
    folder.mkdir()
    onnx_model(folder / "add.onnx", external="add.onnx.data")
    assert diagnose(folder / "add.onnx").healthy
    outside = tmp_path / "elsewhere.bin"
    (folder / "add.onnx.data").rename(outside)
    (folder / "add.onnx.data").symlink_to(outside)
    d = diagnose(folder / "add.onnx")
    assert not d.healthy and "link" in d.cause, d.report()
    (folder / "add.onnx.data").unlink()
    import onnx

    model = onnx.load(folder / "add.onnx", load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "../elsewhere.bin"
    onnx.save(model, folder / "add.onnx")
    d = diagnose(folder / "add.onnx")
    assert not d.healthy and "outside" in d.cause and "copy" not in d.fix, d.report()
    hf = hf_folder(tmp_path / "hf", build_model(MLP).state_dict())
    shard = sorted(hf.glob("*.safetensors"))[0]
    shard.rename(tmp_path / "away.safetensors")
    shard.symlink_to(tmp_path / "away.safetensors")
    d = diagnose(hf)
    assert not d.healthy and "link" in d.cause and "copy" not in d.fix, d.report()


def test_case13_the_verdict_says_what_no_check_covers(files, tmp_path):
    """A legacy file and a safetensors shard with a changed data byte still load: the OK says that no
    checksum could tell (and the legacy advice to convert says to compare first)."""
    data = bytearray(files["legacy"].read_bytes())
    data[-10] ^= 0x01  # inside the last tensor's bytes
    (tmp_path / "changed_legacy.pt").write_bytes(bytes(data))
    d = diagnose(tmp_path / "changed_legacy.pt")
    assert d.healthy and "no checksums" in d.verdict() and "sha256sum" in d.verdict(), d.report()
    hf = hf_folder(tmp_path / "hf", build_model(MLP).state_dict())
    shard = sorted(hf.glob("*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x01
    shard.write_bytes(bytes(data))
    d = diagnose(hf)
    assert d.healthy and "no checksums" in d.verdict(), d.report()


def numpy_rng_file(path: Path) -> Path:
    """Lesson 06's file: NumPy's legacy RNG state, a tuple holding an array."""
    import numpy as np

    torch.save({"numpy_rng": np.random.RandomState(0).get_state()}, path)
    return path


def test_case14_safe_globals_advice_never_lists_a_function(tmp_path):
    path = numpy_rng_file(tmp_path / "with_numpy_rng.pt")
    d = diagnose(path)
    assert not d.healthy and "safe_globals" not in d.fix and "NumPy" in d.cause, d.report()
    # the advice the doctor printed before fails when followed: allowlisting what the pickle names is not enough
    import numpy as np

    with pytest.raises(pickle.UnpicklingError, match="UInt32DType"):
        with torch.serialization.safe_globals([np._core.multiarray._reconstruct, np.ndarray, np.dtype]):
            torch.load(path, weights_only=True)
    # the advice now: re-save the arrays as tensors (lesson 06); the state this test saved above, re-saved so
    name, keys, pos, has_gauss, cached = np.random.RandomState(0).get_state()
    checkpoint = {
        "numpy_rng": {
            "name": name,
            "keys": torch.from_numpy(keys.copy()),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        }
    }
    torch.save(checkpoint, tmp_path / "plain.pt")
    assert diagnose(tmp_path / "plain.pt").healthy


def nested_key_pickle(depth: int) -> bytes:
    """A protocol-2 pickle of {((...((),)...),): 1}, the tuple ``depth`` deep: hashing it recurses in C."""
    return b"\x80\x02}" + b")" + b"\x85" * depth + b"K\x01s."


def test_a_crash_in_the_inspector_is_a_verdict(files, tmp_path):
    """A 1M-deep tuple key overflows the C stack of torch's unpickler (SIGSEGV): this process lives and the
    verdict says not to load the file (or the opcode budget refused it before any unpickler ran)."""
    with zipfile.ZipFile(files["good"]) as z:
        pkl_name = next(n for n in z.namelist() if n.endswith("data.pkl"))
    path = rezip(
        files["good"],
        tmp_path / "deep.pt",
        {pkl_name: nested_key_pickle(1_000_000)},
        drop=tuple(n for n in zipfile.ZipFile(files["good"]).namelist() if "/data/" in n),
    )
    d = diagnose(path)
    assert not d.healthy and "do not load" in d.verdict(), d.report()
    assert "Traceback" not in d.report()


def test_limits_are_verdicts(files, tmp_path):
    """A child past its CPU or wall-time limit is killed, and the verdict names the limit."""
    many_lists = b"\x80\x02]" + b"]a" * 3_000_000 + b"."  # a list of 3M empty lists: seconds to build
    (tmp_path / "lists.pkl").write_bytes(many_lists)
    with zipfile.ZipFile(files["good"]) as z:
        pkl_name = next(n for n in z.namelist() if n.endswith("data.pkl"))
    path = rezip(
        files["good"],
        tmp_path / "lists.pt",
        {pkl_name: many_lists},
        drop=tuple(n for n in zipfile.ZipFile(files["good"]).namelist() if "/data/" in n),
    )
    d = diagnose(path, limits={"wall": 1, "cpu": 1})
    assert not d.healthy and "do not load" in d.verdict(), d.report()
    big = tmp_path / "big.pt"
    torch.save({"w": torch.zeros(16 << 20)}, big)  # 64 MiB of tensor data
    d = diagnose(big, limits={"memory": 8 << 20, "per_file_byte": 0})  # 8 MiB more than the child holds
    assert not d.healthy and "do not load" in d.verdict(), d.report()
    assert diagnose(big).healthy and diagnose(files["good"]).healthy  # the next worker has the usual limits


# ---------------------------------------------------------------------------------------------
# Advice is tested by following it: every fix the doctor can print (helper.doctor.FIXES) names the test that
# follows it here, or in tests/test_doctor_libraries.py; "do not load" is followed by showing what loading does.

ADVICE_FOLLOWED = {
    "runs-code": "test_do_not_load_advice_is_right",
    "runs-code-ask": "test_do_not_load_advice_is_right",
    "hostile-fix": "test_do_not_load_advice_is_right",
    "bin-unsafe-fix": "test_do_not_load_advice_is_right",
    "dcp-unsafe-fix": "test_do_not_load_advice_is_right",
    "pickle-unsafe-fix": "test_do_not_load_advice_is_right",
    "safe-globals": "test_safe_globals_advice_followed",
    "numpy-fix": "test_case14_safe_globals_advice_never_lists_a_function",
    "meta-fix": "test_meta_and_export_advice_followed",
    "loads-fix": "test_the_printed_fixes_work",
    "legacy-fix": "test_the_printed_fixes_work",
    "lightning-fix": "test_lightning_checkpoint_names_the_prefix_and_a_fix_that_works",
    "lightning-no-prefix-fix": "test_doctor_libraries.py::test_lightning_without_one_prefix_advice_followed",
    "hf-no-index-fix": "test_folder_advice_followed",
    "hf-bad-index-fix": "test_folder_advice_followed",
    "copy-again": "test_folder_advice_followed",
    "outside-fix": "test_folder_advice_followed",
    "remote-code-fix": "test_folder_advice_followed",
    "earlier-folder": "test_folder_advice_followed",
    "onnx-redo": "test_onnx_advice_followed",
    "onnx-outside-fix": "test_onnx_advice_followed",
    "onnx-missing-fix": "test_onnx_advice_followed",
    "onnx-data-fix": "test_onnx_advice_followed",
    "pt2-redo": "test_meta_and_export_advice_followed",
    "pt2-fix": "test_meta_and_export_advice_followed",
    "torchscript-fix": "test_torchscript_is_never_loaded_nor_called_safe",
}


def test_every_fix_has_a_test_that_follows_it():
    from helper import doctor

    assert set(doctor.FIXES) == set(ADVICE_FOLLOWED), set(doctor.FIXES) ^ set(ADVICE_FOLLOWED)
    fixes_said = {key for key in doctor.MESSAGES if key.endswith("-fix")}
    assert fixes_said <= set(doctor.FIXES), fixes_said - set(doctor.FIXES)
    here = sys.modules[__name__]
    libraries = (Path(__file__).parent / "test_doctor_libraries.py").read_text()
    for key, test in ADVICE_FOLLOWED.items():
        file, _, name = test.rpartition("::")
        assert (f"def {name}(" in libraries) if file else callable(getattr(here, name, None)), (key, test)


def test_do_not_load_advice_is_right(tmp_path):
    """The files the doctor says not to load do run code when loaded as their format loads them: a pickle
    payload through pickle (as torch.load does when weights_only is off), DCP's .metadata through pickle.loads (as
    dcp.load does); the doctor's verdict on each is 'do not load'. And the weights asked for instead pass."""
    marker = tmp_path / "ran"
    payload = pickle.dumps(Payload(marker))
    (tmp_path / "payload.pt").write_bytes(payload)
    d = diagnose(tmp_path / "payload.pt")
    assert d.said_fix[0] == "pickle-unsafe-fix" and "do not load" in d.fix, d.report()
    pickle.loads(payload)  # made here: a harmless mkdir
    assert marker.exists()
    marker.rmdir()
    folder = dcp_folder(tmp_path / "dcp")
    (folder / ".metadata").write_bytes(stack_global_call("posix" if os.name == "posix" else "nt", "mkdir", str(marker)))
    d = diagnose(folder)
    assert not d.healthy and d.fix == "do not load this folder; it can run code", d.report()
    with open(folder / ".metadata", "rb") as f:
        pickle.load(f)  # what torch.distributed.checkpoint.FileSystemReader.read_metadata does
    assert marker.exists()
    torch.save(build_model(MLP).state_dict(), tmp_path / "asked_for.pt")  # "ask for the weights as a state_dict"
    assert diagnose(tmp_path / "asked_for.pt").healthy


def test_safe_globals_advice_followed(tmp_path):
    """The whole model, pickled: load it once inside safe_globals of the classes the report names (all classes,
    no function), re-save the state_dict: the doctor then says OK."""
    model = build_model(MLP)
    torch.save(model, tmp_path / "whole.pt")
    d = diagnose(tmp_path / "whole.pt")
    assert "safe_globals" in d.fix, d.report()
    classes = [vars(sys.modules[name.rpartition(".")[0]])[name.rpartition(".")[2]] for name in d.needed]
    assert all(isinstance(c, type) for c in classes), classes
    with torch.serialization.safe_globals(classes):
        loaded = torch.load(tmp_path / "whole.pt", weights_only=True)
    torch.save(loaded.state_dict(), tmp_path / "state.pt")
    assert diagnose(tmp_path / "state.pt", MLP).healthy


def test_meta_and_export_advice_followed(tmp_path):
    model = build_model(MLP)
    torch.save(model.to("meta").state_dict(), tmp_path / "meta.pt")
    d = diagnose(tmp_path / "meta.pt")
    assert not d.healthy and "model.to('cpu').state_dict()" in d.fix
    model = build_model(MLP)
    torch.save(model.to("cpu").state_dict(), tmp_path / "real.pt")  # the fix, followed
    assert diagnose(tmp_path / "real.pt", MLP).healthy
    (tmp_path / "fake.pt2").write_bytes(
        rezip(export_program(tmp_path / "src.pt2"), tmp_path / "x.pt2", drop=("models/model.json",)).read_bytes()
    )
    d = diagnose(tmp_path / "fake.pt2")
    assert not d.healthy and "torch.export.export and torch.export.save" in d.fix, d.report()
    d = diagnose(export_program(tmp_path / "fake.pt2"))  # exported again
    assert d.healthy and "torch.export.load(path)" in d.fix, d.report()
    program = torch.export.load(tmp_path / "fake.pt2")  # made by this test: trusted, as the fix says
    x = torch.rand(1, 3)
    assert program.module()(x).shape == (1, 2)


def test_folder_advice_followed(tmp_path):
    from safetensors.torch import load_file

    state = build_model(MLP).state_dict()
    folder = hf_folder(tmp_path / "hf", state)
    index = folder / "model.safetensors.index.json"
    good_index = index.read_text()
    # config.json alone: copy the weights too
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "config.json").write_text("{}")
    d = diagnose(alone)
    assert not d.healthy and "copy the weights too" in d.fix
    save_file({k: v.contiguous() for k, v in state.items()}, alone / "model.safetensors")
    assert diagnose(alone).healthy
    # a broken index: restore it
    index.write_text("{}")
    assert "restore the index file" in diagnose(folder).fix
    index.write_text(good_index)
    assert diagnose(folder).healthy
    # a shard missing, then a shard that is a link: copy the folder again / get it again from its source
    shard = sorted(folder.glob("*.safetensors"))[1]
    data = shard.read_bytes()
    shard.unlink()
    assert "copy the whole folder again" in diagnose(folder).fix
    (tmp_path / "elsewhere.safetensors").write_bytes(data)
    shard.symlink_to(tmp_path / "elsewhere.safetensors")
    assert "get the model again from its source" in diagnose(folder).fix
    shard.unlink()
    shard.write_bytes(data)
    assert diagnose(folder).healthy
    # code in the folder: the weights alone load with safetensors and no code
    marker = tmp_path / "remote_code_ran"
    (folder / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    d = diagnose(folder)
    assert "safetensors.torch.load_file(shard)" in d.fix, d.report()
    loaded = {}
    for weights in folder.glob("*.safetensors"):
        loaded.update(load_file(weights))
    model = build_model(MLP)
    model.load_state_dict(loaded)
    assert not marker.exists()
    # an interrupted DCP save: use an earlier checkpoint folder
    earlier, broken = dcp_folder(tmp_path / "epoch1"), dcp_folder(tmp_path / "epoch2")
    (broken / ".metadata").unlink()
    assert "use an earlier checkpoint folder" in diagnose(broken).fix
    assert diagnose(earlier).healthy
    import torch.distributed.checkpoint as dcp

    restored = {"w": torch.zeros(2)}
    dcp.load(restored, checkpoint_id=earlier)
    assert torch.equal(restored["w"], torch.ones(2))


def test_onnx_advice_followed(tmp_path):
    import onnxruntime as ort

    folder = tmp_path / "model"
    folder.mkdir()
    path = onnx_model(folder / "m.onnx", external="m.onnx.data")
    data = (folder / "m.onnx.data").read_bytes()
    d = diagnose(folder / "m.onnx.data")
    assert "keep it next to m.onnx" in d.fix, d.report()
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])  # "open that file"
    assert session.run(None, {"x": [[1.0, 2.0, 3.0, 4.0]]})[0].tolist() == [[1.0, 2.0, 3.0, 4.0]]
    (folder / "m.onnx.data").unlink()
    d = diagnose(path)
    assert d.fix == "copy m.onnx.data next to m.onnx (an .onnx and its .onnx.data travel together)", d.report()
    (folder / "m.onnx.data").write_bytes(data)  # copied back next to it
    assert diagnose(path).healthy
    (folder / "m.onnx.data").unlink()
    (tmp_path / "m.onnx.data").write_bytes(data)
    (folder / "m.onnx.data").symlink_to(tmp_path / "m.onnx.data")
    assert "export the model again" in diagnose(path).fix
    (folder / "m.onnx.data").unlink()
    onnx_model(path, external="m.onnx.data")  # exported again
    assert diagnose(path).healthy
    path.write_bytes(path.read_bytes()[:40])
    assert diagnose(path).fix == "export the model again with torch.onnx.export"
    onnx_model(path)
    assert diagnose(path).healthy


def test_the_one_interpreter_per_call_path(files, monkeypatch, tmp_path):
    """macOS and Windows run each examination in a fresh interpreter (run_once): the same verdicts, and a crash
    is a verdict there too. Exercised here on Linux by pretending to be another system."""
    monkeypatch.setattr(sys, "platform", "darwin")
    d = diagnose(files["good"], MLP)
    assert d.healthy and "fits config" in d.report(), d.report()
    with zipfile.ZipFile(files["good"]) as z:
        pkl_name = next(n for n in z.namelist() if n.endswith("data.pkl"))
        data_members = tuple(n for n in z.namelist() if "/data/" in n)
    path = rezip(files["good"], tmp_path / "deep.pt", {pkl_name: nested_key_pickle(1_000_000)}, drop=data_members)
    d = diagnose(path)
    assert not d.healthy and "do not load" in d.verdict(), d.report()


def test_a_signal_in_the_inspector_is_a_verdict(files, tmp_path):
    """A real crash: safetensors (Rust) aborts when its header parse cannot allocate (here: 200k entries under a
    64 MiB limit). The doctor's process lives, the verdict names the signal, and the next call is served."""
    entry = '"t%07d":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}'
    header = ("{" + ",".join(entry % i for i in range(200_000)) + "}").encode()
    path = tmp_path / "wide.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    d = diagnose(path, limits={"memory": 64 << 20, "per_file_byte": 0})
    assert not d.healthy and "the file crashed the inspector with SIGABRT: do not load it" in d.verdict(), d.report()
    assert diagnose(files["good"]).healthy


def test_case12_members_swapped_in_a_save_checkpoint_file(tmp_path):
    """Two equal-size storages of a save_checkpoint file renamed into each other: every CRC-32 stays valid,
    only the digest record (which bytes belong to which name) tells. The doctor reads it, as load_checkpoint
    does; the same file before the swap is OK."""
    from helper.checkpoint import make_checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = build_model(MLP)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 64)).sum().backward()
    optimizer.step()  # exp_avg and exp_avg_sq: storages of equal size
    good = save_checkpoint(make_checkpoint(model, optimizer, config=MLP), tmp_path / "good.pt")
    assert diagnose(good).healthy
    with zipfile.ZipFile(good) as z:
        infos = {i.filename: i for i in z.infolist()}
    sizes: dict[int, list[str]] = {}
    for name, info in infos.items():
        if "/data/" in name:
            sizes.setdefault(info.file_size, []).append(name)
    a, b = next(names for names in sizes.values() if len(names) >= 2)[:2]
    swapped = tmp_path / "swapped.pt"
    with zipfile.ZipFile(good) as z, zipfile.ZipFile(swapped, "w") as out:
        for info in z.infolist():  # stored, in order; a and b trade names (each keeps its own bytes and CRC)
            name = {a: b, b: a}.get(info.filename, info.filename)
            out.writestr(zipfile.ZipInfo(name), z.read(info))
            out.filelist[-1].external_attr = 0  # as torch.save writes
            out.filelist[-1].create_system = 0
    with zipfile.ZipFile(swapped) as z:
        assert z.testzip() is None  # every CRC-32 still holds
    d = diagnose(swapped)
    assert not d.healthy and "swapped" in d.cause, d.cause


def test_a_numpy_object_array_is_not_ok(tmp_path):
    """A .npy of dtype object stores a pickle (numpy.load(allow_pickle=True) would run it); a numeric .npy is OK."""
    import numpy as np

    plain = tmp_path / "plain.npy"
    np.save(plain, np.arange(4.0))
    assert diagnose(plain).healthy
    marker = tmp_path / "ran"
    obj = tmp_path / "object.npy"
    np.save(obj, np.array([Payload(marker)], dtype=object), allow_pickle=True)
    d = diagnose(obj)
    assert not d.healthy and "could run code" in d.cause and "do not load" in d.fix, (d.cause, d.fix)
    assert not marker.exists()
    np.load(obj, allow_pickle=True)  # made here: the harmless mkdir shows the file really runs code
    assert marker.exists()


def test_a_pickle_bomb_is_refused_before_the_slow_scan(tmp_path):
    """3M empty lists in a torch.save zip: the budget refuses it before formats' opcode walk (which took tens of
    seconds on 30M)."""
    import time

    torch.save({}, tmp_path / "bomb.pt")
    with zipfile.ZipFile(tmp_path / "bomb.pt") as z:
        records = {i.filename: z.read(i) for i in z.infolist()}
    pkl = next(n for n in records if n.endswith("/data.pkl"))
    records[pkl] = b"\x80\x02" + b"]" * 3_000_000 + b"."
    with zipfile.ZipFile(tmp_path / "bomb.pt", "w") as out:
        for name, data in records.items():
            out.writestr(zipfile.ZipInfo(name), data)
    start = time.perf_counter()
    d = diagnose(tmp_path / "bomb.pt")
    assert not d.healthy and ("budget" in d.cause or "would build" in d.cause), d.cause
    assert time.perf_counter() - start < 15
