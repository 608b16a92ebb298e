"""iBOT's masked-patch loss (Zhou et al. 2022, eq. 2; dinov2's `iBOTPatchLoss.forward_masked`).

The student sees a global crop u with some patches replaced by a mask token (û); the teacher sees u whole and acts
as an **online tokenizer**: its head turns each patch token into a distribution over K "visual words", centred and
sharpened exactly as DINO's CLS targets are (losses/dino.py), with a center c_p of its own. At every masked
position i the student must recover the teacher's word:

    L_MIM = - 1/B * sum_b 1/|M_b| * sum_{i in M_b}  P_t(u_b)_i · log softmax(g_s(û_b)_i / tau_s),

    P_t(u)_i = softmax((g_t(u)_i - c_p) / tau_t),        c_p <- m c_p + (1 - m) * mean of g_t over masked patches.

Each image's masked patches are averaged first (weight 1/|M_b|), so an image with many masked patches weighs no
more than one with few; the sum is divided by all B global crops, so a crop without a mask contributes 0 (as the
official iBOT and dinov2 code do). Unmasked positions are not in the loss at all. Only masked tokens need the head:
student and teacher heads run on the M = sum_b |M_b| masked tokens (dinov2's memory saving).

The center is the mean over every masked teacher token of the global batch (sums and counts all-reduced over DDP
ranks; dinov2 averages the per-rank means instead, which is the same when every rank masks as many patches).
DINOv2 centres with Sinkhorn-Knopp instead (`centering="sinkhorn_knopp"`): the codes of all masked teacher tokens of
the global batch, whose count differs between ranks, so it is all-reduced and passed in (dinov2's
`n_masked_patches_tensor`).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..distributed import all_reduce_sum
from .dino import CENTERINGS, sinkhorn_targets, target_stats, teacher_targets


def masked_token_weights(masks: torch.Tensor) -> torch.Tensor:
    """(B, N) bool -> (M,) the weight 1/|M_b| of every masked token, in masks[masks] order."""
    per_image = 1.0 / masks.sum(dim=1, keepdim=True).clamp(min=1).float()   # (B, 1)
    return per_image.expand_as(masks)[masks]


def masked_patch_cross_entropy(student_logits: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor,
                               student_temp: float = 0.1) -> torch.Tensor:
    """student_logits, targets: (M, K) for the M masked tokens in masks[masks] order; masks: (B, N) bool.
    The per-image mean of the cross-entropy over its masked tokens, summed over images, divided by B."""
    ce = -(targets * F.log_softmax(student_logits / student_temp, dim=-1)).sum(dim=-1)   # (M,)
    return (ce * masked_token_weights(masks)).sum() / masks.shape[0]


class iBOTPatchLoss(nn.Module):
    """The patch loss with its state: the patch center c_p, a (1, K) buffer (saved in checkpoints)."""

    def __init__(self, patch_out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9,
                 centering: str = "ema", sinkhorn_iterations: int = 3):
        super().__init__()
        if centering not in CENTERINGS:
            raise ValueError(f"centering is one of {CENTERINGS}, got {centering!r}")
        self.student_temp, self.center_momentum, self.centering = student_temp, center_momentum, centering
        self.sinkhorn_iterations = sinkhorn_iterations
        self.register_buffer("center", torch.zeros(1, patch_out_dim))

    def targets(self, teacher_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """(M, K) masked teacher logits -> (M, K) targets, by this loss's centering."""
        if self.centering == "sinkhorn_knopp":
            # every rank's masked tokens, as a tensor (dinov2's n_masked_patches_tensor): no host sync
            n_masked = all_reduce_sum(teacher_logits.new_tensor(float(len(teacher_logits))))
            return sinkhorn_targets(teacher_logits, teacher_temp, self.sinkhorn_iterations, n_samples=n_masked)
        return teacher_targets(teacher_logits.float(), self.center, teacher_temp)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, masks: torch.Tensor,
                teacher_temp: float, with_stats: bool = False) -> tuple[torch.Tensor, dict]:
        """student_logits, teacher_logits: (M, K) at the masked positions of masks (B, N). Returns the loss and, if
        with_stats, the patch targets' {"teacher_entropy", "kl", "prototypes_used"} (losses/dino.py's target_stats,
        weighted as the loss weighs each token). Updates the center after computing the targets (DINO's eq. 4)."""
        targets = self.targets(teacher_logits, teacher_temp)
        loss = masked_patch_cross_entropy(student_logits.float(), targets, masks, self.student_temp)
        stats = target_stats(targets, loss, masked_token_weights(masks) / masks.shape[0]) if with_stats else {}
        self.update_center(teacher_logits)
        return loss, stats

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        """c_p <- m c_p + (1 - m) * the mean of the masked teacher logits over the global batch (EMA centering)."""
        if self.centering != "ema":
            return
        total = all_reduce_sum(torch.cat([teacher_logits.detach().float().sum(dim=0),
                                          teacher_logits.new_tensor([len(teacher_logits)], dtype=torch.float32)]))
        batch_mean = total[None, :-1] / total[-1].clamp(min=1)
        updated = self.center * self.center_momentum + batch_mean * (1 - self.center_momentum)
        self.center.copy_(torch.where(total[-1] > 0, updated, self.center))  # no masked token anywhere: unchanged
