"""A fork server: a Python process that imported torch once, and runs each job in a fresh fork of itself.

Lesson 10 (notebooks/10_big_models_fast_loading.ipynb, section 8, "Time and memory, side by side") measures each way
of loading in a process that has loaded nothing yet. Starting a Python that imports torch takes a
second or more; ``os.fork`` of one that already did takes milliseconds, and the child starts with
nothing loaded. ``helper.loading_bench`` runs its measurements here. Linux and macOS only (Windows
has no ``fork``).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["ForkServer", "serve"]


def _child(handle: Callable[[dict[str, Any]], dict[str, Any]], job: dict[str, Any], write_fd: int) -> None:
    """Body of a forked child: handle the job, write one JSON line, exit without running any cleanup."""
    try:
        result = handle(job)
    except BaseException as error:  # reported to the parent, never raised in the fork server
        result = {"error": f"{type(error).__name__}: {error}"}
    os.write(write_fd, (json.dumps(result) + "\n").encode())
    os._exit(0)


def serve(handle: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Fork server loop: one JSON job per stdin line, one JSON result (``handle(job)`` in a fresh fork)
    per stdout line.

    The module that calls it imports torch but runs nothing in it, so no thread pool and no CUDA
    context exists when a child is forked.
    """
    for line in sys.stdin:
        job = json.loads(line)
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            _child(handle, job, write_fd)
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as pipe:
            answer = pipe.read().decode()
        _, status = os.waitpid(pid, 0)
        if not answer.strip():
            answer = json.dumps({"error": f"child died (wait status {status})"}) + "\n"
        sys.stdout.write(answer)
        sys.stdout.flush()


class ForkServer:
    """A Python process that imported torch once; :meth:`run` measures each job in a fresh fork of it.

    Use it as a context manager so the server process ends with the block.
    """

    def __init__(self, timeout_s: float = 120.0, module: str = "helper.loading_bench"):
        self.timeout_s = timeout_s
        self.process = subprocess.Popen(  # ``module`` calls serve() when run with --serve
            [sys.executable, "-m", module, "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
        )
        assert self.process.stdin is not None and self.process.stdout is not None  # both are pipes
        self.stdin, self.stdout = self.process.stdin, self.process.stdout

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        """Send ``job`` to a fresh child, wait at most ``timeout_s`` seconds, return its result dict."""
        job = {k: str(v) if isinstance(v, Path) else v for k, v in job.items()}
        self.stdin.write((json.dumps(job) + "\n").encode())
        ready, _, _ = select.select([self.stdout], [], [], self.timeout_s)
        if not ready:
            self.close(kill=True)
            raise TimeoutError(f"{job.get('method', 'the job')} took over {self.timeout_s} s")
        line = self.stdout.readline()
        if not line:
            raise RuntimeError("the fork server ended unexpectedly")
        return json.loads(line)

    def close(self, kill: bool = False) -> None:
        """End the server process (closing its stdin ends its loop; ``kill`` ends it at once) and wait."""
        if self.process.poll() is None:
            if kill:
                self.process.kill()
            self.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.stdout.close()

    def __enter__(self) -> ForkServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
