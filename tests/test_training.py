import pytest
import torch

from helper import training
from helper.data import make_loaders
from helper.models import build_model
from helper.training import evaluate, fit, pick_device, predict, seed_everything


def train(split, *, seed: int, epochs: int = 3, arch: str = "mlp"):
    seed_everything(seed)
    loaders = make_loaders(split, seed=seed)
    model = build_model({"arch": arch})
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    history = fit(model, optimizer, loaders.train, loaders.val, epochs=epochs, progress=False)
    return model, history, loaders


def test_training_is_reproducible_with_the_same_seed(split):
    a, hist_a, _ = train(split, seed=0)
    b, hist_b, _ = train(split, seed=0)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert hist_a == hist_b


def test_another_seed_trains_another_model(split):
    a, _, _ = train(split, seed=0)
    b, _, _ = train(split, seed=1)
    assert not torch.equal(a[1].weight, b[1].weight)


@pytest.mark.parametrize("arch, epochs", [("mlp", 8), ("cnn", 6)])
def test_digits_model_reaches_95_percent_on_test(split, arch, epochs):
    model, _, loaders = train(split, seed=0, epochs=epochs, arch=arch)
    _, accuracy = evaluate(model, loaders.test)
    assert accuracy >= 0.95


def test_history_has_a_row_per_epoch_and_the_scheduler_steps(split):
    seed_everything(0)
    loaders = make_loaders(split)
    model = build_model({"arch": "mlp"})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    seen = []
    history = fit(
        model,
        optimizer,
        loaders.train,
        loaders.val,
        epochs=3,
        scheduler=scheduler,
        progress=False,
        on_epoch_end=lambda epoch, h: seen.append((epoch, len(h["epoch"]))),
    )
    assert history["epoch"] == [1, 2, 3]
    assert history["lr"] == pytest.approx([0.1, 0.05, 0.025])
    assert seen == [(1, 1), (2, 2), (3, 3)]
    assert all(len(v) == 3 for v in history.values())


def test_fit_resumes_numbering_from_start_epoch(split):
    model, history, loaders = train(split, seed=0, epochs=2)
    optimizer = torch.optim.Adam(model.parameters())
    fit(model, optimizer, loaders.train, loaders.val, epochs=4, start_epoch=2, history=history, progress=False)
    assert history["epoch"] == [1, 2, 3, 4]


def test_progress_bar_is_drawn_with_tqdm(split, capsys):
    loaders = make_loaders(split)
    model = build_model({"arch": "mlp"})
    fit(model, torch.optim.Adam(model.parameters()), loaders.train, loaders.val, epochs=2, progress=True)
    err = capsys.readouterr().err
    assert "epochs: 100%" in err and "2/2" in err
    fit(model, torch.optim.Adam(model.parameters()), loaders.train, loaders.val, epochs=1, progress=False)
    assert capsys.readouterr().err == ""


def test_predict_returns_cpu_logits_and_leaves_the_mode_alone(split):
    model = build_model({"arch": "cnn"}).train()
    logits = predict(model, split.x_test[:7])
    assert logits.shape == (7, 10) and logits.device.type == "cpu" and not logits.requires_grad
    assert model.training  # predict never switches to eval behind the caller's back
    assert not torch.equal(logits, predict(model, split.x_test[:7]))  # train mode: Dropout draws anew
    model.eval()
    assert torch.equal(predict(model, split.x_test[:7]), predict(model, split.x_test[:7]))


def test_pick_device_prints_its_choice(monkeypatch, capsys):
    monkeypatch.setattr(training.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(training.torch.backends.mps, "is_available", lambda: False)
    assert pick_device() == torch.device("cpu")
    assert capsys.readouterr().out == "Using device: cpu\n"
    assert pick_device(verbose=False) == torch.device("cpu")
    assert capsys.readouterr().out == ""


def test_build_optimizer_and_scheduler_from_plain_data():
    model = build_model({"arch": "mlp"})
    sgd = training.build_optimizer(model, {"name": "sgd", "lr": 0.05, "momentum": 0.9})
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.9
    adam = training.build_optimizer(model, {"name": "adam", "lr": 1e-3})
    assert isinstance(adam, torch.optim.Adam) and adam.param_groups[0]["lr"] == 1e-3
    step = training.build_scheduler(sgd, {"name": "step", "step_size": 2, "gamma": 0.5})
    assert isinstance(step, torch.optim.lr_scheduler.StepLR) and step.gamma == 0.5
    assert training.build_scheduler(sgd, None) is None
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        training.build_optimizer(model, {"name": "rmsprop"})
    with pytest.raises(ValueError, match="unknown scheduler"):
        training.build_scheduler(sgd, {"name": "plateau"})
