"""Efficient stochastic depth (dinov2 `layers/block.py`, `drop_add_residual_stochastic_depth`).

Stochastic depth (Huang et al. 2016) drops each sample's residual branch f with probability p in training:

    x_i <- x_i + m_i / (1 - p) * f(x)_i,        m_i ~ Bernoulli(1 - p)

timm's DropPath multiplies f(x) by the mask m: f is computed for every sample, the dropped ones included. DINOv2
computes f only on a random subset of S = max(floor(B (1 - p)), 1) samples and adds it, scaled by B / S, to them:

    x_i <- x_i + (B / S) f(x)_i   for i in the subset,        x_i otherwise.

Each sample is in the subset with probability S / B, so E[x_i'] = x_i + f(x)_i, as with timm's mask; at p = 0.4
(dinov2's ViT-g) 40 % of every branch's compute is saved. In eval mode nothing is dropped and both are the plain
residual block. DINOv2 uses the subset form when p > 0.1 and timm's mask below.
"""
from __future__ import annotations

from typing import Callable

import torch
from timm.models.vision_transformer import Block

SUBSET_ABOVE = 0.1  # dinov2: `if self.training and self.sample_drop_ratio > 0.1`


def drop_add_residual(x: torch.Tensor, branch: Callable[[torch.Tensor], torch.Tensor], drop_ratio: float,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """x (B, ...) + branch on a random subset of the samples, scaled by B / S; x itself elsewhere."""
    b = x.shape[0]
    keep = max(int(b * (1 - drop_ratio)), 1)
    chosen = torch.randperm(b, device=x.device, generator=generator)[:keep]
    residual = branch(x[chosen])
    return torch.index_add(x.flatten(1), 0, chosen, residual.flatten(1).to(x.dtype), alpha=b / keep).view_as(x)


class SubsetDropPathBlock(Block):
    """timm's transformer Block whose stochastic depth computes the kept samples only (above SUBSET_ABOVE)."""

    @property
    def sample_drop_ratio(self) -> float:
        return float(getattr(self.drop_path1, "drop_prob", 0.0))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if not (self.training and self.sample_drop_ratio > SUBSET_ABOVE):
            return super().forward(x, attn_mask=attn_mask, is_causal=is_causal)
        x = drop_add_residual(x, lambda t: self.ls1(self.attn(self.norm1(t), attn_mask=attn_mask, is_causal=is_causal)),
                              self.sample_drop_ratio)
        return drop_add_residual(x, lambda t: self.ls2(self.mlp(self.norm2(t))), self.sample_drop_ratio)
