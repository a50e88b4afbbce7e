"""Time and peak memory of five ways to load a big checkpoint, against the disk and memcpy limits.

    python tools/bench_loading.py                 # a model of about 256 MB
    python tools/bench_loading.py --size-gb 2     # bigger (needs about 3x that in free RAM and twice on disk)
    python tools/bench_loading.py --cold          # evict the files from the page cache before each method

Builds a stack of ``Linear(2048, 2048)`` layers with random weights, saves its
state_dict once with ``torch.save`` and once with safetensors (under
``artifacts/bench_loading/``, deleted afterwards unless ``--keep``), then loads
it the five ways lesson 10 teaches, each in a fresh process
(``helper.loading_bench``), and prints one table:

- load s: seconds to a model holding the weights; +touch: plus a first touch
  of every page (one value per 4 KiB page; memory-mapped methods read the file
  only then);
- GB/s: the file's size over +touch, left blank for the two mapped methods
  (their load reads nothing and their touch one value per page);
- peak: growth of the process's RSS high-water mark while loading, in MB;
  used: the same after that first use (it counts mapped file pages);
  priv.: growth of private memory, the part the kernel cannot drop;
- same: every tensor ``torch.equal`` to the one in the other file format.

Without ``--cold`` both files are read once before each method, so every
method starts with its file in the page cache (warm). The limits: ``cat`` of
the file from disk (after eviction) and from the page cache, and a ``memcpy``
into memory written once before (no page faults: memory bandwidth).
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


def machine() -> str:
    """CPU model, core count, memory and versions, for the table's caption."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory = ""
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        memory = f", {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB RAM"
    return (f"{cpu}, {os.cpu_count()} cores{memory}; Python {platform.python_version()}, "
            f"torch {torch.__version__}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=0.25, help="checkpoint size in GB (default 0.25)")
    parser.add_argument("--width", type=int, default=2048, help="width of each Linear layer (default 2048)")
    parser.add_argument("--cold", action="store_true", help="evict the files from the page cache before each method")
    parser.add_argument("--device", default="cpu", help="load onto this device (for example cuda)")
    parser.add_argument("--folder", default=str(ARTIFACTS_DIR / "bench_loading"), help="where the files go")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint files")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON too")
    args = parser.parse_args(argv)

    config = lb.stack_config(args.size_gb * 1024, width=args.width)
    os.makedirs(args.folder, exist_ok=True)
    torch.manual_seed(0)
    state = lb.build_stack(config).state_dict()
    pt, st = lb.save_both(state, args.folder)
    del state
    size_mb = pt.stat().st_size / 2**20
    print(f"{config['layers']} x Linear({config['width']}, {config['width']}): {display_path(pt)} "
          f"{size_mb:.0f} MB, {display_path(st)} {st.stat().st_size / 2**20:.0f} MB", flush=True)
    try:
        rows = lb.run_benchmark(pt, st, config, device=args.device, cold=args.cold,
                                progress=lambda m: print(f"  measuring {m} ...", file=sys.stderr, flush=True))
    finally:
        if not args.keep:
            shutil.rmtree(args.folder, ignore_errors=True)
    cache = ("cold (files evicted from the page cache)" if args.cold
             else "warm (files in the page cache)")
    print(f"\n{machine()}; loading to {args.device}, methods {cache}\n")
    print(lb.format_table(rows, size_mb), flush=True)
    if args.json:
        print(json.dumps(lb.as_dicts(rows), indent=1))
    return 0 if all(r.same is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
