"""Sinkhorn-Knopp: balanced soft assignments of samples to prototypes, the one implementation SwAV, iBOT and
DINOv2 share (Caron et al. 2020, SwAV sec. 3.1 and `distributed_sinkhorn`; dinov2's `sinkhorn_knopp_teacher`).

Given scores s (B, K) of B samples against K prototypes, find the codes Q (B, K) closest to exp(s / eps) whose
columns each hold B/K samples and whose rows each sum to 1 (an equipartition, eq. 3): start from
Q = exp(s / eps) and alternately normalise the prototype sums and the sample sums, `iters` times.

Under DDP the B samples are the *global* batch: the sums over samples are all-reduced over ranks, so every rank's
rows come out exactly as one process computing on the concatenated batch. The number of samples is passed in
(`n_samples`), because it need not be the same on every rank (iBOT's masked patches); by default it is the local
count times the number of ranks. The scores are shifted by their *global* maximum before exp for range safety;
a common shift cancels in the first normalisation, where a per-rank shift would weight the ranks differently.
"""
from __future__ import annotations

import torch

from .distributed import all_reduce_max, all_reduce_sum, world_size


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, epsilon: float = 0.05, iters: int = 3,
                   n_samples: int | torch.Tensor | None = None) -> torch.Tensor:
    """scores (B, K) -> codes (B, K): non-negative, each row sums to 1, each column to about n_samples/K over all
    ranks. n_samples: the number of rows summed over every rank (default B * world size; a 0-d tensor keeps it
    on the device)."""
    scores = scores.float()
    shift = all_reduce_max(scores.max().clone() if scores.numel() else scores.new_tensor(float("-inf")))
    q = torch.exp((scores - shift) / epsilon).T                      # (K, B)
    k = q.shape[0]
    n = q.shape[1] * world_size() if n_samples is None else n_samples
    q /= all_reduce_sum(q.sum())
    for _ in range(iters):
        q /= all_reduce_sum(q.sum(dim=1, keepdim=True))               # prototypes: each gets mass 1/K ...
        q /= k
        q /= q.sum(dim=0, keepdim=True)                               # samples: each gets mass 1/n
        q /= n
    return (q * n).T                                                  # (B, K): each sample's code sums to 1
