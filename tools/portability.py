"""Re-run the notebooks under several CPU-kernel settings; every compared output must hold under each.

    python -m tools.portability              # every notebook, every setting
    python -m tools.portability 03 05        # only notebooks whose name starts so
    python -m tools.portability --setting 1-thread

Float kernels differ between CPUs: vendor, vector units (AVX-512, AVX2, none),
thread count. A stored output that depends on them passes on the machine that
stored it and fails on a student's. This runs strict nbval (the same command as
``make test``, notebooks only) once per setting below, each forcing this CPU
down a different kernel path, so such an output fails here first.
Settings run one after another: notebooks write to artifacts/, and two runs of one
notebook at a time would overwrite each other's files (within a setting, pytest's two
workers run different notebooks, as in ``make test``). Each setting's variables go on top
of the harness's environment (``tools.harness.kernel_env``): a setting that names no thread
count runs under the course's thread policy; "2-threads" checks the other side. Exit status
1 if any setting fails.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from tools.harness import ROOT, THREADS, kernel_env
from tools.harness import notebooks as lessons

#: the thread policy's count forced on every pool, whatever the caller set
ONE_THREAD = {**THREADS, "MKL_NUM_THREADS": THREADS["OMP_NUM_THREADS"]}

#: name -> environment overrides. ATen's dispatch (no vector unit / AVX2 instead of
#: AVX-512), MKL's and oneDNN's instruction sets, and the thread count (reductions
#: split differently).
SETTINGS: dict[str, dict[str, str]] = {
    "aten-default": {"ATEN_CPU_CAPABILITY": "default"},
    "aten-avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "mkl-avx2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "onednn-avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "1-thread": ONE_THREAD,
    "2-threads": {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"},
    # all at once, away from this machine's defaults on every axis: the one setting CI runs
    # (the six above take too long for every CI run; see the README)
    "mixed": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "AVX2", **ONE_THREAD},
}
#: what ``make test-portable`` runs when no --setting is given
DEFAULT_SETTINGS = [name for name in SETTINGS if name != "mixed"]


def run_setting(name: str, notebooks: list[Path]) -> tuple[str, float, int, str]:
    """Strict nbval over ``notebooks`` under one setting; (name, seconds, exit code, summary line)."""
    env = kernel_env(**SETTINGS[name])
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-c",
        str(ROOT / "pyproject.toml"),
        "--rootdir",
        str(ROOT),
        "--durations-min=1000",
        # pyproject's -n 2 for several notebooks; one notebook gains nothing from a second worker
        "-n",
        "2" if len(notebooks) > 1 else "0",
        *map(str, notebooks),
    ]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    summary = lines[-1].strip("= ") if lines else done.stderr.strip()[-200:]
    if done.returncode not in (0,):
        failed = [line for line in done.stdout.splitlines() if line.startswith("FAILED")]
        summary += "".join(f"\n    {line}" for line in failed)
        log = ROOT / "artifacts" / "portable" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(done.stdout + done.stderr, encoding="utf-8")
        summary += f"\n    full report: {log.relative_to(ROOT)}"
    return name, seconds, done.returncode, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prefixes", nargs="*", help="only notebooks whose file name starts with one of these")
    parser.add_argument(
        "--setting",
        action="append",
        choices=sorted(SETTINGS),
        help="run only this setting (repeatable; default: all but 'mixed')",
    )
    args = parser.parse_args(argv)
    notebooks = lessons(args.prefixes)
    if not notebooks:
        print("no notebooks matched", file=sys.stderr)
        return 1
    names = args.setting or DEFAULT_SETTINGS
    print(f"{len(notebooks)} notebooks x {len(names)} settings", flush=True)
    failed = 0
    for name in names:
        name, seconds, code, summary = run_setting(name, notebooks)
        failed += code != 0
        env = " ".join(f"{k}={v}" for k, v in SETTINGS[name].items())
        print(f"{'ok  ' if code == 0 else 'FAIL'} {name:<12} {seconds:6.1f} s  {env:<40} {summary}", flush=True)
    print(f"{len(names) - failed} settings passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
