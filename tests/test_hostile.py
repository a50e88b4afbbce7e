"""The hostile corpus (tools/hostile_corpus.py) through the doctor and load_checkpoint, each case capped.

Issue 24's target, one test per case: for every hostile file the doctor's
verdict is not OK (``refuse``; for ``caveat`` cases the report says what no
check covers, for ``survive`` cases any verdict), ``load_checkpoint`` (where it
applies) raises ``CheckpointError``, no payload's marker file appears, nothing
crashes; every benign file is OK and loads; the advice on lesson 06's NumPy-RNG
file lists classes only and works when followed; and the behaviours that are
not files (issue cases 10, 15, 16, 17) hold.

Each case runs in a forked child of this process (torch and helper imported
once, so a case costs a fork, not an interpreter start) with its own process
group, an address-space limit of its current size plus ``ALLOC_GIB`` (RLIMIT_AS;
torch's import alone maps about 3 GiB, so a plain limit would stop the import,
not the file) and a time limit of ``SECONDS`` (SIGALRM). The peak resident
memory each case reaches (its whole process tree, sampled from /proc every 50
ms, or ``wait4``'s figure if larger) must stay under ``RSS_GIB``.

Not part of ``make test`` (the corpus is large and the cases slow on today's
helper): ``make fuzz`` runs it (``FUZZ_FULL=1``), or
``FUZZ_FULL=1 pytest -p no:nbval -o addopts="" tests/test_hostile.py``.
"""

from __future__ import annotations

import atexit
import io
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

if os.environ.get("FUZZ_FULL") != "1":
    pytest.skip("the hostile corpus runs in make fuzz (FUZZ_FULL=1)", allow_module_level=True)

import torch  # noqa: E402

from helper.checkpoint import CheckpointError, CheckpointFolder, load_checkpoint, make_checkpoint  # noqa: E402
from helper.models import build_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
from tools.harness import kernel_env  # noqa: E402
from tools.hostile_corpus import Case, TreeMemory, load_manifest  # noqa: E402

ALLOC_GIB = 1.0  # what a case may allocate beyond the forked process's address space
RSS_GIB = 2.0  # the stated bound on peak resident memory per case (torch and pytest included)
SECONDS = 20  # per case and tool
ENV = kernel_env(threads_only=True, PYTHONPATH=os.environ.get("PYTHONPATH") or str(REPO))

ROOT = Path(tempfile.mkdtemp(prefix="hostile-corpus-"))
atexit.register(shutil.rmtree, ROOT, True)
_build = subprocess.run(
    [sys.executable, "-m", "tools.hostile_corpus", str(ROOT / "c")], env=ENV, capture_output=True, text=True
)
assert _build.returncode == 0, _build.stdout + _build.stderr
CORPUS = ROOT / "c"
CASES = load_manifest(CORPUS)
FILES = [c for c in CASES if c.group in ("hostile", "benign")]


def _vm_size() -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(r"VmSize:\s+(\d+) kB", text).group(1)) * 1024


def capped(fn, *, cwd: Path | None = None) -> dict:
    """Run ``fn()`` (returns an exit code) in a forked child with the caps; its code, signal, output, peak RSS."""
    out = tempfile.TemporaryFile()
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 3
        try:
            os.setpgid(0, 0)
            os.dup2(out.fileno(), 1)
            os.dup2(out.fileno(), 2)
            limit = _vm_size() + int(ALLOC_GIB * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            signal.alarm(SECONDS)
            if cwd is not None:  # as `python -m helper.doctor` run from that folder: it is on sys.path
                os.chdir(cwd)
                sys.path.insert(0, str(cwd))
            buffer = io.StringIO()
            with redirect_stdout(buffer), redirect_stderr(buffer):
                try:
                    code = fn()
                finally:
                    os.write(1, buffer.getvalue().encode("utf-8", "replace"))
        except BaseException as exc:  # noqa: BLE001 - reported to the parent as exit code 3 and its text
            import traceback

            os.write(
                1,
                ("Traceback (most recent call last):\n" + "".join(traceback.format_exception(exc))).encode(
                    "utf-8", "replace"
                ),
            )
            code = 3
        finally:
            os._exit(code)
    memory = TreeMemory(pid)
    _, status, usage = os.wait4(pid, 0)
    tree = memory.stop()
    try:
        os.killpg(pid, signal.SIGKILL)  # anything the case started (a sandbox child) goes with it
    except (ProcessLookupError, PermissionError):
        pass
    out.seek(0)
    text = out.read().decode("utf-8", "replace")
    out.close()
    code = os.waitstatus_to_exitcode(status)
    return {
        "code": code if code >= 0 else None,
        "signal": -code if code < 0 else None,
        "text": text,
        "rss": max(usage.ru_maxrss * 1024, tree),
        "seconds": time.perf_counter() - start,
    }


def doctor(case: Case) -> dict:
    from helper.doctor import main

    return capped(lambda: main([str(CORPUS / case.path)]), cwd=CORPUS / case.cwd if case.cwd else None)


def loader(case: Case) -> dict:
    def run() -> int:
        try:
            load_checkpoint(CORPUS / case.path)
        except CheckpointError as exc:
            print("CheckpointError:", exc)
            return 1
        return 0

    return capped(run, cwd=CORPUS / case.cwd if case.cwd else None)


def describe(r: dict) -> str:
    what = f"killed by {signal.Signals(r['signal']).name}" if r["signal"] else f"exit {r['code']}"
    return f"{what}, {r['seconds']:.1f} s, peak RSS {r['rss'] / 2**20:,.0f} MiB: {r['text'][-600:]}"


def assert_sound(r: dict, case: Case, tool: str) -> None:
    """No crash, no timeout, no traceback, no marker, under the memory bound."""
    marker = CORPUS / "markers" / case.name
    ran = marker.exists()
    marker.unlink(missing_ok=True)
    assert not ran, f"{tool} ran the payload of {case.name}: {describe(r)}"
    assert r["signal"] is None, f"{tool} on {case.name}: {describe(r)}"
    assert r["code"] in (0, 1), f"{tool} on {case.name}: {describe(r)}"
    assert "Traceback (most recent call last)" not in r["text"], f"{tool} on {case.name}: {describe(r)}"
    assert r["rss"] <= RSS_GIB * 2**30, f"{tool} on {case.name} over {RSS_GIB} GiB: {describe(r)}"


@pytest.mark.parametrize("case", FILES, ids=[c.name for c in FILES])
def test_doctor(case: Case) -> None:
    r = doctor(case)
    assert_sound(r, case, "the doctor")
    if case.expect == "ok":
        assert r["code"] == 0, f"false positive on {case.name} ({case.attack}): {describe(r)}"
    elif case.expect == "refuse":
        assert r["code"] == 1, f"the doctor says OK on {case.name} ({case.attack}): {describe(r)}"
    elif case.expect == "caveat":
        assert "checksum" in r["text"].lower(), f"{case.name}: the report must say there is no checksum: {describe(r)}"
    elif case.expect == "advice":
        check_advice(case, r["text"])


@pytest.mark.parametrize("case", [c for c in FILES if c.load], ids=[c.name for c in FILES if c.load])
def test_load_checkpoint(case: Case) -> None:
    r = loader(case)
    assert_sound(r, case, "load_checkpoint")
    if case.expect == "ok":
        assert r["code"] == 0, f"load_checkpoint refuses the benign {case.name}: {describe(r)}"
    elif case.expect in ("refuse", "advice"):
        assert r["code"] == 1 and "CheckpointError:" in r["text"], f"load_checkpoint on {case.name}: {describe(r)}"


def check_advice(case: Case, report: str) -> None:
    """Every global the doctor tells one to allowlist is a class, and the file loads once they are allowed."""
    if "safe_globals" not in report:
        return
    names = sorted(set(re.findall(r"'([A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)+)'", report)))
    assert names, f"safe_globals advice without names: {report[-400:]}"
    import importlib

    found = []
    for name in names:
        module, _, attr = name.rpartition(".")
        obj = getattr(importlib.import_module(module), attr)
        assert isinstance(obj, type), f"the doctor's safe_globals advice lists {name}, a {type(obj).__name__}"
        found.append(obj)

    def follow() -> int:
        with torch.serialization.safe_globals(found):
            torch.load(CORPUS / case.path, weights_only=True)
        return 0

    r = capped(follow)
    assert r["code"] == 0, f"following the advice fails: {describe(r)}"


def test_payloads_are_live() -> None:
    """The corpus is hostile for real: each payload case writes its marker through the loader a victim uses."""
    run = subprocess.run(
        [sys.executable, "-m", "tools.hostile_corpus", str(CORPUS), "--run-payloads"],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    live = json.loads(run.stdout.strip().splitlines()[-1])
    expected = {c.name for c in CASES if c.payload}
    assert set(live) == expected and all(live.values()), sorted(n for n, ok in live.items() if not ok)


# --------------------------------------------------------------------------------------------------
# The cases that are behaviours, not files


def tiny_checkpoint(epoch: int) -> dict:
    torch.manual_seed(0)
    return make_checkpoint(build_model({"arch": "mlp", "hidden": [2]}), epoch=epoch, step=epoch)


def test_10_truncated_while_read(tmp_path: Path) -> None:
    """Another process truncating the file while it is read: CheckpointError or a verdict, never SIGBUS."""
    from helper.checkpoint import save_checkpoint

    checkpoint = tiny_checkpoint(1)
    checkpoint["extra"] = {"big": torch.zeros(40 * 2**20, dtype=torch.float32)}  # 160 MB
    original = tmp_path / "original.pt"
    save_checkpoint(checkpoint, original)
    path = tmp_path / "victim.pt"
    for tool in ("load_checkpoint", "doctor"):
        for delay in (0.0, 0.05, 0.2):
            shutil.copyfile(original, path)
            read_fd, write_fd = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(read_fd)
                os.write(write_fd, b"go")
                code = 3
                try:
                    if tool == "doctor":
                        from helper.doctor import diagnose

                        code = diagnose(path).exit_code
                    else:
                        try:
                            load_checkpoint(path)
                            code = 0
                        except CheckpointError:
                            code = 1
                finally:
                    os._exit(code)
            os.close(write_fd)
            os.read(read_fd, 2)
            os.close(read_fd)
            time.sleep(delay)
            with open(path, "wb"):  # truncate, as another process's open(path, "wb") does
                pass
            _, status, _ = os.wait4(pid, 0)
            code = os.waitstatus_to_exitcode(status)
            assert code in (0, 1), f"{tool} after truncation at {delay} s: " + (
                f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
            )


def test_15_rotation_by_number(tmp_path: Path) -> None:
    folder = CheckpointFolder(tmp_path / "run", keep_last=2)
    for epoch in range(9997, 10004):
        folder.save(tiny_checkpoint(epoch))
    left = sorted(int(p.stem.split("-")[1]) for p in (tmp_path / "run").glob("epoch-*.pt"))
    assert left == [10002, 10003], left


def test_16_dead_run_keeps_its_newest(tmp_path: Path) -> None:
    """Run A (its own interpreter, as a real second run) saves 50-52 and is killed; run B's save leaves them."""
    run = tmp_path / "run"
    snippet = (
        "import os, signal, torch\n"
        "from helper.checkpoint import CheckpointFolder, make_checkpoint\n"
        "from helper.models import build_model\n"
        f"a = CheckpointFolder({str(run)!r})\n"
        "for epoch in (50, 51, 52):\n"
        "    a.save(make_checkpoint(build_model({'arch': 'mlp', 'hidden': [2]}), epoch=epoch, step=epoch))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    a = subprocess.run([sys.executable, "-c", snippet], env=ENV, capture_output=True, text=True, timeout=120)
    assert a.returncode == -signal.SIGKILL, a.stderr[-800:]
    assert sorted(p.name for p in run.glob("epoch-*.pt")) == ["epoch-0050.pt", "epoch-0051.pt", "epoch-0052.pt"]
    CheckpointFolder(run).save(tiny_checkpoint(10))  # run B
    left = sorted(int(p.stem.split("-")[1]) for p in run.glob("epoch-*.pt"))
    assert {51, 52} <= set(left), f"run B deleted the dead run A's newest checkpoints: {left}"


def _read_only(folder: Path) -> list[str] | None:
    """A command prefix that runs a child with ``folder`` read-only (EROFS), or None where none works."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return []
    probe = subprocess.run(
        [
            "unshare",
            "-rm",
            "sh",
            "-c",
            f"mount --bind {folder} {folder} && mount -o remount,bind,ro {folder} {folder} && ! touch {folder}/.probe",
        ],
        capture_output=True,
    )
    if probe.returncode != 0:
        return None
    return [
        "unshare",
        "-rm",
        "sh",
        "-c",
        f'mount --bind {folder} {folder} && mount -o remount,bind,ro {folder} {folder} && exec "$0" "$@"',
    ]


def test_17_read_only_folder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    prefix = _read_only(run)
    if prefix is None:
        pytest.skip("no way to make a read-only folder here (root without user namespaces)")
    snippet = (
        "import torch, sys\n"
        "from helper.checkpoint import CheckpointError, CheckpointFolder, make_checkpoint\n"
        "from helper.models import build_model\n"
        "try:\n"
        f"    CheckpointFolder({str(run)!r}).save(make_checkpoint(build_model({{'arch': 'mlp', 'hidden': [2]}}),"
        " epoch=1))\n"
        "except CheckpointError as exc:\n"
        "    print('CheckpointError:', exc); sys.exit(1)\n"
        "print('saved')\n"
    )
    r = subprocess.run(prefix + [sys.executable, "-c", snippet], env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "CheckpointError:" in r.stdout, (r.returncode, r.stdout[-500:], r.stderr[-800:])


def test_pointer_cannot_reach_outside_the_folder(tmp_path: Path) -> None:
    """A copied run folder's latest.json naming files outside it: cleanup() deletes none, latest/best ignore them."""
    outside, absolute = tmp_path / "victim.txt", tmp_path / "victim2.txt"
    outside.write_text("not a checkpoint")
    absolute.write_text("not a checkpoint either")
    run = tmp_path / "runs" / "exp1"
    run.mkdir(parents=True)
    sneaky = "../../victim.txt"
    kept = "epoch-0003.pt"
    (run / kept).write_bytes(b"a dead run's checkpoint")
    pointer = {
        "latest": sneaky,
        "runs": {"deadbeef": {"latest": sneaky, "best": {"file": str(absolute), "metric": 1}}},
        "files": {sneaky: "deadbeef", str(absolute): "deadbeef", f"{kept}\n": "deadbeef", kept: "deadbeef"},
    }
    (run / CheckpointFolder.POINTER).write_text(json.dumps(pointer))
    folder = CheckpointFolder(run)
    assert folder.latest is None and folder.best is None
    removed = folder.cleanup()
    assert outside.exists() and absolute.exists()
    assert removed == [run / kept]  # the dead run's own file is still cleaned up
