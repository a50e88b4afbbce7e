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
    bad = subprocess.run([sys.executable, "-m", "helper.doctor", str(files["truncated"])], capture_output=True,
                         text=True, cwd=REPO_ROOT)
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


@pytest.mark.parametrize("header, data", [
    ({"w": {"dtype": "F32", "shape": [2]}}, bytes(8)),  # no data_offsets
    ({"w": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 8]}}, bytes(8)),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "v": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12)),  # overlapping
    ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8)),  # size disagrees with shape
    ({"w": {"dtype": "Q99", "shape": [2], "data_offsets": [0, 8]}}, bytes(8)),  # no such dtype
])
def test_safetensors_headers_that_safetensors_rejects_are_problems(tmp_path, header, data):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(safetensors_bytes(header, data))
    d = diagnose(path)
    assert d.kind == "safetensors" and not d.healthy and "not a valid safetensors file" in d.cause, d.report()


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
    (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                    "weight_map": weight_map}))
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


def lightning_like(path: Path, state: dict) -> Path:
    torch.save({"epoch": 2, "global_step": 40, "pytorch-lightning_version": "2.5.0",
                "state_dict": {f"model.{k}": v for k, v in state.items()},
                "loops": {"fit_loop": {"state_dict": {}}}, "callbacks": {"ModelCheckpoint": {"best_model_score": None}},
                "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1, 2, 3]}]}],
                "lr_schedulers": [], "hyper_parameters": {"lr": 0.1}}, path)
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

    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              [numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")])
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
