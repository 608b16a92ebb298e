"""Patch-to-patch similarity: the picture DINOv3 (Siméoni et al. 2025, sec. 4.1) uses to show dense features losing
their locality over a long training, and a number for it.

    features = pca.patch_features(backbone, images)        # (n, h, w, D)
    maps = similarity_maps(features, query=(row, col))      # (n, h, w): cosine of the query patch to every patch
    locality(features)                                      # mean cosine to the 4 neighbours - mean cosine to all

A backbone whose patch tokens describe what is *there* gives a map that lights up the query's own object and
fades with distance; one whose patch tokens have drifted towards an image-level code lights up everywhere alike.
`locality` summarises that per image: how much more similar a patch is to its adjacent patches than to the average
patch of its image (0: no spatial structure; it is our yardstick, not a number of the paper).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def similarity_maps(features: torch.Tensor, query: tuple[int, int]) -> torch.Tensor:
    """(n, h, w, D) patch features -> (n, h, w): the cosine similarity of the patch at `query` (row, column) of each
    image to every patch of the same image (1 at the query itself)."""
    unit = F.normalize(features.float(), dim=-1)
    row, col = query
    return torch.einsum("nhwd,nd->nhw", unit, unit[:, row, col])


def locality(features: torch.Tensor) -> torch.Tensor:
    """(n, h, w, D) patch features -> (n,): per image, the mean cosine similarity of a patch to its horizontal and
    vertical neighbours minus the mean cosine similarity over all pairs of distinct patches."""
    unit = F.normalize(features.float(), dim=-1)
    n, h, w, _ = unit.shape
    right = (unit[:, :, 1:] * unit[:, :, :-1]).sum(-1).flatten(1)                 # (n, h (w - 1))
    down = (unit[:, 1:] * unit[:, :-1]).sum(-1).flatten(1)                        # (n, (h - 1) w)
    adjacent = torch.cat([right, down], dim=1).mean(dim=1)
    flat = unit.flatten(1, 2)                                                      # (n, N, D)
    total = flat.sum(dim=1)                                                        # (n, D)
    pairs = ((total * total).sum(-1) - (flat * flat).sum((1, 2))) / (h * w * (h * w - 1))  # off-diagonal mean
    return adjacent - pairs
