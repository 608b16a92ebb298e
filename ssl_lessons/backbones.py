"""Backbones: a small ViT for 32 px images (timm) and a CIFAR ResNet-18 (torchvision).

Both map images (B, 3, H, W) to one feature vector per image (B, D) through `forward`.
The ViT also exposes what later lessons look inside:

- `patch_tokens(x)`   -> (B, N, D)  the final normed tokens of the N = (H/p)*(W/p) patches;
- `last_attention(x)` -> (B, heads, 1 + N, 1 + N)  the softmax attention of the last block.

timm's fused attention never materialises the weights; attention.py shows how `last_attention` reads them.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torchvision
from timm.models.vision_transformer import VisionTransformer

from .attention import last_self_attention


class ViTBackbone(nn.Module):
    """A timm VisionTransformer without a classifier; features are the pooled, normed tokens."""

    def __init__(self, img_size: int = 32, patch_size: int = 4, embed_dim: int = 192, depth: int = 6,
                 num_heads: int = 3, global_pool: str = "token", drop_path_rate: float = 0.0):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not a multiple of num_heads {num_heads}")
        self.vit = VisionTransformer(img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                                     num_heads=num_heads, num_classes=0, global_pool=global_pool,
                                     drop_path_rate=drop_path_rate, dynamic_img_size=True)
        self.embed_dim = embed_dim
        self.patch_size = patch_size

    @property
    def num_prefix_tokens(self) -> int:
        return self.vit.num_prefix_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit(x)  # (B, D): pooled per `global_pool`

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit.forward_features(x)  # (B, prefix + N, D)

    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens(x)[:, self.num_prefix_tokens:]  # (B, N, D)

    @torch.no_grad()
    def last_attention(self, x: torch.Tensor) -> torch.Tensor:
        return last_self_attention(self.vit, x)


def multicrop_features(backbone: nn.Module, views: list[torch.Tensor]) -> torch.Tensor:
    """Features of views of several resolutions, one backbone pass per run of equal-sized consecutive views
    (DINO's MultiCropWrapper): V x (B, 3, h_v, w_v) -> (V * B, D), in view order."""
    features, start = [], 0
    while start < len(views):
        end = start
        while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
            end += 1
        features.append(backbone(torch.cat(views[start:end])))
        start = end
    return torch.cat(features)


class ResNetBackbone(nn.Module):
    """torchvision's ResNet-18 adapted to 32 px as in the SimCLR paper's CIFAR setting (Appendix B.9):
    a 3x3 stride-1 first convolution and no max-pool. Features: the 512-d global-average-pooled output."""

    def __init__(self):
        super().__init__()
        net = torchvision.models.resnet18(weights=None)
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
        net.fc = nn.Identity()
        self.net = net
        self.embed_dim = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, 512)


def backbone_from_config(cfg) -> nn.Module:
    """The backbone a Config describes (fresh weights; torch's current seed decides them)."""
    return build_backbone(cfg.backbone, cfg.image_size, cfg.patch_size, cfg.embed_dim, cfg.depth, cfg.num_heads,
                          cfg.global_pool)


def build_backbone(name: str, img_size: int = 32, patch_size: int = 4, embed_dim: int = 192, depth: int = 6,
                   num_heads: int = 3, global_pool: str = "token", drop_path_rate: float = 0.0) -> nn.Module:
    """`name` is "vit" (default on CPU) or "resnet18"."""
    if name == "vit":
        return ViTBackbone(img_size, patch_size, embed_dim, depth, num_heads, global_pool, drop_path_rate)
    if name == "resnet18":
        return ResNetBackbone()
    raise ValueError(f"unknown backbone {name!r}: choose 'vit' or 'resnet18'")
