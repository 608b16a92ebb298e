"""Label-free collapse diagnostics, cheap enough to log every few steps of any method.

- `normalized_std(z)`: the standard deviation over the batch of the L2-normalised outputs, averaged over the
  d dimensions (Chen & He 2021, SimSiam sec. 4.1). Unit vectors spread in all directions give about 1/sqrt(d);
  a collapsed network, one output for every input, gives 0.
- `effective_rank(z)`: exp of the entropy of the normalised singular values of the centred embeddings
  (Roy & Vetterli 2007). It counts how many directions the embeddings really use: d at best, 1 when all points
  lie on a line (dimensional collapse), and it is ~1 (by convention here) for a single point.
- `linear_cka(x, y)`: how alike two sets of features of the same n inputs are, whatever their bases and scales
  (Kornblith et al. 2019, eq. 5): 1 for features that are a rotation and scaling of each other, near 0 for
  unrelated ones. Between a run's patch tokens now and at its initialisation it says how far training has moved
  them (train.py logs it with every k-NN evaluation).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def normalized_std(z: torch.Tensor) -> float:
    """z: (B, d) -> mean over dimensions of std over the batch of z / |z|."""
    return F.normalize(z.float(), dim=1).std(dim=0).mean().item()


@torch.no_grad()
def effective_rank(z: torch.Tensor, eps: float = 1e-12) -> float:
    """z: (B, d) -> exp(H(p)), p = singular values of (z - mean) / their sum."""
    scale = z.float().norm()
    z = z.float() - z.float().mean(dim=0, keepdim=True)
    s = torch.linalg.svdvals(z)
    if s.sum() <= 1e-5 * scale:  # all rows equal up to rounding: a single point
        return 1.0
    p = s / s.sum()
    entropy = -(p * torch.log(p + eps)).sum()
    return entropy.exp().item()


@torch.no_grad()
def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """x: (n, d1), y: (n, d2) features of the same n inputs -> linear CKA in [0, 1]:

        CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F),   X, Y centred over the n rows.

    Invariant to orthogonal transforms and isotropic scaling of either; float64 (sums of n * d products)."""
    x = x.double() - x.double().mean(0, keepdim=True)
    y = y.double() - y.double().mean(0, keepdim=True)
    cross = (y.T @ x).square().sum()
    return (cross / ((x.T @ x).norm() * (y.T @ y).norm()).clamp_min(1e-300)).item()
