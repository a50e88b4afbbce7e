"""Memory bombs: tiny files that ask for gigabytes are refused before anything is allocated.

Each bomb is loaded with ``load_checkpoint`` and examined by the doctor in a
child process whose peak resident memory (``ru_maxrss``) is reported; it must
stay under 1 GB, and both must name the cause. A control shows the
measurement can fail: plain ``torch.load`` on the inflating bomb goes past it.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import pytest
import torch

from helper.paths import REPO_ROOT

LIMIT_MB = 1024  # the bound on the peak; the import baseline (500-850 MB here) varies with the page cache,
GROWTH_MB = 256  # so what a bomb may add over that baseline is asserted too
INFLATED = 512 << 20  # what the deflated data.pkl grows to

CHILD = """
import json, resource, sys
from helper.checkpoint import CheckpointError, load_checkpoint
from helper.doctor import diagnose
print(json.dumps({"baseline_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
for path in sys.argv[1:]:
    try:
        load_checkpoint(path)
        cause = "LOADED"
    except CheckpointError as exc:
        cause = exc.cause
    d = diagnose(path)
    print(json.dumps({"cause": cause, "doctor": d.verdict(), "healthy": d.healthy,
                      "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)
"""
PLAIN = """
import resource, sys, torch
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
try:
    torch.load(sys.argv[1], weights_only=True)
except Exception:
    pass
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def rezip(good: Path, target: Path, replace: dict[str, bytes], deflate_pkl_pad: int = 0) -> Path:
    """``good``'s records with some replaced, written with the attributes torch.save uses (stored, no bits)."""
    with zipfile.ZipFile(good) as z:
        records = {n: z.read(n) for n in z.namelist()}
    records.update(replace)
    with zipfile.ZipFile(target, "w") as out:
        for name, data in records.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = 0
            if name.endswith("data.pkl") and deflate_pkl_pad:
                info.compress_type = zipfile.ZIP_DEFLATED
                with out.open(info, "w", force_zip64=True) as w:  # a pickle of one huge bytes object
                    w.write(b"\x80\x04\x8e" + deflate_pkl_pad.to_bytes(8, "little"))
                    chunk = bytes(16 << 20)
                    for _ in range(deflate_pkl_pad // len(chunk)):
                        w.write(chunk)
                    w.write(b".")
            else:
                out.writestr(info, data)
            out.filelist[-1].external_attr = 0  # writestr sets 0o600 << 16; torch.save writes 0
    return target


def long1(n: int) -> bytes:
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little")
    return b"\x8a" + bytes([len(raw)]) + raw


def bytearray_bomb(*sizes: int) -> bytes:
    """A protocol-2 pickle of {"a": bytearray(n), ...}: weights_only=True allows builtins.bytearray."""
    body = b"".join(b"X\x01\x00\x00\x00" + bytes([97 + i]) + b"cbuiltins\nbytearray\n" + long1(n) + b"\x85R"
                    for i, n in enumerate(sizes))
    return b"\x80\x02}(" + body + b"u."


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bombs")
    good = root / "good.pt"
    torch.save({"w": torch.ones(3)}, good)
    with zipfile.ZipFile(good) as z:
        pkl_name = next(n for n in z.namelist() if n.endswith("data.pkl"))
        pkl = z.read(pkl_name)
    huge = pkl.replace(b"cpuq\x06K\x03", b"cpuq\x06" + long1(1 << 40))
    assert huge != pkl
    legacy = root / "legacy_src.pt"
    torch.save({"w": torch.ones(3)}, legacy, _use_new_zipfile_serialization=False)
    legacy_huge = legacy.read_bytes().replace(b"cpuq\x06K\x03", b"cpuq\x06" + long1(1 << 40), 1)
    assert legacy_huge != legacy.read_bytes()
    (root / "legacy_huge.pt").write_bytes(legacy_huge)
    return {
        "control (rezipped, unchanged)": rezip(good, root / "control.pt", {}),
        "bytearray 2 GB": rezip(good, root / "bytearray.pt", {pkl_name: bytearray_bomb(2 << 30)}),
        "two bytearrays of 2.2 GB": rezip(good, root / "two.pt", {pkl_name: bytearray_bomb(2_200_000_000,
                                                                                        2_200_000_000)}),
        "bytearray 2**50": rezip(good, root / "petabyte.pt", {pkl_name: bytearray_bomb(1 << 50)}),
        "inflating data.pkl (512 MB)": rezip(good, root / "inflating.pt", {}, deflate_pkl_pad=INFLATED),
        "storage declares 2**40 floats": rezip(good, root / "huge_storage.pt", {pkl_name: huge}),
        "legacy storage declares 2**40 floats": root / "legacy_huge.pt",
    }


def run_child(code: str, *paths: Path) -> list[str]:
    done = subprocess.run([sys.executable, "-c", code, *map(str, paths)], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=600, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()


EXPECTED = {
    "control (rezipped, unchanged)": "missing keys",  # loads fine: it just is not a training checkpoint
    "bytearray 2 GB": "memory bomb",
    "two bytearrays of 2.2 GB": "memory bomb",
    "bytearray 2**50": "memory bomb",
    "inflating data.pkl (512 MB)": "compressed",
    "storage declares 2**40 floats": "declares 4398046511104 bytes",
    "legacy storage declares 2**40 floats": "legacy format",
}


def test_bombs_are_refused_with_little_memory(bombs, capsys):
    """All bombs in one child, in turn: ru_maxrss only grows, so each figure bounds every bomb before it."""
    baseline, *lines = run_child(CHILD, *(bombs[name] for name in EXPECTED))
    base = json.loads(baseline)["baseline_mb"]
    results = dict(zip(EXPECTED, map(json.loads, lines)))
    with capsys.disabled():
        print(f"\nbombs: peak resident memory after each (child's baseline {base:.0f} MB)")
        for name, result in results.items():
            print(f"  {name}: {result['peak_mb']:.0f} MB | {result['cause'][:100]}")
    for name, result in results.items():
        assert result["peak_mb"] - base < GROWTH_MB and result["peak_mb"] < max(LIMIT_MB, base + GROWTH_MB), (name, base,
                                                                                                        result)
        assert EXPECTED[name] in result["cause"], (name, result)
        if name.startswith("control"):
            assert result["healthy"], result
        else:
            assert not result["healthy"] and result["doctor"].startswith("PROBLEM: "), (name, result)
            assert any(w in result["doctor"] for w in ("bomb", "compressed", "declares", "memory")), (name, result)


def test_the_memory_measurement_can_fail(bombs):
    """Plain torch.load inflates the compressed data.pkl: the child's peak grows past what a bomb may add.

    (Measured growth 370-600 MB for the 512 MB member, depending on what the baseline already held.)
    """
    base, peak = map(float, run_child(PLAIN, bombs["inflating data.pkl (512 MB)"])[-2:])
    assert peak - base > GROWTH_MB


def test_the_inflating_bomb_is_small_on_disk(bombs):
    assert bombs["inflating data.pkl (512 MB)"].stat().st_size < 4 << 20
