"""The contract between a self-supervised method and the one training loop (train.py).

A method is an nn.Module that owns its networks, its views and its loss. The loop calls, every step:

    method.before_step(progress)                          # e.g. set this step's teacher temperature
    views = method.make_views(images_uint8, generator)    # list of (B, 3, h, w) float tensors
    loss, logs = model(views)                             # model = method, or DDP(method)
    loss.backward(); method.after_backward(progress)      # e.g. drop the gradients of a frozen layer
    optimizer.step(); method.after_step(progress)         # e.g. update a momentum teacher

and evaluates `method.eval_backbone` (images -> features) with k-NN. Nothing else about the method is known
to the loop, so a new method is one new module here and one line in methods/__init__.py.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class Method(nn.Module):
    backbone: nn.Module

    def make_views(self, images: torch.Tensor, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        raise NotImplementedError

    def forward(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def before_step(self, progress: float) -> None:
        """Called before the views of a step are made; progress = step / total_steps in [0, 1)."""

    def after_backward(self, progress: float) -> None:
        """Called between backward() and the optimizer step; progress = step / total_steps."""

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        """Called after every optimizer step."""

    @property
    def eval_backbone(self) -> nn.Module:
        """The network whose features are evaluated (the student's backbone unless a method says otherwise)."""
        return self.backbone
