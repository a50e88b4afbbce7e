import argparse
import random
import zipfile

import numpy as np
import pytest
import torch

from helper import checkpoint as ckpt
from helper.checkpoint import (CheckpointError, capture_rng_state, load_checkpoint, make_checkpoint,
                               model_from_checkpoint, restore_rng_state, restore_training_state,
                               save_checkpoint)
from helper.data import make_loaders
from helper.models import build_model
from helper.training import fit, predict, seed_everything


def tensors_equal(a, b) -> bool:
    """Deep equality for nested dicts/lists of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(tensors_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(tensors_equal(x, y) for x, y in zip(a, b))
    return a == b


def new_run(split, seed=0):
    """Model, momentum optimizer, scheduler and loaders, freshly built."""
    loaders = make_loaders(split, seed=seed)
    model = build_model({"arch": "cnn"})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    return model, optimizer, scheduler, loaders


def test_round_trip_gives_equal_model_and_optimizer_state(split, tmp_path):
    seed_everything(0)
    model, optimizer, scheduler, loaders = new_run(split)
    history = fit(model, optimizer, loaders.train, loaders.val, epochs=2, scheduler=scheduler, progress=False)
    path = save_checkpoint(make_checkpoint(model, optimizer, scheduler, epoch=2, step=40, history=history,
                                           generator=loaders.generator), tmp_path / "run.pt")
    loaded = load_checkpoint(path)
    assert tensors_equal(loaded["model"], model.state_dict())
    assert tensors_equal(loaded["optimizer"], optimizer.state_dict())
    assert loaded["optimizer"]["state"][0]["momentum_buffer"].abs().sum() > 0  # real state, not empty
    assert loaded["scheduler"] == scheduler.state_dict()
    assert loaded["history"] == history and loaded["epoch"] == 2 and loaded["step"] == 40
    assert loaded["config"] == model.config
    rebuilt = model_from_checkpoint(loaded)
    assert not rebuilt.training
    assert torch.equal(predict(rebuilt, split.x_test), predict(model, split.x_test))


def test_checkpoint_loads_with_plain_weights_only_torch_load(split, tmp_path):
    model, optimizer, scheduler, loaders = new_run(split)
    path = save_checkpoint(make_checkpoint(model, optimizer, scheduler, generator=loaders.generator),
                           tmp_path / "c.pt")
    raw = torch.load(path, weights_only=True)  # no allowlist anywhere in this process
    assert set(ckpt.REQUIRED_KEYS) <= set(raw)


def test_rng_state_round_trip(split):
    generator = torch.Generator().manual_seed(7)
    state = capture_rng_state(generator)
    draws = (random.random(), np.random.rand(3).tolist(), torch.rand(3), torch.rand(3, generator=generator))
    restore_rng_state(state, generator)
    again = (random.random(), np.random.rand(3).tolist(), torch.rand(3), torch.rand(3, generator=generator))
    assert draws[:2] == again[:2]
    assert torch.equal(draws[2], again[2]) and torch.equal(draws[3], again[3])


def test_resume_equals_uninterrupted_run(split, tmp_path):
    """Stop after 2 of 4 epochs, resume from the file alone: bit-for-bit the same result."""
    seed_everything(0)
    model, optimizer, scheduler, loaders = new_run(split)
    full = fit(model, optimizer, loaders.train, loaders.val, epochs=4, scheduler=scheduler, progress=False)

    seed_everything(0)
    m1, o1, s1, l1 = new_run(split)
    part = fit(m1, o1, l1.train, l1.val, epochs=2, scheduler=s1, progress=False)
    save_checkpoint(make_checkpoint(m1, o1, s1, epoch=2, history=part, generator=l1.generator), tmp_path / "last.pt")
    del m1, o1, s1, l1

    seed_everything(999)  # whatever the new session's RNGs hold
    m2, o2, s2, l2 = new_run(split, seed=5)
    loaded = load_checkpoint(tmp_path / "last.pt")
    restore_training_state(loaded, m2, o2, s2, generator=l2.generator)
    resumed = fit(m2, o2, l2.train, l2.val, epochs=4, start_epoch=loaded["epoch"], scheduler=s2,
                  history=loaded["history"], progress=False)
    assert tensors_equal(m2.state_dict(), model.state_dict())
    assert tensors_equal(o2.state_dict(), optimizer.state_dict())
    assert resumed == full


def test_a_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    model = build_model({"arch": "mlp"})
    save_checkpoint(make_checkpoint(model, epoch=1), path)
    before = path.read_bytes()

    def crash(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(make_checkpoint(model, epoch=2), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind
    assert load_checkpoint(path)["epoch"] == 1


def test_missing_file_error_names_file_cause_and_fix(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pt: no such file\. Fix: "):
        load_checkpoint(tmp_path / "nope.pt")


def test_truncated_file_is_detected(tmp_path):
    path = save_checkpoint(make_checkpoint(build_model({"arch": "mlp"})), tmp_path / "t.pt")
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"t\.pt: not a zip archive.*Fix: use an earlier checkpoint"):
        load_checkpoint(path)


def test_corrupted_tensor_data_is_reported(tmp_path):
    path = save_checkpoint(make_checkpoint(build_model({"arch": "mlp"})), tmp_path / "c.pt")
    with zipfile.ZipFile(path) as z:
        member = next(i for i in z.infolist() if "/data/" in i.filename)
    raw = bytearray(path.read_bytes())
    raw[member.header_offset:member.header_offset + 4] = b"XXXX"  # break the member's local header
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"c\.pt: torch\.load failed"):
        load_checkpoint(path)


def test_pickled_objects_are_refused_not_executed(tmp_path):
    path = tmp_path / "ns.pt"
    torch.save({"args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(CheckpointError, match=r"ns\.pt: refused by weights_only=True.*argparse\.Namespace"):
        load_checkpoint(path)


def test_not_a_checkpoint_dict(tmp_path):
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(CheckpointError, match="holds a Tensor"):
        load_checkpoint(tmp_path / "tensor.pt")
    torch.save({"model": {}}, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match=r"missing keys \['format_version'"):
        load_checkpoint(tmp_path / "partial.pt")


def test_newer_format_is_refused(tmp_path):
    checkpoint = make_checkpoint(build_model({"arch": "mlp"}))
    checkpoint["format_version"] = ckpt.FORMAT_VERSION + 1
    path = save_checkpoint(checkpoint, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="newer than"):
        load_checkpoint(path)
