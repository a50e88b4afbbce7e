"""helper.pickle_guard's survey (the one opcode walker, its rules relaxed) and the allowlist it reads from torch.

The guard's own rules and budget are tested in test_bombs.py and test_hostile.py.
"""

import io
import pickle
import pickletools
import random
import zipfile

import pytest
import torch

from helper.models import build_model
from helper.pickle_guard import (
    PickleScan,
    scan_pickle,
    storage_bytes,
    survey_of,
    survey_pickle,
    torch_allowed_globals,
)
from helper.pickle_guard.allowlist import torch_default_globals

FLIPS = (1, 2, 4, 8, 16, 32, 64, 128, 255)


def _real_pickles() -> list[bytes]:
    """data.pkl of torch.save zips (protocols 2-5), legacy files (pickles in a row), plain pickles (0-5)."""
    state = build_model({"arch": "cnn"}).state_dict()
    samples = [
        pickle.dumps(
            {
                "é": "ü\u20ac",
                "n": [
                    1,
                    300,
                    70000,
                    -5,
                    2**70,
                    1.5,
                    None,
                    True,
                    b"x" * 300,
                    "s" * 300,
                    (1, 2, 3),
                    {4},
                    frozenset({5}),
                    bytearray(3),
                ],
            },
            protocol=p,
        )
        for p in range(6)
    ]
    for protocol in (2, 3, 4, 5):
        buffer = io.BytesIO()
        torch.save(state, buffer, pickle_protocol=protocol)
        with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as z:
            samples.append(z.read(next(n for n in z.namelist() if n.endswith("data.pkl"))))
        buffer = io.BytesIO()
        torch.save(state, buffer, pickle_protocol=protocol, _use_new_zipfile_serialization=False)
        samples.append(buffer.getvalue())
    return samples


def _genops_end(data: bytes) -> int | None:
    """Where pickletools says the first pickle in ``data`` ends (after STOP), or None where it cannot read it."""
    try:
        end = None
        for _op, _, pos in pickletools.genops(io.BytesIO(data)):
            end = pos + 1
        return end
    except Exception:  # noqa: BLE001 - any failure of pickletools' reader is "cannot read it"
        return None


def _survey_end(data: bytes) -> int | None:
    try:
        return survey_pickle(data).end
    except ValueError:
        return None


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pickletools' own escape_decode on a flipped STRING
def test_survey_reads_every_opcode_as_pickletools_does():
    """Where pickletools cannot read a pickle (unknown opcode, an argument cut short or that does not decode),
    the survey refuses it with ValueError; where both read it, they agree on where it ends. Real torch pickles
    of every protocol, every truncation (300 per sample) and 300 byte flips per sample."""
    rng = random.Random(7)
    compared = refused = 0
    for sample in _real_pickles():
        variants = [sample] + [sample[:n] for n in range(0, len(sample), max(1, len(sample) // 300))]
        for _ in range(300):
            data = bytearray(sample)
            data[rng.randrange(len(data))] ^= rng.choice(FLIPS)
            variants.append(bytes(data))
        for data in variants:
            reference, ours = _genops_end(data), _survey_end(data)
            if reference is None:
                assert ours is None, data
                refused += 1
            elif ours is not None:
                assert ours == reference, data
            compared += 1
    assert compared > 4000 and refused > 1000


def test_survey_lists_a_torch_save_pickle():
    """Globals, storages and their sizes, strings, end: what helper.formats and the inspector read."""
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(3), "n": torch.zeros(2, dtype=torch.int64)}, buffer)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    scan = survey_pickle(data)
    assert scan.globals == {
        "collections.OrderedDict",
        "torch._utils._rebuild_tensor_v2",
        "torch.FloatStorage",
        "torch.LongStorage",
    }
    assert scan.storages == {"0": ("FloatStorage", 3), "1": ("LongStorage", 2)}
    assert storage_bytes(scan) == {"0": 12, "1": 16}
    assert scan.end == len(data) and not scan.dotted and not scan.meta and scan.allocates == 0
    assert {"w", "n", "storage", "cpu"} <= set(scan.strings)


def test_survey_lists_what_the_guard_refuses():
    """A global off the allowlist, a dotted name, bytearray(N), a meta tensor and a copyreg code are listed, not
    refused; bytes that are not a pickle are a ValueError."""
    m, n = b"torch.distributed.checkpoint.filesystem", b"os.system"
    dotted = b"\x80\x04\x8c%c%s\x8c%c%s\x93\x8c\x04true\x85R." % (len(m), m, len(n), n)
    assert survey_pickle(dotted).dotted == {"torch.distributed.checkpoint.filesystem.os.system"}
    assert survey_pickle(b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00true\x85R.").globals == {"os.system"}
    assert survey_pickle(b"\x80\x02c__builtin__\nbytearray\nJ\x00\x00\x00\x40\x85R.").allocates == 1 << 30
    meta = b"\x80\x02ctorch._utils\n_rebuild_meta_tensor_no_storage\n)R."
    assert survey_pickle(meta).meta
    assert survey_pickle(b"\x80\x02\x82\x07.").globals == {"<extension code 7>"}
    storage = b"\x80\x02(X\x07\x00\x00\x00storagectorch\nHalfStorage\nX\x01\x00\x00\x00kX\x03\x00\x00\x00cpuK\x05tQ."
    assert storage_bytes(survey_pickle(storage)) == {"k": 10}
    for bad in (b"", b"\x80\x02", b"\x80\x02Nz.", b"\x80\x02(K\x01tQ.", b"\x80\x02h\x05."):
        with pytest.raises(ValueError):
            survey_pickle(bad)
    with pytest.raises(ValueError, match="unknown type"):
        storage_bytes(PickleScan(storages={"k": ("NoSuchStorage", 1)}))


def _guard_and_survey_samples() -> list[bytes]:
    """data.pkl of torch.save files with every kind of storage reference the guard lets through."""
    from helper.checkpoint import make_checkpoint

    base = torch.arange(12.0)
    objects = [
        make_checkpoint(build_model({"arch": "cnn"}), epoch=2, step=7, config={"lr": 0.1}),
        {"view": base[3:], "again": base, "set": {torch.ones(2)}, "key": {torch.zeros(3): 1}},
        {"dtypes": [torch.zeros(2, dtype=d) for d in (torch.float16, torch.bfloat16, torch.int8, torch.bool)]},
        {
            "empty": torch.empty(0),
            "meta": torch.empty(3, device="meta"),
            "q": torch.quantize_per_tensor(base, 0.1, 0, torch.qint8),
        },
        {"bytes": bytearray(7), "n": 3},
    ]
    samples = []
    for obj in objects:
        for protocol in (2, 3, 4, 5):
            buffer = io.BytesIO()
            torch.save(obj, buffer, pickle_protocol=protocol)
            with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as z:
                samples.append(z.read(next(n for n in z.namelist() if n.endswith("data.pkl"))))
    return samples


def test_the_guard_surveys_what_the_survey_walker_does():
    """load_checkpoint walks data.pkl once: the guard's report gives the survey (``survey_of``). On every
    pickle the guard passes, it says what ``survey_pickle`` says: storages and their sizes, globals,
    bytearray(N), meta tensors, where it ends."""
    allowed = torch_allowed_globals()
    for data in _guard_and_survey_samples():
        ours, reference = survey_of(scan_pickle(data, allowed=allowed)), survey_pickle(data)
        assert ours.storages == reference.storages, data
        assert ours.globals == reference.globals and ours.end == reference.end == len(data)
        assert (ours.meta, ours.allocates) == (reference.meta, reference.allocates)
    surveys = [survey_of(scan_pickle(d, allowed=allowed)) for d in _guard_and_survey_samples()]
    assert any(s.meta for s in surveys) and sum(len(s.storages) for s in surveys) >= 100
    asked = b"\x80\x02c__builtin__\nbytearray\nK\x07\x85R."
    assert survey_of(scan_pickle(asked, allowed=allowed)).allocates == survey_pickle(asked).allocates == 7
    foreign = b"\x80\x02K\x05Q."  # a persistent id that is not torch's storage reference
    with pytest.raises(ValueError, match="not a torch storage reference"):
        survey_of(scan_pickle(foreign, allowed=allowed))
    with pytest.raises(ValueError, match="a malformed pickle"):
        survey_pickle(foreign)


def test_formats_has_no_walker_of_its_own():
    """helper.formats has no opcode walker of its own: it uses the package's."""
    from helper import formats

    assert formats.survey_pickle is survey_pickle and formats.storage_bytes is storage_bytes
    assert formats.PickleScan is PickleScan
    assert not hasattr(formats, "scan_pickle") and not hasattr(formats, "_genops") and not hasattr(formats, "_scan")


def test_torch_default_allowlist_is_what_the_public_check_accepts():
    """The private ``_get_allowed_globals()`` (allowlist.py reads it: nothing public lists it) against the public
    ``torch.serialization.get_unsafe_globals_in_checkpoint``: over every allowed name plus 200 of torch's other
    names and two plain dangers, the public check reports exactly those outside the private set. A torch that
    renames the function, or changes what it means, fails here."""
    allowed = torch_default_globals()
    assert len(allowed) > 50 and {"torch._utils._rebuild_tensor_v2", "collections.OrderedDict"} <= allowed
    others = {f"torch.{n}" for n in sorted(dir(torch)) if not n.startswith("__")} - allowed
    universe = sorted(allowed | set(sorted(others)[:200]) | {"os.system", "builtins.eval"})
    body = b"".join(b"c%s\n%s\n" % tuple(part.encode() for part in name.rpartition(".")[::2]) for name in universe)
    pkl = b"\x80\x02(" + body + b"t."  # MARK, GLOBALs, TUPLE: opcodes the public check reads
    buffer = io.BytesIO()
    torch.save({}, buffer)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as src:
        records = {info.filename: src.read(info) for info in src.infolist()}
    crafted = io.BytesIO()
    with zipfile.ZipFile(crafted, "w") as out:
        for name, raw in records.items():
            out.writestr(name, pkl if name.endswith("data.pkl") else raw)
    crafted.seek(0)
    unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(crafted)) - torch_allowed_globals()
    assert unsafe == set(universe) - allowed
    assert len(unsafe) >= 150
