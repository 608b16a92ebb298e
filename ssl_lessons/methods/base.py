"""The contract between a self-supervised method and the one training loop (train.py).

A method is an nn.Module that owns its networks, its views and its loss, and declares its recipe beside its code:

    Recipe      a dataclass of the method's own config fields and their defaults (config.py resolves overrides)
    DEFAULTS    general Config fields the method always changes (DINO: weight decay 0.04 -> 0.4, the CLS token)
    PRESETS     {preset: overrides} for this method only (the laptop budget's epochs, a smaller K, ...)

The loop calls, every step:

    method.set_global_size(size)                          # only when a run's high-resolution phase begins
    method.before_step(progress)                          # e.g. set this step's teacher temperature
    crops = method.make_views(images_uint8, generator)    # a crops.Crops: global and local crops, patch masks
                                                          # (streamed data: crops come from DataLoader workers,
                                                          #  then crops = method.complete_views(crops, generator))
    loss, logs = model(crops, diagnostics=log_now)        # model = method, or DDP(method); logs only if asked
    loss.backward()
    method.clip_gradients(cfg.clip_grad)                  # each tensor on its own, unless a method says otherwise
    optimizer.step()                                      # on method.param_groups(): lr x multiplier, freezes
    method.after_step(progress)                           # e.g. update a momentum teacher

saves `state_dict()` (identical on every rank) and `rank_state()` (each rank's own, e.g. SwAV's queue), and
evaluates `method.eval_backbone` (images -> features) with k-NN. Nothing else about the method is known to the loop.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..crops import Crops, MultiCrop
from ..optim import clip_gradients, parameter_groups
from ..teacher import set_teacher_mode


class Method(nn.Module):
    Recipe: type
    DEFAULTS: dict = {}
    PRESETS: dict = {}
    uses_patch_masks = False   # True: the backbone is built with a learnable mask token
    TITLE = ""                 # its name in the course's tables; empty = the class name
    ACCUMULATION = ""          # what sees a micro-batch instead of the batch when accum_steps > 1 (step.py)
    schedules = "cosine"       # Config.schedules, set by build_method: "constant" holds the method's decays too

    backbone: nn.Module
    crops: MultiCrop

    @classmethod
    def from_config(cls, cfg, backbone: nn.Module) -> "Method":
        return cls(backbone, cfg.recipe, image_size=cfg.image_size)

    def make_views(self, images: torch.Tensor, generator: torch.Generator | None = None) -> Crops:
        """(B, 3, H, W) uint8 -> this method's crops of the batch."""
        return self.complete_views(self.crops(images, generator), generator)

    def complete_views(self, crops: Crops, generator: torch.Generator | None = None) -> Crops:
        """What a method adds to a batch's crops beyond their pixels (iBOT's patch masks), on the crops' device;
        nothing unless a method says otherwise. The pixels may come from make_views or from the streaming loader's
        workers (streaming.py), whose crops the loop completes here."""
        return crops

    def set_global_size(self, size: int) -> None:
        """Make the global crops `size` px from now on (the loop's high-resolution phase, DINOv2 sec. 4); a ViT
        resamples its position embeddings to the new grid of patches on the fly (timm's dynamic_img_size)."""
        self.crops.set_global_size(size)

    def forward(self, crops: Crops, diagnostics: bool = False) -> tuple[torch.Tensor, dict]:
        """The loss of a batch, and {name: scalar tensor} diagnostics; these cost time (syncs, SVDs), so they are
        computed only when `diagnostics` is True (the steps whose logs are kept)."""
        raise NotImplementedError

    def decay_progress(self, progress: float) -> float:
        """Where a decaying schedule of the method (a teacher's momentum) stands: `progress`, or 0 (its start value,
        held) with constant schedules."""
        return progress if self.schedules == "cosine" else 0.0

    def start_from(self, backbone: dict, heads: dict[str, dict]) -> None:
        """Config.init_from: start from an exported backbone's weights (pretrained.py) instead of random ones:
        `backbone` its state, `heads` {name: state} of the heads exported with it. The backbone is loaded here;
        a method that keeps copies of it (a momentum teacher) or has heads of those names loads them too."""
        self.backbone.load_state_dict(backbone)

    def before_step(self, progress: float) -> None:
        """Called before the views of a step are made; progress = step / total_steps in [0, 1)."""

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        """Called after every optimizer step."""

    def param_groups(self) -> list[dict]:
        """AdamW parameter groups (optim.py): weight decay on weight matrices only, lr multiplier 1, none frozen."""
        return parameter_groups(self.named_parameters())

    def clip_gradients(self, max_norm: float) -> None:
        """Clip the gradients before the step: each parameter tensor to norm max_norm on its own (DINO's
        utils.clip_gradients, which the official SwAV, DINO and iBOT code share)."""
        clip_gradients(self, max_norm)

    def rank_state(self) -> dict:
        """State that differs between ranks (not in state_dict, which DDP keeps identical): saved per rank."""
        return {}

    def load_rank_state(self, state: dict) -> None:
        """Restore what rank_state returned on this rank."""

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.modules():
            if getattr(m, "is_teacher", False):
                set_teacher_mode(m, mode)
        return self

    @property
    def eval_backbone(self) -> nn.Module:
        """The network whose features are evaluated (the student's backbone unless a method says otherwise)."""
        return self.backbone

    def export_heads(self) -> dict[str, nn.Module]:
        """The heads that belong with eval_backbone, exported beside it (pretrained.py) so that it can teach a
        student (methods/distill.py): {"head": ..., "patch_head": ...}; none unless a method says otherwise."""
        return {}
