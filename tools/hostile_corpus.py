"""Build a corpus of hostile and benign model files, for tests/test_hostile.py and tools/scan_compare.py.

    python -m tools.hostile_corpus OUT [--only NAME,...] [--list]

writes ``OUT/hostile/...`` (files made to attack a loader or the doctor: the 17
numbered cases of issue 24 "Safe against a hostile file", every pickle protocol
0-5 for each way a pickle can run code, a hostile file of every kind
``helper.formats`` knows), ``OUT/benign/...`` (real files written by the
libraries lesson 13 uses: Lightning, transformers, onnx, safetensors,
torchvision, torch.distributed.checkpoint, TorchScript, built here, tiny) and
``OUT/manifest.json`` (one entry per case: its path, what it attacks, what the
doctor and ``load_checkpoint`` must do). Cases that are behaviours rather than
files (a file truncated while it is read, the checkpoint folder's rotation)
are listed as ``scenario`` entries; tests/test_hostile.py runs them.

Every payload is harmless: it creates an empty marker file named by the case in
``OUT/markers/`` and does nothing else (``touch MARKER`` through ``os.system``,
or ``open(MARKER, 'w').close()`` through ``exec``). A marker that exists after a
tool ran means the tool ran the file's code. Nothing here runs a payload.

Files that depend on what ``helper`` writes (case 12 swaps members of a
``save_checkpoint`` file) are built with the ``helper`` on ``PYTHONPATH``, so
build the corpus with the tree under test.
"""

from __future__ import annotations

import argparse
import json
import os
import pickletools
import shlex
import struct
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from tools.harness import kernel_env

PROTOCOLS = range(6)


@dataclass
class Case:
    """One corpus entry. ``expect``: what the doctor and load_checkpoint must do with it.

    ``refuse``: the doctor's verdict is not OK and ``load_checkpoint`` (when ``load``) raises
    ``CheckpointError``; ``survive``: any verdict, but no crash, within the time and memory caps;
    ``caveat``: any verdict, but the report says what no check covers (the word ``checksum``);
    ``advice``: every global the doctor tells one to allowlist is a class, and following the
    advice loads the file; ``ok``: a benign file, the verdict is OK (and ``load_checkpoint``
    loads it when ``load``); ``scenario``: not a file, a behaviour tests/test_hostile.py runs.
    """

    name: str
    group: str  # hostile | benign | scenario
    path: str = ""  # relative to the corpus root; a file or a folder
    expect: str = "refuse"
    issue: int | None = None  # the numbered case of issue 24
    kind: str = ""  # the file kind (helper.formats.KINDS) it is or pretends to be
    attack: str = ""  # what it does
    load: bool = False  # load_checkpoint applies (a torch.save zip)
    payload: bool = False  # it holds code that would write its marker
    cwd: str = ""  # run the tools from this folder (relative to the root), e.g. beside a mycfg.py
    size: int = 0


class Corpus:
    def __init__(self, root: Path):
        self.root = root.absolute()
        self.markers = self.root / "markers"
        self.cases: list[Case] = []

    def marker(self, name: str) -> str:
        return str(self.markers / name)

    def shell(self, name: str) -> str:
        """The payload's shell command: create the case's marker file, nothing else."""
        return f"touch {shlex.quote(self.marker(name))}"

    def python(self, name: str) -> str:
        """The payload as Python source: create the case's marker file, nothing else."""
        return f"open({self.marker(name)!r}, 'w').close()"

    def add(self, case: Case) -> Case:
        target = self.root / case.path if case.path else None
        if target is not None and target.exists():
            case.size = (
                target.stat().st_size
                if target.is_file()
                else sum(p.stat().st_size for p in target.rglob("*") if p.is_file() and not p.is_symlink())
            )
        self.cases.append(case)
        return case


# --------------------------------------------------------------------------------------------------
# A small pickle assembler: each function returns opcodes that push one object


def proto_header(proto: int) -> bytes:
    return b"\x80" + bytes([proto]) if proto >= 2 else b""


def p_str(s: str, proto: int) -> bytes:
    raw = s.encode("utf-8")
    if proto == 0:
        return b"V" + s.encode("raw-unicode-escape").replace(b"\\", b"\\u005c").replace(b"\n", b"\\u000a") + b"\n"
    if proto >= 4 and len(raw) < 256:
        return b"\x8c" + bytes([len(raw)]) + raw
    return b"X" + struct.pack("<I", len(raw)) + raw


def p_int(n: int, proto: int) -> bytes:
    if proto == 0:
        return b"I" + str(n).encode() + b"\n"
    if 0 <= n < 256:
        return b"K" + bytes([n])
    if -(2**31) <= n < 2**31:
        return b"J" + struct.pack("<i", n)
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def p_global(module: str, name: str, proto: int) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def p_stack_global(module: str, name: str, proto: int) -> bytes:
    return p_str(module, max(proto, 1)) + p_str(name, max(proto, 1)) + b"\x93"


def p_tuple(items: list[bytes], proto: int) -> bytes:
    if proto >= 2 and 1 <= len(items) <= 3:
        return b"".join(items) + bytes([0x84 + len(items)])
    if proto >= 1 and not items:
        return b")"
    return b"(" + b"".join(items) + b"t"


def p_call(func: bytes, args: list[bytes], proto: int) -> bytes:
    return func + p_tuple(args, proto) + b"R"


def p_dict(pairs: list[tuple[bytes, bytes]], proto: int) -> bytes:
    if proto == 0:
        return b"(d" + b"".join(k + v + b"s" for k, v in pairs)
    return b"}(" + b"".join(k + v for k, v in pairs) + b"u"


def pickle_file(body: bytes, proto: int) -> bytes:
    return proto_header(proto) + body + b"."


# --------------------------------------------------------------------------------------------------
# The ways a pickle runs code (each x protocols 0-5)


def technique_bodies(c: Corpus, name: str, proto: int) -> dict[str, bytes]:
    """Opcodes that run the payload of case ``name`` and push one object, one entry per technique."""
    cmd = c.shell(name)
    py = c.python(name)
    g = p_global
    rot13 = cmd.translate(str.maketrans("abcdefghijklmnopqrstuvwxyz", "nopqrstuvwxyzabcdefghijklm"))
    nested = p_call(g("os", "system", proto), [p_str(cmd, proto)], proto)
    for _ in range(64):
        nested = p_tuple([nested], proto)
    build = (
        p_call(g("argparse", "Namespace", proto), [], proto)
        + p_tuple([b"N", p_dict([(p_str("__setstate__", proto), g("os", "system", proto))], proto)], proto)
        + b"b"
        + p_str(cmd, proto)
        + b"b"
    )
    getattr_chain = p_call(
        g("builtins", "getattr", proto),
        [p_call(g("builtins", "__import__", proto), [p_str("os", proto)], proto), p_str("system", proto)],
        proto,
    )
    return {
        "GLOBAL": p_call(g("os", "system", proto), [p_str(cmd, proto)], proto),
        "STACK_GLOBAL": p_call(p_stack_global("builtins", "exec", proto), [p_str(py, proto)], proto),
        "INST": b"(" + p_str(cmd, proto) + b"ios\nsystem\n",
        "OBJ": b"(" + g("os", "system", proto) + p_str(cmd, proto) + b"o",
        "REDUCE": p_call(getattr_chain, [p_str(cmd, proto)], proto),
        "BUILD": build,
        "dotted": p_call(
            p_stack_global("torch.serialization", "os.system", proto)
            if proto >= 4
            else g("torch.serialization", "os.system", proto),
            [p_str(cmd, proto)],
            proto,
        ),
        "nested-tuple": nested,
        "codec": p_call(
            g("os", "system", proto),
            [p_call(g("_codecs", "encode", proto), [p_str(rot13, proto), p_str("rot13", proto)], proto)],
            proto,
        ),
    }


TECHNIQUE_NOTES = {
    "GLOBAL": "GLOBAL os.system + REDUCE",
    "STACK_GLOBAL": "STACK_GLOBAL builtins.exec + REDUCE (opcode of protocol 4, accepted in any)",
    "INST": "INST os system (MARK args)",
    "OBJ": "OBJ with os.system as the class",
    "REDUCE": "builtins.getattr(builtins.__import__('os'), 'system') by REDUCE, only builtins globals",
    "BUILD": "BUILD sets an instance's __setstate__ to os.system, a second BUILD calls it",
    "dotted": "dotted name: module torch.serialization, name os.system (resolved from protocol 4)",
    "nested-tuple": "os.system REDUCE inside 64 nested tuples",
    "codec": "os.system(_codecs.encode(rot13 command, 'rot13')): the allowed codec hides the command",
}


# --------------------------------------------------------------------------------------------------
# Writing torch files with torch's own writer


def torch_zip(path: Path, data_pkl: bytes, storages: dict[str, bytes] | None = None) -> Path:
    """A torch.save-format zip (torch's PyTorchFileWriter) whose data.pkl is ``data_pkl``."""
    writer = torch._C.PyTorchFileWriter(str(path))
    writer.write_record("data.pkl", data_pkl, len(data_pkl))
    writer.write_record(".format_version", "1", 1)
    writer.write_record(".storage_alignment", "64", 2)
    writer.write_record("byteorder", sys.byteorder, len(sys.byteorder))
    for key, raw in (storages or {}).items():
        writer.write_record(f"data/{key}", raw, len(raw))
    writer.write_end_of_file()
    return path


def zip_records(path: Path) -> dict[str, bytes]:
    """The records of a torch zip, names without the archive folder."""
    with zipfile.ZipFile(path) as z:
        return {n.split("/", 1)[1]: z.read(n) for n in z.namelist()}


class Sentinel:
    """Pickles as a unique string; ``splice`` replaces it with hand-made opcodes."""

    def __init__(self, tag: str):
        self.tag = f"@@SENTINEL-{tag}@@"

    def __reduce__(self):
        return (str, (self.tag,))


def splice_save(path: Path, obj, replacements: dict[str, bytes], proto: int = 2) -> Path:
    """torch.save ``obj`` (tensors and all), then replace each Sentinel's pickled text with raw opcodes."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp, pickle_protocol=proto)
    records = zip_records(tmp)
    tmp.unlink()
    pkl = _unframe(records.pop("data.pkl"))
    for tag, raw in replacements.items():
        pkl = _splice(pkl, f"@@SENTINEL-{tag}@@", raw)
    writer = torch._C.PyTorchFileWriter(str(path))
    writer.write_record("data.pkl", pkl, len(pkl))
    for name, raw in records.items():
        if name not in ("version", ".data/serialization_id"):
            writer.write_record(name, raw, len(raw))
    writer.write_end_of_file()
    return path


_MEMO = ("MEMOIZE", "BINPUT", "LONG_BINPUT", "PUT")


def _unframe(pkl: bytes) -> bytes:
    """The pickle without FRAME opcodes (optional in protocol 4+), so that splicing keeps it valid."""
    ops = list(pickletools.genops(pkl))
    out, last = [], 0
    for op, _, pos in ops:
        if op.name == "FRAME":
            out.append(pkl[last:pos])
            last = pos + 9
    return b"".join(out) + pkl[last:]


def _splice(pkl: bytes, text: str, raw: bytes) -> bytes:
    """Replace the opcodes of ``str(text)`` (global, argument tuple, REDUCE) with ``raw``."""
    ops = list(pickletools.genops(pkl))
    i = next(k for k, (_, arg, _) in enumerate(ops) if arg == text)
    j = i - 1
    while ops[j][0].name in _MEMO:
        j -= 1
    assert ops[j][0].name in ("GLOBAL", "STACK_GLOBAL"), ops[j]
    if ops[j][0].name == "STACK_GLOBAL":  # two strings (or memo gets) before it
        for _ in range(2):
            j -= 1
            while ops[j][0].name in _MEMO:
                j -= 1
    k = i
    while ops[k][0].name != "REDUCE":
        k += 1
    return pkl[: ops[j][2]] + raw + pkl[ops[k + 1][2] :]


def plain_checkpoint(**values) -> dict:
    """A dict with the keys make_checkpoint writes, plain values."""
    checkpoint = {
        "format_version": 1,
        "epoch": 1,
        "step": 10,
        "config": {"arch": "mlp"},
        "model": {"0.weight": torch.ones(2, 2)},
        "optimizer": None,
        "scheduler": None,
        "history": {},
        "rng": {"torch": torch.zeros(4, dtype=torch.uint8)},
        "extra": {},
    }
    checkpoint.update(values)
    return checkpoint


# --------------------------------------------------------------------------------------------------
# The 17 numbered cases of the issue


def case_01(c: Corpus) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import Metadata

    def dcp_folder(name: str) -> Path:
        folder = c.root / "hostile" / name
        dcp.save({"w": torch.ones(2)}, checkpoint_id=folder, no_dist=True)
        return folder

    folder = dcp_folder("01-dcp-dotted-stack-global")
    m, n, cmd = b"torch.distributed.checkpoint.filesystem", b"os.system", c.shell("01-dcp-dotted-stack-global").encode()
    (folder / ".metadata").write_bytes(
        b"\x80\x04\x8c%c%s\x8c%c%s\x93\x8c%c%s\x85R." % (len(m), m, len(n), n, len(cmd), cmd)
    )
    c.add(
        Case(
            "01-dcp-dotted-stack-global",
            "hostile",
            "hostile/01-dcp-dotted-stack-global",
            issue=1,
            kind="dcp",
            attack="DCP .metadata: STACK_GLOBAL module torch.distributed.checkpoint.filesystem, name os.system "
            "(prefix-allowed module, dotted name)",
            payload=True,
        )
    )
    folder = dcp_folder("01-dcp-bytearray-2e9")
    (folder / ".metadata").write_bytes(
        b"\x80\x04" + p_call(p_global("builtins", "bytearray", 4), [p_int(2_000_000_000, 4)], 4) + b"."
    )
    c.add(
        Case(
            "01-dcp-bytearray-2e9",
            "hostile",
            "hostile/01-dcp-bytearray-2e9",
            issue=1,
            kind="dcp",
            attack="DCP .metadata = bytearray(2e9): +1.8 GB with no budget",
        )
    )
    folder = dcp_folder("01-dcp-metadata-none")
    (folder / ".metadata").write_bytes(b"\x80\x04N.")
    c.add(
        Case(
            "01-dcp-metadata-none",
            "hostile",
            "hostile/01-dcp-metadata-none",
            issue=1,
            kind="dcp",
            attack="DCP .metadata = None",
        )
    )
    folder = dcp_folder("01-dcp-relative-path-escapes")
    import pickle

    meta: Metadata = pickle.loads((folder / ".metadata").read_bytes())  # our own file, just written by dcp.save
    for index, info in list(meta.storage_data.items()):
        meta.storage_data[index] = type(info)(
            relative_path="../../outside.distcp", offset=info.offset, length=info.length
        )
    (folder / ".metadata").write_bytes(pickle.dumps(meta))
    c.add(
        Case(
            "01-dcp-relative-path-escapes",
            "hostile",
            "hostile/01-dcp-relative-path-escapes",
            issue=1,
            kind="dcp",
            attack="DCP storage relative_path ../../outside.distcp leaves the folder",
        )
    )


def case_02(c: Corpus) -> None:
    import types

    folder = c.root / "hostile" / "02-lightning-imports-mycfg"
    folder.mkdir(parents=True)
    module = types.ModuleType("mycfg")
    exec("class Config:\n    def __init__(self):\n        self.hidden = 4\n", module.__dict__)
    sys.modules["mycfg"] = module
    try:
        ckpt = {
            "epoch": 1,
            "global_step": 10,
            "pytorch-lightning_version": "2.6.6",
            "state_dict": {"layer.weight": torch.ones(2, 2)},
            "loops": {},
            "callbacks": {},
            "optimizer_states": [],
            "lr_schedulers": [],
            "hparams_name": "kwargs",
            "hyper_parameters": {"cfg": module.Config()},
        }
        torch.save(ckpt, folder / "model.ckpt")
    finally:
        del sys.modules["mycfg"]
    (folder / "mycfg.py").write_text(f"{c.python('02-lightning-imports-mycfg')}\n\n\nclass Config:\n    pass\n")
    c.add(
        Case(
            "02-lightning-imports-mycfg",
            "hostile",
            "hostile/02-lightning-imports-mycfg/model.ckpt",
            issue=2,
            kind="torch-zip",
            attack="Lightning .ckpt whose hyper-parameter is mycfg.Config, with a mycfg.py "
            "(top-level code) in the working folder: importing the module runs it",
            load=True,
            payload=True,
            cwd="hostile/02-lightning-imports-mycfg",
        )
    )


def _pt2_base(path: Path) -> Path:
    class Add(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)

        def forward(self, x):
            return self.lin(x) + 1

    torch.export.save(torch.export.export(Add(), (torch.ones(1, 2),)), path)
    return path


def _pt2_rewrite(src: Path, dst: Path, change: Callable[[dict[str, bytes]], None]) -> Path:
    from torch.export.pt2_archive._package import PT2ArchiveReader, PT2ArchiveWriter

    with PT2ArchiveReader(str(src)) as reader:
        files = {n: reader.read_bytes(n) for n in reader.get_file_names() if not n.startswith(".data/")}
    change(files)
    with PT2ArchiveWriter(str(dst)) as writer:
        for name, raw in files.items():
            writer.write_bytes(name, raw)
    return dst


def case_03(c: Corpus) -> None:
    folder = c.root / "hostile"
    with tempfile.TemporaryDirectory() as tmp:
        base = _pt2_base(Path(tmp) / "add.pt2")

        def guards(files: dict[str, bytes]) -> None:
            name = next(n for n in files if n.startswith("models/") and n.endswith(".json"))
            model = json.loads(files[name])
            model["guards_code"] = [f"__import__('os').system({c.shell('03-pt2-guards-code')!r}) == 0"]
            files[name] = json.dumps(model).encode()

        def opaque(files: dict[str, bytes]) -> None:
            name = next(n for n in files if n.startswith("data/constants/") and n.endswith("config.json"))
            config = json.loads(files[name])
            config["config"]["evil"] = {
                "path_name": "opaque_obj_0",
                "is_param": False,
                "use_pickle": True,
                "tensor_meta": None,
            }
            files[name] = json.dumps(config).encode()
            files["data/constants/opaque_obj_0"] = pickle_file(
                p_call(p_global("os", "system", 2), [p_str(c.shell("03-pt2-opaque-obj"), 2)], 2), 2
            )

        _pt2_rewrite(base, folder / "03-pt2-guards-code.pt2", guards)
        _pt2_rewrite(base, folder / "03-pt2-opaque-obj.pt2", opaque)
    c.add(
        Case(
            "03-pt2-guards-code",
            "hostile",
            "hostile/03-pt2-guards-code.pt2",
            issue=3,
            kind="torch-export",
            attack="model.json guards_code reaches exec when the unflattened module is first called",
            payload=True,
        )
    )
    c.add(
        Case(
            "03-pt2-opaque-obj",
            "hostile",
            "hostile/03-pt2-opaque-obj.pt2",
            issue=3,
            kind="torch-export",
            attack="constants entry opaque_obj_0 reaches pickle.loads in torch.export.load",
            payload=True,
        )
    )


def case_04(c: Corpus) -> None:
    import hashlib

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp) / "x.pth"
        splice_save(
            tmp_path,
            {"conv.weight": torch.ones(2, 2), "evil": Sentinel("hub")},
            {"hub": p_call(p_global("os", "system", 2), [p_str(c.shell("04-hub-hash-named-pth"), 2)], 2)},
        )
        digest = hashlib.sha256(tmp_path.read_bytes()).hexdigest()[:8]
        target = c.root / "hostile" / f"04-hub-hash-named-pth-{digest}.pth"
        tmp_path.replace(target)
    c.add(
        Case(
            "04-hub-hash-named-pth",
            "hostile",
            str(target.relative_to(c.root)),
            issue=4,
            kind="torch-zip",
            attack="hash-named .pth (the name carries its sha256 prefix, as load_state_dict_from_url checks) "
            "holding an os.system payload; the hub loads it with weights_only=False",
            load=True,
            payload=True,
        )
    )


def _hf_folder(folder: Path) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {"lin.weight": torch.ones(2, 2), "lin.bias": torch.zeros(2)},
        folder / "model.safetensors",
        metadata={"format": "pt"},
    )
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 2}))
    return folder


def case_05(c: Corpus) -> None:
    folder = _hf_folder(c.root / "hostile" / "05-hf-trust-remote-code")
    config = json.loads((folder / "config.json").read_text())
    config.update(
        model_type="evil",
        architectures=["EvilModel"],
        auto_map={"AutoConfig": "modeling_evil.EvilConfig", "AutoModel": "modeling_evil.EvilModel"},
    )
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_evil.py").write_text(
        f"{c.python('05-hf-trust-remote-code')}\n\nfrom transformers import PretrainedConfig, PreTrainedModel\n\n\n"
        "class EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n\n\n"
        "class EvilModel(PreTrainedModel):\n    config_class = EvilConfig\n"
    )
    c.add(
        Case(
            "05-hf-trust-remote-code",
            "hostile",
            "hostile/05-hf-trust-remote-code",
            issue=5,
            kind="hf-folder",
            attack="config.json auto_map beside modeling_evil.py: runs under from_pretrained(..., "
            "trust_remote_code=True)",
            payload=True,
        )
    )


def _nested_key_dict(depth: int, proto: int = 2) -> bytes:
    """{(((...),),): 1} with the key a tuple nested ``depth`` deep."""
    key = b")" + b"\x85" * depth
    return proto_header(proto) + b"}" + key + b"K\x01s."


def case_06(c: Corpus) -> None:
    path = c.root / "hostile" / "06-tuple-key-1M-deep.pt"
    torch_zip(path, _nested_key_dict(1_000_000))
    c.add(
        Case(
            "06-tuple-key-1M-deep",
            "hostile",
            "hostile/06-tuple-key-1M-deep.pt",
            issue=6,
            kind="torch-zip",
            attack="dict key a tuple nested 1M deep (1 MB): hashing it overflows the C stack, SIGSEGV",
            load=True,
        )
    )


class _BytearrayOf:
    """Pickles as bytearray(t), t a 0-dim int64 tensor: torch.save writes the tensor as a storage."""

    def __init__(self, n: int):
        self.n = n

    def __reduce__(self):
        return (bytearray, (torch.tensor(self.n, dtype=torch.int64),))


def case_07(c: Corpus) -> None:
    path = c.root / "hostile" / "07-bytearray-of-tensor.pt"
    torch.save(plain_checkpoint(extra=_BytearrayOf(2_000_000_000), model={}, rng={}), path)
    c.add(
        Case(
            "07-bytearray-of-tensor",
            "hostile",
            "hostile/07-bytearray-of-tensor.pt",
            issue=7,
            kind="torch-zip",
            attack="bytearray(t), t a 0-dim int64 tensor holding 2e9 (through __index__): a 2 GB bytearray "
            "from a small file with make_checkpoint's keys",
            load=True,
        )
    )


def case_08(c: Corpus) -> None:
    proto = 2
    g = p_global
    value = p_call(g("_codecs", "encode", proto), [p_str("ab", proto), p_str("latin1", proto)], proto)
    for _ in range(29):
        value = g("_codecs", "encode", proto) + value + p_str("hex", proto) + b"\x86R"
    splice_save(c.root / "hostile" / "08-codecs-encode-x29.pt", plain_checkpoint(extra=Sentinel("c")), {"c": value})
    c.add(
        Case(
            "08-codecs-encode-x29",
            "hostile",
            "hostile/08-codecs-encode-x29.pt",
            issue=8,
            kind="torch-zip",
            attack="_codecs.encode (allowed by weights_only) chained 29 times, hex doubling each: 1 kB -> 1 GB",
            load=True,
        )
    )
    sets = b"](" + b"\x8f" * 5_000_000 + b"e"
    splice_save(c.root / "hostile" / "08-5M-empty-sets.pt", plain_checkpoint(extra=Sentinel("s")), {"s": sets})
    c.add(
        Case(
            "08-5M-empty-sets",
            "hostile",
            "hostile/08-5M-empty-sets.pt",
            issue=8,
            kind="torch-zip",
            attack="a list of 5M empty sets (5 MB file, about 1.7 GB)",
            load=True,
        )
    )
    marks = b"(" * 20_000_000 + b"N"
    splice_save(c.root / "hostile" / "08-20M-marks.pt", plain_checkpoint(extra=Sentinel("m")), {"m": marks})
    c.add(
        Case(
            "08-20M-marks",
            "hostile",
            "hostile/08-20M-marks.pt",
            issue=8,
            kind="torch-zip",
            attack="20M MARK opcodes (the mark stack grows, +1.3 GB)",
            load=True,
        )
    )
    lists = b"]" * 30_000_000
    splice_save(c.root / "hostile" / "08-30M-empty-lists.pt", plain_checkpoint(extra=Sentinel("l")), {"l": lists})
    c.add(
        Case(
            "08-30M-empty-lists",
            "hostile",
            "hostile/08-30M-empty-lists.pt",
            issue=8,
            kind="torch-zip",
            attack="30M empty lists left on the stack (30 MB file, 2.6 GB)",
            load=True,
        )
    )


def case_09(c: Corpus) -> None:
    depth = 200_000
    nested = b"]" * depth + b"a" * (depth - 1)
    splice_save(
        c.root / "hostile" / "09-format-version-200k-deep.pt",
        plain_checkpoint(format_version=Sentinel("f")),
        {"f": nested},
    )
    c.add(
        Case(
            "09-format-version-200k-deep",
            "hostile",
            "hostile/09-format-version-200k-deep.pt",
            issue=9,
            kind="torch-zip",
            attack="format_version a list nested 200k deep: RecursionError in the loader",
            load=True,
        )
    )


def case_11(c: Corpus) -> None:
    from safetensors.torch import save_file

    path = c.root / "hostile" / "11-safetensors-90MB-header.safetensors"
    with tempfile.TemporaryDirectory() as tmp:
        save_file({"w": torch.ones(2)}, Path(tmp) / "s.safetensors")
        raw = (Path(tmp) / "s.safetensors").read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    header["__metadata__"] = {f"k{i:07d}": "v" * 74 for i in range(1_000_000)}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    c.add(
        Case(
            "11-safetensors-90MB-header",
            "hostile",
            str(path.relative_to(c.root)),
            issue=11,
            kind="safetensors",
            expect="survive",
            attack=f"a {len(text) / 1e6:.0f} MB safetensors header (1M metadata entries)",
        )
    )
    import onnx
    from onnx import TensorProto, helper

    weight = helper.make_tensor(
        "w", TensorProto.FLOAT, [10_000_000], vals=np.ones(10_000_000, np.float32).tobytes(), raw=True
    )
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [10_000_000])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [10_000_000])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, c.root / "hostile" / "11-onnx-40MB.onnx")
    c.add(
        Case(
            "11-onnx-40MB",
            "hostile",
            "hostile/11-onnx-40MB.onnx",
            issue=11,
            kind="onnx",
            expect="survive",
            attack="a valid 40 MB ONNX model (one 10M-float initializer)",
        )
    )


def _adam_checkpoint() -> dict:
    from helper.checkpoint import make_checkpoint
    from helper.models import build_model

    torch.manual_seed(0)
    model = build_model({"arch": "mlp", "hidden": [4]})
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.randn(4, 64)).sum().backward()
    optimizer.step()
    return make_checkpoint(model, optimizer, epoch=3, step=30)


def _rename_members(data: bytes, a: str, b: str) -> bytes:
    """Swap two member names of equal length in every local and central header (CRCs stay valid)."""
    ea, eb = a.encode(), b.encode()
    assert len(ea) == len(eb)
    out = bytearray(data)
    for sig, name_at in ((b"PK\x03\x04", 30), (b"PK\x01\x02", 46)):
        pos = out.find(sig)
        while pos >= 0:
            n = struct.unpack_from("<H", out, pos + name_at - (4 if sig == b"PK\x03\x04" else 18))[0]
            name = bytes(out[pos + name_at : pos + name_at + n])
            if name == ea:
                out[pos + name_at : pos + name_at + n] = eb
            elif name == eb:
                out[pos + name_at : pos + name_at + n] = ea
            pos = out.find(sig, pos + 4)
    return bytes(out)


def case_12(c: Corpus) -> None:
    from helper.checkpoint import save_checkpoint

    path = c.root / "hostile" / "12-members-swapped.pt"
    save_checkpoint(_adam_checkpoint(), path)
    with zipfile.ZipFile(path) as z:
        infos = {i.filename: i for i in z.infolist()}
    prefix = next(iter(infos)).split("/")[0]
    pair = (f"{prefix}/data/0", f"{prefix}/data/4")
    if infos[pair[0]].file_size != infos[pair[1]].file_size:  # keep the issue's pair if equal, else any equal pair
        sizes: dict[int, list[str]] = {}
        for name, info in infos.items():
            if "/data/" in name and name.split("/data/")[1].isdigit():
                sizes.setdefault(info.file_size, []).append(name)
        pair = tuple(next(v for v in sizes.values() if len(v) >= 2 and len(v[0]) == len(v[1]))[:2])
    path.write_bytes(_rename_members(path.read_bytes(), *pair))
    c.add(
        Case(
            "12-members-swapped",
            "hostile",
            "hostile/12-members-swapped.pt",
            issue=12,
            kind="torch-zip",
            attack=f"save_checkpoint file (Adam) with members {pair[0]} and {pair[1]} renamed into each other; "
            "every CRC valid",
            load=True,
        )
    )


def case_13(c: Corpus) -> None:
    import onnx
    from onnx import TensorProto, helper

    h = c.root / "hostile"
    # junk ONNX graph: a ModelProto prefix followed by junk
    junk = b"\x08\x07\x12\x07pytorch\x1a\x032.0:" + bytes(range(256)) * 4
    (h / "13-onnx-junk-graph.onnx").write_bytes(junk)
    c.add(
        Case(
            "13-onnx-junk-graph",
            "hostile",
            "hostile/13-onnx-junk-graph.onnx",
            issue=13,
            kind="onnx",
            attack="ONNX header fields then junk: onnx.load and onnxruntime fail to parse it",
        )
    )
    with tempfile.TemporaryDirectory() as tmp:
        fake = Path(tmp) / "fake"
        writer = torch._C.PyTorchFileWriter(str(fake))
        for name, raw in (
            ("archive_format", b"pt2"),
            ("archive_version", b"0"),
            ("models/model.json", b"{junk"),
            ("byteorder", b"little"),
        ):
            writer.write_record(name, raw, len(raw))
        writer.write_end_of_file()
        (h / "13-fake.pt2").write_bytes(fake.read_bytes())
        writer = torch._C.PyTorchFileWriter(str(fake))
        for name, raw in (
            ("data.pkl", b"\x80\x02}q\x00."),
            ("constants.pkl", b"\x80\x02)."),
            ("code/__torch__.py", b"def junk(:\n"),
            ("bytecode.pkl", b"junk"),
        ):
            writer.write_record(name, raw, len(raw))
        writer.write_end_of_file()
        (h / "13-fake-torchscript.pt").write_bytes(fake.read_bytes())
    c.add(
        Case(
            "13-fake-pt2",
            "hostile",
            "hostile/13-fake.pt2",
            issue=13,
            kind="torch-export",
            attack="a .pt2 with junk model.json: torch.export.load fails",
        )
    )
    c.add(
        Case(
            "13-fake-torchscript",
            "hostile",
            "hostile/13-fake-torchscript.pt",
            issue=13,
            kind="torchscript",
            attack="a TorchScript-shaped zip with junk code: torch.jit.load fails",
        )
    )

    outside = c.root / "outside"
    outside.mkdir(exist_ok=True)
    weight = np.arange(4, dtype=np.float32)

    def onnx_with_external(folder: Path, location: str) -> Path:
        folder.mkdir(parents=True)
        tensor = helper.make_tensor("w", TensorProto.FLOAT, [4], vals=weight.tobytes(), raw=True)
        graph = helper.make_graph(
            [helper.make_node("Add", ["x", "w"], ["y"])],
            "add",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
            [tensor],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        onnx.save(
            model,
            folder / "add.onnx",
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location="add.onnx.data",
            size_threshold=0,
        )
        model = onnx.load(folder / "add.onnx", load_external_data=False)
        for init in model.graph.initializer:
            for entry in init.external_data:
                if entry.key == "location":
                    entry.value = location
        onnx.save(model, folder / "add.onnx")
        return folder / "add.onnx"

    (outside / "add.onnx.data").write_bytes(weight.tobytes())
    onnx_path = onnx_with_external(h / "13-onnx-data-symlink", "add.onnx.data")
    (onnx_path.parent / "add.onnx.data").unlink()
    (onnx_path.parent / "add.onnx.data").symlink_to(outside / "add.onnx.data")
    c.add(
        Case(
            "13-onnx-data-symlink",
            "hostile",
            "hostile/13-onnx-data-symlink/add.onnx",
            issue=13,
            kind="onnx",
            attack="ONNX external data a symlink to a file outside the folder (onnx/onnxruntime refuse)",
        )
    )
    onnx_path = onnx_with_external(h / "13-onnx-location-escapes", "../../../../../../etc/hostname")
    (onnx_path.parent / "add.onnx.data").unlink(missing_ok=True)
    c.add(
        Case(
            "13-onnx-location-escapes",
            "hostile",
            "hostile/13-onnx-location-escapes/add.onnx",
            issue=13,
            kind="onnx",
            attack="ONNX external-data location ../../../../../../etc/hostname",
        )
    )
    # HF shard that is a symlink outside
    folder = h / "13-hf-shard-symlink"
    folder.mkdir()
    from safetensors.torch import save_file

    save_file({"b": torch.zeros(2)}, outside / "model-00002-of-00002.safetensors")
    save_file({"a": torch.ones(2)}, folder / "model-00001-of-00002.safetensors")
    (folder / "model-00002-of-00002.safetensors").symlink_to(outside / "model-00002-of-00002.safetensors")
    (folder / "model.safetensors.index.json").write_text(
        json.dumps(
            {
                "metadata": {"total_size": 16},
                "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"},
            }
        )
    )
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    c.add(
        Case(
            "13-hf-shard-symlink",
            "hostile",
            "hostile/13-hf-shard-symlink",
            issue=13,
            kind="hf-folder",
            attack="HF shard a symlink to a file outside the folder",
        )
    )
    # legacy file with changed tensor bytes
    legacy = h / "13-legacy-changed-bytes.pt"
    torch.save({"w": torch.arange(64, dtype=torch.float32)}, legacy, _use_new_zipfile_serialization=False)
    raw = bytearray(legacy.read_bytes())
    raw[-100] ^= 0xFF  # inside the tensor data, which the legacy format has no checksum for
    legacy.write_bytes(bytes(raw))
    c.add(
        Case(
            "13-legacy-changed-bytes",
            "hostile",
            "hostile/13-legacy-changed-bytes.pt",
            issue=13,
            kind="legacy",
            expect="caveat",
            attack="legacy file with one tensor byte changed (no checksums): converting it "
            "re-saves the damage under fresh CRCs",
        )
    )
    folder = _hf_folder(h / "13-hf-shard-flipped-byte")
    raw = bytearray((folder / "model.safetensors").read_bytes())
    raw[-3] ^= 0x01
    (folder / "model.safetensors").write_bytes(bytes(raw))
    c.add(
        Case(
            "13-hf-shard-flipped-byte",
            "hostile",
            "hostile/13-hf-shard-flipped-byte",
            issue=13,
            kind="hf-folder",
            expect="caveat",
            attack="HF weights with one flipped data byte: safetensors has no checksums, the report must say so",
        )
    )


def case_14(c: Corpus) -> None:
    np.random.seed(0)
    torch.save({"numpy_rng": np.random.get_state()}, c.root / "hostile" / "14-numpy-rng.pt")
    c.add(
        Case(
            "14-numpy-rng",
            "hostile",
            "hostile/14-numpy-rng.pt",
            issue=14,
            kind="torch-zip",
            expect="advice",
            attack="lesson 06's NumPy-RNG file: the allowlist advice must list classes only, and work",
            load=True,
        )
    )


SCENARIOS = [
    (
        10,
        "10-truncated-while-read",
        "another process truncates the file (open(path, 'wb')) while it is read: SIGBUS through a shared mapping",
    ),
    (15, "15-rotation-by-number", "keep_last=2, saves 9997-10003: must keep 10002 and 10003"),
    (16, "16-dead-run-newest-kept", "run A saves 50-52 and is SIGKILLed; run B saves 10: A's 51 and 52 stay"),
    (17, "17-read-only-folder", "CheckpointFolder.save on a read-only folder: CheckpointError, not OSError"),
]


# --------------------------------------------------------------------------------------------------
# Every protocol x every technique, and a hostile file of every kind


def protocol_matrix(c: Corpus) -> None:
    folder = c.root / "hostile" / "pickle"
    folder.mkdir(parents=True, exist_ok=True)
    for proto in PROTOCOLS:
        for technique in TECHNIQUE_NOTES:
            name = f"pickle-p{proto}-{technique}"
            body = technique_bodies(c, name, proto)[technique]
            (folder / f"{name}.pkl").write_bytes(pickle_file(body, proto))
            live = technique != "dotted" or proto >= 4  # below 4, Python looks the dotted name up whole: fails
            c.add(
                Case(
                    name,
                    "hostile",
                    f"hostile/pickle/{name}.pkl",
                    kind="pickle",
                    payload=live,
                    attack=f"protocol {proto}: {TECHNIQUE_NOTES[technique]}"
                    + ("" if live else " (not resolved below protocol 4: the code does not run)"),
                )
            )
    folder = c.root / "hostile" / "torchzip"
    folder.mkdir(parents=True, exist_ok=True)
    # inside a torch.save zip, with make_checkpoint's keys: every technique (protocol 2, or 4 for a dotted
    # name, which resolves from protocol 4), then STACK_GLOBAL as torch.save(pickle_protocol=4/5) writes it
    spliced = [
        (f"torchzip-{t}", 4 if t == "dotted" else 2, t, f"torch.save zip, checkpoint keys: {TECHNIQUE_NOTES[t]}")
        for t in TECHNIQUE_NOTES
    ]
    spliced += [
        (
            f"torchzip-p{p}-STACK_GLOBAL",
            p,
            "STACK_GLOBAL",
            f"torch.save(pickle_protocol={p}) zip: {TECHNIQUE_NOTES['STACK_GLOBAL']}",
        )
        for p in (4, 5)
    ]
    for name, proto, technique, attack in spliced:
        body = technique_bodies(c, name, proto)[technique]
        splice_save(folder / f"{name}.pt", plain_checkpoint(extra=Sentinel("p")), {"p": body}, proto=proto)
        c.add(
            Case(
                name, "hostile", f"hostile/torchzip/{name}.pt", kind="torch-zip", payload=True, load=True, attack=attack
            )
        )


def every_kind(c: Corpus) -> None:
    h = c.root / "hostile" / "kinds"
    h.mkdir(parents=True, exist_ok=True)
    cmd = lambda name: p_call(p_global("os", "system", 2), [p_str(c.shell(name), 2)], 2)  # noqa: E731
    # legacy format: the payload in the pickle after the magic number
    with tempfile.TemporaryDirectory() as tmp:
        torch.save({"w": torch.ones(2)}, Path(tmp) / "l.pt", _use_new_zipfile_serialization=False)
        raw = (Path(tmp) / "l.pt").read_bytes()
    magic = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."
    assert raw.startswith(magic)
    (h / "legacy-payload.pt").write_bytes(pickle_file(cmd("kind-legacy-payload"), 2) + raw[len(magic) :])
    c.add(
        Case(
            "kind-legacy-payload",
            "hostile",
            "hostile/kinds/legacy-payload.pt",
            kind="legacy",
            payload=True,
            attack="legacy format whose first pickle (the magic number) is an os.system REDUCE",
        )
    )
    import io

    stream = io.BytesIO(raw)
    for _ in range(3):  # magic number, protocol version, sys_info: then the object's pickle
        for op, _, _ in pickletools.genops(stream):
            if op.name == "STOP":
                break
    (h / "legacy-payload-in-body.pt").write_bytes(raw[: stream.tell()] + pickle_file(cmd("kind-legacy-body"), 2))
    c.add(
        Case(
            "kind-legacy-body",
            "hostile",
            "hostile/kinds/legacy-payload-in-body.pt",
            kind="legacy",
            payload=True,
            attack="legacy format: magic, protocol, sys_info, then an os.system REDUCE as the object",
        )
    )
    # a plain pickle under a checkpoint name
    (h / "plain-pickle.pt").write_bytes(pickle_file(cmd("kind-plain-pickle"), 2))
    c.add(
        Case(
            "kind-plain-pickle",
            "hostile",
            "hostile/kinds/plain-pickle.pt",
            kind="pickle",
            payload=True,
            attack="a plain pickle named .pt",
        )
    )
    # numpy object array (np.load(allow_pickle=True) would run it)
    header = "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    header += " " * (-(10 + len(header) + 1) % 64) + "\n"
    (h / "object-array.npy").write_bytes(
        b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + pickle_file(cmd("kind-npy-object"), 2)
    )
    c.add(
        Case(
            "kind-npy-object",
            "hostile",
            "hostile/kinds/object-array.npy",
            kind="numpy",
            payload=True,
            attack="NumPy .npy object array whose pickle is an os.system REDUCE (np.load(allow_pickle=True))",
        )
    )
    # Lightning .ckpt with the payload in hyper_parameters
    splice_save(
        h / "lightning-payload.ckpt",
        {
            "epoch": 1,
            "global_step": 10,
            "pytorch-lightning_version": "2.6.6",
            "state_dict": {"layer.weight": torch.ones(2, 2)},
            "hyper_parameters": {"lr": Sentinel("p")},
        },
        {"p": cmd("kind-lightning-payload")},
    )
    c.add(
        Case(
            "kind-lightning-payload",
            "hostile",
            "hostile/kinds/lightning-payload.ckpt",
            kind="torch-zip",
            payload=True,
            load=True,
            attack="Lightning .ckpt with an os.system REDUCE as a hyper-parameter",
        )
    )
    # HF folder whose weights are a pytorch_model.bin with a payload
    folder = h / "hf-bin-payload"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    splice_save(folder / "pytorch_model.bin", {"w": torch.ones(2), "x": Sentinel("p")}, {"p": cmd("kind-hf-bin")})
    c.add(
        Case(
            "kind-hf-bin",
            "hostile",
            "hostile/kinds/hf-bin-payload",
            kind="hf-folder",
            payload=True,
            attack="HF folder whose pytorch_model.bin holds an os.system REDUCE",
        )
    )
    # HF index naming a shard outside the folder
    folder = h / "hf-index-escapes"
    folder.mkdir()
    from safetensors.torch import save_file

    save_file({"a": torch.ones(2)}, folder / "model-00001-of-00001.safetensors")
    (folder / "model.safetensors.index.json").write_text(
        json.dumps(
            {
                "metadata": {},
                "weight_map": {
                    "a": "model-00001-of-00001.safetensors",
                    "b": "../../outside/model-00002-of-00002.safetensors",
                },
            }
        )
    )
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    c.add(
        Case(
            "kind-hf-index-escapes",
            "hostile",
            "hostile/kinds/hf-index-escapes",
            kind="hf-folder",
            attack="HF index whose weight_map names a shard outside the folder",
        )
    )
    # safetensors with overlapping / out-of-range offsets
    header = {"a": {"dtype": "F32", "shape": [1000000], "data_offsets": [0, 4000000]}}
    text = json.dumps(header).encode()
    (h / "safetensors-offsets.safetensors").write_bytes(struct.pack("<Q", len(text)) + text + b"\0" * 16)
    c.add(
        Case(
            "kind-safetensors-offsets",
            "hostile",
            "hostile/kinds/safetensors-offsets.safetensors",
            kind="safetensors",
            attack="safetensors header claims 4 MB of data; the file holds 16 bytes",
        )
    )
    # TorchScript archive with a code-running constants.pkl
    with tempfile.TemporaryDirectory() as tmp:
        scripted = torch.jit.script(torch.nn.Linear(2, 2))
        scripted.save(str(Path(tmp) / "ts.pt"))
        records = zip_records(Path(tmp) / "ts.pt")
    records["constants.pkl"] = pickle_file(cmd("kind-torchscript-constants"), 2)
    writer = torch._C.PyTorchFileWriter(str(h / "torchscript-payload.pt"))
    for name, raw in records.items():
        if name not in ("version", ".data/serialization_id"):
            writer.write_record(name, raw, len(raw))
    writer.write_end_of_file()
    c.add(
        Case(
            "kind-torchscript-constants",
            "hostile",
            "hostile/kinds/torchscript-payload.pt",
            kind="torchscript",
            attack="TorchScript archive whose constants.pkl is an os.system REDUCE (torch.jit.load's C++ "
            "unpickler does not resolve Python globals: the code does not run there)",
        )
    )
    # DCP folder: .metadata a plain os.system REDUCE
    import torch.distributed.checkpoint as dcp

    folder = h / "dcp-global"
    dcp.save({"w": torch.ones(2)}, checkpoint_id=folder, no_dist=True)
    (folder / ".metadata").write_bytes(pickle_file(cmd("kind-dcp-global"), 2))
    c.add(
        Case(
            "kind-dcp-global",
            "hostile",
            "hostile/kinds/dcp-global",
            kind="dcp",
            payload=True,
            attack="DCP .metadata a plain os.system REDUCE",
        )
    )
    # a zip that is not torch's, holding a pickle
    with zipfile.ZipFile(h / "zip-with-pickle.zip", "w") as z:
        z.writestr("model/weights.pkl", pickle_file(cmd("kind-zip-pickle"), 2))
    c.add(
        Case(
            "kind-zip-pickle",
            "hostile",
            "hostile/kinds/zip-with-pickle.zip",
            kind="zip",
            payload=True,
            attack="a plain zip holding a pickle with an os.system REDUCE",
        )
    )
    # Keras-style / joblib names are out of scope: the doctor knows torch's kinds


# --------------------------------------------------------------------------------------------------
# Benign files from lesson 13's libraries, built here


def benign(c: Corpus) -> None:
    from safetensors.torch import save_file

    from helper.checkpoint import make_checkpoint, save_checkpoint
    from helper.models import build_model

    b = c.root / "benign"
    b.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = build_model({"arch": "mlp", "hidden": [8]})
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 64)).sum().backward()
    optimizer.step()

    def add(name: str, path: str, kind: str, what: str, load: bool = False) -> None:
        c.add(Case(name, "benign", path, expect="ok", kind=kind, attack=what, load=load))

    save_checkpoint(make_checkpoint(model, optimizer, epoch=2, step=20), b / "save_checkpoint.pt")
    add("benign-save-checkpoint", "benign/save_checkpoint.pt", "torch-zip", "helper.save_checkpoint (Adam)", True)
    torch.save(model.state_dict(), b / "state_dict.pt")
    add("benign-state-dict", "benign/state_dict.pt", "torch-zip", "torch.save(model.state_dict())")
    # not torch.save(..., pickle_protocol=4): torch's weights_only unpickler refuses its FRAME opcode
    # ("Unsupported operand 149"), so no loader that keeps weights_only=True can call it OK
    torch.save(model.state_dict(), b / "legacy.pt", _use_new_zipfile_serialization=False)
    add("benign-legacy", "benign/legacy.pt", "legacy", "torch.save(_use_new_zipfile_serialization=False)")
    import torchvision

    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), b / "squeezenet1_1.pth")
    add("benign-torchvision", "benign/squeezenet1_1.pth", "torch-zip", "torchvision squeezenet1_1 state dict")
    torch.jit.script(torch.nn.Linear(4, 2)).save(str(b / "scripted.pt"))
    add("benign-torchscript", "benign/scripted.pt", "torchscript", "torch.jit.script(...).save")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, b / "model.safetensors")
    add("benign-safetensors", "benign/model.safetensors", "safetensors", "safetensors.torch.save_file")
    np.save(b / "array.npy", np.arange(10, dtype=np.float32))
    add("benign-npy", "benign/array.npy", "numpy", "numpy.save of a float array")
    import torch.distributed.checkpoint as dcp

    dcp.save({"model": model.state_dict()}, checkpoint_id=b / "dcp", no_dist=True)
    add("benign-dcp", "benign/dcp", "dcp", "torch.distributed.checkpoint.save (no_dist)")
    # transformers: a tiny BERT, one file and sharded
    import transformers

    transformers.logging.set_verbosity_error()
    config = transformers.BertConfig(
        vocab_size=64,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
    )
    bert = transformers.BertModel(config)
    bert.save_pretrained(b / "hf-bert")
    add("benign-hf-folder", "benign/hf-bert", "hf-folder", "transformers BertModel.save_pretrained (tiny)")
    bert.save_pretrained(b / "hf-bert-sharded", max_shard_size="4KB")
    add("benign-hf-sharded", "benign/hf-bert-sharded", "hf-folder", "save_pretrained(max_shard_size='4KB'): shards")
    # onnx: a graph built with onnx.helper, and the same with external data
    import onnx
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [4], vals=np.arange(4, dtype=np.float32).tobytes(), raw=True)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [w],
    )
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx_model.ir_version = 9
    onnx.save(onnx_model, b / "add.onnx")
    add("benign-onnx", "benign/add.onnx", "onnx", "onnx.helper graph, onnx.save")
    (b / "onnx-external").mkdir()
    onnx.save(
        onnx_model,
        b / "onnx-external" / "add.onnx",
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="add.onnx.data",
        size_threshold=0,
    )
    add("benign-onnx-external", "benign/onnx-external/add.onnx", "onnx", "onnx.save(save_as_external_data=True)")
    # Lightning: a real Trainer checkpoint
    import logging

    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    import lightning as L

    class Tiny(L.LightningModule):
        def __init__(self, lr: float = 0.1, hidden: int = 4):
            super().__init__()
            self.save_hyperparameters()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch, _):
            x, y = batch
            return torch.nn.functional.mse_loss(self.layer(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(8, 4), torch.randn(8, 1)), batch_size=4
    )
    trainer = L.Trainer(
        max_steps=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
        devices=1,
        default_root_dir=c.root / "tmp",
    )
    trainer.fit(Tiny(), data)
    trainer.save_checkpoint(b / "lightning.ckpt")
    add("benign-lightning", "benign/lightning.ckpt", "torch-zip", "lightning Trainer.save_checkpoint (2 steps)")


# --------------------------------------------------------------------------------------------------
# Proof that each payload is live: run it through the loader a victim would use (in a child process)


def _run_payload(root: Path, case: Case) -> None:
    """Open ``case`` the way its victim would (the trusting loader), so a live payload writes its marker."""
    import pickle

    path = root / case.path
    name = case.name
    if name.startswith("pickle-") or name == "kind-plain-pickle":
        pickle.loads(path.read_bytes())
    elif name == "kind-zip-pickle":
        with zipfile.ZipFile(path) as z:
            pickle.loads(z.read("model/weights.pkl"))
    elif name == "kind-npy-object":
        np.load(path, allow_pickle=True)
    elif case.kind == "dcp":
        from torch.distributed.checkpoint import FileSystemReader

        FileSystemReader(str(path)).read_metadata()
    elif name == "03-pt2-guards-code":
        os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
        torch.export.load(path).module()(torch.ones(1, 2))
    elif name == "03-pt2-opaque-obj":
        os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
        torch.export.load(path)
    elif name == "04-hub-hash-named-pth":
        with tempfile.TemporaryDirectory() as hub:
            torch.hub.load_state_dict_from_url(path.as_uri(), model_dir=hub, check_hash=True, progress=False)
    elif name == "05-hf-trust-remote-code":
        import transformers

        transformers.AutoConfig.from_pretrained(path, trust_remote_code=True)
    elif name == "kind-hf-bin":
        torch.load(path / "pytorch_model.bin", weights_only=False)
    elif case.cwd:
        os.chdir(root / case.cwd)
        sys.path.insert(0, str(root / case.cwd))
        torch.load(path, weights_only=False)
    else:
        torch.load(path, weights_only=False)


def run_payloads(root: Path) -> dict[str, bool]:
    """{case: its marker was written} for each payload case, each opened by its victim's loader."""
    root = Path(root).absolute()
    live = {}
    here = os.getcwd()
    for case in load_manifest(root):
        if not case.payload:
            continue
        try:
            _run_payload(root, case)
        except BaseException:  # noqa: BLE001 - the marker is the verdict, not the loader's error
            pass
        finally:
            os.chdir(here)
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        live[case.name] = (root / "markers" / case.name).exists()
    return live


# --------------------------------------------------------------------------------------------------

BUILDERS: dict[str, Callable[[Corpus], None]] = {
    "01": case_01,
    "02": case_02,
    "03": case_03,
    "04": case_04,
    "05": case_05,
    "06": case_06,
    "07": case_07,
    "08": case_08,
    "09": case_09,
    "11": case_11,
    "12": case_12,
    "13": case_13,
    "14": case_14,
    "protocols": protocol_matrix,
    "kinds": every_kind,
    "benign": benign,
}


def build(root: Path, only: list[str] | None = None) -> list[Case]:
    """Build the corpus under ``root`` (emptied first is the caller's job) and write manifest.json."""
    root = Path(root).absolute()
    (root / "hostile").mkdir(parents=True, exist_ok=True)
    (root / "markers").mkdir(exist_ok=True)
    corpus = Corpus(root)
    import logging
    import warnings

    logging.disable(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for key, builder in BUILDERS.items():
            if only is None or key in only:
                builder(corpus)
    for issue, name, what in SCENARIOS:
        if only is None or f"{issue:02d}" in only:
            corpus.add(Case(name, "scenario", expect="scenario", issue=issue, attack=what))
    (root / "manifest.json").write_text(json.dumps([asdict(x) for x in corpus.cases], indent=1))
    return corpus.cases


class TreeMemory:
    """Sample the resident memory of a process and all its descendants (Linux /proc), keep the peak.

    ``wait4``'s ru_maxrss sees only the children a process waited for: a doctor
    that hands the file to a helper process it does not wait for would look
    small. Sampled every ``interval`` seconds, so a spike shorter than that can
    be missed; the larger of this and ru_maxrss is reported.
    """

    def __init__(self, pid: int, interval: float = 0.05):
        import threading

        self.pid, self.interval, self.peak = pid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> int:
        children: dict[int, list[int]] = {}
        rss: dict[int, int] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            pid = int(entry.name)
            children.setdefault(int(fields[1]), []).append(pid)  # fields[1]: ppid
            rss[pid] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")  # fields[21]: rss in pages
        total, todo = 0, [self.pid]
        while todo:
            pid = todo.pop()
            total += rss.get(pid, 0)
            todo.extend(children.get(pid, []))
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def load_manifest(root: Path) -> list[Case]:
    return [Case(**entry) for entry in json.loads((Path(root) / "manifest.json").read_text())]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="an empty (or new) folder")
    parser.add_argument("--only", help="comma-separated builders: " + ",".join(BUILDERS))
    parser.add_argument("--list", action="store_true", help="print the cases")
    parser.add_argument(
        "--run-payloads",
        action="store_true",
        help="OUT is a built corpus: open each payload case with the loader a victim would use, "
        "print JSON {case: marker written}, then empty the marker folder (harmless payloads only)",
    )
    args = parser.parse_args(argv)
    if args.run_payloads:
        import logging
        import warnings

        logging.disable(logging.WARNING)
        warnings.simplefilter("ignore")
        live = run_payloads(args.out)
        print(json.dumps(live))
        for marker in (args.out / "markers").iterdir():
            marker.unlink()
        return 0
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"{args.out} is not empty")
    os.environ.update(kernel_env(threads_only=True))
    cases = build(args.out, args.only.split(",") if args.only else None)
    if args.list:
        for case in cases:
            print(f"{case.group:8} {case.name:36} {case.expect:8} {case.size:>10,}  {case.attack}")
    print(
        f"{len(cases)} cases in {args.out} ({sum(x.group == 'hostile' for x in cases)} hostile, "
        f"{sum(x.group == 'benign' for x in cases)} benign, {sum(x.group == 'scenario' for x in cases)} scenarios)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
