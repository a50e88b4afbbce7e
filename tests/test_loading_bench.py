"""helper.loading_bench: every method loads the saved tensors, each child is measured on its own."""

from pathlib import Path

import pytest
import torch

from helper import loading_bench as lb
from helper import memory

SMALL = {"layers": 2, "width": 64}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    torch.manual_seed(0)
    state = lb.build_stack(SMALL).state_dict()
    pt, st = lb.save_both(state, tmp_path_factory.mktemp("bench"))
    return state, pt, st


@pytest.fixture(scope="module")
def server():
    with lb.ForkServer(timeout_s=60) as s:
        yield s


def test_stack_config_reaches_the_size():
    config = lb.stack_config(64, width=1024)
    params = sum(p.numel() for p in lb.build_stack(config).parameters())
    assert config == {"layers": 16, "width": 1024}
    assert abs(params * 4 / 2**20 - 64) < 1


@pytest.mark.parametrize("method", list(lb.METHODS))
def test_every_method_loads_the_saved_tensors(files, method):
    state, pt, st = files
    model = lb.load_by(method, pt, st, SMALL)
    loaded = model.state_dict()
    assert sorted(loaded) == sorted(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert all(p.device.type == "cpu" for p in model.parameters())  # nothing left on meta


def test_assign_makes_the_parameters_the_loaded_tensors(files):
    _, pt, st = files
    model = lb.load_by("meta + mmap=True + assign=True", pt, st, SMALL)
    assert model[0].weight.is_leaf and model[0].weight.requires_grad


def test_unknown_method_is_refused(files):
    _, pt, st = files
    with pytest.raises(ValueError, match="unknown method"):
        lb.load_by("pickle.load", pt, st, SMALL)


def test_measure_reports_a_mismatch(tmp_path):
    """The equality check can fail: a .pt and a .safetensors of different weights."""
    torch.manual_seed(0)
    pt, _ = lb.save_both(lb.build_stack(SMALL).state_dict(), tmp_path, stem="a")
    _, st = lb.save_both(lb.build_stack(SMALL).state_dict(), tmp_path, stem="b")
    result = lb.measure({"method": "torch.load + load_state_dict", "pt": pt, "st": st, "config": SMALL})
    assert result["same"] is False
    assert result["seconds"] > result["build_seconds"] > 0 and result["peak_mb"] >= 0


def test_fork_server_measures_in_fresh_children(files, server):
    _, pt, st = files
    job = {"method": "meta + mmap=True + assign=True", "pt": pt, "st": st, "config": SMALL}
    first, second = server.run(job), server.run(job)
    assert first["same"] and second["same"]
    assert server.process.poll() is None  # the server lives on between jobs


def test_fork_server_reports_a_child_error(files, server):
    _, pt, st = files
    result = server.run({"method": "nope", "pt": pt, "st": st, "config": SMALL})
    assert result["error"].startswith("ValueError: unknown method")
    assert server.run({"method": "memcpy into touched memory", "nbytes": 1000})["seconds"] > 0


def test_meta_mmap_assign_peaks_far_below_the_naive_path(tmp_path, server):
    config = lb.stack_config(48, width=1024)
    torch.manual_seed(0)
    pt, st = lb.save_both(lb.build_stack(config).state_dict(), tmp_path)
    rows = {r.name: r for r in lb.run_benchmark(pt, st, config, server=server)}
    references = list(lb.REFERENCES) if lb.evict_from_page_cache(pt) else list(lb.REFERENCES)[1:]
    assert list(rows) == list(lb.METHODS) + references
    assert all(rows[m].same for m in lb.METHODS)
    naive, lazy = rows["torch.load + load_state_dict"], rows["meta + mmap=True + assign=True"]
    assert naive.peak_mb > 1.5 * 48  # two copies at the peak
    # one once the load returned (the loaded dict is freed): current RSS falls by about a copy, the peak cannot
    assert naive.held_mb < naive.peak_mb - 0.7 * 48 and naive.private_mb < 1.3 * 48
    assert lazy.peak_mb < 0.5 * naive.peak_mb
    # after use the mapped pages are resident, but they are the page cache's, not private memory
    assert lazy.held_mb > 0.8 * 48 and lazy.private_mb < 0.25 * 48 < 0.8 * 48 < naive.private_mb
    assert all(r.used_seconds >= r.seconds for r in rows.values())
    # build: building on meta costs next to nothing; a built model pays for allocating its memory
    # and its random initialisation
    assert all(0 < rows[m].build_seconds < rows[m].seconds for m in lb.METHODS)
    assert lazy.build_seconds < 0.5 * naive.build_seconds
    table = lb.format_table(list(rows.values()), 48)
    assert lb.LABELS["memcpy into touched memory"] in table and "True" in table and "False" not in table
    # every method started warm (cold=False reads both files first), and no GB/s for a lazy load
    assert all(rows[m].cached > 0.9 for m in lb.METHODS)
    line = {label: row for row in table.splitlines() for label in lb.LABELS.values() if row.startswith(label)}
    start = table.splitlines()[1].index("GB/s") - 1
    gbs = slice(start, start + 5)  # the GB/s column: blank for a lazy load, which reads nothing
    assert line[lb.LABELS[lazy.name]][gbs].strip() == "" and line[lb.LABELS[naive.name]][gbs].strip()
    assert max(len(line) for line in table.splitlines()) <= 70


@pytest.fixture
def disk_dir():
    """A folder on the repository's disk (``/tmp`` may be tmpfs, where nothing can be evicted)."""
    import tempfile

    from helper.paths import ARTIFACTS_DIR

    ARTIFACTS_DIR.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ARTIFACTS_DIR) as folder:
        yield Path(folder)


def test_evict_and_read(disk_dir):
    path = disk_dir / "bytes.bin"
    path.write_bytes(b"x" * 2**20)
    assert lb.read_seconds(path) > 0
    assert lb.resident_fraction(path) == 1.0  # just read: every page cached
    assert lb.evict_from_page_cache(path) is True
    assert lb.resident_fraction(path) < 0.05
    lb.read_seconds(path)
    assert lb.resident_fraction(path) == 1.0


def test_nothing_to_evict_in_memory_file_systems():
    """On tmpfs the file IS the page cache: eviction must say it failed, not claim a cold read."""
    import os
    import tempfile

    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm here")
    with tempfile.NamedTemporaryFile(dir="/dev/shm") as f:
        f.write(b"x" * 2**16)
        f.flush()
        assert lb.evict_from_page_cache(f.name) is False


def test_mapped_file_tells_mapped_from_private(files):
    state, pt, _ = files
    mapped = torch.load(pt, mmap=True, weights_only=True)
    loaded = torch.load(pt, weights_only=True)
    assert lb.mapped_file(mapped["0.weight"]) == str(pt.resolve())
    assert lb.mapped_file(loaded["0.weight"]) is None
    assert lb.mapped_file(state["0.weight"]) is None


def test_gb_per_second_leaves_out_the_build():
    """A copying row of 1 s load + touch, 0.75 s of it building the model: 0.25 GB in 0.25 s is 1.0 GB/s, not 0.25."""
    row = lb.Measurement("torch.load + load_state_dict", 1.0, build_seconds=0.75, used_seconds=1.0)
    header, line = lb.format_table([row], 256).splitlines()[1::2]
    start = header.index("GB/s") - 1
    assert line[start : start + 5].strip() == "1.0"
    assert "build" in header.split() and "init" not in header.split()


def test_held_memory_is_current_not_the_high_water_mark():
    """VmRSS falls when memory is freed; ru_maxrss never does."""
    if memory.current_mb() is None:
        pytest.skip("no /proc/self/status here")
    block = torch.ones(64 * 2**20, dtype=torch.uint8)
    high, current = memory.peak_mb(), memory.current_mb()
    del block
    assert memory.current_mb() < current - 48 and memory.peak_mb() >= high


def load_tool():
    from tools import bench_loading

    return bench_loading


def test_bench_loading_tool_refuses_a_size_this_machine_cannot_hold(tmp_path, monkeypatch, capsys):
    tool = load_tool()
    monkeypatch.setattr(tool, "available_memory_gb", lambda: 11.0)
    folder = tmp_path / "bench"
    assert tool.main(["--size-gb", "4", "--folder", str(folder)]) == 2
    assert "needs about 12 GB of free memory" in capsys.readouterr().err
    assert not folder.exists()
    monkeypatch.setattr(tool, "available_memory_gb", lambda: 13.0)
    short = tool.too_small(4, str(folder))  # enough memory now: only the disk can be short
    assert short is None or "of free disk" in short


def test_bench_loading_tool_prints_the_table(tmp_path, capsys):
    tool = load_tool()
    folder = tmp_path / "bench"
    assert tool.main(["--size-gb", "0.02", "--width", "512", "--folder", str(folder)]) == 0
    out = capsys.readouterr().out
    assert all(lb.LABELS[m] in out for m in lb.METHODS) and lb.LABELS["memcpy into touched memory"] in out
    assert sum(line.endswith("  True") for line in out.splitlines()) == len(lb.METHODS)
    assert not folder.exists()  # files deleted without --keep
