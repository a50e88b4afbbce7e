"""Concurrent writers: two processes saving into one folder, two runs in one CheckpointFolder, and a writer
in another PID namespace (a container) whose live temporary file must survive another process's save."""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import torch

from helper.checkpoint import (
    CheckpointError,
    CheckpointFolder,
    load_checkpoint,
    make_checkpoint,
    save_checkpoint,
    verify_zip,
)
from helper.models import build_model
from helper.paths import REPO_ROOT

if TYPE_CHECKING:
    from multiprocessing.synchronize import Event

# The writers are forked from one server process that imported torch and helper once (the standard
# library's forkserver): four fresh interpreters cost about 7 s of CPU on the 2-core reference
# machine. Each child is still a process of its own (its own PID, file descriptors and locks), which
# is all these tests are about. The writer in another PID namespace below still starts a fresh
# interpreter: it has to be exec'd inside the namespace.
# The server imports the preloaded modules by name and skips any that fail to import, silently, and
# (Python 3.11) without this process's sys.path: so only installed packages, not this test module
# (a missing one would cost speed, not correctness). A child then imports this module itself: a few
# milliseconds once these are loaded.
PRELOAD = ["torch", "pytest", "helper.checkpoint", "helper.models"]
assert all(importlib.util.find_spec(name) for name in PRELOAD)
if "forkserver" in multiprocessing.get_all_start_methods():
    CHILDREN = multiprocessing.get_context("forkserver")
    CHILDREN.set_forkserver_preload(PRELOAD)
else:  # Windows: each child a fresh interpreter, as before
    CHILDREN = multiprocessing.get_context("spawn")


def writer(folder: Path, name: str, rounds: int) -> None:
    """Save ``rounds`` versions to its own file and to the shared one."""
    for i in range(rounds):
        state = {"writer": name, "round": i, "w": torch.full((20000,), float(i))}
        save_checkpoint(state, folder / f"{name}.pt")
        save_checkpoint(state, folder / "shared.pt")


def run(folder: Path, first: int, count: int, report: Connection, stay: Event) -> None:
    """One training run's CheckpointFolder (keep_last=2): save epochs ``first``.. ``first + count - 1``,
    send its best and latest file, then stay alive (its files live) until ``stay`` is set."""
    folder_run = CheckpointFolder(folder, keep_last=2)
    model = build_model({"arch": "mlp", "hidden": [8]})
    for epoch in range(first, first + count):
        folder_run.save(make_checkpoint(model, epoch=epoch), metric=1.0 / epoch if epoch % 2 else 5.0)
        time.sleep(0.05)
    report.send({"best": folder_run.best.name, "latest": folder_run.latest.name})
    stay.wait(300)


def start(target: Callable[..., None], *args: Any) -> BaseProcess:
    """``target(*args)`` in a child process of its own (forked from the preloaded server)."""
    process = CHILDREN.Process(target=target, args=args, daemon=True)
    process.start()
    return process


def start_run(folder: Path, first: int, count: int, stay: Event) -> tuple[BaseProcess, Connection]:
    """``run`` in a child, and the end of a pipe its report arrives on. This process keeps no copy of
    the sending end, so a child that dies before reporting is seen as the pipe's end, not waited for."""
    receiving, sending = CHILDREN.Pipe(duplex=False)
    process = start(run, folder, first, count, sending, stay)
    sending.close()
    return process, receiving


def receive(receiving: Connection, process: BaseProcess, timeout: float = 300) -> dict:
    """The child's report; fails, naming the child's exit code, if it died or said nothing in time."""
    if not receiving.poll(timeout):
        process.kill()
        pytest.fail(f"{process.name} sent nothing in {timeout} s")
    try:
        return receiving.recv()
    except EOFError:
        process.join(10)
        pytest.fail(f"{process.name} ended (exit code {process.exitcode}) before it reported")


def finish(process: BaseProcess, timeout: float = 300) -> None:
    """Wait for the child; it must have exited with 0 (an exception in it exits with 1)."""
    process.join(timeout)
    if process.exitcode is None:
        process.kill()
        process.join()
        pytest.fail(f"{process.name} still ran after {timeout} s")
    assert process.exitcode == 0, f"{process.name} ended with {process.exitcode}"


def test_two_writers_into_one_folder_lose_nothing(tmp_path):
    writers = [start(writer, tmp_path, name, 15) for name in ("a", "b")]
    for w in writers:
        finish(w)
    for name in ("a", "b"):
        assert verify_zip(tmp_path / f"{name}.pt") is None
        assert torch.load(tmp_path / f"{name}.pt", weights_only=True)["round"] == 14
    assert verify_zip(tmp_path / "shared.pt") is None  # whole, from one or the other
    assert torch.load(tmp_path / "shared.pt", weights_only=True)["writer"] in ("a", "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "b.pt", "shared.pt"]  # no temp file left


def test_two_runs_in_one_checkpoint_folder_keep_each_others_files(tmp_path):
    """Run B (epochs 101-106) saves while run A (epochs 1-6) rotates: neither deletes the other's files.
    Both stay alive until both have saved and reported, so neither run ends while the other saves."""
    stay = CHILDREN.Event()
    runs = [start_run(tmp_path, first, 6, stay) for first in (1, 101)]
    try:
        ends = [receive(receiving, process) for process, receiving in runs]
    finally:
        stay.set()
        for process, _ in runs:
            process.join(60)
    for process, _ in runs:
        finish(process)
    names = sorted(p.name for p in tmp_path.glob("epoch-*.pt"))
    for end, first in zip(ends, (1, 101)):
        mine = [n for n in names if first <= int(n[6:10]) < first + 6]
        assert f"epoch-{first + 5:04d}.pt" in mine and f"epoch-{first + 4:04d}.pt" in mine, names
        assert end["best"] in mine and end["latest"] == f"epoch-{first + 5:04d}.pt", (end, names)
        assert len(mine) <= 3, names  # keep_last=2 plus the best: each run rotated its own files
    index = json.loads((tmp_path / "latest.json").read_text())
    for entry in index["runs"].values():  # every file the pointer names exists
        assert (tmp_path / entry["latest"]).exists() and (tmp_path / entry["best"]["file"]).exists()
    for name in names:
        load_checkpoint(tmp_path / name)


def test_a_second_run_may_not_overwrite_a_live_runs_file(tmp_path):
    stay = CHILDREN.Event()  # never set: run A stays until it is killed (kept here: the child reopens it)
    a, receiving = start_run(tmp_path, 1, 2, stay)
    try:
        receive(receiving, a)  # run A has saved epochs 1-2 and stays alive
        before = (tmp_path / "epoch-0002.pt").read_bytes()
        other = CheckpointFolder(tmp_path, keep_last=2)
        with pytest.raises(CheckpointError, match=r"another run .* owns this file"):
            other.save(make_checkpoint(build_model({"arch": "mlp"}), epoch=2))
        assert (tmp_path / "epoch-0002.pt").read_bytes() == before
    finally:
        a.kill()  # SIGKILL: no clean exit, as when a run crashes
        a.join()
    # once run A is gone, its files are still its own: a run that did not resume from them may not replace
    # them; one that resumed continues run A and may (issue 24, case 16)
    stranger = CheckpointFolder(tmp_path, keep_last=2)
    with pytest.raises(CheckpointError, match=r"belongs to run .* which ended") as caught:
        stranger.save(make_checkpoint(build_model({"arch": "mlp"}), epoch=2))
    assert caught.value.kind == "folder" and "cleanup()" in caught.value.fix
    assert (tmp_path / "epoch-0002.pt").read_bytes() == before
    again = CheckpointFolder(tmp_path, keep_last=2)
    assert again.resume().path.name == "epoch-0002.pt"
    again.save(make_checkpoint(build_model({"arch": "mlp"}), epoch=2))
    assert load_checkpoint(tmp_path / "epoch-0002.pt")["config"]["hidden"] == [64]  # run A's had [8]


def killed_run(folder: Path, epochs: list[int]) -> None:
    """A run (keep_last=2) that saves ``epochs`` and is then SIGKILLed: no clean exit, as when a run crashes."""
    import os
    import signal

    folder_run = CheckpointFolder(folder, keep_last=2)
    model = build_model({"arch": "mlp", "hidden": [8]})
    for epoch in epochs:
        folder_run.save(make_checkpoint(model, epoch=epoch))
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_dead_runs_files_are_removed_only_by_its_own_next_save_or_cleanup(tmp_path):
    """Issue 24, case 16: run A saves epochs 50-52 and is killed; run B (a fresh start) saves epoch 10.
    Before, B took A's files over and removed 51 and 52 as 'abandoned' (numbered above its own)."""
    a = start(killed_run, tmp_path / "shared", [50, 51, 52])
    a.join(120)
    assert a.exitcode == -9
    b = CheckpointFolder(tmp_path / "shared", keep_last=2)
    model = build_model({"arch": "mlp"})
    for epoch in (10, 11, 12):
        b.save(make_checkpoint(model, epoch=epoch))
    assert [p.name for p in b.checkpoints()] == ["epoch-0011.pt", "epoch-0012.pt", "epoch-0051.pt", "epoch-0052.pt"]
    removed = b.cleanup()  # on purpose: the ended run's files go, the live run's stay
    assert [p.name for p in removed] == ["epoch-0051.pt", "epoch-0052.pt"]
    assert [p.name for p in b.checkpoints()] == ["epoch-0011.pt", "epoch-0012.pt"]
    b.save(make_checkpoint(model, epoch=13))  # the pointer still works after the clean-up
    assert [p.name for p in b.checkpoints()] == ["epoch-0012.pt", "epoch-0013.pt"]

    # the same killed run, resumed: its next save is its own, and rotates its files as before
    a = start(killed_run, tmp_path / "resumed", [50, 51, 52])
    a.join(120)
    resumed = CheckpointFolder(tmp_path / "resumed", keep_last=2)
    assert resumed.resume().checkpoint["epoch"] == 52
    resumed.save(make_checkpoint(model, epoch=53))
    assert [p.name for p in resumed.checkpoints()] == ["epoch-0052.pt", "epoch-0053.pt"]


PAUSED_WRITER = textwrap.dedent("""
    import os, sys, time, torch
    from pathlib import Path
    import helper.checkpoint as ckpt
    folder = Path(sys.argv[1])
    real_save = torch.save

    def slow_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        print("writing", os.getpid(), flush=True)  # the temp file exists and is locked now
        while not (folder / "go").exists():
            time.sleep(0.05)

    ckpt.torch.save = slow_save
    ckpt.save_checkpoint({"w": torch.ones(10)}, folder / "container.pt")
    print("saved", flush=True)
""")


def unshare_works() -> str | None:
    """None if this machine lets us start a process in a new PID namespace, else why not."""
    if shutil.which("unshare") is None:
        return "no unshare command"
    probe = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--pid", "--fork", "sh", "-c", "echo $$"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        probe = subprocess.run(["unshare", "--pid", "--fork", "sh", "-c", "echo $$"], capture_output=True, text=True)
        if probe.returncode != 0:
            return f"unshare refused here: {probe.stderr.strip()[:120]}"
        return None if probe.stdout.strip() == "1" else "no new PID namespace"
    return None if probe.stdout.strip() == "1" else "no new PID namespace"


def test_a_writer_in_another_pid_namespace_keeps_its_temp_file(tmp_path):
    why = unshare_works()
    if why is not None:
        pytest.skip(why)
    user = (
        ["--user", "--map-root-user"]
        if subprocess.run(["unshare", "--user", "--map-root-user", "true"], capture_output=True).returncode == 0
        else []
    )
    writer = subprocess.Popen(
        ["unshare", *user, "--pid", "--fork", sys.executable, "-c", PAUSED_WRITER, str(tmp_path)],
        cwd=REPO_ROOT,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    try:
        line = writer.stdout.readline().split()
        assert line[:1] == ["writing"], writer.stderr.read()[-2000:]
        assert int(line[1]) < 10  # its PID inside the namespace: the host's PIDs say nothing about it
        (temp,) = tmp_path.glob(".container.pt.*.tmp")
        from helper.checkpoint import save_checkpoint

        save_checkpoint({"w": 1}, tmp_path / "host.pt")  # its clean-up runs while the other save is live
        assert temp.exists(), "the host's save removed a live writer's temporary file"
        (tmp_path / "go").touch()
        out, err = writer.communicate(timeout=120)
        assert writer.returncode == 0 and "saved" in out, err[-2000:]
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert torch.load(tmp_path / "container.pt", weights_only=True)["w"].sum() == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["container.pt", "go", "host.pt"]


def test_a_run_whose_object_is_gone_is_over(tmp_path):
    """Running a notebook cell again replaces the CheckpointFolder: the new one may replace the old one's files."""
    model = build_model({"arch": "mlp"})
    run = CheckpointFolder(tmp_path, keep_last=2)
    run.save(make_checkpoint(model, epoch=1))
    run = CheckpointFolder(tmp_path, keep_last=2)  # the old object is collected: its run lock is released
    run.save(make_checkpoint(model, epoch=1))
    assert [p.name for p in run.checkpoints()] == ["epoch-0001.pt"]
