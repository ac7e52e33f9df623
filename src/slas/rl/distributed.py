"""Multi-process training helpers (torchrun): the global batch for advantages, gradient averaging.

SLAS normalises by the std of the WHOLE global batch, so every rank gathers all rewards and group ids,
computes the advantages of the global batch and keeps its own slice. Gradients are averaged over ranks
before clipping, so all ranks take the same optimizer step. Without an initialised process group
everything here is the identity.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env() -> tuple[int, int]:
    """Initialise the process group when launched by torchrun (``WORLD_SIZE`` > 1); pick this rank's GPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return rank_and_world()


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_gather_cat(x: Tensor) -> Tensor:
    """Concatenate equally sized tensors from all ranks in rank order (returned on ``x``'s device)."""
    _, world = rank_and_world()
    if world == 1:
        return x
    y = x.to(_comm_device())
    parts = [torch.empty_like(y) for _ in range(world)]
    dist.all_gather(parts, y.contiguous())
    return torch.cat(parts).to(x.device)


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """All-reduce the mean gradient over ranks (a missing grad counts as zero)."""
    _, world = rank_and_world()
    if world == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad.div_(world)


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Average scalar metrics over ranks (same keys on every rank)."""
    _, world = rank_and_world()
    if world == 1 or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return {k: float(v) / world for k, v in zip(keys, t.tolist(), strict=True)}


def barrier() -> None:
    if rank_and_world()[1] > 1:
        dist.barrier()
