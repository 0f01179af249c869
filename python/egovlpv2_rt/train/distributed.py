"""Process-group set-up for ``torchrun`` and the collectives the losses need.

One process per device. ``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous address; without them the trainer runs as a single process with no process group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "DistInfo",
    "all_gather_no_grad",
    "all_gather_with_grad",
    "init_distributed",
    "shutdown_distributed",
]


@dataclass
class DistInfo:
    """Rank facts of this process. ``gather_group`` is a second process group used only by the
    embedding all-gathers, so that their backward all-reduce never interleaves with DDP's
    gradient buckets on one group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    gather_group: object | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """Initialise from the ``torchrun`` environment (NCCL on CUDA, gloo on CPU).

    Args:
        device: ``"auto"`` (CUDA when available), ``"cuda"`` or ``"cpu"``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but CUDA is not available")
    dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world == 1:
        return DistInfo(0, 1, 0, dev, None)
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo", device_id=dev if use_cuda else None
        )
    group = dist.new_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local, dev, group)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums the incoming gradients over ranks and returns
    this rank's slice: the gradient of a loss computed identically on every rank from the
    gathered tensor (``torch.distributed.nn.all_gather`` semantics)."""

    @staticmethod
    def forward(ctx, x: Tensor, info: DistInfo) -> Tensor:
        ctx.info = info
        ctx.n = x.shape[0]
        parts = [torch.empty_like(x) for _ in range(info.world_size)]
        dist.all_gather(parts, x.contiguous(), group=info.gather_group)
        return torch.cat(parts, 0)

    @staticmethod
    def backward(ctx, grad: Tensor):
        info = ctx.info
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=info.gather_group)
        return grad[info.rank * ctx.n : (info.rank + 1) * ctx.n], None


def all_gather_with_grad(x: Tensor, info: DistInfo) -> Tensor:
    """``[B, ...]`` per rank -> ``[world * B, ...]`` in rank order, differentiable. Every rank
    must pass the same ``B``."""
    if not info.distributed:
        return x
    return _GatherWithGrad.apply(x, info)


@torch.no_grad()
def all_gather_no_grad(x: Tensor, info: DistInfo) -> Tensor:
    """``[B, ...]`` per rank -> ``[world * B, ...]`` in rank order, no gradient."""
    if not info.distributed:
        return x
    parts = [torch.empty_like(x) for _ in range(info.world_size)]
    dist.all_gather(parts, x.contiguous(), group=info.gather_group)
    return torch.cat(parts, 0)


def all_reduce_sum(x: Tensor, info: DistInfo) -> Tensor:
    """Sum over ranks (no gradient), returns a new tensor."""
    x = x.detach().clone()
    if info.distributed:
        dist.all_reduce(x, group=info.gather_group)
    return x
