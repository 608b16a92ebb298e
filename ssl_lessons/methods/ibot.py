"""iBOT (Zhou et al. 2022): DINO plus masked image modelling with the teacher as an online tokenizer.

Everything of DINO stays (methods/dino.py: multi-crop, EMA teacher, centred and sharpened CLS targets, the same
schedules). What is new:

- the student's global crops are **masked** block-wise (masking.py): a fraction of them (0.5) has 10-50 % of its
  patches replaced by the backbone's learned mask token before the position embeddings (backbones.forward_tokens);
  the teacher always sees the crops whole;
- a **patch loss** (losses/ibot.py): at every masked position the student predicts the teacher's centred, sharpened
  distribution of that patch token;
- total loss = DINO's CLS loss (the student's CLS of the masked global crops and of the local crops against the
  teacher's CLS of the other global crops) + patch_loss_weight * patch loss (λ = 1).

Heads: iBOT shares one head between CLS and patch tokens (its ablation found sharing best); `separate_heads=True`
gives the patch tokens a head of their own, with K = patch_out_dim, as DINOv2 does. Both heads run only on what a
loss reads: CLS tokens and masked patch tokens (dinov2's `ssl_meta_arch.py`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import require
from ..heads import DINOHead
from ..losses.ibot import iBOTPatchLoss
from ..masking import BatchMasker
from .dino import DINO, DINORecipe


@dataclass
class iBOTRecipe(DINORecipe):
    mask_probability: float = 0.5   # fraction of the global crops that are masked (dinov2: mask_sample_probability)
    mask_ratio_min: float = 0.1     # the masked crops' ratios are spread over (mask_ratio_min, mask_ratio_max)
    mask_ratio_max: float = 0.5
    patch_loss_weight: float = 1.0  # λ: loss = CLS loss + λ * patch loss
    separate_heads: bool = False    # False: iBOT's one shared head; True: a patch head of its own (DINOv2)
    patch_out_dim: int = 0          # K of the separate patch head (0 = out_dim); ignored with the shared head

    def validate(self, cfg) -> None:
        super().validate(cfg)
        require(cfg.backbone == "vit", f"iBOT masks patches: it needs backbone=vit, not {cfg.backbone}")
        require(0 < self.mask_probability <= 1, f"mask_probability must be in (0, 1], got {self.mask_probability}")
        require(0 < self.mask_ratio_min <= self.mask_ratio_max < 1,
                f"need 0 < mask_ratio_min ({self.mask_ratio_min}) <= mask_ratio_max ({self.mask_ratio_max}) < 1")
        require(self.patch_loss_weight >= 0, f"patch_loss_weight must be >= 0, got {self.patch_loss_weight}")
        require(self.patch_out_dim >= 0, f"patch_out_dim must be >= 0, got {self.patch_out_dim}")


class iBOT(DINO):
    Recipe = iBOTRecipe
    uses_patch_masks = True
    # the masked-token heads cost about a third more per image than DINO: fewer epochs fit the laptop budget
    PRESETS = {"cifar10-laptop": dict(DINO.PRESETS["cifar10-laptop"], epochs=1.2),
               "smoke": DINO.PRESETS["smoke"]}

    def __init__(self, backbone, recipe: iBOTRecipe = iBOTRecipe(), image_size: int = 32,
                 teacher: nn.ModuleDict | None = None):
        super().__init__(backbone, recipe, image_size, teacher)
        patch_out_dim = (recipe.patch_out_dim or recipe.out_dim) if recipe.separate_heads else recipe.out_dim
        self.patch_loss = iBOTPatchLoss(patch_out_dim, recipe.student_temp, recipe.center_momentum, recipe.centering,
                                        recipe.sinkhorn_iterations)
        self.set_global_size(image_size)

    def build_heads(self) -> None:
        """DINO's head, and with `separate_heads` a patch head of its own (K = patch_out_dim)."""
        super().build_heads()
        r = self.recipe
        if r.separate_heads:
            self.patch_head = DINOHead(self.backbone.embed_dim, r.patch_out_dim or r.out_dim, r.hidden_dim,
                                       r.bottleneck_dim, r.norm_last_layer)

    def set_global_size(self, size: int) -> None:
        """Global crops of `size` px, and masks for their grid of patches."""
        super().set_global_size(size)
        self.masker = BatchMasker(size, self.backbone.patch_size, self.recipe.mask_probability,
                                  self.recipe.mask_ratio_min, self.recipe.mask_ratio_max)

    def complete_views(self, crops, generator=None):
        crops.masks = self.masker(len(crops.global_crops), generator).to(crops.global_crops.device)  # (G*B, N)
        return crops

    def forward(self, crops, diagnostics=False):
        terms, stats = self.loss_terms(crops, diagnostics)
        loss = sum(terms.values())
        if not diagnostics:
            return loss, {}
        return loss, {**{name: term.detach() for name, term in terms.items()}, **stats}

    def student_tokens(self, crops) -> list[dict]:
        """The student backbone's tokens: [masked global crops, local crops] (one pass per crop size)."""
        return self.backbone.forward_tokens(crops.by_size(), [crops.masks] + [None] * (len(crops.by_size()) - 1))

    @torch.no_grad()
    def teacher_output(self, crops) -> dict:
        """The teacher's head outputs for the global crops, seen whole: {"cls": (G*B, K), "patch": (M, K_p) at the
        M masked positions} (dinov2's `get_teacher_output`)."""
        tokens = self.teacher.backbone.forward_tokens(crops.global_crops)
        cls, patch = self.heads(self.teacher, tokens["pooled"], tokens["patch"][crops.masks])
        return {"cls": cls, "patch": patch}

    def loss_terms(self, crops, diagnostics=False, tokens=None) -> tuple[dict, dict]:
        """{"cls_loss": ..., "patch_loss": λ * ...} (their sum is the loss), and the diagnostics if asked for: each
        loss's target entropy, KL and prototypes used (the patch loss's prefixed "patch_").
        `tokens`: student_tokens(crops), when the caller needs them too (DINOv2 adds KoLeo on their CLS)."""
        tokens = self.student_tokens(crops) if tokens is None else tokens
        cls = torch.cat([t["pooled"] for t in tokens])                              # (V*B, D)
        student_cls_out, student_patch_out = self.heads(self.student, cls, tokens[0]["patch"][crops.masks])
        teacher = self.teacher_output(crops)
        cls_loss, stats = self.loss(list(student_cls_out.chunk(crops.n_views)), list(teacher["cls"].chunk(crops.n_global)),
                                    self.teacher_temp, with_stats=diagnostics)
        patch_loss, patch_stats = self.patch_loss(student_patch_out, teacher["patch"], crops.masks, self.teacher_temp,
                                                  with_stats=diagnostics)
        terms = {"cls_loss": cls_loss, "patch_loss": self.recipe.patch_loss_weight * patch_loss}
        if diagnostics:
            stats = {**stats, **{f"patch_{k}": v for k, v in patch_stats.items()},
                     "masked_fraction": crops.masks.float().mean(), "teacher_temp": self.teacher_temp}
        return terms, stats

    @staticmethod
    def heads(parts: nn.ModuleDict, cls: torch.Tensor, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(CLS logits, patch logits) of the student's or the teacher's heads: one call of the shared head on both,
        or each through its own head (`patch_head`)."""
        if "patch_head" not in parts:
            out = parts.head(torch.cat([cls, patches]))
            return out[:len(cls)], out[len(cls):]
        return parts.head(cls), parts.patch_head(patches)
