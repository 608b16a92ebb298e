"""The momentum teacher (BYOL's target network; DINO's, iBOT's and DINOv2's teacher).

A copy of the student's networks that never receives gradients and follows the student as an exponential
moving average (Grill et al. 2020, eq. 1; Caron et al. 2021, sec. 3.1):

    theta_teacher <- tau * theta_teacher + (1 - tau) * theta_student

with tau on a cosine schedule from a base value (0.996) up to 1 over training (BYOL sec. 3.2):

    tau(p) = 1 - (1 - tau_base) * (cos(pi * p) + 1) / 2,        p = step / total_steps in [0, 1].

Parameters follow by the EMA; buffers (BatchNorm running statistics) are copied from the student, as in the
official BYOL and DINO code, which average parameters only.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .schedules import cosine_schedule


def momentum_schedule(progress: float, base: float = 0.996, end: float = 1.0) -> float:
    """tau(p): `base` at p = 0, `end` (1) at p = 1, along a half cosine."""
    return cosine_schedule(progress, base, end)


def make_teacher(student: nn.Module) -> nn.Module:
    """A frozen deep copy of `student` (no gradients, kept in train mode like the student)."""
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """theta_t <- m * theta_t + (1 - m) * theta_s for every parameter; buffers are copied."""
    t_params, s_params = list(teacher.parameters()), list(student.parameters())
    if len(t_params) != len(s_params):
        raise ValueError("teacher and student have different parameters: build the teacher with make_teacher")
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, [p.detach() for p in s_params], alpha=1.0 - momentum)
    for t_buf, s_buf in zip(teacher.buffers(), student.buffers()):
        t_buf.copy_(s_buf)
