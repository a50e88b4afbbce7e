"""Run the model scanners the ecosystem uses, the doctor and load_checkpoint on the hostile corpus; print a table.

    python -m tools.scan_compare [--corpus DIR] [--helper TREE] [--json OUT.json] [--jobs N]

Builds the corpus (tools/hostile_corpus.py) unless ``--corpus`` names a built
one, then runs each tool on each file or folder in a child process of its own
(its own process group) with an address-space limit (``--mem-gb``, RLIMIT_AS)
and a time limit (``--timeout``), and records its verdict, its peak resident
memory (its process tree sampled from /proc, or ``wait4``'s ru_maxrss if
larger) and its time. The scanners run from their own
virtual env (``--scan-venv``, made by ``make scan-compare`` from
requirements-scan.txt); the doctor and ``load_checkpoint`` from this
interpreter with ``PYTHONPATH=--helper`` (default: this tree), so the same
table can be made for another branch's ``helper``.

A cell is ``caught`` (the tool flags the file: exit code, or for modelaudit an
issue of severity critical; ``warned`` when it reports only warnings),
``missed`` (it calls the file clean, or loads it), ``error`` (it fails with a
traceback or an error exit, without a verdict), ``CRASH`` (killed by a signal),
``timeout``, ``memory`` (MemoryError under the limit) or ``RAN CODE`` (the
payload's marker file appeared: the tool ran the file's code). For benign files
``ok`` or ``flagged`` (a false positive). Every payload only creates a marker
file in the corpus's markers/ folder.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tools.harness import ROOT as REPO
from tools.harness import kernel_env
from tools.hostile_corpus import Case, TreeMemory, load_manifest

TOOLS = ("picklescan", "modelscan", "fickling", "modelaudit", "doctor", "load_checkpoint")
SCANNERS = TOOLS[:4]
LOAD_SNIPPET = """
import sys
from helper.checkpoint import CheckpointError, load_checkpoint
try:
    load_checkpoint(sys.argv[1])
except CheckpointError as exc:
    print("CheckpointError:", exc)
    sys.exit(1)
print("loaded")
"""


def run_capped(
    cmd: list[str], cwd: Path, env: dict[str, str], timeout: float, mem_bytes: int
) -> tuple[int | None, int | None, str, float, int]:
    """(exit code, signal, output, seconds, peak RSS in bytes) of ``cmd`` under RLIMIT_AS and a time limit."""

    def limits() -> None:
        os.setsid()
        resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    start = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=limits
        )
        timer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
        timer.start()
        memory = TreeMemory(proc.pid)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
            tree = memory.stop()
        proc.returncode = os.waitstatus_to_exitcode(status)
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything it left behind
        except ProcessLookupError:
            pass
        seconds = time.perf_counter() - start
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
    code = proc.returncode
    timed_out = seconds >= timeout
    return (
        (None if code < 0 else code),
        (-code if code < 0 else None),
        text + ("\n[timeout]" if timed_out else ""),
        seconds,
        max(usage.ru_maxrss * 1024, tree),
    )


def command(tool: str, target: Path, args: argparse.Namespace) -> list[str] | None:
    scan = Path(args.scan_venv) / "bin"
    if tool == "picklescan":
        return [str(scan / "picklescan"), "-p", str(target)]
    if tool == "modelscan":
        return [str(scan / "modelscan"), "-p", str(target)]
    if tool == "fickling":
        return [str(scan / "fickling"), "--check-safety", str(target)]
    if tool == "modelaudit":
        return [str(scan / "modelaudit"), "scan", "--no-cache", "-f", "json", str(target)]
    if tool == "doctor":
        return [args.python, "-m", "helper.doctor", str(target)]
    if tool == "load_checkpoint":
        return [args.python, "-c", LOAD_SNIPPET, str(target)]
    raise ValueError(tool)


def classify(tool: str, case: Case, code: int | None, sig: int | None, text: str) -> str:
    """The cell for one run (before the marker check)."""
    if text.endswith("[timeout]"):
        return "timeout"
    if sig is not None:
        return f"CRASH ({signal.Signals(sig).name})"
    if "MemoryError" in text or "std::bad_alloc" in text:
        return "memory"
    if tool == "modelaudit":
        try:
            report = json.loads(text[text.index("{") :])
        except ValueError:
            return "error"
        severities = {issue.get("severity") for issue in report.get("issues", [])}
        if "critical" in severities:
            return "caught"
        if "warning" in severities:
            return "warned"
        return "error" if code == 2 and not report.get("files_scanned") else "missed"
    if tool == "doctor":
        if "Traceback (most recent call last)" in text or code not in (0, 1):
            return "error"
        if case.expect == "caveat":  # the check: the report says what no check covers
            return "caught" if "checksum" in text.lower() else "missed"
        if case.expect == "advice":  # the check: what it tells one to allowlist is classes only
            return "bad advice" if _lists_a_function(text) else "caught"
        return "missed" if code == 0 else "caught"
    if tool == "load_checkpoint":
        if code == 0:
            return "missed"
        return "caught" if code == 1 and "CheckpointError:" in text else "error"
    if "Traceback (most recent call last)" in text:
        return "error"
    if tool == "modelscan":
        return {0: "missed", 1: "caught", 3: "missed"}.get(code, "error")
    return {0: "missed", 1: "caught"}.get(code, "error")


def _lists_a_function(report: str) -> bool:
    """Does the report advise safe_globals naming something that is not a class (a function)?"""
    import importlib
    import re

    if "safe_globals" not in report:
        return False
    for name in set(re.findall(r"'([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+)'", report)):
        module, _, attr = name.rpartition(".")
        try:
            if not isinstance(getattr(importlib.import_module(module), attr), type):
                return True
        except (ImportError, AttributeError):
            return True
    return False


def fickling_targets(target: Path) -> list[Path]:
    """fickling takes one pickle file: a folder is scanned file by file (symlinks not followed)."""
    if target.is_dir():
        return sorted(p for p in target.rglob("*") if p.is_file() and not p.is_symlink())
    return [target]


def run_one(case: Case, tool: str, root: Path, args: argparse.Namespace) -> dict:
    target = root / case.path
    env = kernel_env(
        threads_only=True,
        CI="1",
        PROMPTFOO_DISABLE_TELEMETRY="1",
        NO_ANALYTICS="1",
        PYTHONPATH=str(Path(args.helper).absolute()),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    cwd = root / case.cwd if case.cwd else Path(args.neutral)
    marker = root / "markers" / case.name
    marker.unlink(missing_ok=True)
    targets = fickling_targets(target) if tool == "fickling" else [target]
    cells, seconds, peak, texts = [], 0.0, 0, []
    for one in targets:
        code, sig, text, took, rss = run_capped(
            command(tool, one, args), cwd, env, args.timeout, int(args.mem_gb * 2**30)
        )
        cells.append(classify(tool, case, code, sig, text))
        seconds, peak = seconds + took, max(peak, rss)
        texts.append(text[-400:])
    order = ("RAN CODE", "CRASH", "timeout", "memory", "bad advice", "caught", "warned", "error", "missed")
    cell = min(cells, key=lambda c: next(i for i, o in enumerate(order) if c.startswith(o)))
    if tool == "fickling" and len(cells) > 1 and cell == "error" and "missed" in cells:
        cell = "missed"
    if marker.exists():
        cell = "RAN CODE"
        marker.unlink()
    return {
        "case": case.name,
        "tool": tool,
        "cell": cell,
        "seconds": round(seconds, 2),
        "peak_rss": peak,
        "tail": texts[-1][-300:],
    }


def applies(case: Case, tool: str) -> bool:
    return tool != "load_checkpoint" or case.load


def versions(args: argparse.Namespace) -> dict[str, str]:
    pip = Path(args.scan_venv) / "bin" / "python"
    out = subprocess.run(
        [
            str(pip),
            "-c",
            "import importlib.metadata as m; print(*[m.version(p) for p in "
            "('picklescan','modelscan','fickling','modelaudit')])",
        ],
        capture_output=True,
        text=True,
    )
    found = dict(zip(SCANNERS, out.stdout.split()))
    import torch

    found["torch"] = torch.__version__
    return found


def good(case: Case, cell: str) -> bool:
    """Did the tool do the right thing with this case?"""
    if case.group == "benign":
        return cell == "missed"
    if case.expect == "survive":
        return not cell.startswith(("CRASH", "timeout", "RAN CODE", "error"))
    return cell == "caught"


def markdown(cases: list[Case], results: dict[tuple[str, str], dict], tools: list[str]) -> str:
    lines = ["| case | " + " | ".join(tools) + " |", "|---" * (len(tools) + 1) + "|"]
    show = {"missed": "missed"}
    for case in cases:
        if case.group != "hostile":
            continue
        row = []
        for tool in tools:
            r = results.get((case.name, tool))
            row.append("n/a" if r is None else show.get(r["cell"], r["cell"]))
        note = {"survive": " (must survive)", "caveat": " (must say: no checksum)", "advice": " (advice)"}
        lines.append(f"| {case.name}{note.get(case.expect, '')} | " + " | ".join(row) + " |")
    lines += ["", "| benign file | " + " | ".join(tools) + " |", "|---" * (len(tools) + 1) + "|"]
    for case in cases:
        if case.group != "benign":
            continue
        row = []
        for tool in tools:
            r = results.get((case.name, tool))
            cell = "n/a" if r is None else r["cell"]
            row.append({"missed": "ok", "caught": "FLAGGED"}.get(cell, cell))
        lines.append(f"| {case.name} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def summary(cases: list[Case], results: dict[tuple[str, str], dict], tools: list[str]) -> str:
    hostile = [c for c in cases if c.group == "hostile"]
    benign = [c for c in cases if c.group == "benign"]
    lines = [
        "| tool | hostile caught | crashed / timeout | ran code | benign flagged (warned) | peak RSS | time |",
        "|---|---|---|---|---|---|---|",
    ]
    for tool in tools:
        rs = [results[(c.name, tool)] for c in hostile if (c.name, tool) in results]
        bs = [results[(c.name, tool)] for c in benign if (c.name, tool) in results]
        caught = sum(good(c, results[(c.name, tool)]["cell"]) for c in hostile if (c.name, tool) in results)
        crashed = sum(r["cell"].startswith(("CRASH", "timeout")) for r in rs + bs)
        ran = sum(r["cell"] == "RAN CODE" for r in rs + bs)
        flagged = sum(r["cell"] == "caught" for r in bs)
        warned = sum(r["cell"] == "warned" for r in bs)
        peak = max((r["peak_rss"] for r in rs + bs), default=0)
        took = sum(r["seconds"] for r in rs + bs)
        lines.append(
            f"| {tool} | {caught} / {len(rs)} | {crashed} | {ran} | {flagged} / {len(bs)} ({warned}) | "
            f"{peak / 2**20:,.0f} MiB | {took:,.0f} s |"
        )
    doctor_behind = [
        c.name
        for c in hostile
        if (c.name, "doctor") in results
        and not good(c, results[(c.name, "doctor")]["cell"])
        and any(results.get((c.name, t), {}).get("cell") == "caught" for t in SCANNERS)
    ]
    lines += [
        "",
        f"Hostile files a scanner catches and the doctor does not: {len(doctor_behind)}"
        + (f" ({', '.join(doctor_behind)})" if doctor_behind else ""),
    ]
    wrong = {
        t: [
            c.name
            for c in cases
            if c.group != "scenario" and (c.name, t) in results and not good(c, results[(c.name, t)]["cell"])
        ]
        for t in ("doctor", "load_checkpoint")
    }
    for tool, names in wrong.items():
        if tool in tools:
            lines.append(
                f"Cases where {tool} does not meet the target: {len(names)}"
                + (f" ({', '.join(names)})" if names else "")
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, help="a corpus built by tools/hostile_corpus.py (default: build one)")
    parser.add_argument("--helper", default=str(REPO), help="the tree whose helper the doctor and loader import")
    parser.add_argument("--python", default=sys.executable, help="the interpreter for the doctor and the loader")
    parser.add_argument("--scan-venv", default=str(REPO / ".venv-scan"), help="the scanners' virtual env")
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--only", help="comma-separated case-name prefixes")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per tool per case")
    parser.add_argument("--mem-gb", type=float, default=4.0, help="address-space limit per tool per case")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write every result here")
    parser.add_argument(
        "--scanners-from",
        type=Path,
        help="a --json file of an earlier run: take the scanners' cells from it (run only the doctor "
        "and load_checkpoint, e.g. for another branch's helper)",
    )
    parser.add_argument("--render", type=Path, help="print the tables of a --json file (with --corpus), run nothing")
    args = parser.parse_args(argv)
    args.scan_venv = Path(args.scan_venv).absolute()  # the tools run in a neutral working folder
    tools = args.tools.split(",")
    if args.render:
        earlier = json.loads(args.render.read_text())
        results = {(r["case"], r["tool"]): r for r in earlier["results"]}
        cases = [
            c for c in load_manifest(args.corpus) if c.group != "scenario" and any(k[0] == c.name for k in results)
        ]
        print("Versions: " + ", ".join(f"{k} {v}" for k, v in earlier["versions"].items()) + "\n")
        print(summary(cases, results, tools) + "\n")
        print(markdown(cases, results, tools))
        return 0
    if any(t in SCANNERS for t in tools) and not (Path(args.scan_venv) / "bin" / "picklescan").exists():
        parser.error(f"no scanners in {args.scan_venv}: make scan-compare creates it from requirements-scan.txt")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.corpus
        if root is None:
            root = Path(tmp) / "corpus"
            build = subprocess.run(
                [args.python, "-m", "tools.hostile_corpus", str(root)],
                cwd=REPO,
                env=kernel_env(threads_only=True),
                capture_output=True,
                text=True,
            )
            if build.returncode:
                print(build.stdout, build.stderr, file=sys.stderr)
                return 2
        root = root.absolute()
        args.neutral = Path(tmp) / "cwd"
        args.neutral.mkdir()
        cases = [
            c
            for c in load_manifest(root)
            if c.group != "scenario" and (not args.only or c.name.startswith(tuple(args.only.split(","))))
        ]
        jobs = [(c, t) for c in cases for t in tools if applies(c, t)]
        start = time.perf_counter()
        with ThreadPoolExecutor(args.jobs) as pool:
            done = list(pool.map(lambda job: run_one(job[0], job[1], root, args), jobs))
        wall = time.perf_counter() - start
        results = {(r["case"], r["tool"]): r for r in done}
        info = versions(args) if any(t in SCANNERS for t in tools) else {}
        if args.scanners_from:
            earlier = json.loads(args.scanners_from.read_text())
            info = {**earlier["versions"], **info}
            names = {c.name for c in cases}
            for r in earlier["results"]:
                if r["tool"] in SCANNERS and r["case"] in names and (r["case"], r["tool"]) not in results:
                    results[(r["case"], r["tool"])] = r
            tools = [t for t in TOOLS if t in tools or t in SCANNERS]
        print(
            f"Corpus: {sum(c.group == 'hostile' for c in cases)} hostile, {sum(c.group == 'benign' for c in cases)} "
            f"benign; helper from {args.helper}; limits {args.mem_gb:g} GiB address space, {args.timeout:g} s; "
            f"{len(jobs)} runs in {wall:,.0f} s ({args.jobs} at a time)"
        )
        print("Versions: " + ", ".join(f"{k} {v}" for k, v in info.items()) + "\n")
        print(summary(cases, results, tools) + "\n")
        print(markdown(cases, results, tools))
        if args.json:
            args.json.write_text(
                json.dumps({"versions": info, "wall": wall, "helper": args.helper, "results": done}, indent=1)
            )
        shutil.rmtree(args.neutral, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
