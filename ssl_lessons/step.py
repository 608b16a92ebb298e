"""One training step of any method, the same in the training loop (train.py), the benchmark (bench.py) and the
lessons:

    lr, wd = set_schedules(optimizer, method, cfg, progress)       # cosine lr with warm-up, weight decay, the
                                                                    # method's own (teacher temperature, ...)
    crops = method.make_views(images, generator)
    loss, logs = training_step(model, method, optimizer, crops, cfg, progress, device)

`model` is what runs the forward pass: the method itself, or its DDP / FSDP wrapper (parallel.wrap), whose backward
averages the gradients over the processes. progress = where the step stands in its schedules, in [0, 1).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .optim import apply_schedules, drop_frozen_gradients
from .parallel import gradient_sync
from .runtime import autocast
from .schedules import cosine_schedule
from .settings import peak_lr


class NonFiniteLoss(FloatingPointError):
    """The loss of a step was NaN or infinite; the step stopped before it reached the weights."""

    def __init__(self, value: float):
        super().__init__(f"loss is {value}")
        self.value = value


def set_schedules(optimizer: torch.optim.Optimizer, method: nn.Module, cfg, progress: float,
                  lr_scale: float = 1.0) -> tuple[float, float]:
    """Set this step's lr (cosine from peak_lr(cfg) x lr_scale to min_lr, after a linear warm-up over cfg.warmup) and
    weight decay (cosine from weight_decay to weight_decay_end) in every parameter group (optim.apply_schedules:
    each group's multiplier, 0 while frozen), and the method's own schedules (Method.before_step). With
    cfg.schedules == "constant" both stay at their start values after the warm-up (dinov3's `linear_warmup_cosine_
    decay` with peak == end). Returns (lr, wd)."""
    decay = progress if cfg.schedules == "cosine" else min(progress, cfg.warmup)  # constant: the cosines never start
    lr = cosine_schedule(decay, peak_lr(cfg) * lr_scale, cfg.min_lr, warmup=cfg.warmup)
    wd = cosine_schedule(0.0 if cfg.schedules == "constant" else progress, cfg.weight_decay, cfg.weight_decay_end)
    apply_schedules(optimizer, lr, wd, progress)
    method.before_step(progress)
    return lr, wd


def training_step(model: nn.Module, method: nn.Module, optimizer: torch.optim.Optimizer, crops, cfg,
                  progress: float, device: torch.device, world: int = 1,
                  diagnostics: bool = False) -> tuple[torch.Tensor, dict]:
    """Forward (under runtime.autocast) to the loss; a NaN or infinite loss raises NonFiniteLoss here, every step
    (as dinov2 checks), before it reaches the weights; backward; the gradients of groups frozen by dropping them
    are dropped; gradients clipped to cfg.clip_grad as the method says (Method.clip_gradients; 0 = none); the AdamW
    step; the method's update after it (Method.after_step: the teacher's EMA). Returns (loss, logs); logs are
    computed only when `diagnostics` (Method.forward).

    With cfg.accum_steps = n > 1 the views of this rank's batch go through in n equal micro-batches (Crops.part),
    each loss divided by n, the gradients summed, and the processes synchronise the gradients once, on the last one
    (parallel.gradient_sync): a loss that is a mean over images gives the gradient of the whole batch. What couples
    the images of a batch sees a micro-batch instead (Method.ACCUMULATION says what; methods built on it refuse).
    The loss returned is the micro-batches' mean; the logs are the last micro-batch's."""
    n = cfg.accum_steps
    optimizer.zero_grad(set_to_none=True)
    total, logs = 0.0, {}
    for i in range(n):
        last = i == n - 1
        with gradient_sync(model, sync=last):
            with autocast(cfg, device, world):
                loss, logs = model(crops if n == 1 else crops.part(i, n), diagnostics=diagnostics and last)
            if not torch.isfinite(loss):
                raise NonFiniteLoss(loss.item())
            (loss / n if n > 1 else loss).backward()
        total = total + loss.detach() / n
    drop_frozen_gradients(optimizer, progress)
    if cfg.clip_grad:
        method.clip_gradients(cfg.clip_grad)
    optimizer.step()
    method.after_step(progress)
    return total, logs
