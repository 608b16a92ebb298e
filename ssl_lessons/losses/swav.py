"""SwAV's swapped prediction (Caron et al. 2020): the code of one view is predicted from another view.

Scores of L2-normalised embeddings z against K L2-normalised prototypes c: s = z^T C, shape (B, K).

Codes: Sinkhorn-Knopp (sinkhorn.py) on exp(s / eps), without gradient: every sample's code is a distribution
over prototypes and the batch is split equally among them (eq. 3).

Loss: for codes q_t of view t and predictions p_s = softmax(s_s / T) of another view s,

    l(z_t, z_s) = - sum_k q_t^(k) log p_s^(k),

averaged over every (code view, other view) pair (eq. 1 with multi-crop: codes from the global views only).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def swapped_prediction_loss(scores: list[torch.Tensor], codes: list[torch.Tensor], temperature: float = 0.1
                            ) -> torch.Tensor:
    """scores: (B, K) per view, global views first; codes: (B, K) for the first len(codes) views.

    L = 1/len(codes) sum_t 1/(V - 1) sum_{s != t} mean_b [ -sum_k q_t log softmax(scores_s / T) ]."""
    total = 0.0
    for t, q in enumerate(codes):
        others = [s for v, s in enumerate(scores) if v != t]
        total = total + sum(-(q * F.log_softmax(s.float() / temperature, dim=1)).sum(dim=1).mean()
                            for s in others) / len(others)  # in fp32, whatever the compute precision
    return total / len(codes)
