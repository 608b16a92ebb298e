"""BYOL (Grill et al. 2020): no negatives. An online network (backbone -> projector -> predictor) predicts the
projection that a momentum target network (EMA of backbone -> projector, teacher.py) gives for another view.

What keeps it from collapsing to a constant is not in the loss (a constant output has loss 0) but in the
asymmetry: the predictor, and a target that moves slowly and receives no gradient. Lesson 2 measures that.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..augment import ViewAugment
from ..diagnostics import effective_rank, normalized_std
from ..heads import ProjectionMLP
from ..losses.byol import symmetric_byol_loss
from ..teacher import ema_update, make_teacher, momentum_schedule
from .base import Method


class BYOL(Method):
    def __init__(self, backbone, augment: ViewAugment, proj_hidden_dim: int = 512, proj_dim: int = 128,
                 pred_hidden_dim: int = 512, momentum: float = 0.996, momentum_end: float = 1.0,
                 use_predictor: bool = True):
        super().__init__()
        self.backbone = backbone
        self.projector = ProjectionMLP(backbone.embed_dim, proj_hidden_dim, proj_dim)
        self.predictor = ProjectionMLP(proj_dim, pred_hidden_dim, proj_dim) if use_predictor else nn.Identity()
        self.target = make_teacher(nn.ModuleDict({"backbone": backbone, "projector": self.projector}))
        self.augment = augment
        self.momentum, self.momentum_end = momentum, momentum_end

    @classmethod
    def from_config(cls, cfg, backbone):
        augment = ViewAugment(cfg.image_size, (cfg.crop_scale_min, 1.0), cfg.jitter_strength)
        return cls(backbone, augment, cfg.proj_hidden_dim, cfg.proj_dim, cfg.pred_hidden_dim, cfg.teacher_momentum,
                   cfg.teacher_momentum_end, cfg.use_predictor)

    def make_views(self, images, generator=None):
        return [self.augment(images, generator), self.augment(images, generator)]

    def forward(self, views):
        n = views[0].shape[0]
        x = torch.cat(views)                                  # (2n, 3, H, W)
        online = self.projector(self.backbone(x))             # (2n, proj_dim)
        p1, p2 = self.predictor(online).split(n)
        with torch.no_grad():
            z1, z2 = self.target.projector(self.target.backbone(x)).split(n)
        loss = symmetric_byol_loss(p1, p2, z1, z2)
        return loss, {"output_std": normalized_std(online), "effective_rank": effective_rank(online)}

    @torch.no_grad()
    def after_step(self, progress):
        m = momentum_schedule(progress, self.momentum, self.momentum_end)
        ema_update(self.target, nn.ModuleDict({"backbone": self.backbone, "projector": self.projector}), m)


# The collapse study of lesson 2: the same short run with parts of BYOL removed.
COLLAPSE_VARIANTS = {
    "full BYOL": {},
    "no predictor": {"use_predictor": False},
    "tau = 0 (target = online)": {"teacher_momentum": 0.0, "teacher_momentum_end": 0.0},
}
COLLAPSE_EPOCHS = {"cifar10-laptop": 1.0}  # other presets keep their own (short) budget


def collapse_study_configs(preset: str) -> dict:
    """{variant name: Config} for the collapse study at `preset`, each with its own run folder."""
    from ..config import variant_configs

    common = {"epochs": COLLAPSE_EPOCHS[preset]} if preset in COLLAPSE_EPOCHS else {}
    return variant_configs(preset, "byol", COLLAPSE_VARIANTS, **common)
