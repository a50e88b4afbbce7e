"""Real faults: processes SIGKILLed while they save, and while they train.

One long-lived "zygote" process imports torch once and forks a child per
trial (a fresh interpreter per trial would cost seconds each). The child saves
a checkpoint of tens of MB in a loop, printing each version once it is saved;
the test kills it at a random moment and then checks the file on disk.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from helper.checkpoint import (
    CheckpointError,
    CheckpointFolder,
    load_checkpoint,
    remove_stale_temp_files,
    save_checkpoint,
    verify_zip,
)
from helper.data import split_digits

pytestmark = pytest.mark.skipif(
    not hasattr(signal, "SIGKILL") or not hasattr(os, "fork"), reason="needs SIGKILL and fork (Linux, macOS)"
)

MB_PER_TENSOR, TENSORS = 4, 4  # a 16 MB state dict: a kill at a random moment lands mid-write (and
# over 16 MiB, so the save takes the path that drops and later frees the replaced file)
HELPER_TRIALS, PLAIN_TRIALS = 20, 16  # plain loses its file in ~30% of trials: 16 make a miss 0.3%

ZYGOTE = textwrap.dedent("""
    import os, sys
    import torch
    torch.set_num_threads(1)  # the same kernels in every child, and no thread pool to break in fork()
    from helper.checkpoint import CheckpointFolder, make_checkpoint, restore_training_state, save_checkpoint
    from helper.data import make_loaders, split_digits
    from helper.models import build_model
    from helper.training import build_optimizer, build_scheduler, fit, seed_everything

    def say(text):
        os.write(1, (text + "\\n").encode())

    def save_loop(mode, target, numel, count):
        version = 0
        while True:
            weights = {f"w{i}": torch.full((numel,), float(version)) for i in range(count)}
            state = {"version": version, "weights": weights}
            if mode == "helper":
                save_checkpoint(state, target)
            else:
                torch.save(state, target)
            say(f"saved {version}")
            version += 1

    def train(folder, epochs, resume, out):
        split = split_digits()
        seed_everything(0)
        loaders = make_loaders(split, batch_size=64, seed=0)
        model = build_model({"arch": "cnn"})
        optimizer = build_optimizer(model, {"name": "sgd", "lr": 0.05, "momentum": 0.9})
        scheduler = build_scheduler(optimizer, {"name": "step", "step_size": 2, "gamma": 0.5})
        run = CheckpointFolder(folder, keep_last=2)
        start, history = 0, None
        if resume:
            found = run.resume()
            restore_training_state(found.checkpoint, model, optimizer, scheduler, generator=loaders.generator)
            start, history = found.checkpoint["epoch"], found.checkpoint["history"]
            say(f"resumed {start}")
        def on_epoch_end(epoch, hist):
            run.save(make_checkpoint(model, optimizer, scheduler, epoch=epoch, history=hist,
                                     generator=loaders.generator), metric=hist["val_loss"][-1])
            say(f"epoch {epoch}")
        hist = fit(model, optimizer, loaders.train, loaders.val, epochs=epochs, start_epoch=start,
                   scheduler=scheduler, history=history, on_epoch_end=on_epoch_end, progress=False)
        save_checkpoint(make_checkpoint(model, optimizer, scheduler, epoch=epochs, history=hist), out)

    say(f"zygote ready, sklearn imported: {'sklearn' in sys.modules}")
    for line in sys.stdin:
        command, *args = line.split()
        if command == "reap":
            _, status = os.waitpid(int(args[0]), 0)
            say(f"reaped {status}")
            continue
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            try:
                if command == "save":
                    save_loop(args[0], args[1], int(args[2]), int(args[3]))
                else:
                    train(args[0], int(args[1]), args[2] == "1", args[3])
                    say(f"done, sklearn imported: {'sklearn' in sys.modules}")
            finally:
                os._exit(0)
        say(f"pid {pid}")
""")


class Zygote:
    def __init__(self, folder: Path):
        script = folder / "zygote.py"
        script.write_text(ZYGOTE)
        env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1")
        self.proc = subprocess.Popen(
            [sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1, env=env
        )
        # helper's modules import scikit-learn only to compute a digits split (helper.data)
        assert self.read() == "zygote ready, sklearn imported: False"

    def read(self) -> str:
        line = self.proc.stdout.readline()
        assert line, "the zygote process died"
        return line.strip()

    def start(self, *args) -> int:
        self.proc.stdin.write(" ".join(map(str, args)) + "\n")
        line = self.read()
        assert line.startswith("pid "), line
        return int(line.split()[1])

    def wait_for(self, prefix: str) -> list[str]:
        """Lines up to and including the first that starts with ``prefix``."""
        lines = []
        while not lines or not lines[-1].startswith(prefix):
            lines.append(self.read())
        return lines

    def kill(self, pid: int) -> list[str]:
        """SIGKILL ``pid``, reap it, and return the lines it printed that were not read yet."""
        os.kill(pid, signal.SIGKILL)
        self.proc.stdin.write(f"reap {pid}\n")
        return self.wait_for("reaped")[:-1]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    z = Zygote(tmp_path_factory.mktemp("zygote"))
    yield z
    z.close()


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def read_version(path: Path, numel: int) -> int | None:
    """The version a file holds if it is a whole, consistent save; ``None`` if it is lost or damaged."""
    try:
        if verify_zip(path) is not None:
            return None
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None
    version = state["version"]
    whole = all(torch.equal(w, torch.full((numel,), float(version))) for w in state["weights"].values())
    return version if whole and len(state["weights"]) == TENSORS else None


def kill_trials(zygote: Zygote, folder: Path, mode: str, trials: int, seed: int) -> list[dict]:
    numel = MB_PER_TENSOR * 2**20 // 4
    target = folder / f"{mode}.pt"
    rng, results = random.Random(seed), []
    for _ in range(trials):
        pid = zygote.start("save", mode, target, numel, TENSORS)
        lines = zygote.wait_for("saved")  # at least one whole save exists now
        start = time.perf_counter()
        lines += zygote.wait_for("saved")  # how long one save takes here
        one_save = time.perf_counter() - start
        time.sleep(rng.uniform(0, 2 * one_save))
        lines += zygote.kill(pid)
        acked = max(int(line.split()[1]) for line in lines if line.startswith("saved"))
        results.append({"acked": acked, "found": read_version(target, numel), "temps": temp_files(folder)})
    return results


def test_sigkill_mid_save_never_loses_the_checkpoint_but_plain_torch_save_does(zygote, tmp_path, capsys):
    (tmp_path / "helper").mkdir()
    (tmp_path / "plain").mkdir()
    helper = kill_trials(zygote, tmp_path / "helper", "helper", HELPER_TRIALS, seed=0)
    plain = kill_trials(zygote, tmp_path / "plain", "plain", PLAIN_TRIALS, seed=1)

    # helper: always exactly the last acknowledged version or the one being written
    assert all(r["found"] in (r["acked"], r["acked"] + 1) for r in helper), helper
    mid_write = sum(bool(r["temps"]) for r in helper)  # a temp file left behind = the kill landed mid-write
    assert mid_write >= HELPER_TRIALS // 4, f"only {mid_write} kills landed mid-write"
    assert all(len(r["temps"]) <= 1 for r in helper), "a save did not remove an earlier run's temp file"
    # a later save (or an explicit clean-up) leaves no temporary file behind
    save_checkpoint({"version": -1}, tmp_path / "helper" / "helper.pt")
    assert temp_files(tmp_path / "helper") == [] and remove_stale_temp_files(tmp_path / "helper") == []

    lost = sum(r["found"] is None for r in plain)
    assert lost >= 1, "plain torch.save never lost its file: the harness did not kill mid-write"
    with capsys.disabled():
        print(
            f"\nSIGKILL mid-save: save_checkpoint lost 0/{HELPER_TRIALS} (killed mid-write {mid_write} times), "
            f"plain torch.save lost {lost}/{PLAIN_TRIALS}"
        )


def test_sigkill_during_training_then_resume_is_bit_for_bit_the_uninterrupted_run(zygote, tmp_path):
    epochs = 5
    split_digits()  # the split is in artifacts/cache now: the children read it without scikit-learn
    pid = zygote.start("train", tmp_path / "ref", epochs, 0, tmp_path / "ref.pt")
    assert zygote.wait_for("done")[-1] == "done, sklearn imported: False"
    zygote.kill(pid)  # (already exited: this only reaps it)

    pid = zygote.start("train", tmp_path / "run", epochs, 0, tmp_path / "never.pt")
    zygote.wait_for("epoch 2")
    zygote.kill(pid)
    assert not (tmp_path / "never.pt").exists()
    saved = CheckpointFolder(tmp_path / "run").checkpoints()
    assert saved and int(saved[-1].stem.split("-")[1]) < epochs  # it really died mid-run

    pid = zygote.start("train", tmp_path / "run", epochs, 1, tmp_path / "resumed.pt")
    lines = zygote.wait_for("done")
    zygote.kill(pid)
    assert lines[0].startswith("resumed ")
    ref, resumed = load_checkpoint(tmp_path / "ref.pt"), load_checkpoint(tmp_path / "resumed.pt")
    for key in ref["model"]:
        assert torch.equal(ref["model"][key], resumed["model"][key]), key
    assert ref["history"] == resumed["history"]
    assert ref["optimizer"]["state"].keys() == resumed["optimizer"]["state"].keys()
    for index, state in ref["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], resumed["optimizer"]["state"][index]["momentum_buffer"])
    assert len(CheckpointFolder(tmp_path / "run").checkpoints()) <= 3  # keep_last=2, plus the best


# ---------------------------------------------------------------------------------------------
# Faults: disk full, read-only, a folder in the way, a pointer that could not be written


def test_disk_full_is_a_checkpoint_error_with_the_errno_and_the_previous_file_intact(tmp_path, monkeypatch):
    import errno

    from helper import checkpoint as ckpt

    path = save_checkpoint({"version": 1}, tmp_path / "last.pt")
    before = path.read_bytes()
    real_save = torch.save

    def full(obj, f, *args, **kwargs):  # what torch.save does when a write fails: RuntimeError, OSError inside
        try:
            f.write(b"PK\x03\x04 part of a file")
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0") from exc

    monkeypatch.setattr(ckpt.torch, "save", full)
    with pytest.raises(CheckpointError, match=r"No space left on device \(ENOSPC\).*Fix: free space") as caught:
        save_checkpoint({"version": 2}, path)
    assert str(tmp_path) in str(caught.value)  # the full path: it lies outside the repository
    monkeypatch.setattr(ckpt.torch, "save", real_save)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_a_folder_where_the_file_should_go_is_named(tmp_path):
    (tmp_path / "last.pt").mkdir()
    with pytest.raises(CheckpointError, match=r"\(EISDIR\).*Fix: the target is a folder"):
        save_checkpoint({"version": 1}, tmp_path / "last.pt")


def test_resume_finds_the_newest_file_when_the_pointer_write_failed(tmp_path, monkeypatch):

    from helper import checkpoint_folder as ckpt  # the folder's own name for the atomic write
    from helper.checkpoint import make_checkpoint
    from helper.models import build_model

    model = build_model({"arch": "mlp"})
    run = CheckpointFolder(tmp_path)
    run.save(make_checkpoint(model, epoch=1))
    real = ckpt._atomic_write

    def pointer_fails(path, write, check=None):
        if Path(path).name == CheckpointFolder.POINTER:
            raise CheckpointError(path, "not saved: No space left on device (ENOSPC)", "free space")
        return real(path, write, check)

    monkeypatch.setattr(ckpt, "_atomic_write", pointer_fails)
    with pytest.raises(CheckpointError, match="ENOSPC"):
        run.save(make_checkpoint(model, epoch=2))
    monkeypatch.setattr(ckpt, "_atomic_write", real)
    assert json.loads((tmp_path / "latest.json").read_text())["latest"] == "epoch-0001.pt"  # the stale pointer
    found = CheckpointFolder(tmp_path).resume()
    assert found.path.name == "epoch-0002.pt" and found.skipped == []


REAL_FS = textwrap.dedent("""
    import json, subprocess, sys, torch
    from pathlib import Path
    from helper.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    folder = Path(sys.argv[1])
    results = {}
    save_checkpoint({"version": 1, "w": torch.ones(1000)}, folder / "last.pt")
    before = (folder / "last.pt").read_bytes()
    for name, setup in (("ENOSPC", None), ("EROFS", ["mount", "-o", "remount,ro", str(folder)])):
        if setup:
            subprocess.run(setup, check=True)
        try:
            save_checkpoint({"version": 2, "w": torch.ones(200_000)}, folder / "last.pt")
            results[name] = "saved"
        except CheckpointError as exc:
            results[name] = str(exc)
        except Exception as exc:
            results[name] = "RAW " + repr(exc)
        results[name + " intact"] = (folder / "last.pt").read_bytes() == before
        results[name + " files"] = sorted(p.name for p in folder.iterdir())
    print(json.dumps(results))
""")


def test_real_full_and_read_only_file_systems(tmp_path):
    """A 256 kB tmpfs, mounted in a private mount namespace (skipped where unshare is refused)."""
    import shutil

    if shutil.which("unshare") is None:
        pytest.skip("no unshare command")
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    script = 'mount -t tmpfs -o size=256k tmpfs "$1" && exec "$2" -c "$3" "$1"'
    done = subprocess.run(
        ["unshare", *user, "--mount", "sh", "-c", script, "sh", str(tmp_path), sys.executable, REAL_FS],
        capture_output=True,
        text=True,
        timeout=300,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    if done.returncode != 0 and ("Operation not permitted" in done.stderr or "mount" in done.stderr[:300]):
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()[:160]}")
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout.splitlines()[-1])
    assert "(ENOSPC)" in results["ENOSPC"] and "free space" in results["ENOSPC"], results
    assert "(EROFS)" in results["EROFS"] and "read-only" in results["EROFS"], results
    assert results["ENOSPC intact"] and results["EROFS intact"], results
    assert results["ENOSPC files"] == results["EROFS files"] == ["last.pt"], results
