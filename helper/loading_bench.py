"""Measure how fast, and with how much memory, a big checkpoint loads (lesson 10).

Each loading method runs in a fresh process, so one method's allocations never
help or hurt the next. Starting a Python that imports torch costs seconds, so a
small *fork server* (a process that imported torch once and, for each job, makes
a copy of itself with ``os.fork``, which takes milliseconds) runs each
measurement in a fresh child: the child starts with nothing loaded, records its
memory as a baseline, loads, and reports the growth. The page cache is shared by
all processes, so every measurement here is warm unless
:func:`evict_from_page_cache` ran first (:func:`resident_fraction` tells whether
it worked).

Three memory figures are reported per method: ``peak`` (the RSS high-water mark's
growth during the load), ``held`` (current RSS growth after every weight was
touched) and ``priv.`` (private memory growth then); :mod:`helper.memory` says
what each counts and where it is unknown (macOS: only the peak; Windows has no
``fork``, so the table runs on Linux and macOS only, while :func:`load_by` runs
everywhere).

>>> config = stack_config(8)            # a stack of Linear layers of about 8 MB
>>> sorted(config) == ["layers", "width"]
True

``python -m tools.bench_loading`` prints the table for any size; the notebook
``10_big_models_fast_loading.ipynb`` writes each call out by hand first.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from helper.fork_server import ForkServer, serve
from helper.memory import (
    MB,
    current_mb,
    evict_from_page_cache,
    grown,
    mapped_file,
    peak_mb,
    private_mb,
    read_seconds,
    resident_fraction,
)

__all__ = [
    "METHODS",
    "REFERENCES",
    "Measurement",
    "ForkServer",
    "stack_config",
    "build_stack",
    "save_both",
    "load_by",
    "measure",
    "read_seconds",
    "evict_from_page_cache",
    "resident_fraction",
    "mapped_file",
    "MAPPED",
    "LABELS",
    "run_benchmark",
    "format_table",
]

#: the memcpy reference row is measured this many times (each in a fresh child) and the fastest run kept.
MEMCPY_REPEATS = 3
#: method name -> what it builds, in the order the lesson teaches them.
METHODS: dict[str, str] = {
    "torch.load + load_state_dict": (
        "model built (memory allocated, random init), file read into RAM, copied into the model"
    ),
    "torch.load mmap=True + load_state_dict": "model built, file mapped, copied into the model",
    "meta + mmap=True + assign=True": "model on meta (no memory), parameters ARE the mapped tensors",
    "safetensors load_file + assign=True": (
        "model on meta, file mapped (safetensors >= 0.8), parameters ARE those tensors"
    ),
    "safetensors safe_open, per tensor": "model built, each tensor read and copied in, one at a time",
}
#: reference rows: plain reads and one copy of the same bytes, for comparison. They are not bounds: a
#: warm ``cat`` has beaten the memcpy row (8.0 against 7.9 GB/s), and a method can beat a cold ``cat``.
REFERENCES: dict[str, str] = {
    "read the file, cold (cat > /dev/null)": "its bytes from the disk, after evicting them from the page cache",
    "read the file, warm (cat > /dev/null)": "its bytes from the page cache",
    "memcpy into touched memory": "y.copy_(x) where y was allocated and written once before the clock"
    " starts (no page faults); fastest of 3 runs",
}
#: methods whose load maps the file and reads nothing: a GB/s figure for them would measure no reading.
MAPPED = frozenset({"meta + mmap=True + assign=True", "safetensors load_file + assign=True"})
#: short names for the table (it must fit a slide).
LABELS: dict[str, str] = {
    "torch.load + load_state_dict": "torch.load + copy",
    "torch.load mmap=True + load_state_dict": "mmap=True + copy",
    "meta + mmap=True + assign=True": "meta + mmap + assign",
    "safetensors load_file + assign=True": "load_file + assign",
    "safetensors safe_open, per tensor": "safe_open per tensor",
    "read the file, cold (cat > /dev/null)": "cat, cold cache",
    "read the file, warm (cat > /dev/null)": "cat, warm cache",
    "memcpy into touched memory": "memcpy, touched dest",
}


def stack_config(size_mb: float, width: int = 2048) -> dict[str, int]:
    """Config of a stack of ``Linear(width, width)`` layers holding about ``size_mb`` MB of float32."""
    per_layer = (width * width + width) * 4
    return {"layers": max(1, round(size_mb * MB / per_layer)), "width": width}


def build_stack(config: dict[str, int]) -> nn.Sequential:
    """``Linear -> ReLU`` repeated ``config["layers"]`` times; built on the current default device."""
    layers: list[nn.Module] = []
    for _ in range(config["layers"]):
        layers += [nn.Linear(config["width"], config["width"]), nn.ReLU()]
    return nn.Sequential(*layers)


def save_both(state: dict[str, torch.Tensor], folder: str | os.PathLike[str], stem: str = "big") -> tuple[Path, Path]:
    """Save ``state`` once with ``torch.save`` and once with safetensors; return ``(pt, safetensors)`` paths."""
    from safetensors.torch import save_file

    folder = Path(folder)
    pt, st = folder / f"{stem}.pt", folder / f"{stem}.safetensors"
    torch.save(state, pt)
    save_file(state, st)
    return pt, st


#: the methods that build their model on the meta device (no memory, no random initialisation).
ON_META = frozenset({"meta + mmap=True + assign=True", "safetensors load_file + assign=True"})


def load_by(
    method: str, pt: Path, st: Path, config: dict[str, int], device: str = "cpu", times: dict[str, float] | None = None
) -> nn.Module:
    """Load the checkpoint into a new ``build_stack(config)`` model the way ``method`` (a key of METHODS) says.

    ``times``, if given, receives ``times["build"]``: the seconds spent building the model, part of the
    load: allocating its memory (the first write to each fresh page, a page fault) and filling it with
    random numbers; next to nothing on the meta device.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {list(METHODS)}")
    start = time.perf_counter()
    with torch.device("meta" if method in ON_META else device):
        model = build_stack(config)
    _sync(device)
    if times is not None:
        times["build"] = time.perf_counter() - start
    if method == "torch.load + load_state_dict":
        model.load_state_dict(torch.load(pt, map_location=device, weights_only=True))
    elif method == "torch.load mmap=True + load_state_dict":
        model.load_state_dict(torch.load(pt, mmap=True, map_location=device, weights_only=True))
    elif method == "meta + mmap=True + assign=True":
        model.load_state_dict(torch.load(pt, mmap=True, map_location=device, weights_only=True), assign=True)
    elif method == "safetensors load_file + assign=True":
        model.load_state_dict(load_file(st, device=device), assign=True)
    else:  # "safetensors safe_open, per tensor"
        targets = model.state_dict()
        with safe_open(st, framework="pt", device=device) as f, torch.no_grad():
            for key in f.keys():
                targets[key].copy_(f.get_tensor(key))
    return model


def _touch(tensors: list[torch.Tensor]) -> None:
    """Read one value per 4 KiB page of every tensor, so every page is resident."""
    for t in tensors:
        flat = t.detach().reshape(-1)
        step = max(1, 4096 // t.element_size())
        flat[::step].sum().item()


def _same_tensors(model: nn.Module, reference: dict[str, torch.Tensor]) -> bool:
    """``torch.equal`` for every entry of the model's state_dict against ``reference`` (same keys too).

    safetensors stores keys sorted, so the key *sets* are compared, not their order.
    """
    state = model.state_dict()
    return sorted(state) == sorted(reference) and all(torch.equal(state[k].cpu(), reference[k]) for k in state)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job in THIS process and return its figures (the fork server calls it in a fresh child).

    ``job``: ``{"method": ..., "pt": ..., "st": ..., "config": ..., "device": ...}`` for a method of
    METHODS (checked with ``torch.equal`` against the *other* file: .pt methods against the
    .safetensors file and the other way round), or ``{"method": "memcpy into touched memory",
    "nbytes": ...}``. Figures: ``seconds`` (the load), ``build_seconds`` (the part of the load spent building
    the model: allocating its memory and filling it with random numbers), ``used_seconds`` (the load plus a
    first touch of every page of every weight: one value per 4 KiB page), ``peak_mb`` (RSS high-water growth
    during the load), ``held_mb`` (growth of the current RSS, VmRSS, after the touch: what the process still
    holds), ``private_mb`` (growth of private memory after the touch). The memory figures are None where the
    system does not report them (see the module's doc).
    """
    device = job.get("device", "cpu")
    if device.startswith("cuda"):
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats()
    if job["method"] == "memcpy into touched memory":
        source = torch.ones(job["nbytes"], dtype=torch.uint8, device=device)
        base, current, private = peak_mb(), current_mb(), private_mb()
        copy = torch.zeros_like(source)  # allocated and written: every page faulted in before the clock
        _sync(device)
        start = time.perf_counter()
        copy.copy_(source)
        _sync(device)
        seconds = time.perf_counter() - start
        assert copy[-1].item() == 1
        return {
            "seconds": seconds,
            "used_seconds": seconds,
            "peak_mb": grown(peak_mb(), base),
            "held_mb": grown(current_mb(), current),
            "private_mb": grown(private_mb(), private),
        }
    pt, st = Path(job["pt"]), Path(job["st"])
    base, current, private = peak_mb(), current_mb(), private_mb()
    times: dict[str, float] = {}
    start = time.perf_counter()
    model = load_by(job["method"], pt, st, job["config"], device, times=times)
    _sync(device)
    seconds = time.perf_counter() - start
    peak = grown(peak_mb(), base)
    _touch(list(model.state_dict().values()))
    _sync(device)
    result = {
        "seconds": seconds,
        "build_seconds": times["build"],
        "used_seconds": time.perf_counter() - start,
        "peak_mb": peak,
        "held_mb": grown(current_mb(), current),
        "private_mb": grown(private_mb(), private),
    }
    if device.startswith("cuda"):
        result["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / MB
    if job.get("check", True):
        if job["method"].startswith("safetensors"):
            reference = torch.load(pt, mmap=True, map_location="cpu", weights_only=True)
        else:
            from safetensors.torch import load_file

            reference = load_file(st)
        result["same"] = _same_tensors(model, reference)
    return result


@dataclass
class Measurement:
    """One row of the table: a method or a limit, its times, and its memory growth in MB."""

    name: str
    seconds: float
    build_seconds: float | None = None  # the part of the load spent building the model (allocate + random fill)
    used_seconds: float | None = None  # load + first touch of every page (one value per 4 KiB page)
    peak_mb: float | None = None  # RSS high-water mark growth while loading
    held_mb: float | None = None  # current RSS (VmRSS) growth after that first touch of every page
    private_mb: float | None = None  # growth of private (anonymous) memory after that touch
    gpu_peak_mb: float | None = None  # torch.cuda.max_memory_allocated, when loading to a GPU
    same: bool | None = None  # every tensor torch.equal to the saved state
    cached: float | None = None  # fraction of the file in the page cache when the method started


def run_benchmark(
    pt: Path,
    st: Path,
    config: dict[str, int],
    *,
    device: str = "cpu",
    cold: bool = False,
    methods: list[str] | None = None,
    server: ForkServer | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[Measurement]:
    """Measure every method of METHODS (each in a fresh forked child), then the REFERENCES rows on ``pt``.

    ``cold=True`` evicts both files from the page cache before each method; otherwise both are
    read once (``cat``) before each method, so it starts warm. ``Measurement.cached`` records the
    fraction of the method's file in the page cache just before it ran. The cold read row is left
    out where eviction does not work.
    """
    own = server is None
    server = server or ForkServer()
    pt, st = Path(pt), Path(st)
    rows = []
    try:
        for method in methods or list(METHODS):
            if progress:
                progress(method)
            for path in (pt, st):
                evict_from_page_cache(path) if cold else read_seconds(path)
            cached = resident_fraction(st if method.startswith("safetensors") else pt)
            result = server.run({"method": method, "pt": pt, "st": st, "config": config, "device": device})
            if "error" in result:
                raise RuntimeError(f"{method}: {result['error']}")
            rows.append(Measurement(method, **result, cached=cached))
        cold_read, warm_read = list(REFERENCES)[:2]
        if evict_from_page_cache(pt):
            seconds = read_seconds(pt)
            rows.append(Measurement(cold_read, seconds, used_seconds=seconds, cached=0.0))
        cached = resident_fraction(pt)
        seconds = read_seconds(pt)
        rows.append(Measurement(warm_read, seconds, used_seconds=seconds, cached=cached))
        memcpy_name = list(REFERENCES)[2]
        copies = [
            server.run({"method": memcpy_name, "nbytes": pt.stat().st_size, "device": device})
            for _ in range(MEMCPY_REPEATS)
        ]
        for memcpy in copies:
            if "error" in memcpy:
                raise RuntimeError(f"memcpy: {memcpy['error']}")
        # one run can be slowed by whatever else the machine does: keep the fastest
        rows.append(Measurement(memcpy_name, **min(copies, key=lambda c: c["seconds"])))
    finally:
        if own:
            server.close()
    return rows


def format_table(rows: list[Measurement], size_mb: float) -> str:
    """A text table 70 characters wide: seconds, GB/s, memory growth in MB, same tensors.

    Methods are named by their LABELS. ``build`` is the part of ``load s`` spent building the model
    (allocating its memory and filling it with random numbers). GB/s is ``size_mb`` over the seconds
    spent on the file's bytes, ``+touch`` minus ``build``, so that it counts neither; it is left blank for the MAPPED
    methods, whose load reads nothing and whose touch reads one value per page.
    """
    gpu = any(r.gpu_peak_mb is not None for r in rows)

    def num(value: float | None, digits: int = 0) -> str:
        return "" if value is None else f"{value:.{digits}f}"

    head = (
        f"{'method':<20} {'load s':>6} {'build':>5} {'+touch':>6} {'GB/s':>5} {'peak':>5} {'held':>5}"
        f" {'priv.':>5}" + (f" {'GPU':>5}" if gpu else "")
    )
    caption = "seconds; GB/s: file size / (+touch - build); memory: MB grown"
    lines = [caption, head + "  same", "-" * (len(head) + 6)]
    for r in rows:
        spent = (r.used_seconds or r.seconds) - (r.build_seconds or 0.0)
        rate = None if r.name in MAPPED else size_mb / 1024 / max(spent, 1e-9)
        line = (
            f"{LABELS.get(r.name, r.name):<20} {r.seconds:6.3f} {num(r.build_seconds, 3):>5}"
            f" {num(r.used_seconds, 3):>6} {num(rate, 1):>5} {num(r.peak_mb):>5} {num(r.held_mb):>5}"
            f" {num(r.private_mb):>5}" + (f" {num(r.gpu_peak_mb):>5}" if gpu else "")
        )
        lines.append(line + f"  {'' if r.same is None else r.same}")
    return "\n".join(lines)


def as_dicts(rows: list[Measurement]) -> list[dict[str, Any]]:
    """The rows as plain dicts (for JSON)."""
    return [asdict(r) for r in rows]


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        serve(measure)
    else:
        sys.exit("usage: python -m helper.loading_bench --serve  (started by ForkServer)")
