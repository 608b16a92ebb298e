"""Projection heads put on top of a backbone during self-supervised training and dropped afterwards."""
from __future__ import annotations

import torch.nn as nn


class ProjectionMLP(nn.Module):
    """SimCLR's projection head g(h) = W2 ReLU(BN(W1 h)) (Chen et al. 2020, sec. 2.1; BN as in the official code).

    (B, in_dim) -> (B, out_dim). The loss is computed on g(h); h (the backbone feature) is what is evaluated:
    the paper finds h linearly more useful than g(h) because g learns to discard what the augmentations vary."""

    def __init__(self, in_dim: int, hidden_dim: int = 512, out_dim: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, x):
        return self.net(x)
