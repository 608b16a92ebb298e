"""Gram anchoring (Siméoni et al. 2025, DINOv3 sec. 4; facebookresearch/dinov3 `dinov3/loss/gram_loss.py`).

Long DINOv2-style training keeps improving the global (CLS) features while the patch features slowly lose their
locality: a patch grows similar to patches far from it. DINOv3 holds the *structure* of the patch features in place
without holding the features themselves: the student's patch-to-patch cosine similarities are pulled towards those
of an earlier, better network, the Gram teacher. For one image with P patch tokens of dimension D,

    X_s, X_g = the student's and the Gram teacher's patch tokens, each row L2-normalised      (P, D)
    L_gram   = || X_s X_s^T  -  X_g X_g^T ||_F^2 / P^2                                          (the mean squared error)

averaged over the images of the batch (`img_level=True`, dinov3's ViT-7B runs: one P x P matrix per crop), or
with the rows of a process's whole (micro-)batch as one (B P, D) matrix (`img_level=False`, dinov3's default
config). The tokens
are those after the backbone's last norm, before any head (dinov3's `x_norm_patchtokens`); the loss is computed in
float32. Only the similarities are matched, so the student may rotate or rescale its features freely.

Options, as dinov3's: `remove_neg` sets the negative similarities of both matrices to 0 before the error (only
"how similar", never "how dissimilar", is anchored); `remove_only_teacher_neg` does so for the teacher's matrix only
(dinov3 also masks the student's entries where both are negative, but it tests the teacher's matrix after clamping
it, so that mask is always empty: the teacher's negatives are clamped and nothing else, as here).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def gram_matrix(features: torch.Tensor, normalized: bool = True) -> torch.Tensor:
    """(..., P, D) -> (..., P, P): the cosine similarity of every pair of rows (dot products if not normalized)."""
    if normalized:
        features = F.normalize(features, dim=-1)
    return features @ features.transpose(-1, -2)


class GramLoss(nn.Module):
    def __init__(self, normalized: bool = True, remove_neg: bool = False, remove_only_teacher_neg: bool = False):
        super().__init__()
        if remove_neg and remove_only_teacher_neg:
            raise ValueError("remove_neg and remove_only_teacher_neg exclude each other: choose one")
        self.normalized, self.remove_neg, self.remove_only_teacher_neg = normalized, remove_neg, remove_only_teacher_neg

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, img_level: bool = True) -> torch.Tensor:
        """student, teacher: (B, P, D) patch tokens of the same crops (the teacher's on the student's grid) -> scalar.
        Gradients flow to `student` only."""
        if student.shape != teacher.shape or student.dim() != 3:
            raise ValueError(f"need student and teacher patch tokens of one shape (B, P, D), got {tuple(student.shape)} "
                             f"and {tuple(teacher.shape)}")
        with torch.autocast(student.device.type, enabled=False):
            student, teacher = student.float(), teacher.detach().float()
            if not img_level:
                student, teacher = student.flatten(0, 1), teacher.flatten(0, 1)
            target = gram_matrix(teacher, self.normalized)
            similarity = gram_matrix(student, self.normalized)
            if self.remove_neg or self.remove_only_teacher_neg:
                target = target.clamp(min=0.0)
            if self.remove_neg:
                similarity = similarity.clamp(min=0.0)
            return F.mse_loss(similarity, target)
