"""Time the course on this machine and say how noisy each figure was (``make benchmark``).

    python -m tools.benchmark                       # everything (about 15 minutes on 2 cores)
    python -m tools.benchmark --only io             # checkpoint save/load ratios only
    python -m tools.benchmark --only notebooks 03   # lesson 03's run time, quiet and busy
    python -m tools.benchmark --only io,notebooks --readme   # figures into docs/benchmarks.md, README.md
    make benchmark BENCH="--only io"

Sections (``--only``, comma-separated):

- ``training``: CPU training time of the two default models and a small checkpoint's save/load.
- ``io``: the price of safety on a large checkpoint (``IO_MB`` of tensors): ``save_checkpoint``
  against ``torch.save`` + fsync, ``load_checkpoint`` (CRC-32 checked) against ``torch.load``;
  printed as ratios per round (same round, same disk state), median and spread.
- ``notebooks``: every notebook's run time (``tools/run_notebooks.py``, own kernel, thread
  policy of the harness), quiet and with one core busy, and the busy/quiet ratio (target 1.5).
- ``loading``: lesson 10's loading table (``tools/bench_loading.py``).

The io and notebook sections run in rounds and each round alternates "quiet" and "busy" (one
core kept busy by a process this benchmark starts and stops: ``tools/bench_noise.py``); within a
round the methods take turns, rotated each round, so drift hits every method alike. Every figure
is printed with its median, min-max, the load average (1/5/15 min) before it, and the cores other
processes used meanwhile; samples measured while other processes used more than a quarter of a
core are flagged, a warning closes the run, and ``--readme`` refuses to write a figure more than a
quarter of whose samples were flagged. Raw samples
go to ``artifacts/benchmark/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from tools import bench_noise as noise
from tools import harness

ROOT = harness.ROOT
SECTIONS = ("training", "io", "notebooks", "loading")
IO_MB, IO_ROUNDS, NB_ROUNDS, TRAIN_ROUNDS = 384, 10, 2, 3
BUSY_LIMIT = 1.5  # issue 18: a notebook's time with one core busy, at most this times its quiet time
README_START, README_END = "<!-- benchmark:start -->", "<!-- benchmark:end -->"  # in BENCHMARKS_MD
README, BENCHMARKS_MD = ROOT / "README.md", ROOT / "docs" / "benchmarks.md"


class Log:
    """Every sample with its label, the noise verdicts, and the figures for the README."""

    def __init__(self) -> None:
        self.samples: list[dict] = []
        self.noisy: list[str] = []
        self.readme: list[str] = []  # sentences for the figures' block (how they were measured)

    def add(self, section: str, label: str, sample, own_runnable: float = 1.0) -> list[str]:
        reasons = noise.noise_reasons(sample, own_runnable=own_runnable)
        self.samples.append({"section": section, "label": label, **asdict(sample), "noisy": reasons})
        if reasons:
            self.noisy.append(f"{section}: {label}: {reasons[0]}")
        return reasons


def noisy_figures(samples: list[dict]) -> list[str]:
    """The figures (a method's median over its rounds) too noisy for the README: more than a quarter of
    their samples were measured while other processes used the CPU. One noisy sample of ten cannot move
    a median far; three can."""
    flags: dict[tuple[str, str], list[bool]] = {}
    for s in samples:
        flags.setdefault((s["section"], s["label"]), []).append(bool(s["noisy"]))
    return [
        f"{section}: {label}: {sum(f)} of {len(f)} samples noisy"
        for (section, label), f in flags.items()
        if 4 * sum(f) > len(f)
    ]


def summary(values: list[float], digits: int = 3) -> str:
    """``median (min-max)`` of a list of figures."""
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def conditions(samples: list) -> str:
    """Load average before the first and after the last sample, and the most cores others used."""
    others = [s.others_cores for s in samples if s.others_cores is not None]
    worst = f", others up to {max(others):.2f} cores" if others else ""
    return f"load {noise.fmt_load(samples[0].load_before)} -> {noise.fmt_load(samples[-1].load_after)}{worst}"


def noise_note(samples: list) -> str:
    """Next to one figure: the 1-minute load average over its samples and others' median CPU use."""
    loads = [s.load_before[0] for s in samples]
    others = [s.others_cores for s in samples if s.others_cores is not None]
    note = f"load {min(loads):.2f}-{max(loads):.2f}"
    return note + (f", others {statistics.median(others):.2f} cores" if others else "")


def rotated(items: list, round_: int) -> list:
    """``items`` started at a different place each round, so no method always runs first."""
    k = round_ % len(items)
    return items[k:] + items[:k]


def scenarios(round_: int) -> list[bool]:
    """Quiet (False) and busy (True) in turn, the order swapped every round."""
    return [False, True] if round_ % 2 == 0 else [True, False]


def timed(fn: Callable[[], object], busy: bool, sync: bool = False):
    """Run ``fn`` once under a Meter; with one core kept busy meanwhile if ``busy``."""
    if sync:
        os.sync()
    if not busy:
        with noise.Meter() as m:
            fn()
        return m.sample
    with noise.busy_core():
        time.sleep(0.2)  # let the busy process get going
        with noise.Meter(busy_core=True) as m:
            fn()
    return m.sample


# --------------------------------------------------------------------------------------------------
# training


def training(log: Log, rounds: int = TRAIN_ROUNDS) -> None:
    import tempfile

    import torch

    from helper.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
    from helper.data import make_loaders, split_digits
    from helper.models import build_model
    from helper.training import build_optimizer, evaluate, fit, seed_everything

    recipes = {
        "mlp, Adam 1e-2, 8 epochs": ({"arch": "mlp"}, {"name": "adam", "lr": 1e-2}, 8),
        "cnn, Adam 3e-3, 6 epochs": ({"arch": "cnn"}, {"name": "adam", "lr": 3e-3}, 6),
    }
    split = split_digits()
    results: dict[str, list] = {label: [] for label in recipes}
    trained = {}
    for round_ in range(rounds):
        for label in rotated(list(recipes), round_):
            model_config, optim_config, epochs = recipes[label]

            def train(label=label, model_config=model_config, optim_config=optim_config, epochs=epochs):
                seed_everything(0)
                loaders = make_loaders(split)
                model = build_model(model_config)
                optimizer = build_optimizer(model, optim_config)
                fit(model, optimizer, loaders.train, loaders.val, epochs=epochs, progress=False)
                trained[label] = (evaluate(model, loaders.test)[1], model, optimizer, epochs)

            sample = timed(train, busy=False)
            log.add("training", label, sample)
            results[label].append(sample)
    print(f"\ntraining (CPU, {torch.get_num_threads()} thread(s), {rounds} rounds interleaved)")
    print(f"  {'recipe':<28} {'median s (min-max)':>22} {'test acc':>9}  conditions")
    for label, samples in results.items():
        print(
            f"  {label:<28} {summary([s.seconds for s in samples]):>22} {trained[label][0]:9.3f}  {noise_note(samples)}"
        )
    accuracy, model, optimizer, epochs = trained["cnn, Adam 3e-3, 6 epochs"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.pt"
        checkpoint = make_checkpoint(model, optimizer, epoch=epochs)
        save = [timed(lambda: save_checkpoint(checkpoint, path), busy=False) for _ in range(10)]
        load = [timed(lambda: load_checkpoint(path), busy=False) for _ in range(10)]
        for label, samples in (("cnn checkpoint save", save), ("cnn checkpoint load", load)):
            for s in samples:
                log.add("training", label, s)
        print(
            f"  checkpoint of the cnn ({path.stat().st_size:,} bytes): save "
            f"{summary([s.seconds * 1000 for s in save])} ms (atomic, fsync), load "
            f"{summary([s.seconds * 1000 for s in load])} ms (CRC-checked, weights_only)"
        )


# --------------------------------------------------------------------------------------------------
# checkpoint I/O


def fresh_memory() -> str:
    """Have glibc give every block of 128 KiB or more fresh from the system, as in a process that loads one
    checkpoint; what was done, as a sentence. (128 KiB is glibc's default mmap threshold; ``mallopt`` holds it
    there instead of letting it rise.)

    By default glibc moves its mmap threshold up after the first large free, and whether a 384 MB load
    then reuses freed heap memory (no page faults: 30-110 ms) or not (170 ms) depends on what small
    objects the previous call left above it. Measured: ``load_verified(verify=False)`` / ``torch.load``
    1.07 by default and 1.02-1.03 with fresh memory, with 3 ms of checks: most of the default's ratio was
    the heap's layout. The setting lasts for the process (the io section runs after training; notebooks
    and the loading table run in processes of their own)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = getattr(libc, "mallopt", None)
    except OSError:
        mallopt = None
    if mallopt is not None and mallopt(-3, 128 << 10) == 1:  # M_MMAP_THRESHOLD at glibc's own default, held there
        return (
            "memory: blocks of 128 KiB or more fresh from the system (glibc's default mmap threshold, held by "
            "mallopt), as in a process loading once"
        )
    return "memory: this C library's default (no glibc mallopt here)"


def io(log: Log, mb: int = IO_MB, rounds: int = IO_ROUNDS, heap: str = "fresh") -> dict[str, dict[str, list[float]]]:
    """Save and load ratios, quiet and with one core busy; returns the per-round ratios.

    ``heap``: "fresh" (``fresh_memory``) or "default" (glibc's own policy: figures that depend on what
    ran before each call)."""
    import torch

    memory = fresh_memory() if heap == "fresh" else "memory: the C library's default (--io-heap default)"
    log.readme.append("Load and save ratios, " + memory)

    from helper.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint, verify_zip
    from helper.paths import ARTIFACTS_DIR

    folder = ARTIFACTS_DIR / "benchmark" / "io"  # the disk the course writes to (not a tmpfs /tmp)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    model = torch.nn.Module()
    for i in range(mb // 4):  # 4 MB each
        model.register_buffer(f"layer{i}", torch.randn(1 << 20))
    checkpoint = make_checkpoint(model, epoch=1, step=1, config={})
    ref = folder / "ref.pt"
    save_checkpoint(checkpoint, ref)
    raw = ref.read_bytes()

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

    methods = {
        "save_checkpoint": lambda: save_checkpoint(checkpoint, folder / "durable.pt"),
        "torch.save + fsync": plain_fsync,
        "raw write + fsync": raw_fsync,
        "load_checkpoint": lambda: load_checkpoint(ref),
        "torch.load": lambda: torch.load(ref, map_location="cpu", weights_only=True),
        "verify_zip": lambda: verify_zip(ref),
        "read bytes": ref.read_bytes,
    }
    times: dict[bool, dict[str, list]] = {busy: {name: [] for name in methods} for busy in (False, True)}
    try:
        for round_ in range(rounds):
            for busy in scenarios(round_):
                for name in rotated(list(methods), round_):
                    sample = timed(methods[name], busy, sync=True)
                    log.add("io", f"{name} ({'busy' if busy else 'quiet'})", sample, own_runnable=1 + busy)
                    times[busy][name].append(sample)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    ratios = {}
    print(
        f"\ncheckpoint I/O, {len(raw) / 1e6:.0f} MB file, {rounds} rounds, methods rotated, os.sync() before each call"
        f"; {memory}"
    )
    for busy in (False, True):
        t = {name: [s.seconds for s in samples] for name, samples in times[busy].items()}
        ratio = {
            "load_checkpoint / torch.load": [a / b for a, b in zip(t["load_checkpoint"], t["torch.load"])],
            "save_checkpoint / (torch.save + fsync)": [
                a / b for a, b in zip(t["save_checkpoint"], t["torch.save + fsync"])
            ],
            "save_checkpoint / raw write + fsync": [
                a / b for a, b in zip(t["save_checkpoint"], t["raw write + fsync"])
            ],
        }
        ratios["busy" if busy else "quiet"] = ratio
        flat = [s for samples in times[busy].values() for s in samples]
        print(f" {'one core busy' if busy else 'quiet'} ({conditions(flat)})")
        for name, values in t.items():
            print(f"  {name:<40} {summary(values):>22} s  {noise_note(times[busy][name])}")
        for name, values in ratio.items():
            target = {
                "load_checkpoint / torch.load": " (target <= 1.03)",
                "save_checkpoint / (torch.save + fsync)": " (target <= 1.1)",
            }.get(name, "")
            print(f"  {name:<40} {summary(values):>22} x{target}")
    return ratios


# --------------------------------------------------------------------------------------------------
# notebooks


def notebooks(log: Log, prefixes: list[str], rounds: int = NB_ROUNDS) -> dict[str, dict[str, list[float]]]:
    """Every notebook's run time quiet and with one core busy; returns seconds per notebook."""
    from tools import run_notebooks as runner  # nbclient, nbconvert: only for this section

    paths = harness.notebooks(prefixes)
    samples: dict[str, dict[bool, list]] = {p.name: {False: [], True: []} for p in paths}
    failed = []
    print(
        f"\nnotebooks, {rounds} rounds, quiet and one core busy in turn, OMP_NUM_THREADS="
        f"{harness.kernel_env()['OMP_NUM_THREADS']}",
        flush=True,
    )
    for round_ in range(rounds):
        for path in rotated(paths, round_):
            for busy in scenarios(round_):
                status = []

                def run(path=path, status=status):
                    status.append(runner.run_one(path, write=False, timeout=600)[1])

                sample = timed(run, busy)
                if status[0] != "ok":
                    failed.append(f"{path.name}: {status[0]}")
                log.add("notebooks", f"{path.name} ({'busy' if busy else 'quiet'})", sample, own_runnable=1 + busy)
                samples[path.name][busy].append(sample)
            print(
                f"  round {round_ + 1}: {path.name:<40} quiet {samples[path.name][False][-1].seconds:6.1f} s, "
                f"busy {samples[path.name][True][-1].seconds:6.1f} s",
                flush=True,
            )
    print(f"\n  {'notebook':<40} {'quiet s (min-max)':>20} {'busy s (min-max)':>20} {'busy/quiet':>10}  conditions")
    result = {}
    for name, by in samples.items():
        quiet, busy = [s.seconds for s in by[False]], [s.seconds for s in by[True]]
        ratio = statistics.median(busy) / statistics.median(quiet)
        flag = "" if ratio <= BUSY_LIMIT else f"  > {BUSY_LIMIT}x"
        print(
            f"  {name:<40} {summary(quiet, 1):>20} {summary(busy, 1):>20} {ratio:9.2f}x  "
            f"{noise_note(by[False] + by[True])}{flag}"
        )
        result[name] = {"quiet": quiet, "busy": busy}
    for line in failed:
        print(f"  FAILED {line}")
    return result


# --------------------------------------------------------------------------------------------------
# lesson 10's loading table


def loading(log: Log) -> None:
    print("\nlesson 10's loading table (tools/bench_loading.py)", flush=True)
    with noise.Meter() as m:
        subprocess.run([sys.executable, "-m", "tools.bench_loading"], cwd=harness.ROOT, check=False)
    reasons = log.add("loading", "tools/bench_loading.py", m.sample)
    print(
        f"  ({m.sample.seconds:.0f} s, load {noise.fmt_load(m.sample.load_before)} -> "
        f"{noise.fmt_load(m.sample.load_after)}{', NOISY: ' + reasons[0] if reasons else ''})"
    )


# --------------------------------------------------------------------------------------------------
# README


def readme_block(
    machine: dict, io_ratios: dict | None, nb_times: dict | None, loads: str, notes: list[str] | tuple = ()
) -> str:
    """This run's figures, in Markdown, for docs/benchmarks.md (the notebooks' also feed the README)."""
    lines = [
        README_START,
        f"Measured by `make benchmark` on {machine['cpu']}, {machine['cores']} cores, Python "
        f"{machine['python']}, OMP_NUM_THREADS={machine['OMP_NUM_THREADS']}; {loads}. "
        'Medians with min-max; "busy": one other process kept a core busy throughout.',
        "",
    ]
    if io_ratios:
        lines += ["| ratio (per round, 384 MB checkpoint) | quiet | one core busy |", "|---|---|---|"]
        for name in io_ratios["quiet"]:
            lines.append(f"| {name} | {summary(io_ratios['quiet'][name], 2)} | {summary(io_ratios['busy'][name], 2)} |")
        lines += ["", *(f"{note}." for note in notes), ""] if notes else [""]
    if nb_times:
        lines += ["| notebook | quiet s | one core busy s | busy/quiet |", "|---|---|---|---|"]
        for name, t in nb_times.items():
            ratio = statistics.median(t["busy"]) / statistics.median(t["quiet"])
            lines.append(f"| `{name}` | {summary(t['quiet'], 1)} | {summary(t['busy'], 1)} | {ratio:.2f}x |")
        lines.append("")
    lines.append(README_END)
    return "\n".join(lines)


_BLOCK_TIME = re.compile(r"^\| `(\d\d_\w+\.ipynb)` \| ([\d.]+) \(", re.MULTILINE)  # readme_block's quiet median
_LESSON_ROW = re.compile(r"^(\| `(\d\d_\w+\.ipynb)` \| .* \| )[\d.]+ s( \|)$", re.MULTILINE)  # README's lesson table


def write_readme(block: str, doc: Path = BENCHMARKS_MD, readme: Path = README) -> None:
    """Put ``block`` between the benchmark markers of docs/benchmarks.md, and each notebook's quiet
    median from it into the run-time column of the README's lesson table (the rest of both kept)."""
    text = doc.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(README_START) + ".*?" + re.escape(README_END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{doc.name} has no {README_START} ... {README_END} block")
    times = dict(_BLOCK_TIME.findall(block))
    lessons = readme.read_text(encoding="utf-8")
    missing = sorted(set(times) - {name for _, name, _ in _LESSON_ROW.findall(lessons)})
    if missing:
        raise SystemExit(f"{readme.name}'s lesson table has no run-time row for {missing}")
    doc.write_text(pattern.sub(lambda _: block, text), encoding="utf-8")
    if times:

        def row(m: re.Match) -> str:
            return f"{m[1]}{times[m[2]]} s{m[3]}" if m[2] in times else m[0]

        readme.write_text(_LESSON_ROW.sub(row, lessons), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prefixes", nargs="*", help="notebooks section: only notebooks whose name starts so")
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections to run, of {', '.join(SECTIONS)} (default: all)",
    )
    parser.add_argument("--io-only", action="store_true", help="same as --only io")
    parser.add_argument("--rounds", type=int, help="rounds per section (default: io 10, notebooks 2, training 3)")
    parser.add_argument("--io-mb", type=int, default=IO_MB, help=f"io section: MB of tensors (default {IO_MB})")
    parser.add_argument(
        "--io-heap",
        choices=("fresh", "default"),
        default="fresh",
        help="io section: large blocks fresh from the system, as in a process loading once (default), or the "
        "C library's own reuse policy",
    )
    parser.add_argument(
        "--readme",
        action="store_true",
        help="write the io and notebook figures into docs/benchmarks.md and the notebooks' "
        "run times into README.md's lesson table, unless the machine was busy",
    )
    args = parser.parse_args(argv)
    sections = ["io"] if args.io_only else [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {sorted(unknown)}; choose from {SECTIONS}")

    harness.use_kernel_env()  # before torch loads; the kernels and bench_loading inherit it
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the busy core on kill, too
    machine = noise.machine()
    start_load = noise.load_average()
    print(
        f"{machine['cpu']}, {machine['cores']} cores, Python {machine['python']}, {machine['os']}, "
        f"OMP_NUM_THREADS={machine['OMP_NUM_THREADS']}; load average at start {noise.fmt_load(start_load)}"
    )
    if start_load[0] > noise.LOAD_MARGIN:
        print(f"WARNING: the machine is already busy (1-minute load {start_load[0]:.2f}); figures will be noisy")
    log = Log()
    io_ratios = nb_times = None
    if "training" in sections:
        training(log, args.rounds or TRAIN_ROUNDS)
    if "io" in sections:
        io_ratios = io(log, args.io_mb, args.rounds or IO_ROUNDS, args.io_heap)
    if "notebooks" in sections:
        nb_times = notebooks(log, args.prefixes, args.rounds or NB_ROUNDS)
    if "loading" in sections:
        loading(log)
    loads = f"load average {noise.fmt_load(start_load)} at start, {noise.fmt_load(noise.load_average())} at end"

    out = ROOT / "artifacts" / "benchmark" / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "sections": sections, "samples": log.samples}, indent=1))
    print(f"\n{loads}; {len(log.samples)} samples in {out.relative_to(ROOT)}")
    if log.noisy:
        print(
            f"WARNING: {len(log.noisy)} of {len(log.samples)} figures were measured while other processes "
            f"used the CPU (more than {noise.OTHERS_LIMIT} of a core); e.g."
        )
        for line in log.noisy[:5]:
            print(f"  {line}")
    if args.readme:
        untrusted = noisy_figures(log.samples)
        if untrusted:
            print("README.md not written: the machine was busy; run again on a quiet machine")
            for line in untrusted[:5]:
                print(f"  {line}")
            return 1
        if not (io_ratios or nb_times):
            print("README.md not written: --readme needs the io or notebooks section")
            return 1
        write_readme(readme_block(machine, io_ratios, nb_times, loads, log.readme))
        print("docs/benchmarks.md and README.md: benchmark figures written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
