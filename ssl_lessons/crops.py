"""The views of one batch, as every method reads them: `Crops` (dinov2's `collate_data_and_cast` output).

Multi-crop (Caron et al. 2020, SwAV sec. 3.2; reused by DINO, iBOT and DINOv2): G global views at full size from
large crops and L local views at a small size from small crops. SimCLR and BYOL are the case G = 2, L = 0.

    crops = MultiCrop([global_view_1, global_view_2], local_view, n_local=4)(images_uint8, generator)
    crops.global_crops   (G*B, 3, H, W)   view-major: rows g*B .. (g+1)*B - 1 are global view g
    crops.local_crops    (L*B, 3, h, w)   or None
    crops.masks          (G*B, N) bool    the masked patches of each global crop (iBOT), or None

A crop size is one tensor, so a backbone makes one pass per size (`backbone.forward_tokens(crops.by_size())`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .augment import ViewAugment
from .errors import require


@dataclass
class Crops:
    global_crops: torch.Tensor
    local_crops: torch.Tensor | None
    n_global: int
    n_local: int = 0
    masks: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return len(self.global_crops) // self.n_global

    def by_size(self) -> list[torch.Tensor]:
        """[global crops (G*B, ...), local crops (L*B, ...)]: one tensor per crop size."""
        return [self.global_crops] + ([self.local_crops] if self.n_local else [])

    def views(self) -> list[torch.Tensor]:
        """G + L tensors (B, 3, h, w): every view on its own, globals first."""
        b = self.batch_size
        return [v for t in self.by_size() for v in t.split(b)]

    @property
    def n_views(self) -> int:
        return self.n_global + self.n_local

    def to(self, device, non_blocking: bool = False) -> "Crops":
        """The same crops on `device` (the streaming loader's batches arrive on the CPU, pinned)."""
        move = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)  # noqa: E731
        return Crops(move(self.global_crops), move(self.local_crops), self.n_global, self.n_local, move(self.masks))

    def part(self, index: int, count: int) -> "Crops":
        """The index-th of `count` equal parts of the batch, in every view (what rank `index` of `count` would have
        made from its share of the images): rows b*B/count .. (b+1)*B/count - 1 of each view."""
        b = self.batch_size
        if b % count:
            raise ValueError(f"a batch of {b} does not split into {count} equal parts")
        size = b // count

        def take(t, n_views):
            return None if t is None else t.view(n_views, b, *t.shape[1:])[:, index * size:(index + 1) * size].flatten(0, 1)

        return Crops(take(self.global_crops, self.n_global), take(self.local_crops, self.n_local), self.n_global,
                     self.n_local, take(self.masks, self.n_global))


class MultiCrop:
    """`global_views[i]` makes global crop i (methods whose two views differ, like BYOL and DINO, pass two
    different ViewAugments); `local_view` makes each of the `n_local` local crops.

    (B, 3, H, W) uint8 -> Crops."""

    def __init__(self, global_views: Sequence[ViewAugment], local_view: ViewAugment | None = None, n_local: int = 0):
        if n_local and local_view is None:
            raise ValueError("n_local > 0 needs a local_view")
        self.global_views, self.local_view, self.n_local = list(global_views), local_view, n_local

    @property
    def n_global(self) -> int:
        return len(self.global_views)

    @property
    def global_size(self) -> int:
        return self.global_views[0].size

    def set_global_size(self, size: int) -> None:
        """Global crops of `size` px from now on (the high-resolution phase); local crops keep theirs."""
        for view in self.global_views:
            view.size = size

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> Crops:
        global_crops = torch.cat([view(images, generator) for view in self.global_views])
        local_crops = (torch.cat([self.local_view(images, generator) for _ in range(self.n_local)])
                       if self.n_local else None)
        return Crops(global_crops, local_crops, self.n_global, self.n_local)


@dataclass
class MultiCropRecipe:
    """The multi-crop fields a method's recipe shares (SwAV, DINO): sizes, counts and area ranges."""
    n_local_crops: int = 4              # 2 global views + this many local views
    local_size: int = 16                # side of the local crops (the global ones are image_size)
    global_scale_min: float = 0.14      # global crops cover (global_scale_min, 1) of the image
    local_scale_min: float = 0.05       # local crops cover (local_scale_min, global_scale_min)

    def validate(self, cfg) -> None:
        require(self.n_local_crops >= 0, f"n_local_crops must be >= 0, got {self.n_local_crops}")
        require(0 < self.local_size < cfg.image_size,
                f"local_size ({self.local_size}) must be positive and below image_size ({cfg.image_size}): "
                "local crops are the small ones")
        require(0 < self.local_scale_min < self.global_scale_min <= 1,
                f"need 0 < local_scale_min ({self.local_scale_min}) < global_scale_min ({self.global_scale_min}) "
                "<= 1: local crops cover the smaller areas")
        if cfg.backbone == "vit":
            require(self.local_size % cfg.patch_size == 0,
                    f"local_size {self.local_size} is not a multiple of patch_size {cfg.patch_size}")

    def multicrop(self, image_size: int, global_views: Sequence[dict], **local_kwargs) -> MultiCrop:
        """MultiCrop with one ViewAugment per dict of `global_views` (its own jitter, solarize_p, ...), at
        image_size on (global_scale_min, 1), and local views at local_size on (local_scale_min, global_scale_min)."""
        make_global = [ViewAugment(image_size, (self.global_scale_min, 1.0), **kw) for kw in global_views]
        local = ViewAugment(self.local_size, (self.local_scale_min, self.global_scale_min), **local_kwargs)
        return MultiCrop(make_global, local, self.n_local_crops)
