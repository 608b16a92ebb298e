"""SwAV (Caron et al. 2020): swap assignments between views. Embeddings are scored against K learnable
prototypes; Sinkhorn-Knopp turns the scores of each global view into balanced codes (no gradient), and every
other view must predict that code (losses/swav.py). Multi-crop adds cheap small views that only predict.

Prototypes are re-normalised to unit length before every step and frozen for the first part of training, as in
the official main_swav.py. A queue of embeddings from past batches gives Sinkhorn more samples to balance over
when batches are small (switch it on with queue_length > 0).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..augment import MultiCrop
from ..backbones import multicrop_features
from ..diagnostics import effective_rank, normalized_std
from ..heads import ProjectionMLP
from ..losses.swav import sinkhorn_knopp, swapped_prediction_loss
from .base import Method


class SwAV(Method):
    def __init__(self, backbone, multicrop: MultiCrop, proj_hidden_dim: int = 512, proj_dim: int = 128,
                 num_prototypes: int = 300, temperature: float = 0.1, epsilon: float = 0.05, sinkhorn_iters: int = 3,
                 freeze_prototypes: float = 0.05, queue_length: int = 0):
        super().__init__()
        self.backbone = backbone
        self.projector = ProjectionMLP(backbone.embed_dim, proj_hidden_dim, proj_dim)
        self.prototypes = nn.Linear(proj_dim, num_prototypes, bias=False)
        self.multicrop = multicrop
        self.temperature, self.epsilon, self.sinkhorn_iters = temperature, epsilon, sinkhorn_iters
        self.freeze_prototypes = freeze_prototypes
        self.register_buffer("queue", torch.zeros(multicrop.n_global, queue_length, proj_dim))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))

    @classmethod
    def from_config(cls, cfg, backbone):
        multicrop = MultiCrop(cfg.image_size, cfg.local_size, cfg.n_local_crops, (cfg.global_scale_min, 1.0),
                              (cfg.local_scale_min, cfg.global_scale_min), cfg.jitter_strength)
        return cls(backbone, multicrop, cfg.proj_hidden_dim, cfg.proj_dim, cfg.num_prototypes, cfg.swav_temperature,
                   cfg.sinkhorn_epsilon, cfg.sinkhorn_iters, cfg.freeze_prototypes, cfg.queue_length)

    def make_views(self, images, generator=None):
        return self.multicrop(images, generator)

    def embed(self, views: list[torch.Tensor]) -> torch.Tensor:
        """Views of one or two resolutions -> L2-normalised embeddings (V * B, proj_dim), view-major."""
        return F.normalize(self.projector(multicrop_features(self.backbone, views)), dim=1)

    def forward(self, views):
        with torch.no_grad():  # prototypes on the unit sphere, so scores are cosine similarities
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        b, n_global = views[0].shape[0], self.multicrop.n_global
        z = self.embed(views)                            # (V * b, D)
        scores = self.prototypes(z).split(b)             # V x (b, K)
        codes = []
        for i in range(n_global):
            with torch.no_grad():
                s = scores[i].detach()
                if self.queue.shape[1]:
                    if self.queue_filled:
                        s = torch.cat([self.queue[i] @ self.prototypes.weight.T, s])  # (Q + b, K)
                    self.queue[i, b:] = self.queue[i, :-b].clone()
                    self.queue[i, :b] = z[i * b:(i + 1) * b].detach()
                codes.append(sinkhorn_knopp(s, self.epsilon, self.sinkhorn_iters)[-b:])  # (b, K)
        if self.queue.shape[1] and not self.queue_filled and bool((self.queue[:, -1] != 0).any()):
            self.queue_filled.fill_(1)
        loss = swapped_prediction_loss(list(scores), codes, self.temperature)
        global_z = z[:n_global * b]
        return loss, {"output_std": normalized_std(global_z), "effective_rank": effective_rank(global_z)}

    def after_backward(self, progress):
        if progress < self.freeze_prototypes:
            self.prototypes.weight.grad = None
