"""Time the course's building blocks on this machine (speed targets live here, not in tests).

    python tools/benchmark.py      # or: make benchmark

Prints, for the two default models, the CPU training time to reach the epoch
count the lessons use and the test accuracy reached, and the time to save and
load a full training checkpoint. Each figure is the median of REPEATS runs.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from helper.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from helper.data import make_loaders, split_digits
from helper.models import build_model
from helper.training import build_optimizer, evaluate, fit, seed_everything

REPEATS = 3
RECIPES = {
    "mlp, Adam 1e-2, 8 epochs": ({"arch": "mlp"}, {"name": "adam", "lr": 1e-2}, 8),
    "cnn, Adam 3e-3, 6 epochs": ({"arch": "cnn"}, {"name": "adam", "lr": 3e-3}, 6),
}


def median_seconds(fn, repeats: int = REPEATS) -> tuple[float, object]:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` calls, and its last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> int:
    split = split_digits()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print(f"{'training (CPU)':<28} {'seconds':>8} {'test acc':>9}")
    for label, (model_config, optim_config, epochs) in RECIPES.items():
        def train():
            seed_everything(0)
            loaders = make_loaders(split)
            model = build_model(model_config)
            optimizer = build_optimizer(model, optim_config)
            fit(model, optimizer, loaders.train, loaders.val, epochs=epochs, progress=False)
            return evaluate(model, loaders.test)[1], model, optimizer
        seconds, (accuracy, model, optimizer) = median_seconds(train)
        print(f"{label:<28} {seconds:8.2f} {accuracy:9.3f}")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.pt"
        checkpoint = make_checkpoint(model, optimizer, epoch=epochs)
        save_s, _ = median_seconds(lambda: save_checkpoint(checkpoint, path), repeats=10)
        load_s, _ = median_seconds(lambda: load_checkpoint(path), repeats=10)
        print(f"\ncheckpoint of the cnn ({path.stat().st_size:,} bytes): "
              f"save {save_s * 1000:.1f} ms (atomic, fsync), load {load_s * 1000:.1f} ms (weights_only)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
