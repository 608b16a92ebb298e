"""DINO's self-distillation loss (Caron et al. 2021, eq. 2-4; facebookresearch/dino `DINOLoss`).

The teacher's output for a global view t becomes a target distribution after **centering** and **sharpening**,

    P_t = softmax((g_t - c) / tau_t),            tau_t = 0.04 -> 0.07 (warm-up), sharper than the student,

and the student's output for every *other* view s (global or local) must match it:

    L = 1 / #pairs * sum_{t in globals} sum_{s != t} mean_batch [ - sum_k P_t^(k) log softmax(g_s / tau_s)^(k) ],

tau_s = 0.1. The center c is an EMA of the teacher's raw outputs, updated *after* the loss (eq. 4),

    c <- m c + (1 - m) * mean_batch g_t,         m = 0.9, the batch mean all-reduced over DDP ranks.

Centering alone pushes P_t towards uniform, sharpening alone towards one-hot; together they balance (sec. 5.3).
Since cross-entropy = entropy + KL, the loss splits into H(P_t) + KL(P_t || P_s): the two curves of Fig. 7.

DINOv2 (Oquab et al. 2024, sec. 4; dinov2's `sinkhorn_knopp_teacher`) replaces the EMA center by **Sinkhorn-Knopp**
centering: the targets of the whole global batch (both global crops, all ranks) are the balanced codes of SwAV,

    P_t = SK(exp(g_t / tau_t)),   3 iterations: every prototype gets the same total mass, every target sums to 1,

computed afresh for every batch, with no state (sinkhorn.py; `centering="sinkhorn_knopp"`).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..distributed import all_reduce_sum, world_size
from ..sinkhorn import sinkhorn_knopp

CENTERINGS = ("ema", "sinkhorn_knopp", "none")  # DINO's EMA center, DINOv2's Sinkhorn-Knopp, or nothing (lesson 4)


def teacher_targets(teacher_out: torch.Tensor, center: torch.Tensor, teacher_temp: float) -> torch.Tensor:
    """(N, K) teacher logits -> (N, K) centred, sharpened probabilities (no gradient)."""
    return F.softmax((teacher_out.detach() - center) / teacher_temp, dim=-1)


def entropy(p: torch.Tensor) -> torch.Tensor:
    """(..., K) probabilities -> (...) entropies in nats."""
    return -(p * torch.log(p.clamp_min(1e-30))).sum(-1)


@torch.no_grad()
def target_stats(targets: torch.Tensor, loss: torch.Tensor, weights: torch.Tensor | None = None) -> dict:
    """What a cross-entropy to teacher targets is made of (Caron et al. 2021, Fig. 7), for the CLS and patch losses:

        CE = H(P_t) + KL(P_t || P_s)          (cross-entropy = entropy + KL, per target row, averaged)
        prototypes_used = exp H(mean_n P_t)   the perplexity of the batch-mean target: K when every prototype
                                              gets equal mass, 1 when all targets name the same prototype.

    targets: (N, K); loss = sum_n weights_n CE_n, weights (N,) default 1/N. The averages are weighted means: with the
    patch loss's weights, which sum to the fraction of crops masked, CE = loss / that fraction. Per rank under DDP."""
    if weights is None:  # the plain mean
        return {"teacher_entropy": entropy(targets).mean(), "kl": loss.detach() - entropy(targets).mean(),
                "prototypes_used": entropy(targets.mean(0)).exp()}
    total = weights.sum().clamp_min(1e-30)
    mean_entropy = (entropy(targets) * weights).sum() / total
    mean_target = (targets * weights[:, None]).sum(0) / total
    return {"teacher_entropy": mean_entropy, "kl": loss.detach() / total - mean_entropy,
            "prototypes_used": entropy(mean_target).exp()}


def cross_view_cross_entropy(student_out: list[torch.Tensor], targets: list[torch.Tensor],
                             student_temp: float = 0.1) -> torch.Tensor:
    """student_out: V x (B, K) logits, the len(targets) global views first; targets: G x (B, K) probabilities.
    Mean over every (target view t, student view s != t) pair of the batch-mean cross-entropy."""
    log_probs = [F.log_softmax(s / student_temp, dim=-1) for s in student_out]
    total, pairs = 0.0, 0
    for t, p in enumerate(targets):
        for s, log_q in enumerate(log_probs):
            if s == t:  # the same view: nothing to predict
                continue
            total = total + (-(p * log_q).sum(dim=-1)).mean()
            pairs += 1
    return total / pairs


def sinkhorn_targets(teacher_out: torch.Tensor, teacher_temp: float, iterations: int = 3,
                     n_samples: int | torch.Tensor | None = None) -> torch.Tensor:
    """(N, K) teacher logits -> (N, K) Sinkhorn-Knopp codes with epsilon = tau_t (dinov2's sinkhorn_knopp_teacher):
    rows sum to 1, columns to n_samples / K over the global batch (n_samples: all rows of every rank)."""
    return sinkhorn_knopp(teacher_out.detach().float(), epsilon=teacher_temp, iters=iterations, n_samples=n_samples)


class DINOLoss(nn.Module):
    """The loss with its state: the center c, a (1, K) buffer (saved in checkpoints; unused by Sinkhorn-Knopp).

    centering: "ema" (DINO), "sinkhorn_knopp" (DINOv2) or "none" (the collapse study)."""

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9,
                 centering: str = "ema", sinkhorn_iterations: int = 3):
        super().__init__()
        if centering not in CENTERINGS:
            raise ValueError(f"centering is one of {CENTERINGS}, got {centering!r}")
        self.student_temp, self.center_momentum, self.centering = student_temp, center_momentum, centering
        self.sinkhorn_iterations = sinkhorn_iterations
        self.register_buffer("center", torch.zeros(1, out_dim))

    def targets(self, teacher_out: list[torch.Tensor], teacher_temp: float) -> list[torch.Tensor]:
        """G x (B, K) teacher logits -> G x (B, K) target distributions, by this loss's centering."""
        if self.centering == "sinkhorn_knopp":  # one balanced assignment over every global crop of the batch
            return list(sinkhorn_targets(torch.cat(teacher_out), teacher_temp, self.sinkhorn_iterations)
                        .chunk(len(teacher_out)))
        return [teacher_targets(t, self.center, teacher_temp) for t in teacher_out]

    def forward(self, student_out: list[torch.Tensor], teacher_out: list[torch.Tensor], teacher_temp: float,
                with_stats: bool = True) -> tuple[torch.Tensor, dict]:
        """student_out: V x (B, K); teacher_out: G x (B, K) for the G global views. Returns the loss and, if
        with_stats, {"teacher_entropy": H(P_t), "kl": KL(P_t || P_s), "prototypes_used": the perplexity of the
        batch-mean target} as scalar tensors, the first two averaged like the loss (target_stats)."""
        student_out = [s.float() for s in student_out]
        teacher_out = [t.float() for t in teacher_out]
        targets = self.targets(teacher_out, teacher_temp)
        loss = cross_view_cross_entropy(student_out, targets, self.student_temp)
        # every target view meets the same number (V - 1) of student views: the pair mean of H(P_t) is the plain mean
        stats = target_stats(torch.cat(targets), loss) if with_stats else {}
        self.update_center(torch.cat(teacher_out))
        return loss, stats

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        """c <- m c + (1 - m) mean(teacher_out), the mean over the global batch of every rank."""
        if self.centering != "ema":
            return
        batch_sum = all_reduce_sum(teacher_out.detach().float().sum(dim=0, keepdim=True))
        batch_mean = batch_sum / (len(teacher_out) * world_size())
        self.center.mul_(self.center_momentum).add_(batch_mean, alpha=1 - self.center_momentum)
