"""torch.distributed in a few lines. Under `torchrun`, RANK / WORLD_SIZE / LOCAL_RANK are set and one process
runs per device; without it everything here is a no-op and the code runs as a single process.

    torchrun --nproc_per_node=2 -m ssl_lessons train --method simclr --preset cifar10-laptop
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn


def setup() -> tuple[int, int, int]:
    """Join the process group if torchrun started us. Returns (rank, world_size, local_rank)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
    return 0, 1, 0


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x (n, ...) from every rank -> (world * n, ...), keeping the autograd graph.

    Each rank then computes the loss of the global batch; backward sums the gradients flowing to each rank's
    slice, and DDP's average over ranks turns that sum back into the gradient of one global-batch loss."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return x
    return torch.cat(dist_fn.all_gather(x))


@torch.no_grad()
def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of x over ranks (in place); x itself when not distributed."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(x)
    return x


@torch.no_grad()
def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of x over ranks (in place), e.g. for a statistic every rank must agree on."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(x)
        x /= dist.get_world_size()
    return x


@torch.no_grad()
def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank src's BatchNorm statistics to every rank. DDP does this before each forward; doing it once more
    after the last step makes checkpoints and evaluation identical on every rank. (Other buffers, such as SwAV's
    queue of this rank's own embeddings, stay per rank.)"""
    if dist.is_initialized() and dist.get_world_size() > 1:
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                for buffer in m.buffers():
                    dist.broadcast(buffer, src)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
