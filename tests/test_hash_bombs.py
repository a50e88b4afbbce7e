"""Hash bombs (attack findings F4 and F7): a tiny pickle whose dict key costs 2**64 hash steps, or whose keys all
hash alike, must be refused by helper.pickle_guard before torch's unpickler hangs on it; real files still pass."""

from __future__ import annotations

import collections
import io
import json
import pickle
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from helper.checkpoint import CheckpointError
from helper.pickle_guard import PickleBudget, scan_pickle, torch_allowed_globals

REPO_ROOT = Path(__file__).resolve().parents[1]
P = (1 << 61) - 1  # every multiple of it hashes to 0 on CPython


def dag_key(levels: int) -> bytes:
    """F4: ``{t: 2}`` with t0 = (1,), t_i = (t_{i-1}, t_{i-1}) through the memo: 2**levels leaves, ``levels`` tuples."""
    out = bytearray(b"\x80\x02}q\x00K\x01\x85")
    for i in range(1, levels + 1):
        out += b"q" + bytes([i]) + b"h" + bytes([i]) + b"\x86"
    return bytes(out + b"K\x02s.")


def long1(k: int) -> bytes:
    raw = k.to_bytes((k.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def colliding_dict(n: int) -> bytes:
    """F7: a dict of ``n`` int keys k * (2**61 - 1), all of hash 0 (quadratic inserts)."""
    out = bytearray(b"\x80\x02}")
    for start in range(0, n, 1000):
        out += b"(" + b"".join(long1(k * P) + b"K\x00" for k in range(start + 1, min(n, start + 1000) + 1)) + b"u"
    return bytes(out + b".")


def torch_file(path: Path, pkl: bytes) -> Path:
    """A torch.save zip whose data.pkl is ``pkl``."""
    writer = torch._C.PyTorchFileWriter(str(path))
    writer.write_record("data.pkl", pkl, len(pkl))
    writer.write_record("version", b"3\n", 2)
    writer.write_end_of_file()
    del writer
    return path


def refusal(data: bytes, **kwargs) -> CheckpointError:
    """The guard's error on ``data`` (it must refuse it, as a budget, within a second)."""
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as info:
        scan_pickle(data, **kwargs)
    assert time.perf_counter() - start < 1, "the guard itself must be quick"
    assert info.value.kind == "budget" and "a hash bomb" in info.value.cause, info.value.cause
    return info.value


BOMBS = {
    "F4: a tuple DAG 64 levels deep as a dict key": lambda: dag_key(64),
    "F7: 200k int keys of one hash": lambda: colliding_dict(200_000),
}
CHILD = """
import json, sys, time
from helper.checkpoint import CheckpointError, load_checkpoint
start = time.perf_counter()
try:
    load_checkpoint(sys.argv[1])
    print(json.dumps({"kind": "LOADED"}))
except CheckpointError as exc:
    print(json.dumps({"kind": exc.kind, "cause": exc.cause, "seconds": time.perf_counter() - start}))
"""


@pytest.mark.parametrize("name", list(BOMBS))
def test_load_checkpoint_refuses_a_hash_bomb_at_once(name, tmp_path):
    """Each hung load_checkpoint on the old guard (no answer in minutes: 2**64 hash steps, or 2e10 probes); now a
    budget error before torch's unpickler runs. Run in a child, so a regression fails the test instead of hanging it."""
    path = torch_file(tmp_path / "bomb.pt", BOMBS[name]())
    try:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, cwd=REPO_ROOT, timeout=60
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{name}: load_checkpoint gave no answer in 60 s")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["kind"] == "budget" and "a hash bomb" in result["cause"], result
    assert "refused before unpickling" in result["cause"] and result["seconds"] < 2, result


@pytest.mark.parametrize("name", list(BOMBS))
def test_the_doctor_says_do_not_load_a_hash_bomb(name, tmp_path):
    """The doctor's child held on the old guard only by its wall-time limit (60 s); now the budget names the bomb."""
    from helper.doctor import diagnose

    start = time.perf_counter()
    d = diagnose(torch_file(tmp_path / "bomb.pt", BOMBS[name]()), limits={"wall": 30})
    assert not d.healthy and "do not load" in d.verdict(), d.report()
    assert "a hash bomb" in d.cause, d.cause
    assert time.perf_counter() - start < 25


def test_each_hash_rule_refuses_its_bomb():
    """Which budget limit each shape meets (``err.limit``), smaller variants included."""
    assert refusal(dag_key(64)).limit == "max_expanded"  # 2**20 objects expanded, at the 20th level
    assert refusal(dag_key(12)).limit == "max_key"  # 8,191 objects in one key: under max_expanded
    assert refusal(colliding_dict(40)).limit == "max_clashes"  # the 33rd key of hash 0
    # one 1,000-object tuple used as the key of 1,100 dicts: 1.1M objects hashed, over max_hashed
    flat = b"(" + b"K\x01" * 999 + b"tq\x00"
    data = b"\x80\x02" + flat + b"0](" + b"}h\x00K\x01s" * 1100 + b"e."
    assert refusal(data).limit == "max_hashed"


def protocol2(obj: object) -> bytes:
    return pickle.dumps(obj, protocol=2)


@pytest.mark.parametrize(
    "make",
    [
        lambda: {k * P: 0 for k in range(1, 100)},  # F7's keys, few
        lambda: {-(k * P): 0 for k in range(1, 99)},
        lambda: set(k * P for k in range(1, 100)),  # protocol 2: set([...]), hashed by the call
        lambda: frozenset(k * P for k in range(1, 100)),
        lambda: collections.Counter({k * P: 1 for k in range(1, 100)}),
        lambda: {(k * P, 0): 0 for k in range(1, 100)},  # tuples of one hash
        lambda: {complex(1000003.0 * k, -k): 0 for k in range(2, 100)},  # complex() calls of one hash
        lambda: {torch.Size([k * P]): 0 for k in range(1, 100)},
    ],
    ids=["ints", "negative ints", "set", "frozenset", "Counter", "tuples", "complex", "torch.Size"],
)
def test_keys_of_one_hash_are_refused_in_every_container(make):
    """Whatever the container and however the keys are made, 33 keys of one planned hash are refused
    (``builtins.frozenset`` allowed too: torch's set lacks it, so the allowlist refuses it before the budget)."""
    allowed = torch_allowed_globals() | {"builtins.frozenset"}
    value = make()
    assert len({hash(k) for k in (value if not isinstance(value, dict) else value.keys())}) == 1
    for data in (protocol2(value), pickle.dumps(value, protocol=4)):
        assert refusal(data, allowed=allowed).limit == "max_clashes"


def test_keys_of_unknown_hash_are_counted():
    """Keys whose hash the scanner cannot compute (an int past 64 bytes, tuple() of a list, a frozenset
    opcode) count as clashes, so 33 in one dict are refused; 32 pass."""
    huge = [long1((1 << 600) + k) for k in range(33)]
    refusal(b"\x80\x02}(" + b"".join(h + b"N" for h in huge) + b"u.")
    scan_pickle(b"\x80\x02}(" + b"".join(h + b"N" for h in huge[:32]) + b"u.")
    tuple_of_list = b"cbuiltins\ntuple\n]K\x01a\x85R"
    allowed = torch_allowed_globals() | {"builtins.tuple"}
    refusal(b"\x80\x02}(" + (tuple_of_list + b"N") * 33 + b"u.", allowed=allowed)
    # OrderedDict([[k, v], ...]) (Python 2's pickle of an OrderedDict): the keys of list pairs are noted
    pairs = b"".join(b"]" + long1(k * P) + b"aK\x00a" for k in range(1, 40))
    refusal(b"\x80\x02ccollections\nOrderedDict\n](" + pairs + b"e\x85R.")


@pytest.mark.parametrize("protocol", [2, 4])
def test_real_files_with_many_distinct_keys_pass(protocol, tmp_path):
    """Distinct keys of every kind real files hold (int keys 0..N of an optimizer state, -1, floats, tuples,
    strings, sets, torch.Size), a shared tensor, and a make_checkpoint file pass, with room to spare."""
    from helper.checkpoint import make_checkpoint
    from helper.models import build_model

    model = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(50)])
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 4)).sum().backward()
    opt.step()
    shared = torch.ones(3)
    value = {
        "state": opt.state_dict(),
        "model": model.state_dict(),
        "ints": {k: k for k in range(-5000, 5000)},
        "floats": {k + 0.5: 0 for k in range(5000)},
        "pairs": {(k, str(k)): 0 for k in range(2000)},
        "set": set(range(3000)) | {-1, -2, 0.25},
        "floatset": {k / 7 for k in range(2000)},
        "sizes": {torch.Size([k, 2]): k for k in range(200)},
        "tied": [shared] * 500,
        "checkpoint": make_checkpoint(build_model({"arch": "mlp", "hidden": [8]}), epoch=3),
    }
    buf = io.BytesIO()
    torch.save(value, buf, pickle_protocol=protocol)
    with zipfile.ZipFile(buf) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    report = scan_pickle(data)
    budget = PickleBudget.for_size(len(data))
    assert report.clashes <= 2 and report.largest_key <= 8, report
    assert report.expanded < budget.max_expanded / 4 and report.hashed < budget.max_hashed / 4, (report, budget)
