"""Fuzz load_checkpoint and the doctor: every single-byte change and every truncation of a small file.

Each changed copy must either load bit-identically to the original or raise
``CheckpointError`` (never another exception, never different values); the
doctor must end with exit code 0 or 1 and no traceback, and never say OK for a
copy ``load_checkpoint`` refuses. ``make test`` runs a fixed sample of
``SAMPLE`` changes; ``make fuzz`` (``FUZZ_FULL=1``) sweeps them all, on every
core, and prints the figures.
"""

from __future__ import annotations

import collections
import contextlib
import io
import multiprocessing
import os
import random
import re
import tempfile
from pathlib import Path

import pytest
import torch

from helper.checkpoint import CheckpointError, load_checkpoint, make_checkpoint, save_checkpoint
from helper.doctor import main as doctor_main
from helper.models import build_model

SAMPLE = 300
FLIPS = (0x01, 0x10, 0xFF)


def same(a, b) -> bool:
    """Bit-identical: same types, keys in order, tensors with equal dtype, shape, stride and bytes."""
    if isinstance(a, torch.Tensor):
        return (
            isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and a.stride() == b.stride()
            and torch.equal(a.view(torch.uint8) if a.numel() else a, b.view(torch.uint8) if b.numel() else b)
        )
    if isinstance(a, dict):
        return type(a) is type(b) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def small_checkpoint(folder: Path) -> Path:
    """A real save_checkpoint file of about 8 kB (a small model, SGD state, a short RNG record)."""
    torch.manual_seed(0)
    model = build_model({"arch": "mlp", "hidden": [4]})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 64)).sum().backward()
    optimizer.step()
    checkpoint = make_checkpoint(model, optimizer, epoch=3, step=30, history={"val_loss": [0.5, 0.4]})
    checkpoint["rng"] = {"torch": torch.get_rng_state()[:32].clone()}
    return save_checkpoint(checkpoint, folder / "small.pt")


def cases(size: int) -> list[tuple[str, int, int]]:
    """Every change: (XOR, position, mask) for each byte and mask, and (cut, length, 0) for each length."""
    return [("xor", i, m) for i in range(size) for m in FLIPS] + [("cut", n, 0) for n in range(size)]


def cause_of(exc: CheckpointError) -> str:
    """A short class of refusal for the figures."""
    text = re.sub(r"'[^']*'|\d[\d,]*", "_", exc.cause)
    return text.split(" (")[0][:70]


_STATE: dict = {}


def _init(original: bytes, folder: str) -> None:
    path = Path(folder) / f"copy-{os.getpid()}.pt"
    path.write_bytes(original)
    _STATE.update(original=original, path=path, reference=load_checkpoint(path))


def doctor_verdict(path: Path) -> str:
    """The doctor's command line as a user runs it: "OK" (exit status 0, last line "OK: ...") or
    "PROBLEM" (1, "PROBLEM: ..."); an exit status and a last line that disagree, or any other status,
    is "BAD-REPORT"."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = doctor_main([str(path)])
    lines = out.getvalue().splitlines()
    head = {0: "OK", 1: "PROBLEM"}.get(code)
    return head if head and lines and lines[-1].startswith(f"{head}: ") else "BAD-REPORT"


def run_case(case: tuple[str, int, int], doctor: bool = True) -> tuple[str, str, str]:
    """(load outcome, cause or detail, doctor outcome) for one changed copy."""
    what, where, mask = case
    data = bytearray(_STATE["original"])
    if what == "xor":
        data[where] ^= mask
    else:
        del data[where:]
    path = _STATE["path"]
    path.write_bytes(bytes(data))
    try:
        loaded = load_checkpoint(path)
        load, detail = ("identical", "") if same(loaded, _STATE["reference"]) else ("GARBAGE", repr(case))
    except CheckpointError as exc:
        load, detail = "refused", cause_of(exc)
    except Exception as exc:  # noqa: BLE001 - any other exception is a finding
        load, detail = "RAISED", f"{case}: {type(exc).__name__}: {exc}"[:300]
    verdict = "-"
    if doctor:
        try:
            verdict = doctor_verdict(path)
        except BaseException as exc:  # noqa: BLE001 - a traceback is the finding
            verdict = f"TRACEBACK {type(exc).__name__}: {exc}"[:200]
    return load, detail, verdict


def sweep(original: bytes, chosen: list[tuple[str, int, int]], processes: int) -> dict:
    shm = Path("/dev/shm")  # a memory file system where there is one: the sweep writes a file per change
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() and os.access(shm, os.W_OK) else None) as folder:
        if processes > 1:
            with multiprocessing.get_context("fork").Pool(processes, _init, (original, folder)) as pool:
                results = pool.map(run_case, chosen, chunksize=64)
        else:
            _init(original, folder)
            results = [run_case(c) for c in chosen]
    figures = {
        "changes": len(chosen),
        "loads": collections.Counter(r[0] for r in results),
        "refusals": collections.Counter(r[1] for r in results if r[0] == "refused"),
        "findings": [r[1] for r in results if r[0] in ("GARBAGE", "RAISED")],
        "doctor": collections.Counter(r[2].split(":")[0] for r in results),
        "doctor_ok_on_refused": sum(r[0] == "refused" and r[2] == "OK" for r in results),
        "doctor_tracebacks": [r[2] for r in results if r[2].startswith(("TRACEBACK", "BAD-REPORT"))],
    }
    return figures


def report(figures: dict) -> str:
    lines = [
        f"changes tried: {figures['changes']}",
        f"loads: {dict(figures['loads'])}",
        f"silent garbage loads: {figures['loads'].get('GARBAGE', 0)}, other exceptions: "
        f"{figures['loads'].get('RAISED', 0)}",
        f"doctor: {dict(figures['doctor'])}, OK on a refused copy: "
        f"{figures['doctor_ok_on_refused']}, tracebacks: {len(figures['doctor_tracebacks'])}",
        "refusals by cause:",
    ]
    lines += [f"  {n:6d}  {cause}" for cause, n in figures["refusals"].most_common()]
    return "\n".join(lines)


def test_every_change_loads_identically_or_is_refused(tmp_path, capsys):
    original = small_checkpoint(tmp_path).read_bytes()
    everything = cases(len(original))
    full = os.environ.get("FUZZ_FULL") == "1"
    chosen = everything if full else random.Random(int(os.environ.get("FUZZ_SEED", "14"))).sample(everything, SAMPLE)
    figures = sweep(original, chosen, processes=os.cpu_count() or 1 if full else 1)
    with capsys.disabled():
        print(
            f"\nfuzz ({'full sweep' if full else f'sample of {SAMPLE}'}, file of {len(original)} bytes)\n"
            + report(figures)
        )
    assert figures["findings"] == [], figures["findings"][:10]
    assert figures["doctor_tracebacks"] == [], figures["doctor_tracebacks"][:10]
    assert figures["doctor_ok_on_refused"] == 0
    assert figures["loads"]["refused"] > 0 and figures["loads"]["identical"] > 0  # both outcomes were exercised


def test_the_fuzz_harness_catches_a_silent_garbage_load(tmp_path):
    """The check can fail: with the validation switched off, a flipped tensor byte loads as different weights."""
    original = small_checkpoint(tmp_path).read_bytes()
    _init(original, str(tmp_path))
    at = original.find(b"data/0") + 200  # inside the first tensor's bytes
    data = bytearray(original)
    data[at] ^= 0x10
    _STATE["path"].write_bytes(bytes(data))
    unchecked = torch.load(_STATE["path"], weights_only=True)
    assert not same(unchecked, _STATE["reference"])
    assert run_case(("xor", at, 0x10))[0] == "refused"


@pytest.mark.parametrize(
    "printed, status, verdict",
    [
        ("x.pt: torch-zip\nOK: a checkpoint", 0, "OK"),
        ("x.pt: torch-zip\nPROBLEM: damaged", 1, "PROBLEM"),
        ("x.pt: torch-zip\nOK: a checkpoint", 1, "BAD-REPORT"),
        ("x.pt: torch-zip\nPROBLEM: damaged", 0, "BAD-REPORT"),
        ("x.pt: torch-zip\nPROBLEM: damaged", 2, "BAD-REPORT"),
        ("", 0, "BAD-REPORT"),
        ("x.pt: torch-zip\n  OK: indented, not the verdict", 0, "BAD-REPORT"),
    ],
)
def test_the_doctor_check_fails_when_status_and_verdict_disagree(monkeypatch, tmp_path, printed, status, verdict):
    """The check the sweep applies to the doctor can fail: a doctor whose exit status contradicts its last
    line, or that prints no verdict, is a finding."""

    def doctor(argv):
        print(printed)
        return status

    monkeypatch.setitem(globals(), "doctor_main", doctor)  # what doctor_verdict calls
    assert doctor_verdict(tmp_path / "x.pt") == verdict


@pytest.mark.parametrize("mask", FLIPS)
def test_directory_bit_on_a_tensor_member_is_refused(tmp_path, mask):
    """The central directory's external attributes: torch ignores them, zipfile reads 0x10 as a folder."""
    original = small_checkpoint(tmp_path).read_bytes()
    _init(original, str(tmp_path))
    positions = [i for i in range(len(original)) if original.startswith(b"PK\x01\x02", i)]
    for start in positions:
        load, _, verdict = run_case(("xor", start + 38, mask))  # first byte of the external attributes
        assert load == "refused" and verdict == "PROBLEM"


def test_every_change_to_the_pickle_itself_is_scanned_or_refused(tmp_path):
    """data.pkl with its CRC recomputed (a crafted file): the opcode scan never raises anything but ValueError,
    and load_checkpoint raises nothing but CheckpointError on it; the doctor's exit status and verdict agree."""
    import zipfile

    from helper.pickle_guard import survey_pickle as scan_pickle

    original = small_checkpoint(tmp_path)
    with zipfile.ZipFile(original) as z:
        records = {n: z.read(n) for n in z.namelist()}
    name = next(n for n in records if n.endswith("data.pkl"))
    pkl = records[name]
    rng = random.Random(18)
    outcomes = collections.Counter()
    for i in range(len(pkl)):
        for mask in FLIPS:
            data = bytearray(pkl)
            data[i] ^= mask
            try:
                scan_pickle(bytes(data))
                outcomes["scanned"] += 1
            except ValueError:
                outcomes["malformed"] += 1
    assert outcomes["scanned"] and outcomes["malformed"]
    _init(original.read_bytes(), str(tmp_path))
    for i in rng.sample(range(len(pkl)), 40):
        data = bytearray(pkl)
        data[i] ^= rng.choice(FLIPS)
        with zipfile.ZipFile(tmp_path / "crafted.pt", "w") as out:
            for n, raw in records.items():
                out.writestr(zipfile.ZipInfo(n), bytes(data) if n == name else raw)
                out.filelist[-1].external_attr = 0
        try:  # a crafted pickle may load other values (its CRC is valid): only the kind of failure is checked
            load_checkpoint(tmp_path / "crafted.pt")
        except CheckpointError:
            pass
        assert doctor_verdict(tmp_path / "crafted.pt") in ("OK", "PROBLEM")
