"""SwAV's swapped prediction (Caron et al. 2020): the code of one view is predicted from another view.

Scores of L2-normalised embeddings z against K L2-normalised prototypes c: s = z^T C, shape (B, K).

Codes: Sinkhorn-Knopp on Q = exp(s / eps)^T (K, B), without gradient: alternately normalise rows (each
prototype receives B/K of the batch) and columns (each sample is one unit of assignment). After `iters` rounds
every sample's code is a distribution over prototypes and the batch is split equally among them (eq. 3).

Loss: for codes q_t of view t and predictions p_s = softmax(s_s / T) of another view s,

    l(z_t, z_s) = - sum_k q_t^(k) log p_s^(k),

averaged over every (code view, other view) pair (eq. 1 with multi-crop: codes from the global views only).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..distributed import all_reduce_sum, world_size


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, epsilon: float = 0.05, iters: int = 3) -> torch.Tensor:
    """scores (B, K) -> codes (B, K): non-negative, each row sums to 1, each column to about B/K.

    As SwAV's `distributed_sinkhorn`: under DDP, B is the global batch and the sums are all-reduced."""
    q = torch.exp((scores.float() - scores.float().max()) / epsilon).T  # (K, B); the shift cancels out below
    k, b = q.shape[0], q.shape[1] * world_size()
    q /= all_reduce_sum(q.sum())
    for _ in range(iters):
        q /= all_reduce_sum(q.sum(dim=1, keepdim=True))  # rows: each prototype gets mass 1/K
        q /= k
        q /= q.sum(dim=0, keepdim=True)  # columns: each sample gets mass 1/B
        q /= b
    return (q * b).T  # (B, K): each sample's code sums to 1


def swapped_prediction_loss(scores: list[torch.Tensor], codes: list[torch.Tensor], temperature: float = 0.1
                            ) -> torch.Tensor:
    """scores: (B, K) per view, global views first; codes: (B, K) for the first len(codes) views.

    L = 1/len(codes) sum_t 1/(V - 1) sum_{s != t} mean_b [ -sum_k q_t log softmax(scores_s / T) ]."""
    total = 0.0
    for t, q in enumerate(codes):
        others = [s for v, s in enumerate(scores) if v != t]
        total = total + sum(-(q * F.log_softmax(s / temperature, dim=1)).sum(dim=1).mean() for s in others) / len(others)
    return total / len(codes)
