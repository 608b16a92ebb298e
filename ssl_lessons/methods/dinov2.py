"""DINOv2 (Oquab et al. 2024, sec. 4; facebookresearch/dinov2 `ssl_meta_arch.py`): iBOT's two losses with the
recipe that made them scale. Everything of iBOT stays (methods/ibot.py: multi-crop, block-wise masks, an EMA
teacher, a CLS loss and a masked-patch loss); what DINOv2 changes, each a field of the Recipe below:

- **two heads**: the CLS tokens go through a DINO head, the masked patch tokens through an iBOT head of their own
  (`separate_heads`, dinov2's `ibot.separate_head: true`); iBOT's shared head stays a switch;
- **Sinkhorn-Knopp centering** of the teacher (`centering="sinkhorn_knopp"`; dinov2's `train.centering`): the
  teacher's CLS outputs of both global crops, and its masked patch outputs, each become the balanced codes of SwAV
  (`sinkhorn_iterations` 3, epsilon = the teacher temperature; sinkhorn.py, the one implementation), instead of
  softmax((g - c) / tau) with an EMA center c ("ema", DINO's);
- **KoLeo** on the student's backbone CLS tokens of each global crop (losses/koleo.py), weight 0.1:

      L = L_DINO(CLS) + λ_iBOT · L_iBOT(masked patches) + 0.1 · sum_{global crops g} L_KoLeo(CLS_g);

- **LayerScale** (1e-5) in every block, optional **register tokens**, **stochastic depth**: timm's ViT (Config
  fields layerscale_init, register_tokens, drop_path_rate; the teacher runs without drop path);
- **heads as dinov2's `DINOHead`**: the last layer's weight-norm gain g starts at 1 and is trained
  (`norm_last_layer=False`; DINO v1 fixes it);
- **optimisation**: lr for batch 1024 scaled by sqrt(batch / 1024), layer-wise lr decay 0.9 with the patch
  embedding at x0.2 (optim.vit_layer_decay), teacher momentum 0.992 -> 1, weight decay 0.04 -> 0.4; gradients
  clipped to norm 3 per student part (backbone, each head: dinov2's `v.clip_grad_norm_` for v in student), and the
  heads' last layers frozen for the first epoch by an lr of 0 (dinov2's `last_layer_lr_schedule`: AdamW's moments
  keep moving; DINO v1 drops the gradients instead);
- an optional **high-resolution phase** at the end of training (Config highres_size, highres_fraction; train.py).

dinov2's values are the defaults here, each with its source beside it; the laptop preset changes what a 15-minute
CPU run needs (README, lesson 6).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import require
from ..losses.koleo import KoLeoLoss
from ..optim import clip_total_norm, parameter_groups, vit_layer_decay
from .ibot import iBOT, iBOTRecipe


@dataclass
class DINOv2Recipe(iBOTRecipe):
    # ssl_default_config.yaml unless said otherwise
    n_local_crops: int = 8              # crops.local_crops_number
    global_scale_min: float = 0.32      # crops.global_crops_scale (0.32, 1)
    local_scale_min: float = 0.05       # crops.local_crops_scale (0.05, 0.32)
    separate_heads: bool = True         # ibot.separate_head (true in the released ViT-L/g configs)
    centering: str = "sinkhorn_knopp"   # train.centering (the released configs); sinkhorn_knopp_teacher: 3 iterations
    norm_last_layer: bool = False       # dinov2's DINOHead: weight_g filled with 1 and trained
    koleo_loss_weight: float = 0.1      # dino.koleo_loss_weight
    layer_decay: float = 0.9            # optim.layerwise_decay (1.0 = none)
    patch_embed_lr_mult: float = 0.2    # optim.patch_embed_lr_mult
    teacher_momentum: float = 0.992     # teacher.momentum_teacher (-> final_momentum_teacher 1.0)
    freeze_last_layer: float = 0.01     # optim.freeze_last_layer_epochs: 1 of 100

    def validate(self, cfg) -> None:
        super().validate(cfg)
        require(self.koleo_loss_weight >= 0, f"koleo_loss_weight must be >= 0, got {self.koleo_loss_weight}")
        require(0 < self.layer_decay <= 1, f"layer_decay must be in (0, 1], got {self.layer_decay}")
        require(self.patch_embed_lr_mult > 0, f"patch_embed_lr_mult must be positive, got {self.patch_embed_lr_mult}")


class DINOv2(iBOT):
    Recipe = DINOv2Recipe
    ACCUMULATION = iBOT.ACCUMULATION + "; KoLeo's nearest neighbours are sought within each micro-batch of a process"
    DEFAULTS = dict(
        global_pool="token",
        lr=0.004, lr_scaling="sqrt",        # optim.base_lr for batch 1024, scaling_rule: sqrt_wrt_1024
        min_lr=1e-6, warmup=0.1,            # optim.min_lr; warmup_epochs 10 of 100
        weight_decay=0.04, weight_decay_end=0.4,  # optim.weight_decay(_end) (ViT-L/14: 0.2)
        clip_grad=3.0,                      # optim.clip_grad
        layerscale_init=1e-5,               # student.layerscale
        drop_path_rate=0.3,                 # student.drop_path_rate (ViT-L/14: 0.4)
    )
    PRESETS = {
        # A 4-block ViT trained for one epoch: no stochastic depth (it slows a short run; DINOv2 uses it on 24-40
        # blocks), DINO's laptop head and teacher temperature, 4 local crops as lessons 3-5, and the last 10 % of
        # the steps at 48 px (the high-resolution phase; 64 px costs 5x a 32-px step here, 48 px about 2x).
        # LayerScale starts at 0.1, not 1e-5: with 1e-5 a 390-step run never lets its blocks move the CLS token
        # far enough from one shared vector, so the Sinkhorn-Knopp CLS targets stay uniform (loss = ln K, KL 0;
        # measured in lesson 6). 1e-5 is for hundreds of thousands of steps.
        "cifar10-laptop": dict(out_dim=4096, hidden_dim=1024, freeze_last_layer=0.05, teacher_temp=0.04,
                               epochs=1.0, n_local_crops=4, drop_path_rate=0.0, highres_size=48,
                               highres_fraction=0.1, layerscale_init=0.1),
        "smoke": dict(n_local_crops=2, out_dim=64, hidden_dim=64, bottleneck_dim=32, drop_path_rate=0.0,
                      highres_size=48, highres_fraction=0.25),
        # dinov2/configs/train/vitl14.yaml over ssl_default_config.yaml. Its "epoch" is OFFICIAL_EPOCH_LENGTH = 1250
        # iterations: 500 of them at 32 per GPU x 32 GPUs (batch 1024) are 500 passes over ImageNet-1k's 1.28 M.
        # K = 131072 for both heads, bottleneck 384 (vitl14 sets it for the DINO head; the iBOT head's default is
        # 256: one bottleneck_dim serves both here), base lr 2e-4 at batch 1024 (sqrt rule), warmup 80 of 500,
        # weight decay 0.04 -> 0.2, no layer-wise decay, momentum 0.994, drop path 0.4, teacher temperature 0.04 ->
        # 0.07 over 30 of 500, last layer frozen 1 of 500, local crops 98 px. The released ViT-L/14 uses an MLP
        # block (hubconf), not vitl14.yaml's swiglufused. FSDP, sequence packing and efficient stochastic depth, as
        # dinov2 trains it (its xformers kernels are SDPA here).
        "imagenet-vitl14-dinov2": dict(image_size=224, patch_size=14, embed_dim=1024, depth=24, num_heads=16,
                                       epochs=500.0, batch_size=1024, lr=2e-4, warmup=0.16, weight_decay_end=0.2,
                                       drop_path_rate=0.4, layer_decay=1.0, teacher_momentum=0.994,
                                       out_dim=131072, patch_out_dim=131072, hidden_dim=2048, bottleneck_dim=384,
                                       teacher_temp=0.07, teacher_temp_start=0.04, teacher_temp_warmup=0.06,
                                       freeze_last_layer=0.002, n_local_crops=8, local_size=98, parallel="fsdp",
                                       sequence_packing=True, efficient_drop_path=True),
    }

    def __init__(self, backbone, recipe: DINOv2Recipe = DINOv2Recipe(), image_size: int = 32,
                 teacher: torch.nn.ModuleDict | None = None):
        super().__init__(backbone, recipe, image_size, teacher)
        self.koleo = KoLeoLoss()

    def loss_terms(self, crops, diagnostics=False, tokens=None):
        tokens = self.student_tokens(crops) if tokens is None else tokens
        terms, stats = super().loss_terms(crops, diagnostics, tokens)
        if self.recipe.koleo_loss_weight:  # on the backbone's CLS tokens of the (masked) global crops
            terms["koleo_loss"] = self.recipe.koleo_loss_weight * self.koleo.per_crop(tokens[0]["cls"], crops.n_global)
        return terms, stats

    def lr_multiplier(self, name: str) -> float:
        """Layer-wise lr decay over the student backbone's blocks, the patch embedding lower still (dinov2's
        get_params_groups_with_decay); the heads keep the full lr."""
        return vit_layer_decay(name, self.recipe.layer_decay, len(self.backbone.vit.blocks),
                               self.recipe.patch_embed_lr_mult)

    def param_groups(self):
        return parameter_groups(self.named_parameters(), lr_multiplier=self.lr_multiplier,
                                frozen_until=self.frozen_until, frozen_by="zero_lr")

    def clip_gradients(self, max_norm: float) -> None:
        """dinov2's train.py: `for v in model.student.values(): v.clip_grad_norm_(clip_grad)`: the total gradient
        norm of each student part on its own."""
        for part in self.student.values():
            clip_total_norm(part.parameters(), max_norm)


# The ablation of lesson 6, in the spirit of the paper's Table 1: the full recipe against one change at a time,
# and the registers of Darcet et al. (2024) added.
ABLATION_VARIANTS = {
    "full DINOv2": {},
    "no KoLeo": {"koleo_loss_weight": 0.0},
    "EMA centering": {"centering": "ema"},
    "shared head": {"separate_heads": False},
    "4 registers": {"register_tokens": 4},
}
ABLATION_EPOCHS = {"cifar10-laptop": 0.4}


@torch.no_grad()
def feature_uniformity(features: torch.Tensor) -> float:
    """KoLeo's own measure of spread, for evaluation: -L_KoLeo, the mean log distance of each L2-normalised feature
    to its nearest neighbour among the others. (n, D) -> a number; higher = more uniformly spread. (10,000 test
    features need a 10,000 x 10,000 similarity matrix: 400 MB.)"""
    return -KoLeoLoss()(features).item()
