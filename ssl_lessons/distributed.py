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
    """Join the process group if torchrun started us. Returns (rank, world_size, local_rank).

    On GPUs each process is pinned to cuda:LOCAL_RANK before the group is made, so NCCL's collectives (and
    all_gather_object, which stages through the current device) use this rank's GPU, not all cuda:0."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
            dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
        else:
            dist.init_process_group("gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
    return 0, 1, 0


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


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
def all_reduce_max(x: torch.Tensor) -> torch.Tensor:
    """Maximum of x over ranks (in place); x itself when not distributed."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return x


@torch.no_grad()
def all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x (n, ...) from every rank (equal n on every rank) -> (world * n, ...), without gradient."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)


def own_share(n: int) -> list[int]:
    """This rank's positions among n items split into equal contiguous shares, the last share padded with position 0
    so that every rank makes the same number of forward passes (a sharded model's collectives must line up).
    all_gather_rows of the results, cut to n, is the n items' results in order."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    per_rank = -(-n // world)
    return [i if i < n else 0 for i in range(rank * per_rank, (rank + 1) * per_rank)]


def all_gather_objects(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (picklable objects; tensors should be on the CPU)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """Rank src's obj, on every rank."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


@torch.no_grad()
def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank src's BatchNorm statistics to every rank. DDP does this before each forward; doing it once more
    after the last step makes checkpoints and evaluation identical on every rank. (State that must stay per rank,
    such as SwAV's queue of this rank's own embeddings, is not a buffer: see Method.rank_state.)"""
    if dist.is_initialized() and dist.get_world_size() > 1:
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                for buffer in m.buffers():
                    dist.broadcast(buffer, src)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
