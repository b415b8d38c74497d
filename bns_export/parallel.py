"""Data parallelism for `torchrun --nproc_per_node=K bns-export distill|eval ...` (gloo on CPU, nccl on GPUs).

Work is split by global index, so results do not depend on K: ground truth in fixed chunks of
pairs (the same dopri5 batches whatever K), distillation batches by position in the one seeded
batch, and every mean is an all-reduced sum divided by the global count.  One process is the
world of size 1 and runs the same code with no communication.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch
from torch import Tensor

from .devicespec import is_cuda
from .errors import BNSError


@dataclass(frozen=True)
class World:
    """This process's rank among `size` data-parallel processes."""

    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mine(self, items: list | range) -> list:
        """This rank's share of `items`: every size-th one, starting at rank."""
        return list(items)[self.rank :: self.size]

    def all_sum(self, x: Tensor) -> Tensor:
        """Sum of `x` over every process (the tensor itself when alone)."""
        if self.size > 1:
            x = x.clone()
            torch.distributed.all_reduce(x)
        return x

    def barrier(self) -> None:
        if self.size > 1:
            torch.distributed.barrier()


SINGLE = World()


def current_world() -> World:
    """This process's place in the world `init_world` joined (SINGLE when it joined none)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return World(torch.distributed.get_rank(), torch.distributed.get_world_size())
    return SINGLE


def launched_world_size() -> int:
    """WORLD_SIZE as set by torchrun (1 when not launched by it)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise BNSError(f"WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} is not a number") from None


def init_world(device: str) -> tuple[World, str]:
    """Join the torchrun process group (nccl for CUDA, gloo for CPU); return the world and this rank's device.

    Under torchrun every rank of a CUDA run takes cuda:LOCAL_RANK; outside torchrun nothing happens.
    """
    size = launched_world_size()
    if size == 1:
        return SINGLE, device
    import torch.distributed as dist

    cuda = is_cuda(device)
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise BNSError(
                f"torchrun started more processes per node than this machine has CUDA devices "
                f"({torch.cuda.device_count()}): use --nproc_per_node <= {torch.cuda.device_count()}, or --device cpu"
            )
        device = f"cuda:{local}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        # leave the group before the interpreter exits: gloo/nccl threads alive at exit can abort the
        # process ("terminate called without an active exception"), seen once in a full test run
        atexit.register(_leave)
    return World(dist.get_rank(), dist.get_world_size()), device


def _leave() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_sum_grads(world: World, params: list[Tensor]) -> None:
    """One all-reduce of the flat gradient: K processes then take the step one process takes."""
    if world.size == 1:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    torch.distributed.all_reduce(flat)
    offset = 0
    for p in params:
        n = p.grad.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n
