"""The GPU checkpoints shipped in data/ (saved on an H100 with tensors on cuda:0)."""

import hashlib
import json

import pytest
import torch

from helper.models import build_model
from helper.paths import DATA_DIR
from helper.training import predict

MANIFEST = json.loads((DATA_DIR / "manifest.json").read_text())


@pytest.mark.parametrize("name", sorted(MANIFEST["files"]))
def test_shipped_files_match_manifest_sha256(name):
    data = (DATA_DIR / name).read_bytes()
    assert len(data) == MANIFEST["files"][name]["bytes"]
    assert hashlib.sha256(data).hexdigest() == MANIFEST["files"][name]["sha256"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error only happens without CUDA")
def test_loading_without_map_location_fails_without_cuda():
    with pytest.raises(RuntimeError, match="Attempting to deserialize object on a CUDA device"):
        torch.load(DATA_DIR / "digits_mlp_cuda_state_dict.pt", weights_only=True)


def test_gpu_model_scores_the_manifest_accuracy_on_cpu(split):
    state = torch.load(DATA_DIR / "digits_mlp_cuda_state_dict.pt", map_location="cpu", weights_only=True)
    assert {t.device.type for t in state.values()} == {"cpu"}
    model = build_model({"arch": "mlp"})
    model.load_state_dict(state)
    model.eval()
    accuracy = (predict(model, split.x_test).argmax(1) == split.y_test).float().mean().item()
    assert accuracy == pytest.approx(MANIFEST["test_accuracy_on_gpu"], abs=1 / 360)


def test_full_checkpoint_matches_its_state_dict():
    ckpt = torch.load(DATA_DIR / "digits_mlp_cuda_checkpoint.pt", map_location="cpu", weights_only=True)
    state = torch.load(DATA_DIR / "digits_mlp_cuda_state_dict.pt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 20
    assert all(torch.equal(ckpt["model_state"][k], state[k]) for k in state)
    assert set(ckpt["optim_state"]["state"]) == {0, 1, 2, 3}
