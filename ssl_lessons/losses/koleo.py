"""The KoLeo regulariser (Sablayrolles et al. 2019, *Spreading vectors for similarity search*; DINOv2 sec. 4,
dinov2's `KoLeoLoss`): the Kozachenko-Leonenko estimate of the differential entropy, up to constants, of a batch of
L2-normalised features. Maximising it spreads the features uniformly over the sphere:

    L_koleo = - 1/n * sum_i log(d_{n,i} + eps),      d_{n,i} = min_{j != i} || x_i - x_j ||,   x = z / ||z||.

A point whose nearest neighbour is close costs a lot (log of a small distance), so the loss pushes every point away
from its nearest neighbour. DINOv2 applies it, with weight 0.1, to the student's CLS tokens of each global crop
separately (a batch of n = B per crop), in fp32 whatever the autocast setting.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def nearest_neighbour_distances(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(n, D) unit vectors -> (n,) the distance of each to its nearest other row. For unit vectors the nearest
    neighbour is the one with the largest dot product; as dinov2, eps is added to the difference (PairwiseDistance)."""
    dots = x @ x.T
    dots.fill_diagonal_(-2.0)                      # below any real cosine: a point is not its own neighbour
    nearest = dots.argmax(dim=1)
    return (x - x[nearest] + eps).norm(dim=1)


class KoLeoLoss(nn.Module):
    def forward(self, features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
        """features: (n, D), n >= 2 -> scalar."""
        if len(features) < 2:
            raise ValueError("KoLeo needs at least 2 samples: a nearest neighbour")
        with torch.autocast(features.device.type, enabled=False):
            x = F.normalize(features.float(), p=2, dim=-1, eps=eps)
            return -torch.log(nearest_neighbour_distances(x, eps) + eps).mean()

    def per_crop(self, cls: torch.Tensor, n_crops: int) -> torch.Tensor:
        """DINOv2's use: (n_crops * B, D) CLS tokens, crop-major -> the sum over crops of each crop's KoLeo."""
        return sum(self(c) for c in cls.chunk(n_crops))
