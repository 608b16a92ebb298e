"""SimCLR (Chen et al. 2020): two random views of each image; pull their projections together and push
them away from the other 2N - 2 views in the batch with NT-Xent (losses/ntxent.py).

Both views go through the backbone as one batch, as the official code does (its BatchNorm statistics span both
views; under DDP on GPUs they become global, SyncBatchNorm, as in the paper's sec. B.5)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..augment import ViewAugment, simclr_jitter
from ..errors import require
from ..crops import MultiCrop
from ..distributed import gather_with_grad
from ..heads import ProjectionMLP
from ..losses.ntxent import nt_xent
from .base import Method


@dataclass
class SimCLRRecipe:
    proj_hidden_dim: int = 512
    proj_dim: int = 128
    temperature: float = 0.5        # NT-Xent tau; the paper's CIFAR-10 setting is 0.5
    crop_scale_min: float = 0.08    # RandomResizedCrop area range (crop_scale_min, 1)
    jitter_strength: float = 0.5    # colour distortion strength s (App. A: 0.5 for CIFAR-10)

    def validate(self, cfg) -> None:
        require(self.proj_hidden_dim > 0 and self.proj_dim > 0, "proj_hidden_dim and proj_dim must be positive")
        require(self.temperature > 0, f"temperature must be positive, got {self.temperature}")
        require(0 < self.crop_scale_min <= 1, f"crop_scale_min must be in (0, 1], got {self.crop_scale_min}")
        require(self.jitter_strength >= 0, f"jitter_strength must be >= 0, got {self.jitter_strength}")
        require(cfg.accum_steps == 1, "SimCLR takes no gradient accumulation (accum_steps=1): its negatives are the "
                                      "other images of the batch, so micro-batches are a smaller batch, not a split one")


class SimCLR(Method):
    Recipe = SimCLRRecipe
    PRESETS = {"cifar10-laptop": dict(temperature=0.2, crop_scale_min=0.2),
               "smoke": dict(proj_hidden_dim=64, proj_dim=32)}

    def __init__(self, backbone, recipe: SimCLRRecipe = SimCLRRecipe(), image_size: int = 32):
        super().__init__()
        self.recipe = recipe
        self.backbone = backbone
        self.head = ProjectionMLP(backbone.embed_dim, recipe.proj_hidden_dim, recipe.proj_dim)
        view = ViewAugment(image_size, (recipe.crop_scale_min, 1.0), simclr_jitter(recipe.jitter_strength),
                           blur_p=0.5)  # App. A: blur on half the images (full resolution only)
        self.crops = MultiCrop([view, view])

    def forward(self, crops, diagnostics=False):
        n = crops.batch_size
        z = self.head(self.backbone(crops.global_crops))  # (2n, proj_dim): both views in one pass
        z1, z2 = gather_with_grad(z[:n]), gather_with_grad(z[n:])  # (world * n, proj_dim) each
        loss = nt_xent(z1, z2, self.recipe.temperature)
        if not diagnostics:
            return loss, {}
        with torch.no_grad():
            positive_cos = F.cosine_similarity(z1, z2, dim=1).mean()
        return loss, {"positive_cos": positive_cos}
