"""Parameter groups and gradient clipping: what the one loop (train.py) applies, and what a method may shape.

A method hands the loop its parameter groups (`Method.param_groups()`). Each group is a plain dict for
`torch.optim.AdamW` with three keys the loop reads every step:

    apply_wd        weight decay follows the schedule (weight matrices) or stays 0 (biases, norms, tokens)
    lr_multiplier   the group's lr is the scheduled lr times this (DINOv2's layer-wise decay, patch-embed lr)
    frozen_until    until this fraction of training the group gets no update, in one of two ways (`frozen_by`):
                    "drop_gradients" before the step, so AdamW skips it and its moments stand still (DINO's
                    `cancel_gradients_last_layer`, SwAV's frozen prototypes), or "zero_lr": its lr is 0 and AdamW's
                    moments and step count move on (dinov2's `last_layer_lr_schedule`)
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn as nn

from .parallel import full_norm, local


def is_no_decay(name: str, p: torch.Tensor) -> bool:
    """Biases, norm scales and 1-d tokens get no weight decay (DINO's get_params_groups)."""
    return name.endswith(".bias") or p.ndim <= 1


FROZEN_BY = ("drop_gradients", "zero_lr")


def parameter_groups(named_parameters: Iterable[tuple[str, torch.Tensor]],
                     lr_multiplier: Callable[[str], float] = lambda name: 1.0,
                     frozen_until: Callable[[str], float] = lambda name: 0.0,
                     frozen_by: str = "drop_gradients") -> list[dict]:
    """Trainable parameters grouped by (weight decay or not, lr multiplier, frozen until), in first-seen order;
    frozen_by: how a group is held while frozen (see above)."""
    if frozen_by not in FROZEN_BY:
        raise ValueError(f"frozen_by is one of {FROZEN_BY}, got {frozen_by!r}")
    groups: dict[tuple, dict] = {}
    for name, p in named_parameters:
        if not p.requires_grad:
            continue
        decay = not is_no_decay(name, p)
        key = (decay, float(lr_multiplier(name)), float(frozen_until(name)))
        if key not in groups:
            groups[key] = {"params": [], "apply_wd": decay, "lr_multiplier": key[1], "frozen_until": key[2],
                           "frozen_by": frozen_by}
            if not decay:
                groups[key]["weight_decay"] = 0.0
        groups[key]["params"].append(p)
    return list(groups.values())


def heads_last_layer_frozen_until(name: str, fraction: float) -> float:
    """DINO's rule for its heads (`cancel_gradients_last_layer`), for `head` and `patch_head`: their last layers get
    no update for the first `fraction` of training."""
    return fraction if name.startswith(("head.last_layer.", "patch_head.last_layer.")) else 0.0


def vit_layer_decay(name: str, rate: float, num_blocks: int, patch_embed_multiplier: float = 1.0,
                    prefix: str = "backbone.") -> float:
    """DINOv2's lr multiplier of a parameter (`get_vit_lr_decay_rate`, `get_params_groups_with_decay`):

        multiplier = rate ** (num_blocks + 1 - layer),

    layer 0 for the embeddings (patch_embed, pos_embed, cls_token, mask_token and the register tokens, dinov2's
    `register_tokens`, timm's `reg_token`), i + 1 for block i, num_blocks + 1 for everything else — the backbone's
    final norm and the heads, which keep the full lr. The patch embedding's multiplier is further scaled by
    `patch_embed_multiplier` (dinov2: 0.2). Parameters outside `prefix` (the heads) get 1."""
    layer = num_blocks + 1
    if name.startswith(prefix):
        if any(key in name for key in (".pos_embed", ".patch_embed", "mask_token", ".cls_token", ".reg_token",
                                       ".register_tokens")):
            layer = 0
        elif ".blocks." in name:
            layer = int(name.split(".blocks.")[1].split(".")[0]) + 1
    multiplier = rate ** (num_blocks + 1 - layer)
    if name.startswith(prefix) and ".patch_embed" in name:
        multiplier *= patch_embed_multiplier
    return multiplier


def apply_schedules(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float, progress: float) -> None:
    """Set every group's lr (lr x its multiplier, 0 while frozen) and weight decay for this step."""
    for group in optimizer.param_groups:
        group["lr"] = 0.0 if progress < group["frozen_until"] else lr * group["lr_multiplier"]
        if group["apply_wd"]:
            group["weight_decay"] = weight_decay


def drop_frozen_gradients(optimizer: torch.optim.Optimizer, progress: float) -> None:
    """Groups still frozen at `progress` by "drop_gradients" lose their gradients, so AdamW leaves them (and their
    moments) alone; groups frozen by "zero_lr" keep theirs (apply_schedules has set their lr to 0)."""
    for group in optimizer.param_groups:
        if progress < group["frozen_until"] and group.get("frozen_by", "drop_gradients") == "drop_gradients":
            for p in group["params"]:
                p.grad = None


def clip_gradients(module: nn.Module, max_norm: float) -> None:
    """Clip each parameter's gradient to norm <= max_norm on its own (DINO's utils.clip_gradients). Under FSDP2 each
    rank holds a shard of the gradient: the norm is the whole tensor's (parallel.full_norm), the scaling local."""
    for p in module.parameters():
        if p.grad is not None:
            scale = torch.clamp(max_norm / (full_norm(p.grad) + 1e-6), max=1.0)
            local(p.grad).mul_(scale)


def clip_total_norm(parameters: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale the gradients of `parameters` together so that their total norm sqrt(sum_p |g_p|^2) is <= max_norm
    (torch's clip_grad_norm_, as dinov2 clips each student part); under FSDP2 the norms are the whole tensors'.
    Returns the total norm before clipping."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    total = torch.stack([full_norm(g) for g in grads]).norm()
    scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        local(g).mul_(scale)
    return total
