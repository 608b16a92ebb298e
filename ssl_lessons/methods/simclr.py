"""SimCLR (Chen et al. 2020): two random views of each image; pull their projections together and push
them away from the other 2N - 2 views in the batch with NT-Xent (losses/ntxent.py)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..augment import ViewAugment
from ..distributed import gather_with_grad
from ..heads import ProjectionMLP
from ..losses.ntxent import nt_xent
from .base import Method


class SimCLR(Method):
    def __init__(self, backbone, augment: ViewAugment, proj_hidden_dim: int = 512, proj_dim: int = 128,
                 temperature: float = 0.5):
        super().__init__()
        self.backbone = backbone
        self.head = ProjectionMLP(backbone.embed_dim, proj_hidden_dim, proj_dim)
        self.augment = augment
        self.temperature = temperature

    @classmethod
    def from_config(cls, cfg, backbone):
        augment = ViewAugment(cfg.image_size, (cfg.crop_scale_min, 1.0), cfg.jitter_strength)
        return cls(backbone, augment, cfg.proj_hidden_dim, cfg.proj_dim, cfg.temperature)

    def make_views(self, images, generator=None):
        return [self.augment(images, generator), self.augment(images, generator)]

    def forward(self, views):
        n = views[0].shape[0]
        z = self.head(self.backbone(torch.cat(views)))  # (2n, proj_dim): both views in one pass
        z1, z2 = gather_with_grad(z[:n]), gather_with_grad(z[n:])  # (world * n, proj_dim) each
        loss = nt_xent(z1, z2, self.temperature)
        with torch.no_grad():
            positive_cos = F.cosine_similarity(z1, z2, dim=1).mean()
        return loss, {"positive_cos": positive_cos.item()}
