"""DINO (Caron et al. 2021): self-distillation with no labels. A student (backbone -> DINOHead) sees every crop of
an image; a teacher, the momentum (EMA) copy of backbone and head (teacher.py), sees the 2 global crops only; the
student learns to output the teacher's centred, sharpened distribution for every other crop (losses/dino.py).

As the official main_dino.py: teacher temperature warmed linearly 0.04 -> 0.07, teacher momentum on a cosine to 1,
the head's last layer frozen for the first part of training, multi-crop (augment.MultiCrop); the loop supplies
AdamW with weight decay on a cosine 0.04 -> 0.4, per-parameter clipping at 3.0 and lr warm-up. The *teacher*'s
backbone is the one evaluated, as the official eval_knn.py does by default (sec. 5.2: the teacher is better).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..augment import MultiCrop
from ..backbones import multicrop_features
from ..heads import DINOHead
from ..losses.dino import DINOLoss
from ..teacher import ema_update, make_teacher, momentum_schedule
from .base import Method


def teacher_temperature(progress: float, start: float = 0.04, end: float = 0.07, warmup: float = 0.3) -> float:
    """tau_t: linear from `start` to `end` over the first `warmup` fraction of training, then constant
    (main_dino.py: 0.04 -> 0.07 over 30 of 100 epochs)."""
    if warmup <= 0 or progress >= warmup:
        return end
    return start + (end - start) * max(progress, 0.0) / warmup


class DINO(Method):
    def __init__(self, backbone, multicrop: MultiCrop, out_dim: int = 4096, hidden_dim: int = 2048,
                 bottleneck_dim: int = 256, norm_last_layer: bool = True, student_temp: float = 0.1,
                 teacher_temp: float = 0.07, teacher_temp_start: float = 0.04, teacher_temp_warmup: float = 0.3,
                 center_momentum: float = 0.9, centering: bool = True, momentum: float = 0.996,
                 momentum_end: float = 1.0, freeze_last_layer: float = 0.01):
        super().__init__()
        self.backbone = backbone
        self.head = DINOHead(backbone.embed_dim, out_dim, hidden_dim, bottleneck_dim, norm_last_layer)
        self.teacher = make_teacher(self.student)
        self.loss = DINOLoss(out_dim, student_temp, center_momentum, centering)
        self.multicrop = multicrop
        self.teacher_temp_schedule = dict(start=teacher_temp_start, end=teacher_temp, warmup=teacher_temp_warmup)
        self.teacher_temp = teacher_temperature(0.0, **self.teacher_temp_schedule)
        self.momentum, self.momentum_end = momentum, momentum_end
        self.freeze_last_layer = freeze_last_layer

    @classmethod
    def from_config(cls, cfg, backbone):
        multicrop = MultiCrop(cfg.image_size, cfg.local_size, cfg.n_local_crops, (cfg.global_scale_min, 1.0),
                              (cfg.local_scale_min, cfg.global_scale_min), cfg.jitter_strength)
        return cls(backbone, multicrop, cfg.dino_out_dim, cfg.dino_hidden_dim, cfg.dino_bottleneck_dim,
                   cfg.norm_last_layer, cfg.student_temp, cfg.teacher_temp, cfg.teacher_temp_start,
                   cfg.teacher_temp_warmup, cfg.center_momentum, cfg.centering, cfg.teacher_momentum,
                   cfg.teacher_momentum_end, cfg.freeze_last_layer)

    @property
    def student(self) -> nn.ModuleDict:
        return nn.ModuleDict({"backbone": self.backbone, "head": self.head})

    def make_views(self, images, generator=None):
        return self.multicrop(images, generator)

    def before_step(self, progress):
        self.teacher_temp = teacher_temperature(progress, **self.teacher_temp_schedule)

    def forward(self, views):
        n_global = self.multicrop.n_global
        student_out = self.head(multicrop_features(self.backbone, views)).chunk(len(views))  # V x (B, K)
        with torch.no_grad():
            teacher_out = self.teacher.head(self.teacher.backbone(torch.cat(views[:n_global]))).chunk(n_global)
        loss, stats = self.loss(list(student_out), list(teacher_out), self.teacher_temp)
        return loss, {**stats, "teacher_temp": self.teacher_temp}

    def after_backward(self, progress):
        if progress < self.freeze_last_layer:  # main_dino.py's cancel_gradients_last_layer
            for p in self.head.last_layer.parameters():
                p.grad = None

    @torch.no_grad()
    def after_step(self, progress):
        ema_update(self.teacher, self.student, momentum_schedule(progress, self.momentum, self.momentum_end))

    @property
    def eval_backbone(self) -> nn.Module:
        return self.teacher.backbone


# The collapse study of lesson 4 (the paper's Fig. 7): the same short run without centering, without sharpening
# (tau_t = tau_s), and without either.
COLLAPSE_VARIANTS = {
    "full DINO": {},
    "no centering": {"centering": False},
    "no sharpening": {"teacher_temp_start": 0.1, "teacher_temp": 0.1},
    "neither": {"centering": False, "teacher_temp_start": 0.1, "teacher_temp": 0.1},
}
COLLAPSE_EPOCHS = {"cifar10-laptop": 0.4}


def collapse_study_configs(preset: str) -> dict:
    """{variant name: Config} for the DINO collapse study at `preset`, each with its own run folder."""
    from ..config import variant_configs

    common = {"epochs": COLLAPSE_EPOCHS[preset], "linear_probe": False} if preset in COLLAPSE_EPOCHS else {}
    return variant_configs(preset, "dino", COLLAPSE_VARIANTS, **common)
