"""Multi-process training with ``torchrun``: the process group and reductions.

The trainer calls :func:`init` once. Under ``torchrun`` (``WORLD_SIZE > 1`` in the
environment) it joins the process group: NCCL on CUDA, gloo on the CPU. Alone, it does
nothing, and every helper here degrades to the single-process answer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_from_torchrun() -> DistEnv:
    return DistEnv(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def init(device: torch.device) -> DistEnv:
    """Join the process group when launched by torchrun; return this process's place."""
    env = env_from_torchrun()
    if env.distributed and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return env


def shutdown(wait_for_all: bool = False) -> None:
    """Leave the process group. Every process that joined one must, before it exits: a gloo
    group left to the interpreter's teardown destroys its threads unjoined, which aborts the
    process now and then (``terminate called without an active exception``, SIGABRT).
    ``wait_for_all``: first wait until every rank got here (after a command that succeeded
    on all of them), so no rank tears its connections down while another still uses them."""
    if dist.is_available() and dist.is_initialized():
        if wait_for_all:
            dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (in place); identity in a single process."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    if dist.is_available() and dist.is_initialized():
        holder = [obj]
        dist.broadcast_object_list(holder, src=src)
        return holder[0]
    return obj
