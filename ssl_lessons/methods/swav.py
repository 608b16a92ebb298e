"""SwAV (Caron et al. 2020): swap assignments between views. Embeddings are scored against K learnable
prototypes; Sinkhorn-Knopp (sinkhorn.py) turns the scores of each global view into balanced codes (no gradient),
and every other view must predict that code (losses/swav.py). Multi-crop adds cheap small views that only predict.

As the official main_swav.py: prototypes re-normalised to unit length before every step and frozen for the first
part of training; a queue of this rank's embeddings from past batches joins Sinkhorn when batches are small, from
`queue_start` of training on. Its length is trimmed to a multiple of the global batch and split across ranks
(each rank keeps its own queue_length / world rows), and it is each rank's own state: not a buffer (DDP would
overwrite it with rank 0's before every forward), saved per rank in the checkpoint (Method.rank_state).

The views are SimCLR's (SwAV uses its colour distortion), at the CIFAR-10 strength s = 0.5; no blur at 32 px.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..augment import simclr_jitter
from ..errors import require
from ..crops import MultiCropRecipe
from ..diagnostics import effective_rank, normalized_std
from ..distributed import world_size
from ..heads import ProjectionMLP
from ..losses.swav import swapped_prediction_loss
from ..optim import parameter_groups
from ..sinkhorn import sinkhorn_knopp
from .base import Method


@dataclass
class SwAVRecipe(MultiCropRecipe):
    proj_hidden_dim: int = 512
    proj_dim: int = 128
    num_prototypes: int = 300
    temperature: float = 0.1            # of the softmax over prototype scores
    sinkhorn_epsilon: float = 0.05
    sinkhorn_iters: int = 3
    freeze_prototypes: float = 0.05     # fraction of training with frozen prototypes (the paper: the first epoch)
    queue_length: int = 0               # past embeddings (all ranks together) Sinkhorn also balances over; 0 = none
    queue_start: float = 0.15           # fraction of training before the queue starts (main_swav.py: epoch 15)
    jitter_strength: float = 0.5        # SimCLR's colour distortion strength s

    def validate(self, cfg) -> None:
        super().validate(cfg)
        for key in ("proj_hidden_dim", "proj_dim", "num_prototypes", "temperature", "sinkhorn_epsilon",
                    "sinkhorn_iters"):
            require(getattr(self, key) > 0, f"{key} must be positive, got {getattr(self, key)}")
        for key in ("freeze_prototypes", "queue_start"):
            require(0 <= getattr(self, key) <= 1, f"{key} is a fraction of training in [0, 1], got {getattr(self, key)}")
        require(self.queue_length == 0 or self.queue_length >= cfg.batch_size,
                f"queue_length ({self.queue_length}) must be 0 or at least batch_size ({cfg.batch_size}): it is "
                "trimmed to a multiple of the global batch, as main_swav.py does")
        require(cfg.accum_steps == 1, "SwAV takes no gradient accumulation (accum_steps=1): Sinkhorn-Knopp shares the "
                                      "batch out equally among the prototypes, and its queue is filled per batch")


def rank_queue_length(queue_length: int, local_batch: int, world: int) -> int:
    """main_swav.py: queue_length -= queue_length % (batch per rank * world); each rank keeps 1/world of it."""
    return (queue_length - queue_length % (local_batch * world)) // world


class SwAV(Method):
    Recipe = SwAVRecipe
    # SwAV's local crops cost extra per image, so fewer epochs fit the laptop's ~15 minutes
    PRESETS = {"cifar10-laptop": dict(epochs=2.3, num_prototypes=100),
               "smoke": dict(n_local_crops=2, num_prototypes=16, proj_hidden_dim=64, proj_dim=32)}

    def __init__(self, backbone, recipe: SwAVRecipe = SwAVRecipe(), image_size: int = 32):
        super().__init__()
        self.recipe = recipe
        self.backbone = backbone
        self.projector = ProjectionMLP(backbone.embed_dim, recipe.proj_hidden_dim, recipe.proj_dim)
        self.prototypes = nn.Linear(recipe.proj_dim, recipe.num_prototypes, bias=False)
        jitter = simclr_jitter(recipe.jitter_strength)
        # main_swav.py: PILRandomGaussianBlur (p = 0.5) on every crop (full resolution only)
        self.crops = recipe.multicrop(image_size, [dict(jitter=jitter, blur_p=0.5)] * 2, jitter=jitter, blur_p=0.5)
        self.queue: torch.Tensor | None = None  # (n_global, rank's length, proj_dim), made at queue_start
        self.queue_in_use = False               # main_swav.py's use_the_queue
        self.queue_started = False

    def embed(self, crops) -> torch.Tensor:
        """Crops -> L2-normalised embeddings (V * B, proj_dim), view-major, one backbone pass per crop size."""
        features = torch.cat([f["pooled"] for f in self.backbone.forward_tokens(crops.by_size())])
        return F.normalize(self.projector(features), dim=1)

    def before_step(self, progress):
        self.queue_started = self.recipe.queue_length > 0 and progress >= self.recipe.queue_start

    def forward(self, crops, diagnostics=False):
        with torch.no_grad():  # prototypes on the unit sphere, so scores are cosine similarities
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        b, n_global = crops.batch_size, crops.n_global
        z = self.embed(crops)                            # (V * b, D)
        scores = self.prototypes(z).split(b)             # V x (b, K)
        if self.queue_started and self.queue is None:
            length = rank_queue_length(self.recipe.queue_length, b, world_size())
            self.queue = z.new_zeros(n_global, length, z.shape[1]) if length else None
        codes = []
        with torch.no_grad():
            for i in range(n_global):
                s = scores[i].detach()
                if self.queue is not None:
                    if self.queue_in_use or bool((self.queue[i, -1] != 0).any()):
                        self.queue_in_use = True
                        s = torch.cat([self.queue[i] @ self.prototypes.weight.T, s])  # (Q + b, K)
                    self.queue[i, b:] = self.queue[i, :-b].clone()
                    self.queue[i, :b] = z[i * b:(i + 1) * b].detach()
                codes.append(sinkhorn_knopp(s, self.recipe.sinkhorn_epsilon, self.recipe.sinkhorn_iters)[-b:])
        loss = swapped_prediction_loss(list(scores), codes, self.recipe.temperature)
        if not diagnostics:
            return loss, {}
        global_z = z[:n_global * b].detach()
        return loss, {"output_std": normalized_std(global_z), "effective_rank": effective_rank(global_z)}

    def param_groups(self):
        frozen = lambda name: self.recipe.freeze_prototypes if name.startswith("prototypes.") else 0.0  # noqa: E731
        return parameter_groups(self.named_parameters(), frozen_until=frozen)

    def rank_state(self):
        return {"queue": None if self.queue is None else self.queue.cpu(), "queue_in_use": self.queue_in_use}

    def load_rank_state(self, state):
        queue = state.get("queue")
        self.queue = None if queue is None else queue.to(self.prototypes.weight.device)
        self.queue_in_use = bool(state.get("queue_in_use", False))
