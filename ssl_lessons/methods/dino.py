"""DINO (Caron et al. 2021): self-distillation with no labels. A student (backbone -> DINOHead) sees every crop of
an image; a teacher, the momentum (EMA) copy of backbone and head (teacher.py), sees the 2 global crops only; the
student learns to output the teacher's centred, sharpened distribution for every other crop (losses/dino.py).

As the official main_dino.py: teacher temperature warmed linearly 0.04 -> 0.07, teacher momentum on a cosine to 1,
the head's last layer frozen for the first part of training (its parameter group, Method.param_groups), multi-crop
with DataAugmentationDINO's views: colour jitter (0.4, 0.4, 0.2, 0.1) with p = 0.8, grayscale 0.2, solarization on
the second global crop only (p = 0.2). Its Gaussian blur (p = 1.0 / 0.1 / 0.5) is left out at 32 px (augment.py).
The loop supplies AdamW with weight decay on a cosine 0.04 -> 0.4 (DEFAULTS), per-parameter clipping at 3.0 and lr
warm-up. The teacher runs without drop path, and its backbone is the one evaluated, as the official eval_knn.py
does by default (sec. 5.2: the teacher is better).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..augment import DINO_GLOBAL_VIEWS, DINO_LOCAL_VIEW
from ..errors import require
from ..crops import MultiCropRecipe
from ..heads import DINOHead
from ..losses.dino import CENTERINGS, DINOLoss
from ..optim import heads_last_layer_frozen_until, parameter_groups
from ..teacher import ema_update, freeze, make_teacher, momentum_schedule
from .base import Method


@dataclass
class DINORecipe(MultiCropRecipe):
    global_scale_min: float = 0.4       # main_dino.py's global crops (0.4, 1) ...
    local_scale_min: float = 0.05       # ... and local crops (0.05, 0.4)
    out_dim: int = 4096                 # K, the head's output dimension (the paper: 65536 for ImageNet)
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    norm_last_layer: bool = True        # fix the norm of the last layer's rows to 1 (weight normalisation, g = 1)
    freeze_last_layer: float = 0.01     # fraction of training with the last layer frozen (the paper: 1 of 100 epochs)
    student_temp: float = 0.1
    teacher_temp: float = 0.07          # reached after the warm-up ...
    teacher_temp_start: float = 0.04    # ... from this value
    teacher_temp_warmup: float = 0.3    # fraction of training (the paper: 30 of 100 epochs)
    centering: str = "ema"              # of the teacher's outputs, for every loss: "ema" (DINO's center),
                                        # "sinkhorn_knopp" (DINOv2) or "none" (the collapse study)
    center_momentum: float = 0.9        # the EMA center's momentum (centering="ema")
    sinkhorn_iterations: int = 3        # Sinkhorn-Knopp's iterations (centering="sinkhorn_knopp")
    teacher_momentum: float = 0.996     # EMA momentum at the start; cosine up to teacher_momentum_end
    teacher_momentum_end: float = 1.0

    def validate(self, cfg) -> None:
        super().validate(cfg)
        for key in ("out_dim", "hidden_dim", "bottleneck_dim", "student_temp", "teacher_temp", "teacher_temp_start",
                    "sinkhorn_iterations"):
            require(getattr(self, key) > 0, f"{key} must be positive, got {getattr(self, key)}")
        for key in ("freeze_last_layer", "center_momentum", "teacher_momentum", "teacher_momentum_end"):
            require(0 <= getattr(self, key) <= 1, f"{key} must be in [0, 1], got {getattr(self, key)}")
        require(0 <= self.teacher_temp_warmup < 1,
                f"teacher_temp_warmup is a fraction of training in [0, 1), got {self.teacher_temp_warmup}")
        require(self.centering in CENTERINGS,
                f"centering is one of {', '.join(CENTERINGS)}, got {self.centering!r}")


def teacher_temperature(progress: float, start: float = 0.04, end: float = 0.07, warmup: float = 0.3) -> float:
    """tau_t: linear from `start` to `end` over the first `warmup` fraction of training, then constant
    (main_dino.py: 0.04 -> 0.07 over 30 of 100 epochs)."""
    if warmup <= 0 or progress >= warmup:
        return end
    return start + (end - start) * max(progress, 0.0) / warmup


class DINO(Method):
    """The DINO family's model (dinov2's `SSLMetaArch`): a student (backbone and heads), a teacher of the same
    shape, and the losses between them. DINO, iBOT and DINOv2 grow it (methods/ibot.py, dinov2.py); distillation
    (methods/distill.py) is the same model with a trained, frozen teacher passed in instead of the momentum one.

    Where each concept lives: the student's heads in `build_heads`, the teacher in `__init__` (an EMA copy of
    the student unless one is given), its outputs in `teacher_output` (the one no-grad place), the centring and
    sharpening of those outputs in the losses (losses/dino.py, losses/ibot.py: one `centering` setting for all)."""
    ACCUMULATION = ("the teacher's centering sees each micro-batch: the EMA center moves after every one "
                    "(centering=ema), Sinkhorn-Knopp balances each one's codes over the processes (sinkhorn_knopp); "
                    "with centering=none nothing couples the images")
    Recipe = DINORecipe
    DEFAULTS = dict(weight_decay=0.04, weight_decay_end=0.4, global_pool="token")
    PRESETS = {
        # main_dino.py's default teacher temperature, a constant 0.04 (measured steadier here than the 0.04 -> 0.07
        # warm-up of the paper's best ViT-S runs, which the Recipe keeps as its default; see lesson 4)
        "cifar10-laptop": dict(epochs=1.6, teacher_momentum=0.99, out_dim=4096, hidden_dim=1024,
                               freeze_last_layer=0.05, teacher_temp=0.04),
        "smoke": dict(n_local_crops=2, out_dim=64, hidden_dim=64, bottleneck_dim=32),
        # main_dino.py's defaults (the README's vanilla run: `--arch deit_small`, i.e. ViT-S/16, 100 epochs on one node
        # of 8 GPUs, batch_size_per_gpu 64, 1.75 days: 69.3 % k-NN, ~73.8 % linear): lr 0.0005 x batch/256, warmup 10,
        # teacher temperature 0.04 throughout (warmup_teacher_temp = teacher_temp = 0.04), momentum 0.996, K = 65536,
        # last layer frozen for 1 epoch, drop path 0.1, 8 local crops of 96 px, global crops (0.4, 1), fp16 (amp)
        "imagenet-vits16-dino": dict(image_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6,
                                     epochs=100.0, batch_size=512, lr=5e-4, warmup=0.1, min_lr=1e-6, clip_grad=3.0,
                                     drop_path_rate=0.1, out_dim=65536, hidden_dim=2048, bottleneck_dim=256,
                                     teacher_temp=0.04, teacher_temp_start=0.04, teacher_temp_warmup=0.0,
                                     teacher_momentum=0.996, freeze_last_layer=0.01, n_local_crops=8, local_size=96,
                                     global_scale_min=0.4, local_scale_min=0.05, parallel="ddp"),
    }

    def __init__(self, backbone, recipe: DINORecipe = DINORecipe(), image_size: int = 32,
                 teacher: nn.ModuleDict | None = None):
        """teacher: a trained teacher with the student's parts (backbone, head[, patch_head]), kept frozen
        (distillation); None: the momentum teacher, an EMA copy of the student."""
        super().__init__()
        self.recipe = recipe
        self.backbone = backbone
        self.build_heads()
        self.momentum_teacher = teacher is None
        self.teacher = make_teacher(self.student) if teacher is None else freeze(teacher)
        self.loss = DINOLoss(recipe.out_dim, recipe.student_temp, recipe.center_momentum, recipe.centering,
                             recipe.sinkhorn_iterations)
        self.crops = recipe.multicrop(image_size, DINO_GLOBAL_VIEWS, **DINO_LOCAL_VIEW)
        self.teacher_temp_schedule = dict(start=recipe.teacher_temp_start, end=recipe.teacher_temp,
                                          warmup=recipe.teacher_temp_warmup)
        self.teacher_temp = teacher_temperature(0.0, **self.teacher_temp_schedule)

    def build_heads(self) -> None:
        """The student's heads on top of its backbone: DINO's one head on the CLS token."""
        r = self.recipe
        self.head = DINOHead(self.backbone.embed_dim, r.out_dim, r.hidden_dim, r.bottleneck_dim, r.norm_last_layer)

    @property
    def student(self) -> nn.ModuleDict:
        """The student's parts by name, as the teacher has them: {"backbone", "head"[, "patch_head"]}."""
        return nn.ModuleDict({name: getattr(self, name) for name in ("backbone", "head", "patch_head")
                              if hasattr(self, name)})

    def start_from(self, backbone, heads):
        """The student's backbone and heads from an exported teacher (heads it does not have are an error: a head
        trained elsewhere would start the losses from its own targets), the momentum teacher as their copy."""
        super().start_from(backbone, heads)
        for name, state in heads.items():
            if name not in self.student:
                raise ValueError(f"the exported heads {sorted(heads)} do not match this student's {sorted(self.student)}")
            self.student[name].load_state_dict(state)
        if self.momentum_teacher:
            self.teacher.load_state_dict(self.student.state_dict())

    def before_step(self, progress):
        self.teacher_temp = teacher_temperature(progress, **self.teacher_temp_schedule)

    @torch.no_grad()
    def teacher_output(self, crops) -> dict:
        """The teacher's head outputs (logits) for the global crops, seen whole: {"cls": (G*B, K)} (dinov2's
        `get_teacher_output`; the losses turn them into targets)."""
        return {"cls": self.teacher.head(self.teacher.backbone.forward_tokens(crops.global_crops)["pooled"])}

    def forward(self, crops, diagnostics=False):
        features = torch.cat([f["pooled"] for f in self.backbone.forward_tokens(crops.by_size())])  # (V*B, D)
        student_out = self.head(features).chunk(crops.n_views)                                     # V x (B, K)
        teacher_out = self.teacher_output(crops)["cls"].chunk(crops.n_global)                      # G x (B, K)
        loss, stats = self.loss(list(student_out), list(teacher_out), self.teacher_temp, with_stats=diagnostics)
        return loss, ({**stats, "teacher_temp": self.teacher_temp} if diagnostics else {})

    def param_groups(self):
        return parameter_groups(self.named_parameters(), frozen_until=self.frozen_until)

    def frozen_until(self, name: str) -> float:
        return heads_last_layer_frozen_until(name, self.recipe.freeze_last_layer)

    @torch.no_grad()
    def after_step(self, progress):
        m = momentum_schedule(self.decay_progress(progress), self.recipe.teacher_momentum,
                              self.recipe.teacher_momentum_end)
        ema_update(self.teacher, self.student, m)

    @property
    def eval_backbone(self) -> nn.Module:
        return self.teacher.backbone

    def export_heads(self) -> dict[str, nn.Module]:
        """The teacher's head(s): the ones that go with the evaluated backbone (iBOT's shared head serves patches too)."""
        return {name: module for name, module in self.teacher.items() if name != "backbone"}


# The collapse study of lesson 4 (the paper's Fig. 7): the same short run without centering, without sharpening
# (tau_t = tau_s), and without either.
COLLAPSE_VARIANTS = {
    "full DINO": {},
    "no centering": {"centering": "none"},
    "no sharpening": {"teacher_temp_start": 0.1, "teacher_temp": 0.1},
    "neither": {"centering": "none", "teacher_temp_start": 0.1, "teacher_temp": 0.1},
}
COLLAPSE_EPOCHS = {"cifar10-laptop": 0.4}
