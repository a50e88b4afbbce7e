"""A checkpoint doctor: say what a file or folder is, and what is wrong with it, without running it.

    python -m helper.doctor PATH [--config JSON]

or, from Python, ``diagnose(path, config=None)``. It names the format with the
table of file kinds it shares with ``load_checkpoint`` (``helper.formats``):
a ``torch.save`` zip, the legacy format, safetensors, a Hugging Face sharded
folder or index, a Lightning checkpoint, a ``torch.export`` ``.pt2``, a DCP
folder, an ONNX model, ... It validates the file before anything is
unpickled (structure, CRC-32s, the pickle's opcodes and the memory they ask
for), names the globals a pickle needs and allowlists only plain-data classes
and ``nn.Module`` classes already imported in this process, and only when
nothing beyond ``weights_only=True`` is needed loads the file to report its
keys, devices, dtypes and parameter count. Given a model config
(``helper.models.build_model``) it checks the fit and recognises a
``module.`` / ``_orig_mod.`` / ``model.`` prefix.

**The file's bytes are examined in a child process** (``helper.inspector``),
never in this one: a file that crashes, hangs or floods a parser ends in a
verdict that names it ("the file crashed the inspector with SIGSEGV: do not
load it"), not in a traceback or a dead notebook kernel. What the child is
allowed (``LIMITS``), per file: on Linux 1 GiB of address space beyond what it
holds when the request arrives, plus twice the size of the files, 30 s of
CPU, an 8 MiB stack, no core file, 60 s of wall time; the child is a worker
forked from a server process that imported torch once
(``helper.inspector.serve``), so a call costs a few milliseconds after the
first (which starts the server: the time of importing torch). macOS: the same limits by
``setrlimit``, but the kernel does not enforce the address-space one, and each
call starts a fresh interpreter (``fork`` after importing system frameworks is
unsafe there); Windows: no ``resource`` module, so only the wall-time limit,
in a fresh interpreter per call. Neither the child nor this process ever
imports a module a file names.

The report ends with one line, the cause and the fix; the exit code is 0 for a
healthy file and 1 otherwise. "OK" is printed only after the format's own
loader accepted the file (in the child), and says what no check covers. It
never ends in a traceback.

The diagnosis is a value (``Diagnosis``: kind, health, findings as message keys
and values, the globals a pickle needs, cause and fix); ``Diagnosis.report``
renders it, and every sentence lives once, in ``MESSAGES``.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from helper.kinds import EARLIER, KINDS

__all__ = ["Diagnosis", "diagnose", "detect_kind", "main", "allowlistable", "LIMITS", "MESSAGES", "FIXES",
           "PLAIN_DATA"]

# Classes known to rebuild plain data when unpickled: the only globals, besides nn.Module classes already
# imported in this process, that the doctor suggests for torch.serialization.safe_globals. Classes only: never a
# function (numpy's _reconstruct is one: allowlisting it does not even make the file load, see ADVICE["numpy"]).
PLAIN_DATA = frozenset({
    "argparse.Namespace", "collections.defaultdict", "datetime.datetime", "datetime.date", "datetime.timedelta",
    "datetime.timezone", "pathlib.PosixPath", "pathlib.WindowsPath", "pathlib.PurePosixPath",
    "pathlib.PureWindowsPath", "numpy.ndarray", "numpy.dtype", "lightning.fabric.utilities.data.AttributeDict",
    "pytorch_lightning.utilities.parsing.AttributeDict", "builtins.list", "builtins.dict", "builtins.tuple",
    "builtins.int", "builtins.float", "builtins.str", "builtins.frozenset",
})
# NumPy's array and scalar rebuilders: functions, so never allowlisted; a file that names them gets ADVICE numpy.
NUMPY_REBUILD = frozenset({"numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
                           "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar"})

RUNS_CODE = "do not load this file; it can run code"
ASK = "Ask for the weights as a state_dict or a safetensors file"

# Every sentence the doctor prints, once: report lines (findings), causes and fixes, by key.
MESSAGES: dict[str, str] = {
    # findings: one report line each
    "writer": "written by PyTorch {since} or later ({records})",
    "crc-ok": "CRC-32 check: every member matches",
    "refused-names": "weights_only=True refuses it; the pickle names {names}",
    "main-classes": "classes from a script's __main__: only a process that defines them can load the file "
                    "(AttributeError: Can't get attribute ... on <module '__main__'>)",
    "keys": "top-level keys: {keys}{more}",
    "holds": "holds a {type}",
    "tensors": "tensors: {count}, devices {devices}, dtypes {dtypes}",
    "lightning": "a PyTorch Lightning checkpoint (Lightning {version}): weights in checkpoint['state_dict']{prefix}",
    "weights": "model weights: {label}, {count} tensors, {numbers} numbers (floating point)",
    "saved-on": "saved on {devices}: load with map_location='cpu' where there is no GPU",
    "fits": "fits config {config}: every key and shape matches",
    "text": "{text}",
    "legacy": "PyTorch's legacy format (before 1.6, or _use_new_zipfile_serialization=False): no CRCs",
    "pickle-names": "the pickle names {names}",
    "safetensors": "header: {count} tensors, dtypes {dtypes}, {numbers} numbers, metadata keys {metadata}; "
                   "validated by safetensors",
    "hf": "{count} tensors in {files} weights file(s), each validated; the keys match the index{config}",
    "remote-code": "code that from_pretrained(..., trust_remote_code=True) would run: {files}",
    "dcp-shards": "shard files: {shards}",
    "dcp-metadata": ".metadata present (written last, after every shard)",
    "dcp-ranges": "{count} byte ranges in {files} shard file(s), every one present in full",
    "onnx": "ONNX ir_version {ir_version}, opsets {opsets}, {nodes} nodes: onnx.load and onnx.checker accept it",
    "onnx-external": "external data: {name}, {end} bytes needed, present",
    "pt2": "models {models}, {weights} weights, {constants} constants; no guards code, nothing pickled",
    "torchscript": "torch.jit.load accepts it: {methods}",
    # causes and fixes
    "runs-code": RUNS_CODE,
    "runs-code-ask": f"{RUNS_CODE}. {ASK}",
    "unknown-globals": "the pickle names {names}, not known plain data or nn.Module classes: loading it could "
                       "run code",
    "dotted-globals": "the pickle names {names}, an attribute path inside a module (a crafted pickle: "
                      "protocol 4 resolves it to any function): loading it could run code",
    "whole-objects": "it pickles whole objects (classes, not plain data), refused by weights_only=True",
    "safe-globals": "if you trust the file, load it once inside torch.serialization.safe_globals([...those "
                    "classes]) and re-save model.state_dict() with its config",
    "numpy": "it holds NumPy arrays or scalars ({names}), which weights_only=True refuses: rebuilding them calls "
             "NumPy functions",
    "numpy-fix": "if you made the file, load it once with weights_only=False and re-save the arrays as tensors "
                 "(torch.from_numpy) or plain numbers (lesson 06); from anyone else, ask for such a file",
    "meta": "it holds tensors on the meta device: shapes without data, nothing to load",
    "meta-fix": f"save the real weights (model.to('cpu').state_dict()), or {EARLIER}",
    "refused": "refused by weights_only=True ({detail})",
    "load-failed": "torch.load(weights_only=True) failed: {detail}",
    "loads": "loads with weights_only=True{where}",
    "loads-fix": "torch.load(path, map_location='cpu', weights_only=True){then}",
    "no-state-dict": "loads with weights_only=True; no model state_dict found in it",
    "lightning-no-prefix": "a Lightning checkpoint whose keys share no single prefix",
    "lightning-no-prefix-fix": "rebuild your LightningModule and call YourModule.load_from_checkpoint(path)",
    "lightning-ok": "a Lightning checkpoint; the plain model's weights are checkpoint['state_dict'] without "
                    "{prefix!r}",
    "lightning-fix": "checkpoint = torch.load(path, map_location='cpu', weights_only=True); state = "
                     "checkpoint['state_dict']; torch.nn.modules.utils.consume_prefix_in_state_dict_if_present("
                     "state, {prefix!r}); model.load_state_dict(state)",
    "mismatch": "the weights do not fit the model ({summary}){hint}",
    "legacy-ok": "loads with weights_only=True; but legacy files have no checksums: a changed byte cannot be "
                 "detected, and converting re-saves it under fresh CRCs (compare its sha256sum with the source's "
                 "first)",
    "legacy-fix": "convert it once: torch.save(torch.load(path, weights_only=True), new_path)",
    "pickle-malformed": "{sentence}, and it is malformed ({detail})",
    "pickle-unsafe": "a plain pickle that names {names}: loading it could run code",
    "safetensors-ok": "a complete safetensors file (tensors only, nothing to unpickle); safetensors has no "
                      "checksums, so a changed byte in the data cannot be detected",
    "safetensors-dtype": "a safetensors file with dtype {dtype}, which this safetensors cannot load",
    "hf-ok": "a complete Hugging Face {sharded}weights folder; safetensors has no checksums, so a changed byte "
             "in the data cannot be detected",
    "hf-no-index": "a model folder with config.json and {count} weights files but no index",
    "hf-no-index-fix": "copy the weights too: save_pretrained writes model.safetensors (or shards and "
                       "model.safetensors.index.json) next to config.json",
    "hf-bad-index": "{name} has no weight_map of key -> shard file",
    "hf-bad-index-fix": "restore the index file",
    "hf-missing": "shard {shard} named by the index is missing",
    "hf-outside": "{what} {shard} is a link or a path that leaves the folder: a reader would open a file "
                  "outside it",
    "outside-fix": "do not use this folder as it is; get the model again from its source",
    "hf-keys": "shard {shard} holds {count} tensors where the index names {wanted} (the keys do not add up)",
    "copy-again": "copy the whole folder again",
    "bin-unsafe": "its pickle names {names}, not plain data",
    "bin-unsafe-fix": f"{RUNS_CODE}. Ask for the safetensors weights (save_pretrained's default)",
    "remote-code-cause": "the folder carries code ({files}) that from_pretrained runs with trust_remote_code=True",
    "remote-code-fix": "never pass trust_remote_code=True for it unless you have read that code; the weights "
                       "alone load with safetensors.torch.load_file(shard) and no code",
    "dcp-damaged": "the .metadata file is damaged ({detail})",
    "dcp-unsafe": "the .metadata pickle names {names}, not DCP's metadata classes: dcp.load unpickles it with "
                  "pickle.load, which would run them",
    "dcp-unsafe-fix": "do not load this folder; it can run code",
    "dcp-not-metadata": "the .metadata file holds a {type}, not DCP's Metadata",
    "dcp-outside": "the .metadata names a shard {shard!r} that is not a plain file in the folder (a path that "
                   "leaves it, or a link)",
    "dcp-missing": "shard {shard} that .metadata names is missing",
    "dcp-short": "shard {shard} is shorter than the byte ranges .metadata gives it (cut?)",
    "earlier-folder": "use an earlier checkpoint folder",
    "dcp-ok": "a complete torch.distributed.checkpoint (DCP) folder",
    "onnx-damaged": "a damaged ONNX file ({detail})",
    "onnx-redo": "export the model again with torch.onnx.export",
    "onnx-outside": "its external data {name!r} is a link or lies outside the model's folder; onnx and "
                    "onnxruntime refuse it",
    "onnx-outside-fix": "do not use this file; export the model again, or get it again from its source",
    "onnx-missing": "its weights live in the external-data file {name}, which is missing or short next to it",
    "onnx-missing-fix": "copy {name} next to {model} (an .onnx and its .onnx.data travel together)",
    "onnx-data-fix": "keep it next to {model} and open that file (onnxruntime.InferenceSession)",
    "pt2-code": "a .pt2 whose {what}: torch.export.load would run it",
    "pt2-fake": "not a torch.export program: {detail}",
    "pt2-redo": "export the model again with torch.export.export and torch.export.save",
    "pt2-ok": "a whole torch.export program (.pt2), but not safe from a stranger: torch.export.load exec's its "
              "guards and unpickles some constants, so no check can prove a .pt2 harmless",
    "pt2-fix": "load it with torch.export.load(path) only if you made it or trust who did (never torch.load); "
               "from anyone else ask for the weights as a safetensors file",
    "torchscript-fake": "not a TorchScript archive torch.jit.load accepts ({detail})",
    "torchscript-ok": "a TorchScript program (torch.jit.save): its methods are code, run them only if you trust "
                      "who made it",
    "npy-object": "a NumPy object array: its data is a pickle, which numpy.load(path, allow_pickle=True) "
                  "would unpickle, so loading it could run code",
    "npy-damaged": "a damaged NumPy file ({detail})",
    "crashed": "the file crashed the inspector with {signal}: do not load it",
    "timeout": "the file kept the inspector busy past its {limit} limit: do not load it",
    "memory": "the file needs more memory than the inspector's limit ({limit}): do not load it",
    "inspector-died": "the inspector stopped with exit code {code} before a verdict: do not load it",
    "hostile-fix": f"do not load this file: a reader crashed, hung or ran out of memory on it, as on a file made to "
                   f"attack one. {ASK}",
    "failed": "could not be examined ({detail})",
}
# The MESSAGES keys the doctor prints as a fix ("Fix: ..."): each is followed by a test in tests/test_doctor.py
# (ADVICE_FOLLOWED), as are EARLIER and the fixes of helper.formats.KINDS (tests/test_formats.py).
FIXES = ("runs-code", "runs-code-ask", "safe-globals", "numpy-fix", "meta-fix", "loads-fix", "lightning-no-prefix-fix",
         "lightning-fix", "legacy-fix", "hf-no-index-fix", "hf-bad-index-fix", "outside-fix", "copy-again",
         "bin-unsafe-fix", "remote-code-fix", "dcp-unsafe-fix", "earlier-folder", "onnx-redo", "onnx-outside-fix",
         "onnx-missing-fix", "onnx-data-fix", "pt2-redo", "pt2-fix", "hostile-fix")


def say(key: str, **values: Any) -> str:
    """The sentence ``MESSAGES[key]`` with ``values`` filled in."""
    return MESSAGES[key].format(**values)


@dataclass
class Diagnosis:
    """What the doctor found, as a value: ``kind`` (see ``helper.formats.sniff``), ``healthy``, ``findings``
    (message keys and their values, one report line each), the pickle's globals beyond weights_only's set
    (``needed``; ``dotted`` are attribute paths, never allowed), ``facts`` (devices, dtypes, where the weights
    sit, the mismatch), ``cause`` and ``fix``. ``report`` renders it."""

    path: str
    kind: str
    healthy: bool = True
    findings: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    cause: str = ""
    fix: str = ""
    needed: list[str] = field(default_factory=list)
    dotted: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 0 if self.healthy else 1

    @property
    def lines(self) -> list[str]:
        return [say(key, **values) for key, values in self.findings]

    def note(self, key: str, **values: Any) -> None:
        self.findings.append((key, values))

    def verdict(self) -> str:
        """The last line: OK or PROBLEM, the cause, and the fix."""
        head = "OK" if self.healthy else "PROBLEM"
        return f"{head}: {self.cause}. Fix: {self.fix}" if self.fix else f"{head}: {self.cause}"

    def report(self) -> str:
        return "\n".join([f"{self.path}: {self.kind}", *(f"  {line}" for line in self.lines), self.verdict()])

    def fail(self, cause: str, fix: str) -> Diagnosis:
        self.healthy, self.cause, self.fix = False, cause, fix
        return self

    def ok(self, cause: str, fix: str) -> Diagnosis:
        self.cause, self.fix = cause, fix
        return self

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Diagnosis:
        data = dict(data)
        data["findings"] = [(str(k), dict(v)) for k, v in data.get("findings", [])]
        return cls(**data)


def detect_kind(path: str | Path) -> str:
    """The kind of ``path`` (``helper.formats.sniff``, run in the inspector child like every read of the file)."""
    return diagnose(path).kind


# --------------------------------------------------------------------------------------------------
# Which globals may be suggested for safe_globals: an allowlist, never a denylist, and no import


def allowlistable(name: str) -> bool:
    """May ``name`` (``module.qualname``) be suggested for ``safe_globals``? Plain data or an nn.Module class.

    Nothing is imported, and no module attribute hook runs: the class must be
    in ``PLAIN_DATA`` (or one of NumPy's dtype classes), or an ``nn.Module``
    subclass found by an exact ``module.name`` look-up in a module this process
    has already imported. A dotted name (``Outer.Inner``), a function and
    anything unknown are refused.
    """
    if name in PLAIN_DATA or (name.startswith("numpy.dtypes.") and name.endswith("DType") and name.count(".") == 2):
        return True
    module, _, attr = name.rpartition(".")
    nn = sys.modules.get("torch.nn")
    owner = sys.modules.get(module)
    if not module or not attr.isidentifier() or nn is None or owner is None:
        return False
    obj = vars(owner).get(attr)  # no getattr: a module's __getattr__ could import or run anything
    return isinstance(obj, type) and issubclass(obj, nn.Module)


def _decide(d: Diagnosis) -> Diagnosis:
    """The verdict on a pickle that needs globals beyond weights_only=True's (the child names them, this
    process decides, since only it has the user's classes imported)."""
    needed = d.needed
    if d.kind == "pickle":
        d.note("pickle-names", names=needed)
        unsafe = [g for g in needed if g in d.dotted or not (allowlistable(g) or g in d.facts.get("allowed", []))]
        if unsafe:
            return d.fail(say("pickle-unsafe", names=unsafe), f"{RUNS_CODE}. {KINDS['pickle'].fix}")
        return d.fail(KINDS["pickle"].sentence, KINDS["pickle"].fix)
    d.note("refused-names", names=needed)
    if any(g.startswith("__main__.") for g in needed):
        d.note("main-classes")
    dotted = [g for g in needed if g in d.dotted]
    if dotted:
        return d.fail(say("dotted-globals", names=dotted), say("runs-code-ask"))
    numpy = [g for g in needed if g in NUMPY_REBUILD]
    unsafe = [g for g in needed if not allowlistable(g) and g not in NUMPY_REBUILD]
    if unsafe:
        return d.fail(say("unknown-globals", names=unsafe), say("runs-code-ask"))
    if numpy:
        return d.fail(say("numpy", names=numpy), say("numpy-fix"))
    return d.fail(say("whole-objects"), say("safe-globals"))


# --------------------------------------------------------------------------------------------------
# The child that examines the bytes

LIMITS = {
    "memory": 1 << 30,  # bytes of address space beyond the child's start, plus per_file_byte x the files' size
    "per_file_byte": 2,
    "cpu": 30,  # seconds of CPU (SIGXCPU)
    "stack": 8 << 20,  # bytes of main-thread stack (the C recursion of a deeply nested pickle stops there)
    "wall": 60,  # seconds before the child is killed
}
_SERVER_START = 120  # seconds the server may take to import torch, on top of the wall limit of the first request


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.0f} MiB" if n < 1 << 30 else f"{n / (1 << 30):,.1f} GiB"


def _files_size(path: Path) -> int:
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.iterdir() if p.is_file() and not p.is_symlink())
        return path.stat().st_size if path.is_file() else 0
    except OSError:
        return 0


class _Server:
    """One ``helper.inspector.serve`` process per parent (Linux): it imports torch once and forks a limited
    child per request; requests and replies are JSON lines (nothing is unpickled across the boundary)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.owner = os.getpid()  # a forked copy of this process (a DataLoader worker) starts its own server
        self.lock = threading.Lock()

    def _start(self) -> subprocess.Popen[str]:
        root = str(Path(__file__).resolve().parent.parent)
        code = f"import sys; sys.path.insert(0, {root!r}); from helper.inspector import serve; serve()"
        quiet = None if os.environ.get("HELPER_INSPECTOR_DEBUG") else subprocess.DEVNULL
        safe_path = ["-P"] if sys.version_info >= (3, 11) else []  # -P: the working folder is not on sys.path
        return subprocess.Popen([sys.executable, *safe_path, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=quiet, text=True, bufsize=1, cwd=root)

    def ask(self, request: dict[str, Any]) -> dict[str, Any] | None:
        with self.lock:
            if self.owner != os.getpid():
                self.proc, self.owner = None, os.getpid()
            fresh = self.proc is None or self.proc.poll() is not None
            if fresh:
                self.proc = self._start()
            proc = self.proc
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(json.dumps(request) + "\n")
                proc.stdin.flush()
                wait = request["limits"]["wall"] + 30 + (_SERVER_START if fresh else 0)
                ready, _, _ = select.select([proc.stdout], [], [], wait)
                line = proc.stdout.readline() if ready else ""
            except (OSError, ValueError):
                line = ""
            if not line:  # the server itself died or hung: start a new one next time
                self.close()
                return None
            return json.loads(line)

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc = None


_SERVER = _Server()


def _ask_once(request: dict[str, Any]) -> dict[str, Any] | None:
    """macOS and Windows: a fresh interpreter runs the same child code for one request."""
    root = str(Path(__file__).resolve().parent.parent)
    code = f"import sys; sys.path.insert(0, {root!r}); from helper.inspector import run_once; run_once()"
    safe_path = ["-P"] if sys.version_info >= (3, 11) else []
    try:
        done = subprocess.run([sys.executable, *safe_path, "-c", code], input=json.dumps(request), capture_output=True,
                              text=True, timeout=request["limits"]["wall"] + _SERVER_START, cwd=root)
    except subprocess.TimeoutExpired:
        return {"output": "", "exit": -int(getattr(signal, "SIGKILL", 9)), "timed_out": True}
    return {"output": done.stdout, "exit": done.returncode, "timed_out": False}


def _crash(d: Diagnosis, reply: dict[str, Any] | None, limits: dict[str, int], memory: int) -> Diagnosis:
    """The verdict when the child gave none: a signal, a limit, or an exit."""
    fix = say("hostile-fix")
    if reply is None:
        return d.fail(say("inspector-died", code="unknown (the inspector server stopped)"), fix)
    code = reply.get("exit")
    if reply.get("timed_out"):
        return d.fail(say("timeout", limit=f"{limits['wall']} s wall-time"), fix)
    if isinstance(code, int) and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        if name in ("SIGXCPU", "SIGKILL"):
            return d.fail(say("timeout", limit=f"{limits['cpu']} s CPU"), fix)
        return d.fail(say("crashed", signal=name), fix)
    return d.fail(say("inspector-died", code=code), fix)


def _examine_in_child(path: Path, config: dict[str, Any] | None, limits: dict[str, int]) -> Diagnosis:
    memory = limits["memory"] + limits["per_file_byte"] * _files_size(path)
    request = {"path": str(path.absolute()), "config": config, "limits": {**limits, "memory": memory}}
    reply = _SERVER.ask(request) if sys.platform.startswith("linux") else _ask_once(request)
    kind, result = "unknown", None
    for line in (reply or {}).get("output", "").splitlines():
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict):
            kind = message.get("kind", kind) if isinstance(message.get("kind"), str) else kind
            result = message.get("result", result)
    from helper.formats import shown_path

    if isinstance(result, dict):
        d = Diagnosis.from_json(result)
        if d.facts.pop("memory_error", False):
            return d.fail(say("memory", limit=_mib(memory)), say("hostile-fix"))
        return d
    return _crash(Diagnosis(shown_path(path), kind), reply, limits, memory)


def diagnose(path: str | Path, config: dict[str, Any] | None = None, *,
             limits: dict[str, int] | None = None) -> Diagnosis:
    """Examine ``path`` in a limited child process, running nothing in it; ``config`` (a ``build_model`` dict)
    checks the fit. ``limits`` overrides ``LIMITS`` (memory, cpu, stack, wall)."""
    d = _examine_in_child(Path(path), config, {**LIMITS, **(limits or {})})
    if d.needed and not d.cause:
        _decide(d)
    return d


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helper.doctor", description=__doc__.splitlines()[0])
    parser.add_argument("path", help="a checkpoint file or folder")
    parser.add_argument("--config", type=json.loads, help='model config as JSON, e.g. \'{"arch": "mlp"}\'')
    args = parser.parse_args(argv)
    diagnosis = diagnose(args.path, args.config)
    print(diagnosis.report())
    return diagnosis.exit_code


if __name__ == "__main__":
    sys.exit(main())
