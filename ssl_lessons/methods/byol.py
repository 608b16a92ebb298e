"""BYOL (Grill et al. 2020): no negatives. An online network (backbone -> projector -> predictor) predicts the
projection that a momentum target network (EMA of backbone -> projector, teacher.py) gives for another view.

What keeps it from collapsing to a constant is not in the loss (a constant output has loss 0) but in the
asymmetry: the predictor, and a target that moves slowly and receives no gradient. Lesson 2 measures that.

As the official code: each view goes through the networks on its own (BatchNorm statistics per view), the target
keeps its own BatchNorm state, and the two views differ (Table 6): solarization only in the second, and BYOL's
weaker colour jitter (saturation 0.2, hue 0.1). Blur (p = 1.0 and 0.1) is left out at 32 px (augment.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..augment import BYOL_JITTER, ViewAugment
from ..errors import require
from ..crops import MultiCrop
from ..diagnostics import effective_rank, normalized_std
from ..heads import ProjectionMLP
from ..losses.byol import symmetric_byol_loss
from ..teacher import ema_update, make_teacher, momentum_schedule
from .base import Method


@dataclass
class BYOLRecipe:
    proj_hidden_dim: int = 512
    proj_dim: int = 128
    pred_hidden_dim: int = 512
    teacher_momentum: float = 0.996     # EMA momentum tau at the start; cosine up to teacher_momentum_end
    teacher_momentum_end: float = 1.0
    use_predictor: bool = True          # False: the collapse study's "no predictor" run
    crop_scale_min: float = 0.08        # RandomResizedCrop area range (crop_scale_min, 1)

    def validate(self, cfg) -> None:
        require(min(self.proj_hidden_dim, self.proj_dim, self.pred_hidden_dim) > 0, "head sizes must be positive")
        for key in ("teacher_momentum", "teacher_momentum_end"):
            require(0 <= getattr(self, key) <= 1, f"{key} must be in [0, 1], got {getattr(self, key)}")
        require(0 < self.crop_scale_min <= 1, f"crop_scale_min must be in (0, 1], got {self.crop_scale_min}")
        require(cfg.accum_steps == 1, "BYOL takes no gradient accumulation (accum_steps=1): its projector and "
                                      "predictor normalise with the batch's statistics (BatchNorm)")


class BYOL(Method):
    Recipe = BYOLRecipe
    # BYOL's target forward costs extra per image, so fewer epochs fit the laptop's ~15 minutes
    PRESETS = {"cifar10-laptop": dict(epochs=2.6, teacher_momentum=0.99, crop_scale_min=0.2),  # tau for short runs
               "smoke": dict(proj_hidden_dim=64, proj_dim=32, pred_hidden_dim=64)}

    def __init__(self, backbone, recipe: BYOLRecipe = BYOLRecipe(), image_size: int = 32):
        super().__init__()
        self.recipe = recipe
        self.backbone = backbone
        self.projector = ProjectionMLP(backbone.embed_dim, recipe.proj_hidden_dim, recipe.proj_dim)
        self.predictor = (ProjectionMLP(recipe.proj_dim, recipe.pred_hidden_dim, recipe.proj_dim)
                          if recipe.use_predictor else nn.Identity())
        self.target = make_teacher(self.online_encoder)
        scale = (recipe.crop_scale_min, 1.0)
        # BYOL Table 6: blur p = 1.0 / 0.1, solarization p = 0 / 0.2 in the two views
        self.crops = MultiCrop([ViewAugment(image_size, scale, BYOL_JITTER, solarize_p=0.0, blur_p=1.0),
                                ViewAugment(image_size, scale, BYOL_JITTER, solarize_p=0.2, blur_p=0.1)])

    @property
    def online_encoder(self) -> nn.ModuleDict:
        return nn.ModuleDict({"backbone": self.backbone, "projector": self.projector})

    def forward(self, crops, diagnostics=False):
        views = crops.views()                                           # 2 x (n, 3, H, W)
        online = [self.projector(self.backbone(v)) for v in views]      # 2 x (n, proj_dim), one pass per view
        p1, p2 = (self.predictor(z) for z in online)
        with torch.no_grad():
            z1, z2 = (self.target.projector(self.target.backbone(v)) for v in views)
        loss = symmetric_byol_loss(p1, p2, z1, z2)
        if not diagnostics:
            return loss, {}
        both = torch.cat(online).detach()
        return loss, {"output_std": normalized_std(both), "effective_rank": effective_rank(both)}

    @torch.no_grad()
    def start_from(self, backbone, heads):
        super().start_from(backbone, heads)
        self.target.load_state_dict(self.online_encoder.state_dict())  # the target starts as the online network

    @torch.no_grad()
    def after_step(self, progress):
        m = momentum_schedule(self.decay_progress(progress), self.recipe.teacher_momentum,
                              self.recipe.teacher_momentum_end)
        ema_update(self.target, self.online_encoder, m)


# The collapse study of lesson 2: the same short run with parts of BYOL removed.
COLLAPSE_VARIANTS = {
    "full BYOL": {},
    "no predictor": {"use_predictor": False},
    "tau = 0 (target = online)": {"teacher_momentum": 0.0, "teacher_momentum_end": 0.0},
}
COLLAPSE_EPOCHS = {"cifar10-laptop": 1.0}  # other presets keep their own (short) budget
