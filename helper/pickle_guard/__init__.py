"""A pickle's opcodes checked before any unpickler runs: exact globals, and a budget on every object it builds.

``scan_pickle(data)`` walks the bytes of a pickle (every protocol, 0-5) in
pure Python, keeping a small abstract stack and memo. It never imports or calls
anything the pickle names, and never builds the objects: it only counts what an
unpickler *would* build, and raises ``CheckpointError`` (``kind`` below) at the
first opcode that breaks a rule:

- **Globals** (``kind="hostile-pickle"``): every ``module.name`` must be in an
  exact allowlist (``allowed``; no prefix match); those that are not are named
  together in one error (``refused_globals``) once the scan ends or fails. A name with a dot in it
  (protocol 4 resolves ``os.system`` as an attribute path) and a module that is
  not a plain dotted identifier are refused. ``STACK_GLOBAL``'s two operands
  must be literal strings the pickle itself pushed (directly or through its
  memo); anything computed is refused. ``EXT1/2/4`` (the copyreg registry),
  ``INST``/``OBJ``/``PERSID`` (protocol 0/1 instance creation and text
  persistent ids) and out-of-band buffers are refused: ``torch.save`` never
  writes them.
- **Calls** (``REDUCE``, ``NEWOBJ``, ``NEWOBJ_EX``, ``BUILD``): a callable must
  be an allowed global pushed by the pickle. Those of torch's default allowlist
  that can allocate more than their arguments hold are checked one by one
  (``_CALLS``): ``bytearray`` only of bytes or a literal string, or of a literal
  int within the allocation budget; ``_codecs.encode`` only of a literal string
  to a latin-1/utf-8/ascii encoding (so 29 chained encodes are refused at the
  second); ``set``/``Counter``/``OrderedDict``/``torch.Size`` only of a
  container the pickle built (whose items are counted already), never of a
  string or a tensor; ``torch.Tensor``, the tensor classes and the storage
  classes only with no arguments or a container (``torch.UntypedStorage(10**10)``
  is refused); ``_rebuild_qtensor`` and ``_rebuild_device_tensor_from_cpu_tensor``
  only when the sizes they allocate are literal and within the allocation
  budget; ``_rebuild_from_type_v2`` only of one of torch's tensor rebuild
  functions, whose arguments are then checked by that function's rule. Any
  other global of torch's default set (a dtype, a layout...) cannot be called.
  A global outside torch's set (one the caller allows: ``add_safe_globals``, or
  DCP's metadata classes for the doctor) may be called with any arguments the
  pickle built; its result is counted as an object.
- **Shape**: a container changed after it was put inside another one (or used as
  a call's arguments), and a container put inside itself, are refused
  (``hostile-pickle``): ``pickle.dump`` and ``torch.save`` finish a container
  before they place it, so this only comes from a crafted file, and refusing it
  makes the depth below exact and cycles impossible.
- **Budget** (``kind="budget"``, ``PickleBudget``), checked as each opcode is read
  (``n`` = the pickle's length in bytes):

  ==================  ===================================  ======================================
  limit               ``PickleBudget.for_size(n)``         why
  ==================  ===================================  ======================================
  ``max_depth``       100, any size                        nesting of the built objects. CPython
                                                           recurses in C to hash, compare, repr
                                                           and free them: a tuple key nested 1M
                                                           deep crashed torch's unpickler
                                                           (SIGSEGV), a value 200k deep gave
                                                           ``RecursionError``; ``repr`` fails
                                                           near 1,000.
  ``max_marks``       100 open at once, any size           each open ``MARK`` is a list on torch's
                                                           unpickler's metastack (20M MARKs:
                                                           +1.3 GB); a real pickle opens one per
                                                           nesting level.
  ``max_containers``  64k + n/4, at most 1M                lists, dicts, sets, tuples, call
                                                           results (30M empty lists: 2.6 GB).
  ``max_memo``        64k + n/4, at most 1M                memo entries (about 100 bytes each).
  ``max_memory``      32 MiB + 64 n, at most 1 GiB         the bytes of every object built, at
                                                           CPython 3.11's sizes (empty list 56,
                                                           dict 64, set 216, str 49+len, memo
                                                           entry 100...), never decreased by POP.
  ``max_alloc``       1 MiB + n                            what ``bytearray``, ``_codecs.encode``
                                                           and the allocating tensor rebuilds ask
                                                           for (``load_checkpoint`` allows 1 MiB +
                                                           the file's size: tensor data lives in
                                                           the archive's members, not the pickle).
  ``max_expanded``    1M + 16 n, at most 64M               any object's expanded size: 1 + its
                                                           items' expanded sizes, a memo
                                                           reference counting its whole tree. A
                                                           tuple t_i = (t_{i-1}, t_{i-1}) through
                                                           the memo, 64 levels (66 containers,
                                                           332 bytes) expands to 2**64: hashing,
                                                           comparing or printing it never ends.
  ``max_key``         1,024, any size                      the expanded size of a dict key or set
                                                           member (or an item ``set()``,
                                                           ``frozenset()``, ``Counter()`` hash,
                                                           or a pair's key for ``dict()``,
                                                           ``OrderedDict()``): hashing a tuple
                                                           walks it (tuples cache no hash).
  ``max_hashed``      1M + 2 n, at most 32M                those expanded sizes summed over every
                                                           key hashed: one 1,000-object key used
                                                           in 1M dicts is 1e9 hash steps.
  ``max_clashes``     32 per container, any size           keys of one container whose hash the
                                                           pickle can plan and that equal an
                                                           earlier key's, plus those whose hash
                                                           the scanner cannot know (``hashing``
                                                           says which): each insert compares a
                                                           key with every earlier key of its
                                                           hash. 200k ints k * (2**61 - 1), all of
                                                           hash 0 (2.8 MB), gave 2e10 probes.
  ==================  ===================================  ======================================

  How they were chosen: the same counts on real pickles (``torch.save`` data.pkl, this machine,
  torch 2.14, Python 3.11) are at most: depth 8 (``make_checkpoint`` with an Adam state: 8; a
  state dict: 5); 37 bytes of objects per byte of pickle (a list of 10,000 one-item sets; a
  state dict 26, ``make_checkpoint`` with a 50-layer model, Adam and a 2,000-float history 19,
  a list of ints 13, a dict of strings 12); 16.8 containers and 16.8 memo entries per 100 bytes
  (10,000 empty dicts and 10,000 empty lists; a state dict 7.7 and 9.3). The limits leave 1.5x
  (containers, memo) and 1.7x (memory) over those worst shapes and 12x over depth, so a real pickle of
  the densest shape passes up to the ceilings (about 6 MB of pickle for the container ceiling, 29 MB
  for the memory one; a state dict, 13 MB and 41 MB); the ceilings keep the verdict on any pickle
  under two seconds here. What an attacker gets for the densest opcodes is then bounded:
  5M empty sets (5 MB) and 30M empty lists (30 MB) are refused at the 1,048,577th container, in
  about 1.7 s each, the scanner holding about 100 bytes per container counted (it keeps no item of a list,
  dict or set, the first 32 of a tuple, and turns the cyclic garbage collector off while it runs:
  its objects form no cycles); 20M MARKs at the 101st; a 1M-deep tuple at depth 101; 29 chained
  ``_codecs.encode`` at the second.

  The hash limits (attack findings F4, F7), measured the same way on 103 real ``torch.save`` files
  (the course's artifacts and a 400 MB checkpoint): expanded size at most 0.29 per byte of pickle
  (55x under 16), keys hashed 0.05 per byte; no key larger than one object, no clash. Dense real
  shapes: a list of 100k references to one tensor expands 8.5 per byte (the densest torch.save
  writes: a 2-byte memo reference to a 17-object tensor), a set of 200k ints hashes 0.23 per byte,
  a dict of 100k tuple keys 0.2 per byte (3 objects a key), with no clash. Ints below 2**61 - 1 hash
  to themselves, a few hundred floats at most share a hash, str and bytes hashes are keyed per process
  (``sys.flags.hash_randomization``), and tensors, globals and other objects hash by address
  (``hashing`` says more), so no real file clashes; 32 clashes cost at most 32 * 32 / 2 comparisons of
  keys of at most 1,024 objects per container. The F4 file is
  refused at its 19th level (``max_expanded``), 12 levels at the key (``max_key``), the F7 file at its
  33rd key (``max_clashes``), each in milliseconds. A global the caller allows (``add_safe_globals``;
  the doctor's DCP metadata classes) hashes as its class says: its objects are counted as keys whose
  hash no one can plan (the caller vouches for the class; the doctor runs under a time limit).

``allowed=None`` is the set torch's ``weights_only`` unpickler allows on this
torch (``torch_allowed_globals()``: torch's default set, read in one place,
``allowlist.py``, which says why it is a private call, plus the public
``torch.serialization.get_safe_globals()``), named ``module.qualname`` as torch
names them. Python 2 names (``__builtin__.set``) are mapped as torch maps them.

``survey_pickle(data, start)`` runs the same walker with these rules relaxed
(``survey.py``) and lists what a pickle names and asks for: every global, where
it ends, its storages and their sizes (``storage_bytes``), its strings, what
``bytearray(N)`` asks for. ``survey_of(report)`` gives the same facts from the
guard's own walk, for a pickle the guard has passed (``load_checkpoint`` walks
``data.pkl`` once; a test holds the two to the same answers). The modules: ``walk`` (the loop, ``scan_pickle``),
``state`` (stack, memo, budget counters, the shared rules), ``ops_*`` (the
opcode handlers by family), ``calls`` (the rule for each allowed callable),
``allowlist``, ``budget``, ``values``, ``survey``.
"""

from __future__ import annotations

from helper.pickle_guard.allowlist import torch_allowed_globals
from helper.pickle_guard.budget import (
    KIND_BUDGET,
    KIND_HOSTILE,
    KIND_MALFORMED,
    KIND_TRUNCATED,
    PickleBudget,
    PickleReport,
)
from helper.pickle_guard.survey import PickleScan, storage_bytes, survey_of, survey_pickle
from helper.pickle_guard.walk import scan_pickle

__all__ = [
    "KIND_BUDGET",
    "KIND_HOSTILE",
    "KIND_MALFORMED",
    "KIND_TRUNCATED",
    "PickleBudget",
    "PickleReport",
    "PickleScan",
    "scan_pickle",
    "storage_bytes",
    "survey_of",
    "survey_pickle",
    "torch_allowed_globals",
]
