"""Distillation (DINOv2, Oquab et al. 2024, sec. 5): a small student learns from a frozen, larger, already trained
teacher with the same losses as DINOv2's training (methods/dinov2.py), with the paper's exceptions:

- the teacher is fixed: an exported backbone with its heads (data/pretrained/<name>.pt; `export` writes the heads
  of the run's teacher beside its backbone); it gets no gradient and no update;
- no masking and no stochastic depth: the student sees whole crops, and the iBOT loss is applied to the patch tokens
  of the two global crops, every position (or a random `patch_fraction` of them, a CPU economy: the heads on all
  2 x B x N tokens cost more than the backbones here);
- a spare EMA of the student's backbone is kept (momentum 0.992 -> 1, as the teacher of training) and is the final
  model, the one evaluated and exported.

The student has heads of its own (its backbone's width in, the teacher's K out), trained from scratch:

    L = L_DINO(student CLS, SK(teacher CLS of the other global crop)) + λ · L_iBOT(student patches, SK(teacher's))
        + 0.1 · sum_g L_KoLeo(student CLS of global crop g).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..augment import DINO_GLOBAL_VIEWS, DINO_LOCAL_VIEW
from ..config import require
from ..errors import ConfigError
from ..crops import MultiCropRecipe
from ..heads import DINOHead
from ..losses.dino import DINOLoss
from ..losses.ibot import iBOTPatchLoss
from ..losses.koleo import KoLeoLoss
from ..optim import heads_last_layer_frozen_until, parameter_groups, vit_layer_decay
from ..teacher import ema_update, make_teacher, momentum_schedule
from .base import Method


@dataclass
class DistillRecipe(MultiCropRecipe):
    teacher: str = "ibot-vit-cifar10-5ep"   # an exported backbone with heads: data/pretrained/<name>.pt or a path
    n_local_crops: int = 8
    global_scale_min: float = 0.32
    local_scale_min: float = 0.05
    hidden_dim: int = 2048                  # the student's heads (their K is the teacher's)
    bottleneck_dim: int = 256
    student_temp: float = 0.1
    teacher_temp: float = 0.07              # the trained teacher's final temperature
    sinkhorn_centering: bool = True         # as DINOv2; False: EMA centers
    sinkhorn_iterations: int = 3
    center_momentum: float = 0.9
    patch_loss_weight: float = 1.0
    patch_fraction: float = 1.0             # patch positions of each global crop in the iBOT loss (paper: all)
    koleo_loss_weight: float = 0.1
    layer_decay: float = 0.9
    patch_embed_lr_mult: float = 0.2
    freeze_last_layer: float = 0.01
    ema_momentum: float = 0.992             # the spare EMA of the student (cosine to ema_momentum_end)
    ema_momentum_end: float = 1.0

    def validate(self, cfg) -> None:
        super().validate(cfg)
        require(cfg.backbone == "vit", f"distillation matches patch tokens: it needs backbone=vit, not {cfg.backbone}")
        require(cfg.drop_path_rate == 0, f"distillation trains without stochastic depth (DINOv2 sec. 5): set "
                                         f"drop_path_rate=0, not {cfg.drop_path_rate}")
        require(bool(self.teacher), "name the teacher: teacher=<exported backbone in data/pretrained, or a .pt path>")
        require(0 < self.patch_fraction <= 1, f"patch_fraction must be in (0, 1], got {self.patch_fraction}")
        for key in ("hidden_dim", "bottleneck_dim", "student_temp", "teacher_temp", "sinkhorn_iterations"):
            require(getattr(self, key) > 0, f"{key} must be positive, got {getattr(self, key)}")
        for key in ("ema_momentum", "ema_momentum_end", "center_momentum", "freeze_last_layer"):
            require(0 <= getattr(self, key) <= 1, f"{key} must be in [0, 1], got {getattr(self, key)}")
        require(0 < self.layer_decay <= 1, f"layer_decay must be in (0, 1], got {self.layer_decay}")


class Distill(Method):
    Recipe = DistillRecipe
    DEFAULTS = dict(global_pool="token", lr=0.004, lr_scaling="sqrt", min_lr=1e-6, warmup=0.1,
                    weight_decay=0.04, weight_decay_end=0.4, layerscale_init=1e-5, drop_path_rate=0.0)
    PRESETS = {
        # a student of half the teacher's width (64 vs 128; a quarter of its weights), 4 local crops as the other
        # lessons, heads on a tenth of the patch positions, the teacher's own temperature (0.04, lesson 4)
        "cifar10-laptop": dict(embed_dim=64, num_heads=2, epochs=2.0, n_local_crops=4, hidden_dim=512,
                               patch_fraction=0.1, teacher_temp=0.04, freeze_last_layer=0.05),
        "smoke": dict(patch_size=4, n_local_crops=2, hidden_dim=64, bottleneck_dim=32, patch_fraction=0.25),  # the teacher's patches
        # DINOv2 sec. 5: a ViT-S/14 student of a frozen, larger teacher with the training loop's own optimisation
        # (ssl_default_config.yaml: lr 0.004 at batch 1024 by the sqrt rule, warmup 10 of 100, weight decay 0.04 ->
        # 0.4), no masking, no stochastic depth, the iBOT loss on every patch of both global crops, 8 local crops of
        # 98 px. dinov2 publishes no distillation config (its issues #119, #417, #560 ask): the 100 epochs are ours.
        # The teacher: the ViT-L/14 of imagenet-vitl14-dinov2 exported under that name (`export --name`).
        "imagenet-vits14-distill": dict(image_size=224, patch_size=14, embed_dim=384, depth=12, num_heads=6,
                                        epochs=100.0, batch_size=1024, teacher="imagenet-vitl14-dinov2",
                                        teacher_temp=0.07, n_local_crops=8, local_size=98, patch_fraction=1.0,
                                        parallel="fsdp", sequence_packing=True),
    }

    def __init__(self, backbone, recipe: DistillRecipe = DistillRecipe(), image_size: int = 32):
        from ..pretrained import load_backbone_and_heads

        super().__init__()
        self.recipe = recipe
        teacher_backbone, teacher_heads, record = load_backbone_and_heads(recipe.teacher)
        if "head" not in teacher_heads:
            raise FileNotFoundError(
                f"the exported backbone {recipe.teacher!r} has no heads to distill from; export a DINO, iBOT or "
                "DINOv2 run again with `python -m ssl_lessons export ...` (it now writes the teacher's heads)")
        if teacher_backbone.patch_size != backbone.patch_size:
            raise ConfigError(f"the teacher {recipe.teacher!r} has patch size {teacher_backbone.patch_size}, the "
                              f"student {backbone.patch_size}: the patch losses compare the same positions, so add "
                              f"--set patch_size={teacher_backbone.patch_size}")
        self.teacher_record = record
        self.teacher = nn.ModuleDict({"backbone": teacher_backbone, **teacher_heads})
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.teacher.eval()
        self.teacher.is_frozen_teacher = True
        teacher_patch_head = teacher_heads.get("patch_head", teacher_heads["head"])
        out_dim = teacher_heads["head"].last_layer.weight.shape[0]
        patch_out_dim = teacher_patch_head.last_layer.weight.shape[0]

        self.backbone = backbone
        self.head = DINOHead(backbone.embed_dim, out_dim, recipe.hidden_dim, recipe.bottleneck_dim)
        self.patch_head = DINOHead(backbone.embed_dim, patch_out_dim, recipe.hidden_dim, recipe.bottleneck_dim)
        self.ema = make_teacher(nn.ModuleDict({"backbone": backbone}))   # the spare EMA student: the final model
        centering = "sinkhorn_knopp" if recipe.sinkhorn_centering else "ema"
        self.loss = DINOLoss(out_dim, recipe.student_temp, recipe.center_momentum, centering, recipe.sinkhorn_iterations)
        self.patch_loss = iBOTPatchLoss(patch_out_dim, recipe.student_temp, recipe.center_momentum, centering,
                                        recipe.sinkhorn_iterations)
        self.koleo = KoLeoLoss()
        self.crops = recipe.multicrop(image_size, DINO_GLOBAL_VIEWS, **DINO_LOCAL_VIEW)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # frozen: no dropout, no drop path, whatever the mode
        return self

    def complete_views(self, crops, generator=None):
        """In `crops.masks`, the patch positions the iBOT loss reads (every one when patch_fraction is 1). They are
        never applied to the student's input: a distilled student sees whole crops."""
        n_crops, grid = len(crops.global_crops), crops.global_crops.shape[-1] // self.backbone.patch_size
        scores = torch.rand(n_crops, grid * grid, generator=generator, device=crops.global_crops.device)
        keep = max(1, round(self.recipe.patch_fraction * grid * grid))
        crops.masks = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, scores.topk(keep, dim=1).indices, True)
        return crops

    def forward(self, crops, diagnostics=False):
        positions = crops.masks
        tokens = self.backbone.forward_tokens(crops.by_size())                      # whole crops, no mask token
        cls_out = self.head(torch.cat([t["pooled"] for t in tokens]))               # (V*B, K)
        patch_out = self.patch_head(tokens[0]["patch"][positions])                  # (P, K_p)
        with torch.no_grad():
            teacher = self.teacher["backbone"].forward_tokens(crops.global_crops)
            teacher_patch_head = self.teacher["patch_head"] if "patch_head" in self.teacher else self.teacher["head"]
            teacher_cls_out = self.teacher["head"](teacher["pooled"])
            teacher_patch_out = teacher_patch_head(teacher["patch"][positions])
        temp = self.recipe.teacher_temp
        cls_loss, stats = self.loss(list(cls_out.chunk(crops.n_views)), list(teacher_cls_out.chunk(crops.n_global)),
                                    temp, with_stats=diagnostics)
        terms = {"cls_loss": cls_loss,
                 "patch_loss": self.recipe.patch_loss_weight * self.patch_loss(patch_out, teacher_patch_out,
                                                                               positions, temp)}
        if self.recipe.koleo_loss_weight:
            terms["koleo_loss"] = self.recipe.koleo_loss_weight * self.koleo.per_crop(tokens[0]["cls"], crops.n_global)
        loss = sum(terms.values())
        if not diagnostics:
            return loss, {}
        return loss, {**{k: v.detach() for k, v in terms.items()}, **stats}

    def frozen_until(self, name: str) -> float:
        return heads_last_layer_frozen_until(name, self.recipe.freeze_last_layer)

    def param_groups(self):
        decay = lambda name: vit_layer_decay(name, self.recipe.layer_decay, len(self.backbone.vit.blocks),  # noqa: E731
                                             self.recipe.patch_embed_lr_mult)
        return parameter_groups(self.named_parameters(), lr_multiplier=decay, frozen_until=self.frozen_until)

    @torch.no_grad()
    def after_step(self, progress):
        m = momentum_schedule(progress, self.recipe.ema_momentum, self.recipe.ema_momentum_end)
        ema_update(self.ema, nn.ModuleDict({"backbone": self.backbone}), m)

    @property
    def eval_backbone(self) -> nn.Module:
        return self.ema.backbone
