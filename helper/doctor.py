"""A checkpoint doctor: say what a file or folder is, and what is wrong with it, without running it.

    python -m helper.doctor PATH [--config JSON]

or, from Python, ``diagnose(path, config=None)``. It names the format with the
table of file kinds it shares with ``load_checkpoint`` (``helper.kinds``):
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

The diagnosis is a value (``helper.diagnosis.Diagnosis``: kind, health,
findings, the globals a pickle needs, devices, dtypes, where the weights sit,
the mismatch, and the cause and fix, each a message key with its values);
``Diagnosis.report`` renders it, and every sentence lives once, in
``helper.diagnosis.MESSAGES`` or, for a file kind, in ``helper.kinds.KINDS``.
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
from pathlib import Path
from typing import Any

from helper.diagnosis import FIXES, MESSAGES, Diagnosis, said, say  # noqa: F401 (re-exported)
from helper.kinds import KINDS

__all__ = ["Diagnosis", "diagnose", "detect_kind", "main", "allowlistable", "LIMITS", "MESSAGES", "FIXES", "PLAIN_DATA"]

# Classes known to rebuild plain data when unpickled: the only globals, besides nn.Module classes already
# imported in this process, that the doctor suggests for torch.serialization.safe_globals. Classes only: never a
# function (numpy's _reconstruct is one: allowlisting it does not even make the file load, see ADVICE["numpy"]).
PLAIN_DATA = frozenset(
    {
        "argparse.Namespace",
        "collections.defaultdict",
        "datetime.datetime",
        "datetime.date",
        "datetime.timedelta",
        "datetime.timezone",
        "pathlib.PosixPath",
        "pathlib.WindowsPath",
        "pathlib.PurePosixPath",
        "pathlib.PureWindowsPath",
        "numpy.ndarray",
        "numpy.dtype",
        "lightning.fabric.utilities.data.AttributeDict",
        "pytorch_lightning.utilities.parsing.AttributeDict",
        "builtins.list",
        "builtins.dict",
        "builtins.tuple",
        "builtins.int",
        "builtins.float",
        "builtins.str",
        "builtins.frozenset",
    }
)
# NumPy's array and scalar rebuilders: functions, so never allowlisted; a file that names them gets ADVICE numpy.
NUMPY_REBUILD = frozenset(
    {
        "numpy.core.multiarray._reconstruct",
        "numpy._core.multiarray._reconstruct",
        "numpy.core.multiarray.scalar",
        "numpy._core.multiarray.scalar",
    }
)


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
            return d.fail(said("pickle-unsafe", names=unsafe), said("pickle-unsafe-fix"))
        return d.fail(KINDS["pickle"].sentence, KINDS["pickle"].fix)
    d.note("refused-names", names=needed)
    if any(g.startswith("__main__.") for g in needed):
        d.note("main-classes")
    dotted = [g for g in needed if g in d.dotted]
    if dotted:
        return d.fail(said("dotted-globals", names=dotted), said("runs-code-ask"))
    numpy = [g for g in needed if g in NUMPY_REBUILD]
    unsafe = [g for g in needed if not allowlistable(g) and g not in NUMPY_REBUILD]
    if unsafe:
        return d.fail(said("unknown-globals", names=unsafe), said("runs-code-ask"))
    if numpy:
        return d.fail(said("numpy", names=numpy), said("numpy-fix"))
    return d.fail(said("whole-objects"), said("safe-globals"))


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
        return subprocess.Popen(
            [sys.executable, *safe_path, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=quiet,
            text=True,
            bufsize=1,
            cwd=root,
        )

    def ask(self, request: dict[str, Any]) -> dict[str, Any] | None:
        with self.lock:
            if self.owner != os.getpid():
                self.proc, self.owner = None, os.getpid()
            fresh = self.proc is None or self.proc.poll() is not None
            if fresh:
                self.proc = self._start()
            proc = self.proc
            assert proc is not None and proc.stdin is not None and proc.stdout is not None
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
        done = subprocess.run(
            [sys.executable, *safe_path, "-c", code],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=request["limits"]["wall"] + _SERVER_START,
            cwd=root,
        )
    except subprocess.TimeoutExpired:
        return {"output": "", "exit": -int(getattr(signal, "SIGKILL", 9)), "timed_out": True}
    return {"output": done.stdout, "exit": done.returncode, "timed_out": False}


def _crash(d: Diagnosis, reply: dict[str, Any] | None, limits: dict[str, int], memory: int) -> Diagnosis:
    """The verdict when the child gave none: a signal, a limit, or an exit."""
    fix = said("hostile-fix")
    if reply is None:
        return d.fail(said("inspector-died", code="unknown (the inspector server stopped)"), fix)
    code = reply.get("exit")
    if reply.get("timed_out"):
        return d.fail(said("timeout", limit=f"{limits['wall']} s wall-time"), fix)
    if isinstance(code, int) and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        if name in ("SIGXCPU", "SIGKILL"):
            return d.fail(said("timeout", limit=f"{limits['cpu']} s CPU"), fix)
        return d.fail(said("crashed", signal=name), fix)
    return d.fail(said("inspector-died", code=code), fix)


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
    from helper.paths import display_path

    if isinstance(result, dict):
        d = Diagnosis.from_json(result)
        if d.facts.pop("memory_error", False):
            return d.fail(said("memory", limit=_mib(memory)), said("hostile-fix"))
        return d
    return _crash(Diagnosis(display_path(path, full_outside=True), kind), reply, limits, memory)


def diagnose(
    path: str | Path, config: dict[str, Any] | None = None, *, limits: dict[str, int] | None = None
) -> Diagnosis:
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
