"""Train the digits MLP on several CPU processes with FSDP2; save and
load it with torch.distributed.checkpoint (DCP).

Lesson 11 launches it with torchrun:

    torchrun --standalone --nproc_per_node=2 \\
        notebooks/scripts/dcp_train.py train OUT
    torchrun --standalone --nproc_per_node=3 \\
        notebooks/scripts/dcp_train.py load OUT

``train`` writes OUT/ckpt (dcp.save), OUT/ckpt_async (dcp.async_save)
and OUT/full.pt (every tensor gathered whole on rank 0: the reference
to compare with). ``load`` reads OUT/ckpt on however many processes it
runs and compares with OUT/full.pt. Only rank 0 prints.
"""

import argparse
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions, get_state_dict, set_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.nn import functional as F

from helper.models import build_model

CONFIG = {"arch": "mlp", "hidden": [64]}


def sharded_model(world: int):
    """The MLP, each Linear and then the whole model sharded across
    ``world`` CPU processes; and its Adam optimizer."""
    torch.manual_seed(0)  # the same initial weights on every rank
    model = build_model(CONFIG)
    mesh = init_device_mesh("cpu", (world,))
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model, torch.optim.Adam(model.parameters(), lr=1e-2)


def train_steps(model, optimizer, steps: int, start: int, rank: int,
                world: int) -> None:
    """``steps`` Adam steps; each rank takes a different slice of each
    batch (data parallel)."""
    # scikit-learn: imported only where data is needed
    from helper.data import split_digits

    split = split_digits()
    for step in range(start, start + steps):
        first = step * 64
        idx = torch.arange(first, first + 64) % len(split.y_train)
        x = split.x_train[idx][rank::world]
        y = split.y_train[idx][rank::world]
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()  # FSDP2 reduce-scatters (averages) the grads
        optimizer.step()


def same(a, b) -> bool:
    """Nested dicts/lists of tensors and plain values equal, tensors
    bit for bit."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor)
                and isinstance(b, torch.Tensor) and torch.equal(a, b))
    if isinstance(a, dict):
        return (isinstance(b, dict) and a.keys() == b.keys()
                and all(same(a[k], b[k]) for k in a))
    if isinstance(a, (list, tuple)):
        return (type(a) is type(b) and len(a) == len(b)
                and all(same(x, y) for x, y in zip(a, b)))
    return a == b


def train(out: Path, rank: int, world: int) -> None:
    model, optimizer = sharded_model(world)
    train_steps(model, optimizer, 20, 0, rank, world)
    local = {k: tuple(v.to_local().shape)
             for k, v in model.state_dict().items()}
    shapes = [None] * world
    dist.all_gather_object(shapes, local)  # each rank's piece
    if rank == 0:
        for key, value in model.state_dict().items():
            full = tuple(value.shape)
            pieces = [s[key] for s in shapes]
            print(f"{key:<9} full {full!s:<8} per rank {pieces}")

    model_sd, optim_sd = get_state_dict(model, optimizer)  # DTensors
    state = {"model": model_sd, "optim": optim_sd}
    dcp.save(state, checkpoint_id=out / "ckpt")  # each rank: its part
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    full_model, full_optim = get_state_dict(model, optimizer,
                                            options=options)
    if rank == 0:  # the other ranks got empty dicts
        torch.save({"model": full_model, "optim": full_optim},
                   out / "full.pt")
    save_async(state, out / "ckpt_async", model, optimizer, rank,
               world)


def save_async(state, folder: Path, model, optimizer, rank,
               world) -> None:
    # Its own process group: the saver thread's collectives must not
    # mix with the training step's on one gloo group (they hang).
    group = dist.new_group(backend="gloo")
    before = state["model"]["1.weight"].to_local().clone()
    future = dcp.async_save(state, checkpoint_id=folder,
                            process_group=group)
    # async_save has copied ("staged") the tensors to CPU memory and
    # returned; a thread writes the files from that copy. Change a
    # weight in place now (state["model"] shares its memory):
    with torch.no_grad():
        model[1].weight.add_(1.0)
    now = state["model"]["1.weight"].to_local()
    changed = not torch.equal(before, now)
    train_steps(model, optimizer, 5, 20, rank, world)  # goes on
    future.result()  # wait for the files before the process ends
    if rank == 0:
        print("state given to async_save changed right after it"
              " returned:", changed)
        done = (folder / ".metadata").exists()
        print("async checkpoint committed (.metadata written):", done)


def load(out: Path, rank: int, world: int) -> None:
    model, optimizer = sharded_model(world)  # fresh weights, no state
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    # in place; each rank reads its slices
    dcp.load(state, checkpoint_id=out / "ckpt")
    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optim"])
    shapes = [None] * world
    piece = tuple(model[1].weight.to_local().shape)
    dist.all_gather_object(shapes, piece)
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    full_model, full_optim = get_state_dict(model, optimizer,
                                            options=options)
    if rank == 0:
        print(f"{world} processes, 1.weight per rank: {shapes}")
        saved = torch.load(out / "full.pt", weights_only=True)
        print("model tensors equal the saved run:",
              same(full_model, saved["model"]))
        print("optimizer state equal the saved run:",
              same(full_optim, saved["optim"]))


if __name__ == "__main__":
    import faulthandler
    import os
    import sys

    faulthandler.enable()  # a rank that aborts prints where it was
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["train", "load"])
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        run = train if args.mode == "train" else load
        run(args.out, rank, world)
        # every rank waits here until rank 0 has finished its checks:
        # a rank that tears gloo down while rank 0 still works can
        # make rank 0 abort at exit ("terminate called without an active
        # exception"), about one run in ten on two cores
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # Leave without the interpreter's teardown: gloo's C++ threads can
    # still hold Python objects then, and a rank can abort (SIGABRT,
    # "terminate called without an active exception"): seen in the
    # 3-process load during `make test`, the retry failing too, while
    # 12 runs alone with one core busy passed; PyTorch issue #190489,
    # pull request #179291. Everything is saved and printed by now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
