"""helper.doctor on files written by the real libraries of lesson 13, made here in a tmp folder.

A Lightning ``.ckpt`` (and one whose hyper-parameters hold a ``Path``), a
sharded ``transformers`` folder (healthy, with a shard missing, with an index
naming a key no shard holds, with its config only), a torchvision state dict,
and an ONNX file (whole and cut short). For each the doctor must name what the
file is, and each fix it prints is then followed here, by the test, to prove
that it works. Nothing is downloaded: every model is built from a config.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from helper.data import make_loaders, split_digits
from helper.doctor import diagnose
from helper.models import build_model
from helper.paths import REPO_ROOT
from helper.quiet import quiet_libraries

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Found, not imported: importing the five takes 4-5 s of CPU, and every pytest-xdist worker collects
# this module while only one runs it. Each test imports what it uses.
_MISSING = [
    name
    for name in ("lightning", "transformers", "onnx", "onnxruntime", "torchvision")
    if importlib.util.find_spec(name) is None
]
if _MISSING:
    pytest.skip(f"needs {', '.join(_MISSING)} (requirements.txt)", allow_module_level=True)

CNN = {"arch": "cnn"}
MLP = {"arch": "mlp"}


def _lightning_ckpt(folder: Path, name: str, **hparams) -> Path:
    """Two optimizer steps of a Trainer on the digits, then its own checkpoint file."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    class DigitsModule(L.LightningModule):
        """helper's model as the attribute ``net``, as in lesson 13."""

        def __init__(self, config: dict, lr: float = 3e-3, data_dir=None):
            super().__init__()
            self.save_hyperparameters()
            self.net = build_model(config)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    keep = ModelCheckpoint(dirpath=folder, filename=name)
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[keep],
        default_root_dir=folder,
    )
    loaders = make_loaders(split_digits(), seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's notices about workers and small data: not tested here
        trainer.fit(DigitsModule(CNN, **hparams), loaders.train)
    return folder / f"{name}.ckpt"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    quiet_libraries()
    root = tmp_path_factory.mktemp("libraries")
    torch.manual_seed(0)
    made: dict[str, Path] = {}
    made["lightning"] = _lightning_ckpt(root / "lightning", "digits")
    made["lightning_path"] = _lightning_ckpt(root / "lightning", "with_path", data_dir=root)

    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=32, bos_token_id=0, eos_token_id=0)
    made["hf"] = root / "tiny_gpt2"
    GPT2LMHeadModel(config).save_pretrained(made["hf"], max_shard_size="20KB")
    made["hf_index"] = made["hf"] / "model.safetensors.index.json"
    shards = sorted(p.name for p in made["hf"].glob("*.safetensors"))
    assert len(shards) > 2
    made["hf_missing_shard"] = root / "missing_shard"
    shutil.copytree(made["hf"], made["hf_missing_shard"])
    (made["hf_missing_shard"] / shards[1]).unlink()
    made["hf_extra_key"] = root / "extra_key"
    shutil.copytree(made["hf"], made["hf_extra_key"])
    index_path = made["hf_extra_key"] / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["transformer.h.9.mlp.c_fc.weight"] = shards[0]  # a key that shard does not hold
    index_path.write_text(json.dumps(index))
    made["hf_config_only"] = root / "config_only"
    config.save_pretrained(made["hf_config_only"])

    from torchvision.models import resnet18

    made["torchvision"] = root / "resnet18.pth"
    torch.save(resnet18(weights=None).state_dict(), made["torchvision"])

    made["onnx"] = root / "digits_mlp.onnx"
    model = build_model(MLP).eval()
    torch.onnx.export(
        model,
        (torch.rand(2, 1, 8, 8),),
        made["onnx"],
        input_names=["images"],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        verbose=False,
    )
    made["onnx_no_data"] = root / "graph_only" / made["onnx"].name  # copied without its .onnx.data
    made["onnx_no_data"].parent.mkdir()
    shutil.copy(made["onnx"], made["onnx_no_data"])
    made["onnx_cut"] = root / "cut.onnx"
    data = made["onnx"].read_bytes()
    made["onnx_cut"].write_bytes(data[: len(data) // 2])
    return made


# ---------------------------------------------------------------- Lightning


def test_lightning_checkpoint_is_named_with_its_prefix(files):
    d = diagnose(files["lightning"])
    report = d.report()
    assert d.healthy, report
    assert "Lightning" in report and "'net.'" in report, report
    assert "state_dict" in d.fix, report


def test_lightning_fix_followed_gives_the_plain_model(files):
    """The doctor says: weights in checkpoint['state_dict'], prefix 'net.'. Do exactly that."""
    d = diagnose(files["lightning"], CNN)
    assert "'net.'" in d.report(), d.report()
    ckpt = torch.load(files["lightning"], map_location="cpu", weights_only=True)
    weights = dict(ckpt["state_dict"])
    consume_prefix_in_state_dict_if_present(weights, "net.")
    model = build_model(CNN)
    model.load_state_dict(weights)  # strict: raises unless every key fits
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())


def test_lightning_fix_without_stripping_would_fail(files):
    """The check above can fail: the state_dict as stored does not load into the plain model."""
    ckpt = torch.load(files["lightning"], map_location="cpu", weights_only=True)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        build_model(CNN).load_state_dict(ckpt["state_dict"])


def test_lightning_with_a_path_hyperparameter(files):
    d = diagnose(files["lightning_path"])
    report = d.report()
    assert "pathlib.PosixPath" in report, report
    assert "safe_globals" in d.fix, report
    with pytest.raises(Exception, match="PosixPath"):
        torch.load(files["lightning_path"], map_location="cpu", weights_only=True)
    with torch.serialization.safe_globals([type(Path())]):  # the fix, followed
        ckpt = torch.load(files["lightning_path"], map_location="cpu", weights_only=True)
    assert isinstance(ckpt["hyper_parameters"]["data_dir"], Path)


# ---------------------------------------------------------------- transformers


@pytest.mark.parametrize("which", ["hf", "hf_index"])
def test_transformers_folder_and_index_are_recognised(files, which):
    d = diagnose(files[which])
    report = d.report()
    assert d.healthy, report
    assert "text file" not in report, report
    assert "from_pretrained" in d.fix, report
    shards = sorted(p.name for p in files["hf"].glob("*.safetensors"))
    assert str(len(shards)) in report, report


def test_transformers_fix_followed_loads_equal(files):
    from transformers import GPT2LMHeadModel

    d = diagnose(files["hf"])
    assert "from_pretrained" in d.fix, d.report()
    loaded = GPT2LMHeadModel.from_pretrained(files["hf"])
    from safetensors.torch import load_file

    by_hand: dict[str, torch.Tensor] = {}
    for shard in sorted(files["hf"].glob("*.safetensors")):
        by_hand.update(load_file(shard))
    state = loaded.state_dict()
    assert by_hand and all(torch.equal(state[k], v) for k, v in by_hand.items())


def test_transformers_missing_shard_is_named(files):
    shards = sorted(p.name for p in files["hf"].glob("*.safetensors"))
    d = diagnose(files["hf_missing_shard"])
    report = d.report()
    assert not d.healthy and d.exit_code == 1, report
    assert shards[1] in report.splitlines()[-1] or shards[1] in report, report
    from transformers import GPT2LMHeadModel

    with pytest.raises(OSError):  # the library agrees: the folder cannot be loaded
        GPT2LMHeadModel.from_pretrained(files["hf_missing_shard"])


def test_transformers_keys_must_add_up(files):
    """The index names a key that its shard does not hold: the doctor must open the shard and see it."""
    d = diagnose(files["hf_extra_key"])
    first_shard = sorted(p.name for p in files["hf"].glob("*.safetensors"))[0]
    assert not d.healthy and d.exit_code == 1, d.report()
    assert first_shard in d.report() or "transformer.h.9.mlp.c_fc.weight" in d.report(), d.report()


def test_transformers_config_without_weights(files):
    """A folder with config.json alone: the fix must say the weights are missing, not point at config.json."""
    d = diagnose(files["hf_config_only"])
    assert not d.healthy, d.report()
    assert any(name in d.report() for name in ("model.safetensors", "pytorch_model.bin")), d.report()


# ---------------------------------------------------------------- torchvision


def test_torchvision_state_dict(files):
    d = diagnose(files["torchvision"])
    report = d.report()
    assert d.healthy and d.kind == "torch-zip", report
    assert "weights_only=True" in d.fix, report
    assert "122 tensors" in report, report


def test_torchvision_fix_followed_loads_strictly(files):
    from torchvision.models import resnet18

    d = diagnose(files["torchvision"])
    assert "torch.load" in d.fix, d.report()
    state = torch.load(files["torchvision"], map_location="cpu", weights_only=True)  # the fix, followed
    model = resnet18(weights=None)
    model.load_state_dict(state)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


# ---------------------------------------------------------------- ONNX


def test_onnx_file_is_recognised(files):
    d = diagnose(files["onnx"])
    report = d.report()
    assert d.healthy and d.kind == "onnx", report
    assert "onnxruntime.InferenceSession" in d.fix, report


def test_onnx_fix_followed_runs(files):
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(files["onnx"], providers=["CPUExecutionProvider"])  # the fix, followed
    x = torch.rand(5, 1, 8, 8)
    (logits,) = session.run(None, {"images": x.numpy()})
    assert logits.shape == (5, 10) and np.isfinite(logits).all()


def test_onnx_cut_short_is_a_problem(files):
    import onnx

    d = diagnose(files["onnx_cut"])
    assert not d.healthy and d.exit_code == 1, d.report()
    from google.protobuf.message import DecodeError

    with pytest.raises(DecodeError):  # onnx agrees that the file is damaged
        onnx.load(files["onnx_cut"])


def test_onnx_without_its_external_data_is_a_problem(files):
    """torch.onnx.export on torch 2.14 writes the weights to NAME.onnx.data; the graph alone cannot run."""
    import onnxruntime as ort

    assert Path(f"{files['onnx']}.data").is_file(), "the exporter no longer writes external data: rethink this test"
    with pytest.raises(Exception, match="External data"):  # onnxruntime agrees: it cannot load the graph alone
        ort.InferenceSession(files["onnx_no_data"], providers=["CPUExecutionProvider"])
    d = diagnose(files["onnx_no_data"])
    assert not d.healthy and d.exit_code == 1, d.report()
    assert ".onnx.data" in d.report(), d.report()


# ---------------------------------------------------------------- the command line


@pytest.mark.parametrize(
    "which,code",
    [("lightning", 0), ("hf", 0), ("torchvision", 0), ("onnx", 0), ("hf_missing_shard", 1), ("onnx_cut", 1)],
)
def test_cli_exit_codes(files, which, code, capsys):
    """``python -m helper.doctor PATH``'s exit code and last line, run in this process (a fresh
    process costs 2-3 s of imports each; the next test runs one)."""
    from helper.doctor import main

    assert main([str(files[which])]) == code
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("OK: " if code == 0 else "PROBLEM: ") and "Fix: " in last, last


def test_cli_in_a_fresh_process_without_this_modules_imports(files):
    """This module imported lightning, transformers, onnx and torchvision; a fresh process proves the
    doctor diagnoses a Lightning file (its pickle names lightning's classes) without them."""
    run = subprocess.run(
        [sys.executable, "-m", "helper.doctor", str(files["lightning"])],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip().splitlines()[-1].startswith("OK: "), run.stdout


def test_lightning_without_one_prefix_advice_followed(tmp_path):
    """Keys under two attributes share no prefix: the doctor says to rebuild the LightningModule and call
    load_from_checkpoint. Followed here on a module whose weights sit in ``body`` and ``head``."""
    import lightning as L

    class TwoPartModule(L.LightningModule):
        def __init__(self, hidden: int = 4):
            super().__init__()
            self.save_hyperparameters()
            self.body, self.head = torch.nn.Linear(3, hidden), torch.nn.Linear(hidden, 2)

    module = TwoPartModule(hidden=5)
    path = tmp_path / "two_parts.ckpt"
    torch.save(
        {
            "epoch": 0,
            "global_step": 0,
            "pytorch-lightning_version": L.__version__,
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
        },
        path,
    )
    d = diagnose(path)
    assert d.healthy and "load_from_checkpoint(path)" in d.fix, d.report()
    loaded = TwoPartModule.load_from_checkpoint(path, map_location="cpu", weights_only=True)  # the fix, followed
    assert loaded.hparams.hidden == 5
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in module.state_dict().items())
