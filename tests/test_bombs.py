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
    body = b"".join(
        b"X\x01\x00\x00\x00" + bytes([97 + i]) + b"cbuiltins\nbytearray\n" + long1(n) + b"\x85R"
        for i, n in enumerate(sizes)
    )
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
        "two bytearrays of 2.2 GB": rezip(
            good, root / "two.pt", {pkl_name: bytearray_bomb(2_200_000_000, 2_200_000_000)}
        ),
        "bytearray 2**50": rezip(good, root / "petabyte.pt", {pkl_name: bytearray_bomb(1 << 50)}),
        "inflating data.pkl (512 MB)": rezip(good, root / "inflating.pt", {}, deflate_pkl_pad=INFLATED),
        "storage declares 2**40 floats": rezip(good, root / "huge_storage.pt", {pkl_name: huge}),
        "legacy storage declares 2**40 floats": root / "legacy_huge.pt",
    }


def run_child(code: str, *paths: Path) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", code, *map(str, paths)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=600,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
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
        assert result["peak_mb"] - base < GROWTH_MB and result["peak_mb"] < max(LIMIT_MB, base + GROWTH_MB), (
            name,
            base,
            result,
        )
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


# --------------------------------------------------------------------------------------------------
# helper.pickle_guard on its own: the pre-scan that runs before torch's unpickler (issue 24, cases 6-9)

import collections  # noqa: E402
import pickle  # noqa: E402
import time  # noqa: E402

from helper.checkpoint import CheckpointError  # noqa: E402
from helper.pickle_guard import PickleBudget, scan_pickle, torch_allowed_globals  # noqa: E402


def data_pkl(obj, **kwargs) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, **kwargs)
    with zipfile.ZipFile(buffer) as z:
        return z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))


def refused(data: bytes, kind: str, words: str, **kwargs) -> float:
    """Scan ``data``; it must raise CheckpointError of ``kind`` naming ``words``. Returns the seconds it took."""
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as caught:
        scan_pickle(data, **kwargs)
    assert caught.value.kind == kind, caught.value
    assert words in caught.value.cause and caught.value.path is None, caught.value.cause
    return time.perf_counter() - start


PLAIN_DATA = {
    "a": [1, 2.5, "x", b"y", None, True],
    "b": (1, (2, (3,))),
    "c": {3, 4},
    "d": bytearray(b"ab"),
    "e": 1j,
    "f": collections.OrderedDict(k=1),
    "g": collections.Counter("aab"),
    "h": 2**100,
    "i": frozenset({1}),
}


@pytest.mark.parametrize("protocol", [1, 2, 3, 4, 5])
def test_torch_save_files_pass_in_every_protocol(protocol):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 3)).sum().backward()
    optimizer.step()
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        **{k: v for k, v in PLAIN_DATA.items() if k != "i" or protocol >= 4},
    }
    report = scan_pickle(data_pkl(state, pickle_protocol=protocol))
    assert "torch._utils._rebuild_tensor_v2" in report.calls and 3 <= report.max_depth <= 8
    assert set(report.globals) <= torch_allowed_globals()


def test_every_kind_of_tensor_torch_saves_passes():
    """Parameters, tensors with attributes, sparse, quantized, meta, nested, views, new dtypes: torch's own
    rebuild calls pass the call rules (the allocating ones with their literal sizes)."""
    import warnings

    tagged = torch.ones(2)
    tagged.note = "x"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized and nested tensors warn that they are deprecated or beta
        kinds = {
            "parameter": torch.nn.Parameter(torch.ones(3)),
            "attributes": tagged,
            "sparse": torch.eye(3).to_sparse(),
            "csr": torch.eye(3).to_sparse_csr(),
            "quantized": torch.quantize_per_tensor(torch.randn(4), 0.1, 10, torch.quint8),
            "per channel": torch.quantize_per_channel(
                torch.randn(2, 3), torch.tensor([0.1, 0.2]), torch.tensor([1, 2]), 0, torch.qint8
            ),
            "meta": torch.empty(3, device="meta"),
            "view": torch.arange(10)[2:5],
            "nested": torch.nested.nested_tensor([torch.ones(2), torch.ones(3)]),
            "dtypes": [
                torch.ones(2, dtype=d) for d in (torch.bfloat16, torch.complex64, torch.uint16, torch.float8_e4m3fn)
            ],
        }
        for name, value in kinds.items():
            report = scan_pickle(data_pkl({name: value}))
            assert any(call.startswith("torch._") for call in report.calls), (name, report)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_plain_pickles_pass_in_every_protocol(protocol):
    report = scan_pickle(
        pickle.dumps(PLAIN_DATA, protocol=protocol),
        allowed=frozenset(
            {
                "builtins.set",
                "builtins.frozenset",
                "builtins.bytearray",
                "builtins.complex",
                "collections.OrderedDict",
                "collections.Counter",
                "_codecs.encode",
            }
        ),
    )
    assert report.opcodes > 20 and report.end == len(pickle.dumps(PLAIN_DATA, protocol=protocol))


def test_globals_are_exact_never_a_prefix_or_a_dotted_name():
    module, name, cmd = b"torch.distributed.checkpoint.filesystem", b"os.system", b"touch marker"
    dcp = b"\x80\x04\x8c%c%s\x8c%c%s\x93\x8c%c%s\x85R." % (len(module), module, len(name), name, len(cmd), cmd)
    refused(dcp, "hostile-pickle", "a name with a dot", allowed=frozenset({module.decode() + ".os"}))
    refused(b"\x80\x02ctorch.nn\nParameterX\n)R.", "hostile-pickle", "not on the allowlist")
    refused(b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00id\x85R.", "hostile-pickle", "os.system")
    computed = b"\x80\x04\x8c\x05torch" + b"c_codecs\nencode\n\x8c\x04Size\x8c\x06latin1\x86R" + b"\x93."
    refused(computed, "hostile-pickle", "computed at load time")
    memoized = b"\x80\x04\x8c\x05torch\x94\x8c\x04Size\x94\x93h\x00h\x01\x93\x86."  # strings through the memo pass
    assert scan_pickle(memoized).globals == ("torch.Size",)
    for op in (b"\x82\x01", b"ios\nsystem\n", b"Pid\n"):
        refused(b"\x80\x02(" + op + b".", "hostile-pickle", "never writes")


def test_a_dcp_metadata_pickle_passes_with_dcps_own_allowlist(tmp_path):
    """The doctor scans DCP's .metadata (protocol 4: STACK_GLOBAL through the memo, NEWOBJ, BUILD, enums)
    with an allowlist of DCP's classes: the structural rules refuse nothing in it; an empty list refuses
    every global at once."""
    import warnings

    import torch.distributed.checkpoint as dcp

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save({"model": model.state_dict(), "extra": {"epoch": 3}}, checkpoint_id=tmp_path)
    data = (tmp_path / ".metadata").read_bytes()
    with pytest.raises(CheckpointError) as caught:
        scan_pickle(data, allowed=frozenset(), name=".metadata")
    names = caught.value.refused_globals
    assert "torch.distributed.checkpoint.metadata.Metadata" in names and caught.value.kind == "hostile-pickle"
    report = scan_pickle(data, allowed=frozenset(names), name=".metadata")
    assert report.protocol >= 4 and "torch.distributed.checkpoint.metadata.Metadata" in report.calls


def test_bombs_are_refused_quickly_with_little_memory():
    """Cases 6-9 of issue 24 as pickles: each refused before torch's unpickler would build it, within seconds."""
    n = 1_000_000
    took = {
        "tuple key nested 1M deep": refused(b"\x80\x02}(" + b")" + b"\x85" * n + b"K\x01u.", "budget", "nested"),
        "format_version nested 200k deep": refused(
            b"\x80\x02}X\x0e\x00\x00\x00format_version" + b"]" * 200_000 + b"a" * 199_999 + b"s.",
            "budget",
            "would build",
        ),
        "29 chained _codecs.encode": refused(
            b"\x80\x02" + b"c_codecs\nencode\n" * 29 + b"X\x01\x00\x00\x00a" + b"X\x03\x00\x00\x00hex\x86R" * 29 + b".",
            "hostile-pickle",
            "_codecs.encode",
        ),
        "5M empty sets": refused(b"\x80\x04(" + b"\x8f" * 5_000_000 + b"l.", "budget", "containers"),
        "20M MARKs": refused(b"\x80\x02" + b"(" * 20_000_000 + b"N.", "budget", "MARKs"),
        "30M empty lists": refused(b"\x80\x02(" + b"]" * 30_000_000 + b"l.", "budget", "containers"),
        "memo of 4M entries": refused(b"\x80\x02N" + b"\x94" * 4_000_000 + b".", "budget", "memo"),
    }
    assert all(seconds < 10 for seconds in took.values()), took


def test_allocating_calls_take_only_small_literals():
    tensor = data_pkl(torch.tensor(5))  # a 0-dim int64 tensor: bytearray(t) would allocate 5 bytes, or 2 GB
    body = tensor[2:-1]  # the tensor's opcodes, without PROTO and STOP
    refused(b"\x80\x02cbuiltins\nbytearray\n" + body + b"\x85R.", "hostile-pickle", "bytearray")
    refused(b"\x80\x02cbuiltins\nbytearray\nJ\x00\x00\x00\x7f\x85R.", "budget", "bytearray(N)")
    assert scan_pickle(b"\x80\x02cbuiltins\nbytearray\nM\x00\x04\x85R.").alloc == 1024
    refused(b"\x80\x02ctorch.storage\nUntypedStorage\nJ\x00\x00\x00\x7f\x85R.", "hostile-pickle", "allocate")
    refused(b"\x80\x02ctorch\nFloatTensor\nJ\x00\x00\x00\x7f\x85R.", "hostile-pickle", "allocate")
    refused(b"\x80\x02cbuiltins\nset\nX\x03\x00\x00\x00abc\x85R.", "hostile-pickle", "list, tuple")
    refused(b"\x80\x02ctorch\nfloat32\n)R.", "hostile-pickle", "never calls")
    refused(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x06\x00\x00\x00utf-32\x86R.", "hostile-pickle", "encoding")


def test_changed_pickles_raise_nothing_but_checkpoint_error():
    """2,000 random overwrites, inserts and deletes of a real data.pkl: the scan passes or says why, never
    another exception (the doctor relies on it)."""
    import random

    rng = random.Random(24)
    good = data_pkl({"model": torch.nn.Linear(3, 2).state_dict(), "extra": PLAIN_DATA}, pickle_protocol=2)
    kinds = collections.Counter()
    for _ in range(2000):
        data = bytearray(good)
        where = rng.randrange(len(data))
        how = rng.choice(("overwrite", "insert", "delete"))
        chunk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        if how == "overwrite":
            data[where : where + len(chunk)] = chunk
        elif how == "insert":
            data[where:where] = chunk
        else:
            del data[where : where + len(chunk)]
        try:
            scan_pickle(bytes(data))
            kinds["passed"] += 1
        except CheckpointError as exc:
            kinds[exc.kind] += 1
    assert kinds["malformed-pickle"] + kinds["truncated"] > 1000 and set(kinds) <= {
        "passed",
        "malformed-pickle",
        "truncated",
        "hostile-pickle",
        "budget",
    }, kinds


def test_cycles_and_late_changes_are_refused():
    refused(b"\x80\x02]q\x00h\x00a.", "hostile-pickle", "inside itself")
    # a list placed in another, then grown through the memo: the depth check must not be fooled
    refused(b"\x80\x02]q\x00]q\x01ah\x01]a.", "hostile-pickle", "after it was placed")


def test_budget_grows_with_the_file_and_stops_at_its_ceilings():
    small, big = PickleBudget.for_size(0), PickleBudget.for_size(100 << 20)
    assert small.max_depth == big.max_depth == 100 and small.max_memory == 32 << 20
    assert big.max_memory == 1 << 30 and big.max_containers == 1 << 20 and big.max_alloc == (1 << 20) + (100 << 20)
    refused(b"\x80\x02" + b"(" * 11 + b"N.", "budget", "MARKs", budget=PickleBudget(max_marks=10))


def test_truncated_and_malformed_pickles_have_their_own_kinds():
    good = data_pkl({"w": torch.ones(2)})
    for cut in range(0, len(good) - 1, 7):
        with pytest.raises(CheckpointError) as caught:
            scan_pickle(good[:cut])
        assert caught.value.kind in ("truncated", "malformed-pickle"), (cut, caught.value)
    refused(b"\x80\x02\xff.", "malformed-pickle", "unknown opcode")
    refused(b"\x80\x02a.", "malformed-pickle", "empty stack")


# --------------------------------------------------------------------------------------------------
# Issue 24, cases 6-9 as files: load_checkpoint in a child with address-space, CPU-time and wall-time limits

LIMITED_CHILD = """
import json, resource, sys, time
from helper.checkpoint import CheckpointError, load_checkpoint
def vm_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1])
resource.setrlimit(resource.RLIMIT_AS, (vm_kb() * 1024 + (1 << 30),) * 2)  # 1 GiB above what the imports mapped
resource.setrlimit(resource.RLIMIT_CPU, (120, 120))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
for path in sys.argv[1:]:
    start = time.perf_counter()
    try:
        load_checkpoint(path)
        result = {"kind": "LOADED", "cause": ""}
    except CheckpointError as exc:
        result = {"kind": getattr(exc, "kind", None), "cause": exc.cause}
    result.update(seconds=time.perf_counter() - start,
                  growth_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base)
    print(json.dumps(result), flush=True)
"""


class Wrap:
    """Pickles as ``func(*args)`` (torch.save's own pickler writes it)."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def hostile_checkpoint(
    folder: Path,
    name: str,
    *,
    key: bytes | None = None,
    value: bytes | None = None,
    version: bytes | None = None,
    extra: object = None,
) -> Path:
    """A torch.save file with the keys make_checkpoint writes, one key or value replaced by raw opcodes."""
    from helper.checkpoint import make_checkpoint
    from helper.models import build_model

    checkpoint = make_checkpoint(build_model({"arch": "mlp", "hidden": [4]}), epoch=1)
    checkpoint["extra"] = {"KEY_PLACEHOLDER": "VALUE_PLACEHOLDER"} if extra is None else {"slot": extra}
    if version is not None:
        checkpoint["format_version"] = "VERSION_PLACEHOLDER"
    plain = folder / f"{name}.plain.pt"
    torch.save(checkpoint, plain)
    with zipfile.ZipFile(plain) as z:
        pkl_name = next(n for n in z.namelist() if n.endswith("data.pkl"))
        pkl = z.read(pkl_name)
    for placeholder, raw in (
        (b"KEY_PLACEHOLDER", key),
        (b"VALUE_PLACEHOLDER", value),
        (b"VERSION_PLACEHOLDER", version),
    ):
        if raw is not None:
            literal = b"X" + len(placeholder).to_bytes(4, "little") + placeholder
            assert pkl.count(literal) == 1
            pkl = pkl.replace(literal, raw)
    return rezip(plain, folder / f"{name}.pt", {pkl_name: pkl})


HOSTILE = {  # name: (how it is made, the kinds load_checkpoint may name)
    "case 6: a dict key nested 1M deep": (dict(key=b")" + b"\x85" * 1_000_000), "budget"),
    "case 7: bytearray of a 0-dim tensor": (dict(extra=Wrap(bytearray, torch.tensor(2**31))), "hostile-pickle"),
    "case 8: 29 chained _codecs.encode": (
        dict(
            value=b"c_codecs\nencode\n" * 29 + b"X\x03\x00\x00\x00aaa"
            b"X\x06\x00\x00\x00latin1\x86R" + b"X\x03\x00\x00\x00hex\x86R" * 28
        ),
        "hostile-pickle",
    ),
    "case 8: 5M empty sets": (dict(value=b"](" + b"\x8f" * 5_000_000 + b"e"), "budget"),
    "case 8: 20M MARKs": (dict(value=b"(" * 20_000_000 + b"N"), "budget"),
    "case 8: 30M empty lists": (dict(value=b"](" + b"]" * 30_000_000 + b"e"), "budget"),
    "case 9: format_version nested 200k deep": (dict(version=b"]" * 200_000 + b"a" * 199_999), "budget"),
}


def test_hostile_files_are_refused_before_torch_unpickles_them(tmp_path, capsys):
    """Each was reproduced on the old main: SIGSEGV (case 6), a 2 GB bytearray returned (7), +1.3-2.6 GB and
    12-54 s (8), RecursionError (9). Now: CheckpointError naming the budget or the call, within seconds, with
    little memory, in one child limited to 1 GiB of address space above its imports and 120 s of CPU (its
    ru_maxrss only grows, so each figure bounds every file before it too)."""
    paths = [hostile_checkpoint(tmp_path, f"hostile{i}", **how) for i, (how, _) in enumerate(HOSTILE.values())]
    done = subprocess.run(
        [sys.executable, "-c", LIMITED_CHILD, *map(str, paths)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=600,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr[-2000:])  # -11 was SIGSEGV
    results = dict(zip(HOSTILE, map(json.loads, done.stdout.strip().splitlines())))
    with capsys.disabled():
        print("\nhostile files (issue 24): load_checkpoint's verdict, time, peak memory added")
        for name, result in results.items():
            print(
                f"  {name}: {result['kind']} in {result['seconds']:.1f} s, +{result['growth_mb']:.0f} MB | "
                f"{result['cause'][:90]}"
            )
    assert list(results) == list(HOSTILE), done.stdout
    for name, result in results.items():
        assert result["kind"] == HOSTILE[name][1] and "refused before unpickling" in result["cause"], (name, result)
        assert result["seconds"] < 20 and result["growth_mb"] < GROWTH_MB, (name, result)
