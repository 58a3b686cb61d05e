"""Small ``torch.distributed`` helpers for code below the engine (loss terms with state).

Every helper degrades to the single-process answer when no process group is initialised,
so the same term runs alone, under ``torchrun`` (the trainer joins the group) and in a
user's own ``DistributedDataParallel`` loop. Each collective must be called by every rank
in the same order, as with ``torch.distributed`` itself.

The gathers return detached copies: no gradient flows through them (memory banks and
statistics need none).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """The number of processes (1 outside a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank (0 outside a process group)."""
    return dist.get_rank() if is_distributed() else 0


def all_gather_cat(tensor: Tensor) -> Tensor:
    """Concatenate every rank's ``tensor`` along dim 0, in rank order, on every rank.

    ``tensor`` is ``(B_r, *rest)`` with the same ``rest`` and dtype on every rank; ``B_r``
    may differ between ranks (the tensors are padded to the largest ``B_r`` for the
    transfer and trimmed afterwards). Returns ``(sum_r B_r, *rest)``, detached; alone, a
    detached copy of ``tensor``.
    """
    tensor = tensor.detach()
    if not is_distributed():
        return tensor.clone()
    n = world_size()
    tensor = tensor.contiguous()
    local = torch.tensor([tensor.shape[0]], dtype=torch.int64, device=tensor.device)
    sizes = [torch.zeros_like(local) for _ in range(n)]
    dist.all_gather(sizes, local)
    counts = [int(s.item()) for s in sizes]
    biggest = max(counts)
    if tensor.shape[0] < biggest:
        pad = tensor.new_zeros((biggest - tensor.shape[0], *tensor.shape[1:]))
        tensor = torch.cat([tensor, pad])
    parts = [torch.empty_like(tensor) for _ in range(n)]
    dist.all_gather(parts, tensor)
    return torch.cat([part[:count] for part, count in zip(parts, counts, strict=True)])


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """The sum of ``tensor`` over ranks (a new tensor; ``tensor`` is left unchanged)."""
    out = tensor.detach().clone()
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_reduce_mean(tensor: Tensor) -> Tensor:
    """The mean of ``tensor`` over ranks (a new floating-point tensor)."""
    out = all_reduce_sum(tensor if tensor.is_floating_point() else tensor.float())
    return out / world_size()


def broadcast_(tensor: Tensor, src: int = 0) -> Tensor:
    """Overwrite ``tensor`` (in place) with rank ``src``'s copy; returns it."""
    if is_distributed():
        with torch.no_grad():
            dist.broadcast(tensor.data, src=src)
    return tensor


__all__ = ["all_gather_cat", "all_reduce_mean", "all_reduce_sum", "broadcast_", "is_distributed",
           "rank", "world_size"]
