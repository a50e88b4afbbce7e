"""The doctor's diagnosis as a value, and every sentence it prints, once.

``Diagnosis`` holds what the inspector child found (the kind, health, the
findings as message keys and their values, the globals a pickle needs, the
devices, dtypes, where the weights sit, the mismatch) and its verdict, the
cause and the fix, as message keys and values too (``Said``). It crosses the
process boundary as JSON and is rendered in the doctor's process by ``say``
(one sentence from ``MESSAGES``) and ``Diagnosis.report`` (the whole report).
Causes and fixes of the file kinds live in ``helper.kinds.KINDS``; a free
text (a ``CheckpointError``'s cause) is the message ``text``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from helper.kinds import KINDS, META_CAUSE, META_FIX

Said = tuple[str, dict[str, Any]]  # a MESSAGES key and the values its sentence takes

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
    "dcp-bytes": "{count} non-tensor value(s) that dcp.load unpickles with weights_only=False (torch.load); each "
    "passes weights_only=True's rules here",
    "onnx": "ONNX ir_version {ir_version}, opsets {opsets}, {nodes} nodes: onnx.load and onnx.checker accept it",
    "onnx-external": "external data: {name}, {end} bytes needed, present",
    "pt2": "models {models}, {weights} weights, {constants} constants; no guards code, {pickled}",
    "pt2-pickled": "pickled: {names}, which torch.export.load unpickles (weights_only=False if weights_only=True "
    "fails), each within weights_only=True's rules here",
    "torchscript": "{count} TorchScript code file(s), never run here: {files}",
    # causes and fixes
    "runs-code": RUNS_CODE,
    "runs-code-ask": f"{RUNS_CODE}. {ASK}",
    "unknown-globals": "the pickle names {names}, not known plain data or nn.Module classes: loading it could run code",
    "dotted-globals": "the pickle names {names}, an attribute path inside a module (a crafted pickle: "
    "protocol 4 resolves it to any function): loading it could run code",
    "whole-objects": "it pickles whole objects (classes, not plain data), refused by weights_only=True",
    "safe-globals": "if you trust the file, load it once inside torch.serialization.safe_globals([...those "
    "classes]) and re-save model.state_dict() with its config",
    "numpy": "it holds NumPy arrays or scalars ({names}), which weights_only=True refuses: rebuilding them calls "
    "NumPy functions",
    "numpy-fix": "if you made the file, load it once with weights_only=False and re-save the arrays as tensors "
    "(torch.from_numpy) or plain numbers (lesson 06); from anyone else, ask for such a file",
    "meta": f"it {META_CAUSE}, nothing to load",
    "meta-fix": META_FIX,
    "refused": "refused by weights_only=True ({detail})",
    "load-failed": "torch.load(weights_only=True) failed: {detail}",
    "loads": "loads with weights_only=True{where}",
    "loads-fix": "torch.load(path, map_location='cpu', weights_only=True){then}",
    "no-state-dict": "loads with weights_only=True; no model state_dict found in it",
    "lightning-no-prefix": "a Lightning checkpoint whose keys share no single prefix",
    "lightning-no-prefix-fix": "rebuild your LightningModule and call YourModule.load_from_checkpoint(path)",
    "lightning-ok": "a Lightning checkpoint; the plain model's weights are checkpoint['state_dict'] without {prefix!r}",
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
    "pickle-unsafe-fix": f"{RUNS_CODE}. {KINDS['pickle'].fix}",
    "safetensors-ok": "a complete safetensors file (tensors only, nothing to unpickle); safetensors has no "
    "checksums, so a changed byte in the data cannot be detected",
    "safetensors-dtype": "a safetensors file with dtype {dtype}, which this safetensors cannot load",
    "hf-ok": "a complete Hugging Face {sharded}weights folder; safetensors has no checksums, so a changed byte "
    "in the data cannot be detected",
    "hf-no-index": "a model folder with config.json and {count} weights files but no index",
    "hf-no-index-fix": "copy the weights too: save_pretrained writes model.safetensors (or shards and "
    "model.safetensors.index.json) next to config.json",
    "hf-bad-index": "{name} has no weight_map of key -> shard file",
    "hf-stray-index": "the folder holds {names}, an index from_pretrained does not pick (it loads {picked}): another "
    "reader may load the shards it names, which were not examined",
    "hf-not-picked": "the folder's one weights file {name} is none of those from_pretrained loads ({names})",
    "hf-second": "the folder holds {picked}, which from_pretrained loads, and {other} (loaded with "
    "use_safetensors=False), whose keys, shapes or dtypes differ",
    "hf-bad-index-fix": "restore the index file",
    "hf-missing": "shard {shard} named by the index is missing",
    "hf-outside": "{what} {shard} is a link or a path that leaves the folder: a reader would open a file outside it",
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
    "dcp-bytes-unsafe": "its non-tensor value {fqn!r} fails weights_only=True's rules ({detail}): dcp.load and "
    "dcp_to_torch_save unpickle it with weights_only=False (torch.load), which would run it",
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
    "torchscript-fake": "not a TorchScript archive as torch.jit.save writes it ({detail})",
    "torchscript-ok": "a whole TorchScript program (torch.jit.save), but not safe from a stranger: it is code, "
    "which torch.jit.load compiles and its methods run, so no check can prove it harmless",
    "torchscript-fix": "load it with torch.jit.load(path) only if you made it or trust who did; from anyone else "
    "ask for the weights as a state_dict or safetensors file",
    "torchscript-setstate": "a TorchScript program whose code defines __setstate__ ({files}), which torch.jit.load "
    "runs while loading the file: loading it runs code",
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
FIXES = (
    "runs-code",
    "runs-code-ask",
    "safe-globals",
    "numpy-fix",
    "meta-fix",
    "loads-fix",
    "lightning-no-prefix-fix",
    "lightning-fix",
    "legacy-fix",
    "hf-no-index-fix",
    "hf-bad-index-fix",
    "outside-fix",
    "copy-again",
    "bin-unsafe-fix",
    "remote-code-fix",
    "dcp-unsafe-fix",
    "earlier-folder",
    "onnx-redo",
    "onnx-outside-fix",
    "onnx-missing-fix",
    "onnx-data-fix",
    "pt2-redo",
    "pt2-fix",
    "hostile-fix",
    "pickle-unsafe-fix",
    "torchscript-fix",
)


def say(key: str, **values: Any) -> str:
    """The sentence ``MESSAGES[key]`` with ``values`` filled in."""
    return MESSAGES[key].format(**values)


def said(key: str, **values: Any) -> Said:
    """The message ``key`` with its values, to be rendered by ``say`` when the report is printed."""
    MESSAGES[key]  # a KeyError here, where the message is chosen, rather than when it is printed
    return key, values


def text(sentence: str) -> Said:
    """A sentence that is not in ``MESSAGES`` (a ``CheckpointError``'s cause, a ``KINDS`` row) as a message."""
    return "text", {"text": sentence}


def _as_said(value: Said | str) -> Said:
    return text(value) if isinstance(value, str) else value


@dataclass
class Diagnosis:
    """What the doctor found, as a value: ``kind`` (see ``helper.kinds.sniff``), ``healthy``, ``findings``
    (message keys and their values, one report line each), the pickle's globals beyond weights_only's set
    (``needed``; ``dotted`` are attribute paths, never allowed), the tensors' ``devices`` and ``dtypes``,
    where the weights sit (``weights_at``: "" the file itself, else its key), the ``mismatch`` with the
    model, and the verdict (``said_cause``, ``said_fix``). ``facts``: the inspector's own bookkeeping.
    ``report`` renders it; ``cause`` and ``fix`` are its sentences."""

    path: str
    kind: str
    healthy: bool = True
    findings: list[Said] = field(default_factory=list)
    said_cause: Said = ("text", {"text": ""})
    said_fix: Said = ("text", {"text": ""})
    needed: list[str] = field(default_factory=list)
    dotted: list[str] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)
    dtypes: list[str] = field(default_factory=list)
    weights_at: str | None = None
    mismatch: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 0 if self.healthy else 1

    @property
    def cause(self) -> str:
        return say(self.said_cause[0], **self.said_cause[1])

    @property
    def fix(self) -> str:
        return say(self.said_fix[0], **self.said_fix[1])

    @property
    def lines(self) -> list[str]:
        return [say(key, **values) for key, values in self.findings]

    def note(self, key: str, **values: Any) -> None:
        self.findings.append(said(key, **values))

    def verdict(self) -> str:
        """The last line: OK or PROBLEM, the cause, and the fix."""
        head, fix = ("OK" if self.healthy else "PROBLEM"), self.fix
        return f"{head}: {self.cause}. Fix: {fix}" if fix else f"{head}: {self.cause}"

    def report(self) -> str:
        """The whole report: the path and kind, one line per finding, the verdict."""
        return "\n".join([f"{self.path}: {self.kind}", *(f"  {line}" for line in self.lines), self.verdict()])

    def fail(self, cause: Said | str, fix: Said | str) -> Diagnosis:
        """A problem: ``cause`` and ``fix`` as messages (``said``) or free sentences."""
        self.healthy, self.said_cause, self.said_fix = False, _as_said(cause), _as_said(fix)
        return self

    def ok(self, cause: Said | str, fix: Said | str) -> Diagnosis:
        """A healthy file (so far): what it is and how to load it."""
        self.said_cause, self.said_fix = _as_said(cause), _as_said(fix)
        return self

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Diagnosis:
        data = dict(data)
        data["findings"] = [(str(k), dict(v)) for k, v in data.get("findings", [])]
        for name in ("said_cause", "said_fix"):
            if name in data:
                data[name] = (str(data[name][0]), dict(data[name][1]))
        return cls(**data)
