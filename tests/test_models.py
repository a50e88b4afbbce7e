import pytest
import torch

from helper.models import DEFAULTS, MLP, SmallCNN, build_model, count_parameters


@pytest.mark.parametrize("arch", sorted(DEFAULTS))
def test_build_model_round_trips_through_its_config(arch):
    torch.manual_seed(0)
    model = build_model({"arch": arch})
    assert model.config == DEFAULTS[arch]
    torch.manual_seed(0)
    again = build_model(model.config)
    assert again.config == model.config
    a, b = model.state_dict(), again.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("arch", sorted(DEFAULTS))
def test_models_map_digits_to_ten_logits(arch):
    assert build_model({"arch": arch})(torch.rand(5, 1, 8, 8)).shape == (5, 10)


def test_config_values_shape_the_model():
    model = build_model({"arch": "mlp", "hidden": [32, 16], "dropout": 0.5})
    assert isinstance(model, MLP)
    assert [m.out_features for m in model if isinstance(m, torch.nn.Linear)] == [32, 16, 10]
    assert sum(isinstance(m, torch.nn.Dropout) for m in model) == 2
    cnn = build_model({"arch": "cnn", "channels": [4, 8]})
    assert isinstance(cnn, SmallCNN) and cnn.classifier[-1].in_features == 8 * 4 * 4


def test_config_is_not_shared_with_caller():
    config = {"arch": "mlp", "hidden": [64]}
    model = build_model(config)
    config["hidden"].append(1)
    assert model.config["hidden"] == [64]


def test_default_mlp_has_the_gpu_fixtures_keys():
    model = build_model({"arch": "mlp"})
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {
        "1.weight": (64, 64),
        "1.bias": (64,),
        "3.weight": (10, 64),
        "3.bias": (10,),
    }


def test_cnn_has_batchnorm_buffers_and_dropout_adds_nothing():
    keys = build_model({"arch": "cnn"}).state_dict().keys()
    assert "features.1.running_mean" in keys and "features.1.num_batches_tracked" in keys
    assert not any(k.startswith("classifier.1.") for k in keys)  # classifier.1 is Dropout


@pytest.mark.parametrize(
    "config, message",
    [
        ({"arch": "resnet"}, "unknown arch"),
        ({}, "unknown arch"),
        ({"arch": "mlp", "hiden": [3]}, "unknown config keys"),
    ],
)
def test_bad_configs_are_refused(config, message):
    with pytest.raises(ValueError, match=message):
        build_model(config)


def test_count_parameters():
    assert count_parameters(build_model({"arch": "mlp"})) == 64 * 64 + 64 + 64 * 10 + 10
