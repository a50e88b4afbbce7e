"""The tools behind `make run`, `make test-portable` and `make benchmark` must report failures
(and noise), not hide them."""

import ast
import importlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook


def load_tool(name: str):
    return importlib.import_module(f"tools.{name}")


def write_notebook(path: Path, *sources: str) -> Path:
    """A notebook of code cells; a source starting with ``!raise\n`` becomes a cell tagged raises-exception."""
    cells = [
        new_code_cell(s.removeprefix("!raise\n"), metadata={"tags": ["raises-exception"]})
        if s.startswith("!raise\n")
        else new_code_cell(s)
        for s in sources
    ]
    nb = new_notebook(
        cells=[new_markdown_cell("# t")] + cells,
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    )
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def run_notebooks():
    return load_tool("run_notebooks")


@pytest.fixture(scope="module")
def portability():
    return load_tool("portability")


def test_run_notebooks_executes_and_writes_outputs(tmp_path, run_notebooks):
    path = write_notebook(
        tmp_path / "ok.ipynb", "import sys\nprint(6 * 7)\nsys.stdout.flush()\nprint('more')", "!raise\n1 / 0"
    )
    seconds, status = run_notebooks.run_one(path, write=True, timeout=60)
    assert status == "ok" and seconds > 0
    cells = nbformat.read(path, as_version=4).cells
    assert cells[1]["outputs"] == [{"output_type": "stream", "name": "stdout", "text": "42\nmore\n"}]
    assert cells[1]["execution_count"] == 1
    assert cells[2]["outputs"][0]["ename"] == "ZeroDivisionError"
    assert cells[2]["metadata"]["tags"] == ["raises-exception"]


def test_run_notebooks_reports_errors_and_cells_that_should_have_raised(tmp_path, run_notebooks):
    failing = write_notebook(tmp_path / "bad.ipynb", "x = 1", "raise ValueError('boom')")
    _, status = run_notebooks.run_one(failing, write=False, timeout=60)
    assert status.startswith("FAILED in cell 2") and "ValueError" in status
    # on Linux a tagged cell must raise even where it says it was skipped (off Linux that would do)
    silent = write_notebook(tmp_path / "silent.ipynb", "!raise\nprint('skipped: this lesson needs Linux')")
    _, status = run_notebooks.run_one(silent, write=False, timeout=60)
    if run_notebooks.LINUX:
        assert status == "FAILED: cells [1] are tagged raises-exception but did not raise"
    else:
        assert status == "ok"
    assert nbformat.read(silent, as_version=4).cells[1].outputs == []  # write=False leaves the file alone


def test_a_tagged_cell_may_say_skipped_only_off_linux(run_notebooks):
    """Lesson 11 prints "skipped: this lesson needs Linux" for every cell on macOS and Windows, its
    two tagged cells included: `make run` accepts that there, and nowhere else."""

    def printed(text: str, name: str = "stdout"):
        return new_code_cell("...", outputs=[nbformat.v4.new_output("stream", name=name, text=text)])

    nb = nbformat.v4.new_notebook(
        cells=[
            printed("skipped: this lesson needs Linux\n"),
            printed("first\nskipped on darwin: the SIGKILL cells run on Linux\n"),  # a later line counts
            printed("done\n"),
            new_code_cell("..."),  # printed nothing
            new_code_cell("...", outputs=[nbformat.v4.new_output("error", ename="E", evalue="", traceback=[])]),
            printed("skipped: this lesson needs Linux\n", name="stderr"),  # only stdout counts
            printed("CheckpointFallback: skipped (Linux)\n"),  # the line must start with it
            printed("skipped: no CUDA\n"),  # a skip for another reason is not a Linux-only cell
        ]
    )
    assert run_notebooks.silent_cells(nb, nb.cells, linux=True) == [0, 1, 2, 3, 5, 6, 7]
    assert run_notebooks.silent_cells(nb, nb.cells, linux=False) == [2, 3, 5, 6, 7]


def test_portability_settings_reach_the_kernels(tmp_path, portability):
    """Each setting's variables reach the nbval kernel, and a failing notebook fails the setting."""
    nb = write_notebook(tmp_path / "01_env.ipynb", "import os\nprint(os.environ.get('ATEN_CPU_CAPABILITY'))")
    stored = nbformat.read(nb, as_version=4)
    stored.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="default\n")]
    stored.cells[1].execution_count = 1
    nbformat.write(stored, nb)
    name, _, code, summary = portability.run_setting("aten-default", [nb])
    assert (name, code) == ("aten-default", 0), summary
    _, _, code, summary = portability.run_setting("aten-avx2", [nb])
    assert code == 1 and "FAILED" in summary


# --------------------------------------------------------------------------------------------------
# make benchmark: figures that say how noisy they were


@pytest.fixture(scope="module")
def noise():
    return load_tool("bench_noise")


@pytest.fixture
def benchmark(monkeypatch, tmp_path):
    module = load_tool("benchmark")
    monkeypatch.setattr(module, "ROOT", tmp_path)  # results.json goes to tmp_path/artifacts
    return module


def sample(noise, load1: float, others: float | None, busy: bool = False):
    return noise.Sample(1.0, (load1, load1, load1), (load1, load1, load1), others, busy)


def test_busy_detection_on_fake_load_averages(noise):
    # where /proc says what other processes used, that decides (the load average trails by a minute)
    assert noise.noise_reasons(sample(noise, 0.0, 0.6)) == ["other processes used 0.60 cores meanwhile"]
    assert noise.noise_reasons(sample(noise, 2.9, 0.05)) == []  # our busy core, just stopped
    # one tick of a daemon during a 20 ms figure reads as half a core: too short to tell
    short = noise.Sample(0.02, (0.0,) * 3, (0.0,) * 3, 0.5)
    assert noise.noise_reasons(short) == []
    assert noise.noise_reasons(noise.Sample(0.2, (0.0,) * 3, (0.0,) * 3, 0.5)) != []  # 10 ticks of others
    # without /proc (macOS): the 1-minute load average above the benchmark's own processes
    assert noise.noise_reasons(sample(noise, 1.1, None)) == []
    assert noise.noise_reasons(sample(noise, 2.0, None), own_runnable=2) == []  # ours + our busy core
    reasons = noise.noise_reasons(sample(noise, 3.0, None), own_runnable=2)
    assert reasons == ["1-minute load average 3.00 with 2 runnable of the benchmark's own"]
    assert noise.noise_reasons(sample(noise, 2.0, None))  # one process too many: noisy


def test_meter_counts_the_busy_core_as_the_benchmarks_own(noise):
    if noise._system_busy_ticks() is None:
        pytest.skip("no /proc/stat: the load average alone decides")

    def spun() -> int:
        stat = Path(f"/proc/{process.pid}/stat").read_text()
        return sum(int(x) for x in stat[stat.rindex(")") + 2 :].split()[11:13])  # its utime + stime

    with noise.busy_core() as process:
        time.sleep(0.2)
        before, spun_before = noise._own_ticks(), spun()
        time.sleep(0.4)  # 40 clock ticks at 100 Hz
        spun_after, after = spun(), noise._own_ticks()
        assert process.poll() is None
    assert process.poll() is not None  # stopped after the block
    # what the busy process spun in the window is inside what the meter counts as our own
    assert spun_after - spun_before > 0 and after - before >= spun_after - spun_before
    with noise.Meter() as meter:
        time.sleep(0.3)
    s = meter.sample
    assert s.seconds >= 0.3 and s.others_cores is not None and 0 <= s.others_cores <= os.cpu_count() + 0.5
    assert len(s.load_before) == 3 and noise.cpu_model()


def fake_io(noise, others: float, quiet_rounds: int = 0):
    def io(log, mb, rounds, heap):
        log.add("io", "load_checkpoint (quiet)", sample(noise, 1.0, others))
        for _ in range(quiet_rounds):
            log.add("io", "load_checkpoint (quiet)", sample(noise, 1.0, 0.01))
        ratios = {"load_checkpoint / torch.load": [1.02, 1.04, 1.03]}
        return {"quiet": ratios, "busy": ratios}

    return io


@pytest.mark.parametrize("others, quiet_rounds, code", [(0.9, 0, 1), (0.9, 2, 1), (0.05, 0, 0), (0.9, 4, 0)])
def test_benchmark_refuses_readme_figures_from_a_busy_machine(
    benchmark, noise, monkeypatch, others, quiet_rounds, code, capsys
):
    """Refused when more than a quarter of a figure's samples were noisy (1 of 1, 1 of 3); one of five is not."""
    written = []
    monkeypatch.setattr(benchmark, "io", fake_io(noise, others, quiet_rounds))
    monkeypatch.setattr(benchmark, "write_readme", written.append)
    assert benchmark.main(["--only", "io", "--readme"]) == code
    out = capsys.readouterr().out
    if code:
        assert written == [] and "README.md not written: the machine was busy" in out and "WARNING" in out
    else:
        assert "| load_checkpoint / torch.load | 1.03 (1.02-1.04) | 1.03 (1.02-1.04) |" in written[0]
    results = json.loads((benchmark.ROOT / "artifacts" / "benchmark" / "results.json").read_text())
    assert results["samples"][0]["others_cores"] == others and results["machine"]["cpu"]


def test_benchmark_readme_block_replaces_only_its_markers_and_the_run_times(benchmark, tmp_path):
    doc, readme = tmp_path / "benchmarks.md", tmp_path / "README.md"
    doc.write_text(f"before\n{benchmark.README_START}\nold\n{benchmark.README_END}\nafter\n")
    table = (
        "| notebook | what | run time |\n|---|---|---|\n"
        "| `01_a.ipynb` | x \\| y | 6.6 s |\n| `02_b.ipynb` | z | 8.8 s |\n"
    )
    readme.write_text(f"intro\n{table}outro 9.9 s |\n")
    machine = {"cpu": "a CPU", "cores": 2, "python": "3.11", "OMP_NUM_THREADS": "1"}
    block = benchmark.readme_block(machine, None, {"01_a.ipynb": {"quiet": [12.0, 13.0], "busy": [13.0]}}, "load")
    benchmark.write_readme(block, doc, readme)
    assert doc.read_text() == f"before\n{block}\nafter\n"
    assert readme.read_text() == f"intro\n{table.replace('6.6 s', '12.5 s')}outro 9.9 s |\n"
    benchmark.write_readme(f"{benchmark.README_START}\nio only\n{benchmark.README_END}", doc, readme)
    assert "io only" in doc.read_text() and "12.5 s" in readme.read_text()  # no notebook figures: README kept
    (tmp_path / "none.md").write_text("no markers\n")
    with pytest.raises(SystemExit):
        benchmark.write_readme("x", tmp_path / "none.md", readme)
    unlisted = block.replace("01_a", "03_c")
    with pytest.raises(SystemExit, match="03_c"):  # a notebook the lesson table lacks: nothing written
        benchmark.write_readme(unlisted, doc, readme)
    assert "io only" in doc.read_text()


def test_benchmark_figures_live_in_docs_and_the_readme_lesson_table(benchmark):
    """The marker block is in docs/benchmarks.md; every lesson has a row whose run time --readme rewrites."""
    doc = benchmark.BENCHMARKS_MD.read_text(encoding="utf-8")
    assert doc.count(benchmark.README_START) == doc.count(benchmark.README_END) == 1
    rows = {name for _, name, _ in benchmark._LESSON_ROW.findall(benchmark.README.read_text(encoding="utf-8"))}
    assert rows == {p.name for p in (benchmark.README.parent / "notebooks").glob("[0-9][0-9]_*.ipynb")} != set()


def test_benchmark_sections_and_rotation(benchmark):
    assert benchmark.rotated([1, 2, 3], 1) == [2, 3, 1] and benchmark.rotated([1, 2, 3], 3) == [1, 2, 3]
    assert benchmark.scenarios(0) == [False, True] and benchmark.scenarios(1) == [True, False]
    with pytest.raises(SystemExit):
        benchmark.main(["--only", "nonsense"])


@pytest.mark.skipif(sys.platform == "win32", reason="the busy process watches its parent with getppid (Unix)")
def test_busy_core_stops_when_the_benchmark_is_killed(noise):
    """The busy process exits by itself once its parent is gone (a killed benchmark runs no finally)."""
    parent = (
        "import os, subprocess, sys\n"
        f"p = subprocess.Popen([sys.executable, '-c', {noise.BUSY_LOOP!r}, str(os.getpid())],\n"
        "                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "print(p.pid, flush=True)\n"
    )  # exits at once, leaving the busy process orphaned
    done = subprocess.run([sys.executable, "-c", parent], capture_output=True, text=True, check=True, timeout=60)
    pid = int(done.stdout)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if not running(pid):
            break
        time.sleep(0.02)
    else:
        os.kill(pid, 9)
        pytest.fail("the busy process outlived the benchmark")


def running(pid: int) -> bool:
    """Whether ``pid`` still runs. An orphan that has exited stays a zombie until its new parent reaps
    it (here a container's init that reaps about every 2 s): on Linux a zombie has stopped running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    if not Path("/proc/self/stat").exists():  # no /proc (macOS): kill(pid, 0) alone decides
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):  # reaped meanwhile (before the open, or during it)
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_running_tells_a_zombie_from_a_live_process():
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc")
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        assert running(child.pid)
    finally:
        child.stdin.close()
    deadline = time.monotonic() + 20
    while running(child.pid) and time.monotonic() < deadline:  # exited, not reaped yet: a zombie
        time.sleep(0.01)
    assert Path(f"/proc/{child.pid}/stat").exists() and not running(child.pid)
    child.wait()
    assert not running(child.pid)


# --------------------------------------------------------------------------------------------------
# tools/harness.py: the one environment and the one client of every notebook runner


def test_kernel_env_sets_the_policy_and_keeps_the_callers_threads():
    harness = load_tool("harness")
    env = harness.kernel_env({"PATH": "/bin"})
    assert env == {"PATH": "/bin", "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0", "TQDM_DISABLE": "1"}
    chosen = harness.kernel_env({"OMP_NUM_THREADS": "2", "TQDM_DISABLE": "0"})
    assert chosen["OMP_NUM_THREADS"] == "2" and chosen["TQDM_DISABLE"] == "1"  # the caller's threads win, bars never
    assert harness.kernel_env({}, threads_only=True) == {"OMP_NUM_THREADS": "1"}  # make lab: students keep tqdm
    assert harness.kernel_env({}, OMP_NUM_THREADS="2")["OMP_NUM_THREADS"] == "2"  # a portability setting


def test_the_notebook_client_starts_its_kernel_with_the_policy(tmp_path, monkeypatch):
    """Even where this process lacks the variables, the kernel has them: the client passes kernel_env."""
    harness = load_tool("harness")
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the caller's choice reaches the kernel
    nb = nbformat.read(
        write_notebook(
            tmp_path / "env.ipynb",
            "import os\nprint(os.environ.get('TQDM_DISABLE'), os.environ.get('OMP_NUM_THREADS'), os.getcwd())",
        ),
        as_version=4,
    )
    harness.notebook_client(nb, tmp_path, timeout=60).execute()
    assert nb.cells[1].outputs[0]["text"] == f"1 3 {tmp_path}\n"


THREADS = "OMP_NUM_THREADS"


def thread_settings(source: str) -> list[str]:
    """The lines of a Python source that give ``OMP_NUM_THREADS`` a value: a dict entry, a keyword, a call
    such as ``setdefault(name, value)``, an assignment to ``os.environ[name]``."""
    lines = set()

    def named(n: ast.AST) -> bool:
        return isinstance(n, ast.Constant) and n.value == THREADS

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Dict):  # a value written out, not one read (a report of the setting)
            lines.update(k.lineno for k, v in zip(node.keys, node.values) if named(k) and isinstance(v, ast.Constant))
        elif isinstance(node, ast.keyword) and node.arg == THREADS:
            lines.add(node.lineno)
        elif (
            isinstance(node, ast.Call)
            and len(node.args) >= 2
            and named(node.args[0])
            and not (isinstance(node.func, ast.Attribute) and node.func.attr == "get")
        ):
            lines.add(node.lineno)
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store) and named(node.slice):
            lines.add(node.lineno)
    text = source.splitlines()
    return [text[n - 1].strip() for n in sorted(lines)]


def test_the_thread_policy_is_defined_once():
    """tools/harness.py defines the policy; a tool, conftest.py or the Makefile giving OMP_NUM_THREADS a
    value itself would fork it. Only the portability runner's deliberate 2-threads setting names a count."""
    root = Path(__file__).resolve().parent.parent
    found = {
        p.relative_to(root).as_posix(): thread_settings(p.read_text(encoding="utf-8"))
        for p in [*sorted((root / "tools").glob("*.py")), root / "conftest.py"]
    }
    assert {name: lines for name, lines in found.items() if lines} == {
        "tools/harness.py": ['THREADS = {"OMP_NUM_THREADS": "1"}'],
        "tools/portability.py": ['"2-threads": {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"},'],
    }
    makefile = (root / "Makefile").read_text(encoding="utf-8")
    assert not re.search(rf"^\s*(export\s+)?{THREADS}\s*[?:]?=", makefile, re.M)
    # the check can fail: each way the policy was copied before
    for copy in [
        'os.environ.setdefault("OMP_NUM_THREADS", "1")',
        'env = dict(os.environ, OMP_NUM_THREADS="1")',
        'os.environ["OMP_NUM_THREADS"] = "1"',
        'env = {**os.environ, "OMP_NUM_THREADS": "1"}',
    ]:
        assert thread_settings(copy) == [copy], copy
    assert thread_settings('x = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "(not set)")}') == []
    assert re.search(rf"^\s*(export\s+)?{THREADS}\s*[?:]?=", "OMP_NUM_THREADS ?= 1\n", re.M)
