"""Distillation (DINOv2, Oquab et al. 2024, sec. 5): a small student learns from a frozen, larger, already trained
teacher with the same losses as DINOv2's training. It is DINOv2's model (methods/dinov2.py) with a trained teacher
passed in instead of the momentum one, and the paper's exceptions:

- the teacher is fixed: an exported backbone with its heads (data/pretrained/<name>.pt; `export` writes the heads
  of the run's teacher beside its backbone); it gets no gradient and no update. The student's heads take their K
  from the teacher's (`out_dim`, `patch_out_dim` and `separate_heads` are the teacher's, not settings);
- no masking and no stochastic depth: the student sees whole crops, and the iBOT loss is applied to the patch tokens
  of the two global crops, every position (or a random `patch_fraction` of them, a CPU economy: the heads on all
  2 x B x N tokens cost more than the backbones here);
- a spare EMA of the student's backbone (momentum `teacher_momentum` 0.992 -> 1, as DINOv2's teacher) is the final
  model, the one evaluated and exported.

    L = L_DINO(student CLS, SK(teacher CLS of the other global crop)) + λ · L_iBOT(student patches, SK(teacher's))
        + 0.1 · sum_g L_KoLeo(student CLS of global crop g).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import ConfigError, require
from ..pretrained import load_backbone_and_heads
from ..teacher import ema_update, make_teacher, momentum_schedule
from .dinov2 import DINOv2, DINOv2Recipe

FROM_THE_TEACHER = ("out_dim", "patch_out_dim", "separate_heads")   # the teacher's heads decide them
NOT_USED = ("mask_probability", "mask_ratio_min", "mask_ratio_max")  # a distilled student sees whole crops
WHY_NOT = {True: "the teacher's heads decide it", False: "the student sees whole crops"}


@dataclass
class DistillRecipe(DINOv2Recipe):
    teacher: str = "ibot-vit-cifar10-5ep"   # an exported backbone with heads: data/pretrained/<name>.pt or a path
    patch_fraction: float = 1.0             # patch positions of each global crop in the iBOT loss (paper: all)
    teacher_temp_start: float = 0.07        # the trained teacher's own temperature throughout: no warm-up
    teacher_temp_warmup: float = 0.0

    def validate(self, cfg) -> None:
        super().validate(cfg)
        require(cfg.drop_path_rate == 0, f"distillation trains without stochastic depth (DINOv2 sec. 5): set "
                                         f"drop_path_rate=0, not {cfg.drop_path_rate}")
        require(bool(self.teacher), "name the teacher: teacher=<exported backbone in data/pretrained, or a .pt path>")
        require(0 < self.patch_fraction <= 1, f"patch_fraction must be in (0, 1], got {self.patch_fraction}")
        default = DistillRecipe()
        for key in FROM_THE_TEACHER + NOT_USED:
            require(getattr(self, key) == getattr(default, key),
                    f"distillation does not take {key} ({WHY_NOT[key in FROM_THE_TEACHER]}): leave it out")


class Distill(DINOv2):
    TITLE = "DINOv2 distilled"
    Recipe = DistillRecipe
    uses_patch_masks = False
    DEFAULTS = dict(DINOv2.DEFAULTS, drop_path_rate=0.0)
    PRESETS = {
        # a student of half the teacher's width (64 vs 128; a quarter of its weights), 4 local crops as the other
        # lessons, heads on a tenth of the patch positions, the teacher's own temperature (0.04, lesson 4), one epoch as
        # lesson 6's DINOv2 run (its from-scratch twin of the same width trains as many steps)
        "cifar10-laptop": dict(embed_dim=64, num_heads=2, epochs=1.0, n_local_crops=4, hidden_dim=512,
                               patch_fraction=0.1, teacher_temp=0.04, teacher_temp_start=0.04,
                               freeze_last_layer=0.05),
        "smoke": dict(patch_size=4, n_local_crops=2, hidden_dim=64, bottleneck_dim=32, patch_fraction=0.25),  # the teacher's patches
        # DINOv2 sec. 5: a ViT-S/14 student of a frozen, larger teacher with the training loop's own optimisation
        # (ssl_default_config.yaml: lr 0.004 at batch 1024 by the sqrt rule, warmup 10 of 100, weight decay 0.04 ->
        # 0.4), no masking, no stochastic depth, the iBOT loss on every patch of both global crops, 8 local crops of
        # 98 px. dinov2 publishes no distillation config (its issues #119, #417, #560 ask): the 100 epochs are ours.
        # The teacher: the ViT-L/14 of imagenet-vitl14-dinov2 exported under that name (`export --name`).
        "imagenet-vits14-distill": dict(image_size=224, patch_size=14, embed_dim=384, depth=12, num_heads=6,
                                        epochs=100.0, batch_size=1024, teacher="imagenet-vitl14-dinov2",
                                        teacher_temp=0.07, teacher_temp_start=0.07, n_local_crops=8, local_size=98,
                                        patch_fraction=1.0, parallel="fsdp", sequence_packing=True),
    }

    def __init__(self, backbone, recipe: DistillRecipe = DistillRecipe(), image_size: int = 32):
        teacher, record = trained_teacher(recipe.teacher, backbone.patch_size)
        teacher_patch_head = teacher["patch_head"] if "patch_head" in teacher else teacher["head"]
        # the student's two heads (separate even when the teacher shares one) output the teacher's K
        recipe = dataclasses.replace(recipe, out_dim=teacher["head"].last_layer.weight.shape[0],
                                     patch_out_dim=teacher_patch_head.last_layer.weight.shape[0])
        super().__init__(backbone, recipe, image_size, teacher=teacher)
        self.teacher_record = record
        self.ema = make_teacher(nn.ModuleDict({"backbone": backbone}))   # the spare EMA student: the final model

    def complete_views(self, crops, generator=None):
        """In `crops.masks`, the patch positions the iBOT loss reads (every one when patch_fraction is 1). They are
        never applied to the student's input: a distilled student sees whole crops."""
        n_crops, grid = len(crops.global_crops), crops.global_crops.shape[-1] // self.backbone.patch_size
        scores = torch.rand(n_crops, grid * grid, generator=generator, device=crops.global_crops.device)
        keep = max(1, round(self.recipe.patch_fraction * grid * grid))
        crops.masks = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, scores.topk(keep, dim=1).indices, True)
        return crops

    def student_tokens(self, crops) -> list[dict]:
        return self.backbone.forward_tokens(crops.by_size())  # whole crops, no mask token

    def start_from(self, backbone, heads):
        super().start_from(backbone, heads)
        self.ema.backbone.load_state_dict(backbone)  # the spare EMA starts as the student

    @torch.no_grad()
    def after_step(self, progress):
        m = momentum_schedule(self.decay_progress(progress), self.recipe.teacher_momentum,
                              self.recipe.teacher_momentum_end)
        ema_update(self.ema, nn.ModuleDict({"backbone": self.backbone}), m)

    @property
    def eval_backbone(self) -> nn.Module:
        return self.ema.backbone

    def export_heads(self) -> dict[str, nn.Module]:
        return {}  # the student's heads were trained on the student's backbone, not on the EMA that is exported


def trained_teacher(name: str, patch_size: int) -> tuple[nn.ModuleDict, dict]:
    """The exported backbone `name` and its heads as a teacher, {"backbone", "head"[, "patch_head"]}, and the
    export's record (its config and results)."""
    backbone, heads, record = load_backbone_and_heads(name)
    if "head" not in heads:
        raise FileNotFoundError(
            f"the exported backbone {name!r} has no heads to distill from; export a DINO, iBOT or DINOv2 run again "
            "with `python -m ssl_lessons export ...` (it writes the teacher's heads)")
    if backbone.patch_size != patch_size:
        raise ConfigError(f"the teacher {name!r} has patch size {backbone.patch_size}, the student {patch_size}: the "
                          f"patch losses compare the same positions, so add --set patch_size={backbone.patch_size}")
    return nn.ModuleDict({"backbone": backbone, **heads}), record
