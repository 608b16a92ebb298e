"""DINOv3 (Siméoni et al. 2025; facebookresearch/dinov3 `train/ssl_meta_arch.py`, `train/train.py`): DINOv2's
recipe trained for longer, kept from losing its dense features by **Gram anchoring**. The course builds it on its
DINOv2 (methods/dinov2.py: two heads, Sinkhorn-Knopp targets, KoLeo, masks, LayerScale, layer-wise lr decay) and adds
what DINOv3's Gram stage adds, each a field of the Recipe below. (DINOv3's other changes, its heads' plain last
layer, RoPE, untied norms for the local crops and the local-loss reweighting, are not here.)

- a **Gram teacher**: a frozen copy of the EMA teacher's backbone (no heads), refreshed by copying the EMA teacher
  again every `gram_update_every` steps, at most `gram_max_updates` times (dinov3's `update_gram`, a hard copy,
  after the step's EMA update; 0 = never / without limit), the steps counted from this run's start (dinov3 counts
  absolute iterations from its pretraining's start). dinov3 loads the first Gram teacher from a checkpoint
  (`gram.ckpt`) and refuses to train without one; here a run started from exported weights (Config.init_from)
  starts its Gram teacher from them, and without them the Gram loss stays off until the first copy;
- the **Gram loss** (losses/gram.py) between the student's patch tokens of its (masked) global crops, after the
  backbone's last norm, and the Gram teacher's tokens of the same crops, weighted by `gram_loss_weight`:

      L = L_DINO + λ_iBOT · L_iBOT + 0.1 · L_KoLeo + w_gram · L_gram;

- the **high-resolution Gram teacher**: it sees each global crop at `gram_teacher_scale` x its size, and its finer
  grid of tokens is resized to the student's grid (bicubic, align_corners=False, no antialiasing) before the Gram
  matrices. dinov3 cuts that view from the original image at 512 px (for 256-px crops) without the photometric
  distortions, so its Gram teacher sees more pixels; here the student's (distorted) crop is resized up (bicubic).
  On CIFAR-10's 32-px images both are an upsampling; at ImageNet scale ours sees no detail the student's crop lacks;
- **constant schedules** (DEFAULTS: schedules="constant"): after the warm-up the lr, the weight decay and the
  teacher's momentum stay where they are, so training has no fixed end and may go on for as long as it improves.

The Recipe's and DEFAULTS' Gram, schedule and optimisation values are those of the Gram-anchoring stage of dinov3's
ViT-7B (`dinov3_vit7b16_gram_anchor.yaml`, iterations 1 M to 1.2 M, which resume its pretraining: no warm-up left,
teacher temperature 0.07, no frozen last layer); its Gram weight rises 0 -> 2 over the stage's first 1,000 iterations
and is 2 from the start here. Head sizes and AdamW's betas stay DINOv2's. The laptop preset refines a DINOv2 run of
ours from the step where its dense features were best (lesson 9).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import require
from ..losses.gram import GramLoss
from ..teacher import ema_update, make_teacher
from .dinov2 import DINOv2, DINOv2Recipe


@dataclass
class DINOv3Recipe(DINOv2Recipe):
    # dinov3_vit7b16_gram_anchor.yaml unless said otherwise
    teacher_momentum: float = 0.999      # schedules.momentum: 0.999 throughout (peak = end)
    teacher_momentum_end: float = 0.999
    teacher_temp_warmup: float = 0.0     # schedules.teacher_temp: 0.04 -> 0.07 by iteration 100k, long before the stage
    teacher_temp_start: float = 0.07
    layer_decay: float = 0.98            # optim.layerwise_decay
    freeze_last_layer: float = 0.0       # freeze_last_layer_epochs 5: over by the stage
    gram_loss_weight: float = 2.0        # gram.loss_weight_schedule: 0 -> 2.0 when the stage starts, then 2.0
                                         # (0 = no Gram loss and no Gram teacher: DINOv2 with constant schedules)
    gram_update_every: int = 10000       # gram.update_frequency (steps; 0 = the Gram teacher is never refreshed)
    gram_max_updates: int = 3            # gram.max_updates (0 = no limit)
    gram_img_level: bool = True          # gram.img_level: one Gram matrix per crop (False: one over the batch)
    gram_remove_neg: bool = False        # gram.remove_neg: negative similarities set to 0 in both matrices
    gram_remove_only_teacher_neg: bool = False  # gram.remove_only_teacher_neg: in the teacher's only
    gram_teacher_scale: float = 2.0      # crops.gram_teacher_crops_size / global_crops_size = 512 / 256 (1 = same size)

    def validate(self, cfg) -> None:
        super().validate(cfg)
        require(self.gram_loss_weight >= 0, f"gram_loss_weight must be >= 0, got {self.gram_loss_weight}")
        require(self.gram_update_every >= 0 and self.gram_max_updates >= 0,
                "gram_update_every and gram_max_updates count steps and copies: 0 or more")
        require(not (self.gram_remove_neg and self.gram_remove_only_teacher_neg),
                "gram_remove_neg and gram_remove_only_teacher_neg exclude each other: set one of them")
        require(self.gram_teacher_scale >= 1, f"gram_teacher_scale must be >= 1, got {self.gram_teacher_scale}")
        for crop in (cfg.image_size, cfg.highres_size):
            size = round(crop * self.gram_teacher_scale) if crop else 0
            require(size % cfg.patch_size == 0, f"the Gram teacher's crops ({crop} x {self.gram_teacher_scale} = "
                    f"{size} px) must be a whole number of {cfg.patch_size}-px patches: choose another "
                    "gram_teacher_scale")


class DINOv3(DINOv2):
    Recipe = DINOv3Recipe
    ACCUMULATION = DINOv2.ACCUMULATION + ("; the Gram loss is per image (gram_img_level=false: one matrix over each "
                                          "micro-batch of a process)")
    DEFAULTS = dict(
        DINOv2.DEFAULTS,
        schedules="constant",               # schedules v2 with peak = end
        lr=1.2e-4,                          # schedules.lr.peak 3e-5 x 4 (dinov3's sqrt_wrt_1024 multiplies by
                                            # 4 sqrt(batch / 1024); ours by sqrt(batch / 1024))
        warmup=0.0,                         # the stage resumes after the warm-up (100k of 1.2M iterations)
        weight_decay=0.04, weight_decay_end=0.04,  # schedules.weight_decay: 0.04 throughout
        clip_grad=30.0,                     # optim.clip_grad
        drop_path_rate=0.4,                 # student.drop_path_rate
    )
    PRESETS = {
        # Refinement of lesson 6's DINOv2 laptop recipe, continued from the step of our 5-epoch run whose patch
        # features segmented best (data/pretrained/README.md): its backbone, heads and teacher. The Gram teacher is
        # copied from the EMA teacher every 20 steps, 3 times, then kept (dinov3: every 10k steps, 3 times, in a
        # 200k-step stage); the Gram teacher sees 2x crops (64 px). 78 steps (0.2 epoch) at a constant lr of half the
        # long run's peak (dinov3's stage: 3e-5 after 5e-5) and momentum 0.998; the rest is lesson 6's recipe. The
        # dense probe runs at the start and the end (periodic_dense).
        "cifar10-laptop": dict(DINOv2.PRESETS["cifar10-laptop"], init_from="dinov2-vit-cifar10-5ep-best-dense",
                               epochs=0.2, warmup=0.0, knn_every=0.2, periodic_dense=True, highres_size=0, highres_fraction=0.0, freeze_last_layer=0.0,
                               lr=2e-3, teacher_momentum=0.998, teacher_momentum_end=0.998, gram_update_every=20,
                               gram_max_updates=3, clip_grad=3.0, layer_decay=0.9, teacher_temp_start=0.04),
        "smoke": dict(DINOv2.PRESETS["smoke"], gram_update_every=2, gram_max_updates=0, highres_size=0,
                      highres_fraction=0.0),
        # dinov3's one ImageNet-1k ViT-L config (configs/train/vitl_im1k_lin834.yaml: 82.2 % k-NN, 83.3 % linear,
        # 14 h on 4 nodes of 8 GPUs), which trains without Gram anchoring (gram.use_loss false) and with cosine
        # schedules: ViT-L/16 at 224 px, 8 local crops of 96 px, no registers, LayerScale 1e-5, drop path 0.3,
        # batch 2048 (64 per GPU), 100 "epochs" of 1250 iterations (= 200 passes over ImageNet-1k's 1.28 M images,
        # our epochs), lr 1e-3 x 4 at batch 1024 (sqrt rule), warm-up 10 of 100,
        # min lr 1e-6, weight decay 0.04 -> 0.4, momentum 0.992 -> 1, teacher temperature 0.04 -> 0.07 over 30,
        # last layer frozen 1 epoch, clip 3, layer decay 0.9, patch embedding x0.2, K = 65536 for both heads,
        # bottleneck 256, hidden 2048. dinov3 has no Gram stage for it; lesson 9 gives one, extrapolated from the
        # ViT-7B's (README: "Many GPUs").
        "imagenet-vitl16-dinov3": dict(image_size=224, patch_size=16, embed_dim=1024, depth=24, num_heads=16,
                                       epochs=200.0, batch_size=2048, lr=4e-3, warmup=0.1, min_lr=1e-6,
                                       schedules="cosine", weight_decay=0.04, weight_decay_end=0.4,
                                       drop_path_rate=0.3, layer_decay=0.9, teacher_momentum=0.992,
                                       teacher_momentum_end=1.0, teacher_temp=0.07, teacher_temp_start=0.04,
                                       teacher_temp_warmup=0.3, freeze_last_layer=0.01, out_dim=65536,
                                       patch_out_dim=65536, hidden_dim=2048, bottleneck_dim=256, n_local_crops=8,
                                       local_size=96, global_scale_min=0.32, local_scale_min=0.05,
                                       gram_loss_weight=0.0, parallel="fsdp", sequence_packing=True,
                                       efficient_drop_path=True),
    }

    def __init__(self, backbone, recipe: DINOv3Recipe = DINOv3Recipe(), image_size: int = 32,
                 teacher: torch.nn.ModuleDict | None = None):
        super().__init__(backbone, recipe, image_size, teacher)
        self.gram_loss = GramLoss(remove_neg=recipe.gram_remove_neg,
                                  remove_only_teacher_neg=recipe.gram_remove_only_teacher_neg)
        self.gram_teacher = make_teacher(self.teacher.backbone)  # kept with gram_loss_weight=0 too: one state shape
        # steps taken, Gram-teacher copies made, and whether it holds a trained network (loaded or copied): buffers,
        # so a checkpoint carries them and a resumed run refreshes at the same steps as an uninterrupted one
        self.register_buffer("gram_step", torch.zeros((), dtype=torch.long))
        self.register_buffer("gram_updates", torch.zeros((), dtype=torch.long))
        self.register_buffer("gram_ready", torch.zeros((), dtype=torch.bool))

    def start_from(self, backbone, heads):
        super().start_from(backbone, heads)
        self.gram_teacher.load_state_dict(self.teacher.backbone.state_dict())
        self.gram_ready.fill_(True)

    @torch.no_grad()
    def gram_teacher_patches(self, crops) -> torch.Tensor:
        """The Gram teacher's patch tokens of the global crops on the student's grid: (G*B, N, D). With
        gram_teacher_scale > 1 it sees the crops resized up, and its grid of tokens is resized down (bicubic)."""
        images = crops.global_crops
        size, patch = images.shape[-1], self.backbone.patch_size
        if self.recipe.gram_teacher_scale != 1:
            big = round(size * self.recipe.gram_teacher_scale)
            images = F.interpolate(images, size=(big, big), mode="bicubic", align_corners=False, antialias=False)
        tokens = self.gram_teacher.forward_tokens(images)["patch"]                 # (G*B, n*n, D)
        n, n_student = images.shape[-1] // patch, size // patch
        if n != n_student:
            grid = tokens.transpose(1, 2).unflatten(-1, (n, n))                     # (G*B, D, n, n)
            grid = F.interpolate(grid, size=(n_student, n_student), mode="bicubic", align_corners=False,
                                 antialias=False)
            tokens = grid.flatten(2).transpose(1, 2)                                # (G*B, N, D)
        return tokens

    def loss_terms(self, crops, diagnostics=False, tokens=None):
        tokens = self.student_tokens(crops) if tokens is None else tokens
        terms, stats = super().loss_terms(crops, diagnostics, tokens)
        if self.recipe.gram_loss_weight:  # 0 until the Gram teacher holds a trained network (dinov3 raises instead)
            patches = tokens[0]["patch"]
            gram = (self.gram_loss(patches, self.gram_teacher_patches(crops), self.recipe.gram_img_level)
                    if self.gram_ready else patches.sum() * 0.0)
            terms["gram_loss"] = self.recipe.gram_loss_weight * gram
        return terms, stats

    @torch.no_grad()
    def after_step(self, progress):
        """The EMA teacher's update, then (dinov3's train.py) the Gram teacher copied from it every gram_update_every
        steps, at most gram_max_updates times."""
        super().after_step(progress)
        self.gram_step += 1
        r = self.recipe
        if (r.gram_update_every and self.gram_step % r.gram_update_every == 0
                and (not r.gram_max_updates or self.gram_updates < r.gram_max_updates)):
            ema_update(self.gram_teacher, self.teacher.backbone, 0.0)  # momentum 0: a copy, shard by shard
            self.gram_updates += 1
            self.gram_ready.fill_(True)
