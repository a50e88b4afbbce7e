"""How noisy was a timing? Load average, CPU model, other processes' CPU use, and a busy core.

Used by ``tools/benchmark.py`` (``make benchmark``); no torch here, so it is cheap to test.

- ``machine()``: CPU model, core count, Python and OS, printed once at the top.
- ``Meter``: wraps one timed figure; records the load average before and after it and, on
  Linux, how many cores *other* processes used meanwhile (all CPU time in ``/proc/stat``
  minus this process and its descendants, the kernels and the busy core included, and minus
  the kernel's threads and interrupts, which flush and read our files).
- ``busy_core()``: the "busy machine" scenario, one process spinning on one core (as a video
  call might on a student's laptop), started and stopped by the benchmark itself.
- ``noise_reasons()``: why a figure cannot be trusted as a quiet-machine figure (empty if it
  can). Other processes' CPU use decides where ``/proc`` tells it; elsewhere the 1-minute
  load average above what the benchmark itself runs.
"""

import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

#: other processes may use this many cores on average during a figure before it counts as noisy
OTHERS_LIMIT = 0.25
#: ...and at least this many clock ticks of theirs fell inside it (shorter figures cannot tell)
MIN_TICKS = 2
#: without /proc: the 1-minute load average may exceed what the benchmark runs by this much
LOAD_MARGIN = 0.75
PROC = Path("/proc")
HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, ``platform.processor()`` elsewhere)."""
    try:
        for line in (PROC / "cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine() -> dict[str, object]:
    """What the figures were measured on."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "(not set)"),
    }


def load_average() -> tuple[float, float, float]:
    """The 1-, 5- and 15-minute load averages (zeros where the OS has none, e.g. Windows)."""
    try:
        return tuple(round(x, 2) for x in os.getloadavg())  # type: ignore[return-value]
    except (AttributeError, OSError):
        return (0.0, 0.0, 0.0)


def _system_busy_ticks() -> int | None:
    """CPU ticks spent since boot by processes (user, nice, system) and by other virtual machines
    (steal); not idle, iowait, or interrupts (the disk's own work during our fsync)."""
    try:
        fields = [int(x) for x in (PROC / "stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = fields[:8]
    return user + nice + system + steal


def _own_ticks() -> int | None:
    """CPU ticks of this process and every live descendant, with the reaped children they waited
    for, plus the kernel's own threads (children of kthreadd, pid 2: they flush our writes)."""
    parents, ticks = {}, {}
    try:
        entries = [e for e in os.listdir(PROC) if e.isdigit()]
    except OSError:
        return None
    for entry in entries:
        try:
            text = (PROC / entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        rest = text[text.rindex(")") + 2 :].split()
        parents[int(entry)] = int(rest[1])
        ticks[int(entry)] = sum(int(x) for x in rest[11:15])  # utime stime cutime cstime
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0, [os.getpid(), *children.get(2, [])]
    while todo:
        pid = todo.pop()
        total += ticks.get(pid, 0)
        todo.extend(children.get(pid, []))
    return total


@dataclass
class Sample:
    """One timed figure and the conditions it was measured under."""

    seconds: float
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    others_cores: float | None  # cores used by processes not started by the benchmark, on average
    busy_core: bool = False  # the benchmark's own busy process ran meanwhile
    extra: dict[str, object] = field(default_factory=dict)


class Meter:
    """``with Meter() as m: work()`` then ``m.sample``: wall seconds, load averages, others' CPU."""

    def __init__(self, busy_core: bool = False) -> None:
        self.busy_core = busy_core
        self.sample: Sample | None = None

    def __enter__(self) -> "Meter":
        self._load = load_average()
        self._system, self._own = _system_busy_ticks(), _own_ticks()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        seconds = time.perf_counter() - self._start
        system, own = _system_busy_ticks(), _own_ticks()
        others = None
        if None not in (system, own, self._system, self._own) and seconds > 0:
            others = max(0.0, ((system - self._system) - (own - self._own)) / HZ / seconds)
        self.sample = Sample(seconds, self._load, load_average(), others, self.busy_core)


def noise_reasons(sample: Sample, *, own_runnable: float = 1.0) -> list[str]:
    """Why ``sample`` is not a quiet-machine figure; empty when it is.

    ``own_runnable`` is how many runnable processes the benchmark itself had (1, plus 1 while its
    busy core runs); the load average is compared with it only where others' CPU use is unknown,
    since a load average trails by a minute and still counts a busy core just stopped.
    """
    if sample.others_cores is not None:
        # /proc/stat counts in ticks (1/HZ s): over a 20 ms figure one tick of a daemon reads as half a
        # core, so a figure is flagged only when others used at least MIN_TICKS ticks in it
        ticks = sample.others_cores * sample.seconds * HZ
        if sample.others_cores > OTHERS_LIMIT and ticks >= MIN_TICKS:
            return [f"other processes used {sample.others_cores:.2f} cores meanwhile"]
        return []
    load = max(sample.load_before[0], sample.load_after[0])
    if load - own_runnable > LOAD_MARGIN:
        return [f"1-minute load average {load:.2f} with {own_runnable:g} runnable of the benchmark's own"]
    return []


# spins on one core; checks every few milliseconds that the benchmark is still its parent, so a
# benchmark killed outright leaves no busy process behind
BUSY_LOOP = """
import os, sys
parent = int(sys.argv[1])  # the benchmark's pid, given by it (getppid() here could already be 1)
while os.getppid() == parent:
    for _ in range(200_000):
        pass
"""


@contextmanager
def busy_core() -> Iterator[subprocess.Popen]:
    """One process spinning on one core for the duration of the block, stopped after it."""
    process = subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(os.getpid())], stdin=subprocess.DEVNULL)
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def fmt_load(load: tuple[float, float, float]) -> str:
    return "/".join(f"{x:.2f}" for x in load)
