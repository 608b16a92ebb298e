"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et al. 2020, eq. 1).

For a batch of N images seen twice, the 2N projections z are L2-normalised and every view k is an anchor whose
positive is the other view of its image, j(k); the other 2N - 2 views are its negatives:

    l(k) = -log  exp(sim(z_k, z_j(k)) / tau) / sum_{m != k} exp(sim(z_k, z_m) / tau),    sim(u, v) = u.v / |u||v|

    L = 1/(2N) sum_k l(k)        (each positive pair counted in both directions: l(i, j) and l(j, i))

This is a cross-entropy over the 2N - 1 other views of each anchor, with the positive as the target class.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """z1, z2: (N, D) projections of the two views, row i of each from image i. Returns the scalar loss L."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)    # (2N, D), fp32 whatever the compute precision
    logits = z @ z.T / temperature                         # (2N, 2N) cosine similarities / tau
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))  # an anchor is not its own negative
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)  # j(k)
    return F.cross_entropy(logits, positives)
