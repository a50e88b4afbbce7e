"""Pickle payloads never run, in any format or protocol, and the doctor's advice never allowlists them.

Every payload would create a marker file if it ran. Each is saved with
``torch.save`` (zip format, pickle protocols 1-5), in the legacy format and as
a plain pickle (protocols 0-5); ``load_checkpoint`` must refuse it, the doctor
must say "do not load this file" and name the global, and neither may create
the marker. The doctor suggests ``safe_globals`` only for plain-data classes
and ``nn.Module`` classes, and following that advice works.
"""

from __future__ import annotations

import argparse
import functools
import os
import pickle
import pty
import runpy
import shutil
import subprocess
import sys
import time
import timeit
from pathlib import Path

import pytest
import torch

from helper.checkpoint import CheckpointError, load_checkpoint
from helper.doctor import allowlistable, diagnose
from helper.models import build_model


class Payload:
    """Unpickling calls ``func(*args)``."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


class Plain:
    """A class of the user's that is neither plain data the doctor knows nor an nn.Module."""


def payloads(marker: Path, script: Path) -> dict[str, object]:
    code = f"open({str(marker)!r}, 'w').close()"
    found = {
        "builtins.exec": Payload(exec, code),
        "builtins.eval": Payload(eval, code),
        "timeit.timeit": Payload(timeit.timeit, code, "pass", time.perf_counter, 1),
        "posix.system": Payload(os.system, f"touch {marker}"),
        "subprocess.call": Payload(subprocess.call, ["touch", str(marker)]),
        "pty.spawn": Payload(pty.spawn, ["touch", str(marker)]),
        "runpy.run_path": Payload(runpy.run_path, str(script)),
        "posix.mkdir": Payload(os.mkdir, str(marker)),
        "shutil.copy": Payload(shutil.copy, str(script), str(marker)),
        "functools.partial": Payload(functools.partial(os.system, f"touch {marker}")),
        "pickle.loads": Payload(pickle.loads, pickle.dumps(Payload(os.mkdir, str(marker)))),
        "builtins.getattr": Payload(getattr, os, "getcwd"),
    }
    try:
        from numpy.testing._private.utils import runstring

        found["numpy.testing._private.utils.runstring"] = Payload(runstring, code, {})
    except ImportError:
        pass
    return found


FORMATS = [*(f"zip-p{p}" for p in range(1, 6)), "legacy", *(f"pickle-p{p}" for p in range(6))]


def write(obj, path: Path, fmt: str) -> bool:
    """Save ``obj`` in ``fmt``; False where that combination cannot be written at all."""
    try:
        if fmt.startswith("zip"):
            torch.save({"weights": torch.ones(3), "note": obj}, path, pickle_protocol=int(fmt[-1]))
        elif fmt == "legacy":
            torch.save({"weights": torch.ones(3), "note": obj}, path, _use_new_zipfile_serialization=False)
        else:
            path.write_bytes(pickle.dumps({"note": obj}, protocol=int(fmt[-1])))
    except (pickle.PicklingError, TypeError, AttributeError):  # e.g. a module object at protocol 0
        return False
    return True


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("payloads")
    marker, script = root / "PAYLOAD_RAN", root / "touch.py"
    script.write_text(f"open({str(marker)!r}, 'w').close()\n")
    files = {}
    for name, payload in payloads(marker, script).items():
        for fmt in FORMATS:
            path = root / f"{name}.{fmt}.pt"
            if write(payload, path, fmt):
                files[name, fmt] = path
    return marker, files


def test_every_payload_is_refused_named_and_never_run(made):
    marker, files = made
    assert len(files) >= 12 * len(FORMATS) - 12
    for (name, fmt), path in files.items():
        with pytest.raises(CheckpointError) as caught:
            load_checkpoint(path)
        d = diagnose(path)
        report = d.report()
        assert not d.healthy and d.exit_code == 1, report
        assert "do not load this file" in d.fix and "safe_globals" not in d.fix, report
        short = name.split(".")[-1]
        assert short in report or "computed at load time" in report, (name, fmt, report)
        if fmt.startswith("zip"):
            assert "refused by weights_only=True" in caught.value.cause or "is corrupted" in caught.value.cause
        assert not marker.exists(), f"{name} in {fmt} ran"


def test_payload_globals_are_never_allowlistable(made):
    _, files = made
    for name in {n for n, _ in files}:
        assert not allowlistable(name), name
    for name in (
        "os.system",
        "posix.system",
        "nt.system",
        "builtins.exec",
        "builtins.getattr",
        "pty.spawn",
        "timeit.timeit",
        "torch.load",
        "torch.serialization.load",
        "torch.nn.functional.relu",
        "helper.models.build_model",
        "collections.namedtuple",
        "__main__.nowhere",
        "<a global computed at load time>",
    ):
        assert not allowlistable(name), name


def test_the_marker_would_show_a_payload_that_ran(tmp_path):
    """The check can fail: plain pickle.loads of one payload does create the marker."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(exec, f"open({str(marker)!r}, 'w').close()")))
    assert marker.exists()


def test_whole_module_advice_works_when_followed(tmp_path):
    model = build_model({"arch": "mlp"})
    path = tmp_path / "whole.pt"
    torch.save(model, path)
    d = diagnose(path)
    assert "safe_globals" in d.fix, d.report()
    needed = eval(d.lines[-1].split("names ", 1)[1])  # the line lists the globals
    classes = []
    for name in needed:
        module, _, attr = name.rpartition(".")
        classes.append(getattr(sys.modules[module], attr))
    with torch.serialization.safe_globals(classes):
        loaded = torch.load(path, weights_only=True)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_plain_data_advice_works_and_unknown_classes_are_refused(tmp_path):
    path = tmp_path / "args.pt"
    torch.save({"args": argparse.Namespace(lr=0.1)}, path)
    d = diagnose(path)
    assert "safe_globals" in d.fix and "argparse.Namespace" in d.report(), d.report()
    with torch.serialization.safe_globals([argparse.Namespace]):
        assert torch.load(path, weights_only=True)["args"].lr == 0.1
    torch.save({"thing": Plain()}, tmp_path / "unknown.pt")  # a class that is no nn.Module
    d = diagnose(tmp_path / "unknown.pt")
    assert "do not load this file" in d.fix and "safe_globals" not in d.fix, d.report()
