"""helper.doctor on a table of good and broken files, each made here in tmp_path."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
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
    run = [sys.executable, "-m", "helper.doctor"]
    ok = subprocess.run([*run, str(files["cuda"])], capture_output=True, text=True, cwd=REPO_ROOT)
    bad = subprocess.run([*run, str(files["truncated"])], capture_output=True, text=True, cwd=REPO_ROOT)
    assert ok.returncode == 0, ok.stderr
    assert bad.returncode == 1 and bad.stdout.splitlines()[-1].startswith("PROBLEM: "), bad.stdout + bad.stderr
