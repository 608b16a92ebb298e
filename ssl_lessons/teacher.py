"""The momentum teacher (BYOL's target network; DINO's, iBOT's and DINOv2's teacher).

A copy of the student's networks that never receives gradients and follows the student as an exponential
moving average (Grill et al. 2020, eq. 1; Caron et al. 2021, sec. 3.1):

    theta_teacher <- tau * theta_teacher + (1 - tau) * theta_student

with tau on a cosine schedule from a base value (0.996) up to 1 over training (BYOL sec. 3.2):

    tau(p) = 1 - (1 - tau_base) * (cos(pi * p) + 1) / 2,        p = step / total_steps in [0, 1].

Only parameters follow by the EMA, as in the official BYOL and DINO code; the teacher's buffers (BatchNorm running
statistics) are its own, kept up to date by its own forward passes.

The teacher runs in eval mode, so it has no dropout and no stochastic depth (dinov2's `SSLMetaArch.train` keeps
`self.teacher.eval()`), except its BatchNorm layers: they normalise with the statistics of the teacher's own batch,
as the official BYOL target network and DINO's ResNet teacher do (in eval mode their running averages, which
start at 0 and 1 and never moved, would be used instead).
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .parallel import local
from .schedules import cosine_schedule


def momentum_schedule(progress: float, base: float = 0.996, end: float = 1.0) -> float:
    """tau(p): `base` at p = 0, `end` (1) at p = 1, along a half cosine."""
    return cosine_schedule(progress, base, end)


def make_teacher(student: nn.Module) -> nn.Module:
    """A deep copy of `student` that follows it only by ema_update: frozen (see `freeze`)."""
    return freeze(copy.deepcopy(student))


def freeze(teacher: nn.Module) -> nn.Module:
    """`teacher` with no gradients, in the teacher's mode (see set_teacher_mode) whatever mode its owner is put in."""
    for p in teacher.parameters():
        p.requires_grad_(False)
    teacher.is_teacher = True  # Method.train keeps it in the teacher's mode
    return set_teacher_mode(teacher, training=True)


def set_teacher_mode(teacher: nn.Module, training: bool = True) -> nn.Module:
    """Eval mode (no dropout, no drop path), except BatchNorm, which follows `training` (batch statistics)."""
    teacher.eval()
    for m in teacher.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train(training)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """theta_t <- m * theta_t + (1 - m) * theta_s for every parameter; the teacher's buffers stay its own."""
    t_params, s_params = list(teacher.parameters()), list(student.parameters())
    if len(t_params) != len(s_params):
        raise ValueError("teacher and student have different parameters: build the teacher with make_teacher")
    # Under FSDP2 teacher and student are sharded alike (parallel.py): each rank updates its own shards.
    t_params, s_params = [local(p) for p in t_params], [local(p.detach()) for p in s_params]
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, s_params, alpha=1.0 - momentum)
