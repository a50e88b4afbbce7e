"""Time and memory of five ways to load a big checkpoint, beside plain reads and a copy of the same bytes.

    python -m tools.bench_loading                 # a model of about 256 MB, files warm (in the page cache)
    python -m tools.bench_loading --cold          # evict the files from the page cache before each method
    python -m tools.bench_loading --size-gb 4     # bigger: needs about 3 x 4 = 12 GB of free memory
                                                  # (the naive path's two copies, plus the file's pages)
                                                  # and 2 x 4 = 8 GB of free disk; still warm without --cold

Linux and macOS (the methods run in children of a fork server; Windows has no fork).

Builds a stack of ``Linear(2048, 2048)`` layers with random weights, saves its
state_dict once with ``torch.save`` and once with safetensors (under
``artifacts/bench_loading/``, deleted afterwards unless ``--keep``), then loads
it the five ways lesson 10 teaches, each in a fresh process
(``helper.loading_bench``), and prints one table:

- load s: seconds to a model holding the weights; build: the part of it spent
  building the model (allocating its memory and filling it with random
  numbers; next to nothing on the meta device); +touch: the load plus a first touch of every page (one value per
  4 KiB page; memory-mapped methods read the file only then);
- GB/s: the file's size over the seconds spent on its bytes (+touch - build),
  left blank for the two mapped methods (their load reads nothing and their
  touch one value per page);
- peak: growth of the process's RSS high-water mark while loading, in MB;
  held: growth of its current RSS (VmRSS) after that first touch (it counts
  mapped file pages; lower than peak once the load freed its own copy);
  priv.: growth of private memory at that moment, the part the kernel cannot
  drop (held and priv. are Linux's /proc figures: blank on macOS);
- same: every tensor ``torch.equal`` to the one in the other file format.

Without ``--cold`` both files are read once (``cat``) before each method, so
every method starts with its file in the page cache: a warm load, to compare
with the warm ``cat`` row, not the cold one. The reference rows: ``cat`` of the
file from disk (after eviction; left out where eviction fails, as on tmpfs) and
from the page cache, and one ``memcpy`` of its bytes into memory written once
before (no page faults). They are references, not bounds: a warm ``cat`` has
beaten the memcpy row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys

import torch

from helper import loading_bench as lb
from helper.paths import ARTIFACTS_DIR, display_path
from tools.bench_noise import cpu_model


def machine() -> str:
    """CPU model, core count, memory and versions, for the table's caption."""
    cpu = cpu_model()
    memory = ""
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        memory = f", {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB RAM"
    return f"{cpu}, {os.cpu_count()} cores{memory}; Python {platform.python_version()}, torch {torch.__version__}"


def available_memory_gb() -> float | None:
    """Memory that can be had without swapping (``MemAvailable``, Linux), in GB; None where unknown."""
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def too_small(size_gb: float, folder: str) -> str | None:
    """Why this machine cannot hold the benchmark of a ``size_gb`` model, or None.

    Memory: the naive path holds two copies at its peak, and the file's pages sit in the page
    cache beside them: about 3 x size_gb. Disk: the .pt and the .safetensors file, 2 x size_gb.
    """
    existing = os.path.abspath(folder)
    while not os.path.exists(existing):  # the folder is made later: ask the disk it will be on
        existing = os.path.dirname(existing)
    memory, disk = available_memory_gb(), shutil.disk_usage(existing).free / 2**30
    if memory is not None and memory < 3 * size_gb:
        return f"{size_gb:g} GB needs about {3 * size_gb:g} GB of free memory, {memory:.1f} GB is available"
    if disk < 2 * size_gb:
        return f"{size_gb:g} GB needs about {2 * size_gb:g} GB of free disk in {folder}, {disk:.1f} GB is free"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=0.25, help="checkpoint size in GB (default 0.25)")
    parser.add_argument("--width", type=int, default=2048, help="width of each Linear layer (default 2048)")
    parser.add_argument("--cold", action="store_true", help="evict the files from the page cache before each method")
    parser.add_argument("--device", default="cpu", help="load onto this device (for example cuda)")
    parser.add_argument("--folder", default=str(ARTIFACTS_DIR / "bench_loading"), help="where the files go")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint files")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON too")
    parser.add_argument("--force", action="store_true", help="run even where free memory or disk looks too small")
    args = parser.parse_args(argv)

    config = lb.stack_config(args.size_gb * 1024, width=args.width)
    short = too_small(args.size_gb, args.folder)
    if short and not args.force:
        print(f"not run: {short} (--force runs anyway)", file=sys.stderr)
        return 2
    os.makedirs(args.folder, exist_ok=True)
    torch.manual_seed(0)
    state = lb.build_stack(config).state_dict()
    pt, st = lb.save_both(state, args.folder)
    del state
    size_mb = pt.stat().st_size / 2**20
    print(
        f"{config['layers']} x Linear({config['width']}, {config['width']}): {display_path(pt)} "
        f"{size_mb:.0f} MB, {display_path(st)} {st.stat().st_size / 2**20:.0f} MB",
        flush=True,
    )
    try:
        rows = lb.run_benchmark(
            pt,
            st,
            config,
            device=args.device,
            cold=args.cold,
            progress=lambda m: print(f"  measuring {m} ...", file=sys.stderr, flush=True),
        )
    finally:
        if not args.keep:
            shutil.rmtree(args.folder, ignore_errors=True)
    cache = "cold (files evicted from the page cache)" if args.cold else "warm (files in the page cache)"
    print(f"\n{machine()}; loading to {args.device}, methods {cache}\n")
    print(lb.format_table(rows, size_mb), flush=True)
    if args.json:
        print(json.dumps(lb.as_dicts(rows), indent=1))
    return 0 if all(r.same is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
