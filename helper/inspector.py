"""The doctor's child: examines a file's bytes in a process with limits, and answers with a value.

``helper.doctor.diagnose`` never parses a file itself. On Linux it starts
``serve()`` once (``python -P -c ...``: the working folder is not on its
path), which imports torch and the format libraries and forks a worker
(``_Worker``) ahead of the first request. The worker answers requests (one
JSON line each) one at a time, each under fresh ``resource.setrlimit`` limits
counted from where it stands (address space: what it holds plus
``limits["memory"]``; CPU: what it used plus ``limits["cpu"]`` seconds;
main-thread stack; no core file): it examines the file (``examine``) and writes
JSON lines, ``{"kind": ...}`` as soon as the kind is known, then
``{"result": <Diagnosis as JSON>}``. The server kills a worker that outlives
``limits["wall"]`` and answers with what it wrote and how it ended; the doctor
turns a signal (SIGSEGV, SIGBUS, SIGXCPU, ...), a timeout or an end without a
result into a verdict, and the server forks a new worker. A worker also retires
after a memory error, after growing by 256 MiB, or after 200 requests. No
file's code ever runs in a worker, so reusing one risks nothing the limits do
not bound; it makes a call cost a few milliseconds instead of a ``fork`` of a
process holding torch (35 ms here, and as much again in copy-on-write faults).
Nothing crosses the boundary as a pickle, and neither process imports a module
the file names.

On macOS and Windows ``run_once()`` does the same for one request in a fresh
interpreter: ``fork`` after importing system frameworks is unsafe on macOS
(whose kernel also ignores ``RLIMIT_AS``), and Windows has neither ``fork`` nor
``resource`` (only the wall-time limit applies there).

The examination (``examine``): ``helper.kinds.sniff`` names the kind, then
the examine step its ``KINDS`` row names runs, a function of
``helper.examine_pickles`` (torch.save zips, legacy files, plain pickles),
``helper.examine_dcp`` (DCP folders), ``helper.examine_code`` (``.pt2``, TorchScript)
or ``helper.examine_formats`` (everything else); OK only when the format's
own loader accepted the file here.
"""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from helper import examine_code, examine_dcp, examine_formats, examine_pickles
from helper.diagnosis import Diagnosis, said
from helper.formats import EARLIER, KINDS, CheckpointError, sniff
from helper.paths import display_path

Step = Callable[[Diagnosis, Path, "dict[str, Any] | None"], Diagnosis]


#: the modules whose functions the KINDS rows name as examine steps
EXAMINERS = (examine_pickles, examine_dcp, examine_code, examine_formats)


def step(kind: str) -> Step:
    """The examine step the ``KINDS`` row of ``kind`` names (a function of one of the two examiner modules)."""
    name = KINDS[kind].examine
    found = next((getattr(m, name) for m in EXAMINERS if callable(getattr(m, name, None))), None)
    if found is None:
        raise LookupError(f"kind {kind!r} names examine step {name!r}, which no examiner module defines")
    return found


def examine(
    path: str | Path,
    config: dict[str, Any] | None = None,
    tell: Callable[[dict[str, Any]], None] = lambda message: None,
) -> Diagnosis:
    """Examine ``path`` in this process (the child): the kind (told at once), then the diagnosis.
    ``diagnose`` is what to call; this runs only where a crash costs nothing."""
    path = Path(path)
    kind = sniff(path)
    tell({"kind": kind})
    d = Diagnosis(display_path(path, full_outside=True), kind)
    try:
        return step(kind)(d, path, config)
    except CheckpointError as exc:
        return d.fail(exc.cause, exc.fix)
    except MemoryError:
        d.facts["memory_error"] = True
        return d.fail("", "")
    except OSError as exc:
        if exc.errno != errno.ENOMEM:
            return d.fail(said("failed", detail=f"{type(exc).__name__}: {exc}"[:160]), EARLIER)
        d.facts["memory_error"] = True
        return d.fail("", "")
    except (Exception, RecursionError) as exc:  # never a traceback: say what failed
        return d.fail(
            said("failed", detail=f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:160]}"), EARLIER
        )


# --------------------------------------------------------------------------------------------------
# The process side: limits, the child, the server


def _address_space() -> int:
    """Bytes of address space this process holds now (Linux ``VmSize``), 0 where unknown."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _resident() -> int:
    """Bytes resident now (Linux ``VmRSS``), 0 where unknown."""
    try:
        with open("/proc/self/status") as f:
            return next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:")), 0)
    except OSError:
        return 0


def _peak_resident() -> int:
    """Peak bytes resident in this process (``ru_maxrss``: KiB on Linux, bytes on macOS), 0 where unknown."""
    try:
        import resource
    except ImportError:
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def set_limits(limits: dict[str, int]) -> None:
    """``setrlimit`` in this (child) process: address space = now + ``memory``, CPU = used + ``cpu`` seconds,
    ``stack``, no core file.
    A limit the system does not support (or will not lower) is skipped."""
    try:
        import resource
    except ImportError:  # Windows
        return
    usage = resource.getrusage(resource.RUSAGE_SELF)
    used = int(usage.ru_utime + usage.ru_stime) + 1  # RLIMIT_CPU counts the process's whole life: a worker's too
    wanted = [
        (getattr(resource, "RLIMIT_CORE", None), 0),
        (getattr(resource, "RLIMIT_CPU", None), used + limits["cpu"]),
        (getattr(resource, "RLIMIT_STACK", None), limits["stack"]),
    ]
    if _address_space():
        wanted.append((getattr(resource, "RLIMIT_AS", None), _address_space() + limits["memory"]))
    for which, value in wanted:
        if which is None:
            continue
        try:
            soft, hard = resource.getrlimit(which)
            value = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(which, (value, hard))
        except (ValueError, OSError):
            pass


_RETIRE_GROWTH = 256 << 20  # a worker that grew by more than this over its start is replaced after its answer
_RETIRE_AFTER = 200  # requests a worker answers before it is replaced


def _child(request: dict[str, Any], out: Any, first_rss: int = 0, served: int = 0) -> bool:
    """In the child: limits, then ``examine``, each message one JSON line on ``out``. True if this worker should
    be replaced after this answer (it grew, or answered enough)."""

    def tell(message: dict[str, Any]) -> None:
        out.write(json.dumps(message) + "\n")
        out.flush()

    set_limits(request["limits"])
    torch.set_num_threads(1)
    import time
    import warnings

    start, cpu = _resident(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = examine(request["path"], request.get("config"), tell)
    d.facts["inspector"] = {"rss_start": start, "rss_peak": _peak_resident(), "cpu_s": time.process_time() - cpu}
    retire = (
        _resident() - (first_rss or start) > _RETIRE_GROWTH
        or served + 1 >= _RETIRE_AFTER
        or bool(d.facts.get("memory_error"))
    )
    tell({"result": d.to_json(), "retire": retire})
    return retire


class _Worker:
    """A child forked from the server ahead of its first request; it answers requests one at a time, each under
    fresh limits (CPU and address space counted from where it stands), until a request crashes it, runs past a
    limit, or it retires (``_child``). A crash therefore costs that one verdict, never the server or the doctor;
    what the child holds between requests is the doctor's own state (no file's code ever runs in it)."""

    def __init__(self) -> None:
        request_read, self.request_write = os.pipe()
        self.read, result_write = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the child
            try:
                os.close(self.request_write)
                os.close(self.read)
                devnull = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(devnull, fd)
                out, first, served = os.fdopen(result_write, "w"), _resident(), 0
                with os.fdopen(request_read, "rb") as requests:
                    for line in requests:
                        if _child(json.loads(line), out, first, served):
                            break
                        served += 1
            finally:
                os._exit(0)
        os.close(request_read)
        os.close(result_write)
        self.pending, self.alive = b"", True

    def run(self, request: dict[str, Any]) -> dict[str, Any]:
        """Hand ``request`` over, read messages until its result line (or EOF, or the wall limit)."""
        import time

        try:
            os.write(self.request_write, (json.dumps(request) + "\n").encode())
        except OSError:  # it died between requests: no verdict from it
            return self._ended(b"", timed_out=False)
        deadline, data, start = time.monotonic() + request["limits"]["wall"], self.pending, 0
        while True:
            newline = data.find(b"\n", start)
            while newline >= 0:  # every complete line: the result line ends this request's messages
                if data.startswith(b'{"result": ', start):
                    output, self.pending = data[: newline + 1], data[newline + 1 :]
                    if data[start:newline].endswith(b'"retire": true}'):
                        self.close()
                    return {"output": output.decode("utf-8", "replace"), "exit": 0, "timed_out": False}
                start, newline = newline + 1, data.find(b"\n", newline + 1)
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.read], [], [], left)[0]:
                os.kill(self.pid, signal.SIGKILL)
                return self._ended(data, timed_out=True)
            chunk = os.read(self.read, 1 << 16)
            if not chunk:
                return self._ended(data, timed_out=False)
            if len(data) < 64 << 20:  # a result is kilobytes; more is not kept
                data += chunk

    def _ended(self, data: bytes, timed_out: bool) -> dict[str, Any]:
        _, status = os.waitpid(self.pid, 0)
        self.alive = False
        os.close(self.request_write)
        os.close(self.read)
        return {
            "output": data.decode("utf-8", "replace"),
            "exit": os.waitstatus_to_exitcode(status),
            "timed_out": timed_out,
        }

    def close(self) -> None:
        if self.alive:
            self.alive = False
            os.close(self.request_write)  # the child reads EOF and exits
            os.close(self.read)
            os.waitpid(self.pid, 0)


def _warm_up() -> None:
    """Import what the examine steps use, and examine one small file of our own, so each child starts warm."""
    import gc
    import tempfile

    import safetensors.torch  # noqa: F401
    import torch.distributed.checkpoint.filesystem  # noqa: F401

    import helper.checkpoint  # noqa: F401 - the fit check
    import helper.models  # noqa: F401

    try:
        import onnx.checker  # noqa: F401
        import onnx.external_data_helper  # noqa: F401
    except ImportError:
        pass
    with tempfile.TemporaryDirectory() as folder:
        torch.save({"w": torch.zeros(2)}, Path(folder) / "warm.pt")
        examine(Path(folder) / "warm.pt", {"arch": "mlp"})
    gc.freeze()  # a child's collections then skip (and do not copy) the server's objects


def serve() -> None:
    """Answer requests (JSON lines on stdin) until stdin closes, each by a limited child forked ahead of time.
    The first request is answered before the server warms up (``python -m helper.doctor`` asks only one)."""
    protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything a library prints goes to stderr, not into the replies
    worker, warm = _Worker(), False
    for line in sys.stdin:
        try:
            reply = worker.run(json.loads(line))
        except Exception as exc:  # a broken request: answer, do not die
            reply = {"output": "", "exit": None, "timed_out": False, "error": repr(exc)}
        protocol.write(json.dumps(reply) + "\n")
        protocol.flush()
        if not warm:
            warm = True
            worker.close()
            _warm_up()
        if not worker.alive:
            worker = _Worker()
    worker.close()


def run_once() -> None:
    """macOS and Windows: this fresh interpreter is the child; the request is on stdin, the messages go to stdout."""
    request = json.loads(sys.stdin.read())
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    _child(request, out)
