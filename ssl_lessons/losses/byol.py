"""BYOL's regression loss (Grill et al. 2020, eq. 2): the normalised prediction of one view regresses the
normalised target projection of the other view,

    L(p, z) = || p/|p| - z/|z| ||^2 = 2 - 2 cos(p, z)        in [0, 4],

averaged over the batch and symmetrised by swapping the views: L_total = L(p1, z2) + L(p2, z1) (eq. 3; the
official code sums the two terms).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def byol_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """prediction, target: (B, D). Mean over the batch of 2 - 2 cos; gradients flow into prediction only."""
    return (2 - 2 * F.cosine_similarity(prediction.float(), target.detach().float(), dim=1)).mean()  # in fp32


def symmetric_byol_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Predictions p1, p2 of views 1, 2 (online); targets z1, z2 of views 1, 2 (teacher). (B, D) each."""
    return byol_loss(p1, z2) + byol_loss(p2, z1)
