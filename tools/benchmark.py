"""Time the course's building blocks on this machine (speed targets live here, not in tests).

    python tools/benchmark.py      # or: make benchmark

Prints, for the two default models, the CPU training time to reach the epoch
count the lessons use and the test accuracy reached, and the time to save and
load a full training checkpoint. Each figure is the median of REPEATS runs.

Then the cost of crash safety on a large checkpoint (``IO_MB`` of tensors):
``save_checkpoint`` (temp file, fsync, weights_only check, rename, folder
fsync) against plain ``torch.save`` with and without fsync and against writing
the same bytes raw + fsync (the limit); ``load_checkpoint`` (CRC-32 of every
member checked) against plain ``torch.load`` and against reading the bytes.
Disks are noisy (the same call varies 2-3x), so the methods are interleaved,
each is repeated ``IO_REPEATS`` times with ``os.sync()`` before every call,
and medians are printed with the spread (min-max).

    python tools/benchmark.py --io-only     # only the checkpoint I/O part
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from helper.checkpoint import FORMAT_VERSION, load_checkpoint, make_checkpoint, save_checkpoint, verify_zip
from helper.paths import ARTIFACTS_DIR
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


IO_MB, IO_REPEATS = 384, 10


def interleaved(methods: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each method, the methods taking turns (rotated each round), os.sync() before each."""
    times: dict[str, list[float]] = {name: [] for name in methods}
    names = list(methods)
    for round_ in range(repeats):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            os.sync()
            start = time.perf_counter()
            methods[name]()
            times[name].append(time.perf_counter() - start)
    return times


def report(times: dict[str, list[float]], size: int, reference: str) -> None:
    ref = statistics.median(times[reference])
    print(f"  {'method':<40} {'median s':>9} {'min-max s':>13} {'MB/s':>7} {'vs ' + reference.split()[0]:>10}")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"  {name:<40} {med:9.3f} {min(values):6.3f}-{max(values):<6.3f} {size / med / 1e6:7.0f} "
              f"{med / ref:9.2f}x")


def checkpoint_io(mb: int = IO_MB, repeats: int = IO_REPEATS) -> None:
    """Crash-safe save and checked load against plain torch.save/torch.load and raw I/O, on one disk."""
    folder = ARTIFACTS_DIR / "benchmark"  # the disk the course writes to (not a tmpfs /tmp)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    try:
        tensors = {f"layer{i}.weight": torch.randn(1 << 20) for i in range(mb // 4)}  # 4 MB each
        checkpoint = {"format_version": FORMAT_VERSION, "epoch": 1, "step": 1, "config": None, "model": tensors,
                      "optimizer": None, "scheduler": None, "history": {}, "rng": {}}
        save_checkpoint(checkpoint, folder / "ref.pt")
        raw = (folder / "ref.pt").read_bytes()
        size = len(raw)

        def plain_fsync():
            with open(folder / "plain_fsync.pt", "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())

        def raw_fsync():
            with open(folder / "raw.bin", "wb") as f:
                f.write(raw)
                f.flush()
                os.fsync(f.fileno())

        print(f"\ncheckpoint I/O, {size / 1e6:.0f} MB file, {repeats} interleaved rounds, os.sync() before each call")
        print("save:")
        report(interleaved({
            "save_checkpoint (durable, checked)": lambda: save_checkpoint(checkpoint, folder / "durable.pt"),
            "torch.save (no fsync)": lambda: torch.save(checkpoint, folder / "plain.pt"),
            "torch.save + fsync": plain_fsync,
            "raw write + fsync (the limit)": raw_fsync,
        }, repeats), size, "raw write + fsync (the limit)")
        print("load (the file is in the page cache, as right after a save):")
        path = folder / "ref.pt"
        report(interleaved({
            "load_checkpoint (CRC-32 checked)": lambda: load_checkpoint(path),
            "load_checkpoint(verify=False)": lambda: load_checkpoint(path, verify=False),
            "torch.load(weights_only=True)": lambda: torch.load(path, map_location="cpu", weights_only=True),
            "verify_zip alone (CRC-32 of every member)": lambda: verify_zip(path),
            "read the bytes (the limit)": path.read_bytes,
        }, repeats), size, "torch.load(weights_only=True)")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    if "--io-only" in sys.argv[1:]:
        checkpoint_io()
        return 0
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
    checkpoint_io()
    return 0


if __name__ == "__main__":
    sys.exit(main())
