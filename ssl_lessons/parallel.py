"""How one method is spread over the processes of a run: DDP or FSDP2 (`--set parallel=ddp|fsdp`).

What each GPU keeps, for P parameters trained with AdamW (fp32) and a momentum teacher of P more:

    DDP    every rank holds all of it: student P, teacher P, gradients P, AdamW's two moments 2P  -> 5P x 4 bytes;
           after backward the gradients are all-reduced (averaged) so every copy takes the same step.
    FSDP2  every rank holds 1/N of each: 5P x 4 / N bytes, plus the full weights of the one unit that runs now.
           Before a unit's forward (and backward) its weights are all-gathered, after it they are freed again;
           gradients are reduce-scattered, so each rank updates only its own shard (Zhao et al. 2023).

A unit is what `fully_shard` is applied to. As torchtitan and dinov2's `fsdp/` do it, the units are each transformer
block, then each backbone (its patch embedding, tokens and last norm) and each head, of the student, the teacher and
any EMA copy, then the root (the method), which owns what is left. The teacher's shards line up with the student's
(same shapes, same split), so the EMA update (teacher.ema_update) works on the local shards with no communication.

With bf16 on CUDA, FSDP2's MixedPrecisionPolicy keeps fp32 master weights and optimizer states, gathers bf16 weights
for compute and reduces gradients in fp32; the losses cast their inputs to fp32 themselves (losses/*.py).
Activation checkpointing (`--set activation_checkpointing=true`) recomputes each student block in backward instead
of keeping its activations: less memory for ~1/3 more compute.

At one process nothing is sharded (there is nothing to split); `parallel=fsdp` still writes sharded checkpoints
(torch.distributed.checkpoint), which a run at any other number of processes can resume.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager

import torch
import torch.nn as nn
from timm.models.vision_transformer import Block
from torch.distributed._composable import checkpoint
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from torch.nn.parallel import DistributedDataParallel as DDP

from .backbones import ResNetBackbone, ViTBackbone
from .heads import DINOHead, ProjectionMLP

PARALLEL_MODES = ("ddp", "fsdp")


def shard_units(method: nn.Module) -> list[nn.Module]:
    """The modules fully_shard is applied to, innermost first: every transformer block, then every backbone and
    head (student, teacher, EMA copies). The method itself (the root) comes last, in shard_method."""
    blocks = [m for m in method.modules() if isinstance(m, Block)]
    outer = [m for m in method.modules() if isinstance(m, (ViTBackbone, ResNetBackbone, DINOHead, ProjectionMLP))]
    return blocks + outer


def mixed_precision(amp: bool, device: torch.device):
    """FSDP2's policy: bf16 weights for compute and fp32 gradient reduction on CUDA with amp; fp32 otherwise (bf16 is
    4-7x slower than fp32 on the CPUs this course was measured on)."""
    if amp and device.type == "cuda":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def checkpoint_activations(method: nn.Module) -> None:
    """Recompute each trainable transformer block in backward instead of keeping its activations (the teacher's
    blocks run without gradients and keep nothing). PyTorch's composable `checkpoint` leaves the parameter names as
    they are, so checkpoints do not depend on it."""
    for block in method.modules():
        if isinstance(block, Block) and any(p.requires_grad for p in block.parameters()):
            checkpoint(block)


def shard_method(method: nn.Module, device: torch.device, amp: bool = True) -> nn.Module:
    """Apply FSDP2 to `method` in place (units from shard_units, then the root) and return it. Must run before the
    optimizer is made: the optimizer then holds the sharded parameters (DTensors), one shard per rank."""
    # forward_tokens returns views (the CLS row, the patch rows); no method modifies them in place
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
    policy = mixed_precision(amp, device)
    for unit in shard_units(method):
        fully_shard(unit, mp_policy=policy)
        for name in ("forward_tokens", "patch_tokens"):  # methods call these, not forward: gather around them too
            if hasattr(unit, name):
                register_fsdp_forward_method(unit, name)
    fully_shard(method, mp_policy=policy)
    # FSDP2 takes the first of its modules to run forward as the root. The loop may evaluate the teacher's backbone
    # (a k-NN at step 0) before the method's first forward, which would make that backbone a root of its own; so the
    # method is made the root now, as its first forward would make it.
    method._get_fsdp_state()._lazy_init()
    return method


def wrap(method: nn.Module, parallel: str, world: int, device: torch.device, amp: bool = True,
         activation_checkpointing: bool = False) -> nn.Module:
    """The module the loop calls: `method` itself (one process), DDP(method), or method sharded by FSDP2 in place."""
    if activation_checkpointing:
        checkpoint_activations(method)
    if world == 1:
        return method
    if parallel == "fsdp":
        return shard_method(method, device, amp)
    if device.type == "cuda":  # SimCLR's global BN; SyncBatchNorm has no CPU kernel (there DDP syncs buffers)
        method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
    return DDP(method, device_ids=[device.index] if device.type == "cuda" else None)


@contextmanager
def gradient_sync(model: nn.Module, sync: bool):
    """Within it, backward averages the gradients over the processes only if `sync`: DDP's no_sync() or FSDP2's
    set_requires_gradient_sync(False) keep the others local, so that an accumulated step communicates once, on its
    last micro-batch. One process: nothing to do."""
    if isinstance(model, DDP) and not sync:
        with model.no_sync():
            yield
    elif isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(sync)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a sharded (DTensor) parameter or gradient, as a plain tensor sharing its storage; a plain
    tensor as it is."""
    return t.to_local() if hasattr(t, "to_local") else t


def full_norm(t: torch.Tensor) -> torch.Tensor:
    """The L2 norm of a whole tensor, also when each rank holds only a shard of it (a collective then)."""
    norm = t.norm(2)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def memory_per_rank(module: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """Bytes this rank holds for the parameters (trainable and frozen: a teacher counts) and the optimizer's states:
    a shard's size under FSDP2, the whole tensor under DDP."""
    params = sum(local(p).numel() * local(p).element_size() for p in module.parameters())
    states = 0
    if optimizer is not None:
        for state in optimizer.state.values():
            states += sum(local(v).numel() * local(v).element_size() for v in state.values()
                          if torch.is_tensor(v) and v.ndim > 0)
    return {"parameters": params, "optimizer": states}


ADAMW_BYTES_PER_TRAINED = 16  # fp32 weight 4 + gradient 4 + AdamW's two moments 8
FROZEN_BYTES = 4              # an fp32 teacher (or EMA copy): weights only


def state_bytes(method: nn.Module, world: int = 1, parallel: str = "ddp", gather_bytes: int = 4) -> dict:
    """Computed bytes per rank of a method's persistent training state (activations aside):

        DDP:    16 x trained + 4 x frozen                      (every rank holds everything)
        FSDP2:  (16 x trained + 4 x frozen) / world + gather_bytes x (largest unit's parameters)

    the last term being the one unit whose weights are gathered while it runs (4 bytes fp32, 2 with bf16 mixed
    precision, which keeps fp32 master weights and states and gathers bf16 copies). Counting works on a model built
    on the meta device, so a ViT-g costs nothing to count."""
    trained = sum(p.numel() for p in method.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in method.parameters() if not p.requires_grad)
    persistent = ADAMW_BYTES_PER_TRAINED * trained + FROZEN_BYTES * frozen
    out = {"trained": trained, "frozen": frozen, "largest_unit": 0}
    if parallel == "ddp" or world == 1:
        return {**out, "per_rank": persistent}
    seen, largest = set(), 0
    for unit in shard_units(method):  # innermost first: a unit owns the parameters no inner unit took
        own = [p for p in unit.parameters() if id(p) not in seen]
        seen.update(id(p) for p in own)
        largest = max(largest, sum(p.numel() for p in own))
    return {**out, "largest_unit": largest, "per_rank": persistent / world + gather_bytes * largest}
