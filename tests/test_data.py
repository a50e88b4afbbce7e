import numpy as np
import torch

from helper.data import load_digits_tensors, make_loaders, split_digits


def test_all_digits_as_tensors():
    x, y = load_digits_tensors()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32
    assert y.shape == (1797,) and y.dtype == torch.long
    assert x.min() == 0.0 and x.max() == 1.0
    assert set(y.tolist()) == set(range(10))


def test_split_is_the_same_twice():
    a, b = split_digits(), split_digits()
    for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_another_seed_gives_another_split():
    assert not torch.equal(split_digits(seed=0).y_train, split_digits(seed=1).y_train)


def test_split_sizes_cover_the_data(split):
    assert split.sizes() == {"train": 1221, "val": 216, "test": 360}
    assert sum(split.sizes().values()) == 1797


def test_split_is_stratified(split):
    from sklearn.datasets import load_digits  # here, not at the top: every xdist worker collects this module

    overall = np.bincount(load_digits().target, minlength=10) / 1797
    for labels in (split.y_train, split.y_val, split.y_test):
        share = np.bincount(labels.numpy(), minlength=10) / len(labels)
        assert np.abs(share - overall).max() < 0.02


def test_test_split_is_the_gpu_fixtures_split(split):
    """The shipped GPU checkpoint was evaluated on exactly this test set."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    _, x_te, _, y_te = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    assert torch.equal(split.x_test.reshape(-1, 64), torch.tensor(x_te / 16.0, dtype=torch.float32))
    assert torch.equal(split.y_test, torch.tensor(y_te))


def first_batch_labels(loader) -> torch.Tensor:
    return next(iter(loader))[1]


def test_shuffling_follows_the_loaders_own_generator(split):
    a, b = make_loaders(split, seed=0), make_loaders(split, seed=0)
    torch.manual_seed(123)  # the global RNG must not matter
    first_a = first_batch_labels(a.train)
    torch.manual_seed(456)
    assert torch.equal(first_a, first_batch_labels(b.train))
    assert not torch.equal(first_a, first_batch_labels(make_loaders(split, seed=1).train))


def test_generator_state_replays_an_epoch(split):
    loaders = make_loaders(split, seed=0)
    state = loaders.generator.get_state()
    epoch1 = [y for _, y in loaders.train]
    loaders.generator.set_state(state)
    again = [y for _, y in loaders.train]
    assert all(torch.equal(p, q) for p, q in zip(epoch1, again))


def test_only_training_loader_shuffles(split):
    loaders = make_loaders(split)
    assert torch.equal(torch.cat([y for _, y in loaders.test]), split.y_test)
    assert torch.equal(torch.cat([y for _, y in loaders.val]), split.y_val)


def test_the_cached_split_is_scikit_learns_split_bit_for_bit(tmp_path, monkeypatch):
    """split_digits reads artifacts/cache after the first call: it must equal train_test_split's split, and a
    damaged cache file is computed again (and replaced whole), never trusted."""
    import helper.data as data

    monkeypatch.setattr(data, "ARTIFACTS_DIR", tmp_path)  # not the cache the notebooks share
    fresh = data.compute_split()
    first = split_digits()  # computes and writes the cache
    path = data.split_cache_path()
    assert path.is_file() and path.parent == tmp_path / "cache"
    second = split_digits()  # reads it
    for part in ("train", "val", "test"):
        for split in (first, second):
            assert torch.equal(
                getattr(split, f"x_{part}").reshape(-1, 64),
                torch.tensor(fresh[f"x_{part}"] / 16.0, dtype=torch.float32),
            )
            assert torch.equal(getattr(split, f"y_{part}"), torch.tensor(fresh[f"y_{part}"]))
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])  # a torn file
    assert torch.equal(split_digits().x_train, first.x_train)
    assert path.read_bytes() == whole
    np.savez(path, **{**fresh, "x_val": fresh["x_val"][:, :10]})  # a readable file of the wrong shape
    assert torch.equal(split_digits().x_val, first.x_val)
    assert split_cache_path_differs(data)


def split_cache_path_differs(data) -> bool:
    """Other arguments, another file: a cached split is never served for a different request."""
    return (
        len(
            {
                data.split_cache_path(),
                data.split_cache_path(seed=1),
                data.split_cache_path(test_size=0.3),
                data.split_cache_path(val_size=0.1),
            }
        )
        == 4
    )
