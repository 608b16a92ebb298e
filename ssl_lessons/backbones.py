"""Backbones: a small ViT for 32 px images (timm) and a CIFAR ResNet-18 (torchvision).

Both map images (B, 3, H, W) to one feature vector per image (B, D) through `forward`, and both have the one
token-level pass every method uses (dinov2's `forward_features` / `forward_features_list`):

    backbone.forward_tokens(x, masks=None) -> {"cls": (B, D), "patch": (B, N, D), "pooled": (B, D)}
    backbone.forward_tokens([x_global, x_local], [masks, None]) -> one such dict per tensor (one pass per size)

"pooled" is the image feature (`forward`'s output: the CLS token or the average of the patch tokens, per
`global_pool`); "patch" holds the N = (H/p)*(W/p) final patch tokens (the ResNet's: its last feature map). With
`masks` (B, N) bool, a ViT replaces the embeddings of the masked patches by a learned `mask_token` before the
position embeddings are added (iBOT, sec. 3; dinov2's `prepare_tokens_with_masks`).

The ViT also gives `last_attention(x)` -> (B, heads, T, T), the softmax attention of the last block; timm's fused
attention never materialises the weights, and attention.py shows how it is read.

Two of DINOv2's implementation tricks are options of the ViT (lesson 7): `packing` runs a list of crop sizes
through the blocks as one packed sequence with a block-diagonal attention mask (packing.py), and
`efficient_drop_path` computes stochastic depth's kept samples only (stochastic_depth.py).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torchvision
from timm.models.vision_transformer import VisionTransformer

from .attention import last_self_attention
from .packing import pack_sequences, unpack_sequences
from .stochastic_depth import SubsetDropPathBlock


def _per_tensor(forward_one, x, masks):
    """forward_tokens of one tensor, or of a list of tensors (one pass each) -> a dict or a list of dicts."""
    if isinstance(x, (list, tuple)):
        masks = [None] * len(x) if masks is None else masks
        return [forward_one(xi, mi) for xi, mi in zip(x, masks)]
    return forward_one(x, masks)


class ViTBackbone(nn.Module):
    """A timm VisionTransformer without a classifier. LayerScale (`init_values`), register tokens (`reg_tokens`),
    stochastic depth (`drop_path_rate`) and position-embedding resampling for other crop sizes are timm's own."""

    def __init__(self, img_size: int = 32, patch_size: int = 4, embed_dim: int = 192, depth: int = 6,
                 num_heads: int = 3, global_pool: str = "token", drop_path_rate: float = 0.0,
                 layerscale_init: float = 0.0, register_tokens: int = 0, mask_token: bool = False,
                 packing: bool = False, efficient_drop_path: bool = False):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not a multiple of num_heads {num_heads}")
        self.vit = VisionTransformer(img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                                     num_heads=num_heads, num_classes=0, global_pool=global_pool,
                                     drop_path_rate=drop_path_rate, init_values=layerscale_init or None,
                                     reg_tokens=register_tokens, dynamic_img_size=True,
                                     **({"block_fn": SubsetDropPathBlock} if efficient_drop_path else {}))
        self.packing = packing
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        # only methods that mask patches have one: DDP requires every trainable parameter to get a gradient
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim)) if mask_token else None

    @property
    def num_prefix_tokens(self) -> int:
        return self.vit.num_prefix_tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(x)["pooled"]  # (B, D)

    def forward_tokens(self, x, masks=None):
        if self.packing and isinstance(x, (list, tuple)) and len(x) > 1:
            return self._forward_packed(x, [None] * len(x) if masks is None else masks)
        return _per_tensor(self._forward_tokens, x, masks)

    def _forward_tokens(self, x: torch.Tensor, masks: torch.Tensor | None) -> dict:
        return self._outputs(self.vit.norm(self.vit.blocks(self._embed(x, masks))))

    def _forward_packed(self, xs: list[torch.Tensor], masks: list) -> list[dict]:
        """All crop sizes through the blocks at once, each crop attending to itself only (packing.py)."""
        packed, attn_mask, layout = pack_sequences([self._embed(x, m) for x, m in zip(xs, masks)])
        for block in self.vit.blocks:
            packed = block(packed, attn_mask=attn_mask)
        return [self._outputs(t) for t in unpack_sequences(self.vit.norm(packed), layout)]

    def _embed(self, x: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
        """Images (B, 3, H, W) -> the tokens entering the first block (B, prefix + N, D)."""
        vit = self.vit
        t = vit.patch_embed(x)                                    # (B, h, w, D): timm's dynamic-size layout
        if masks is not None:
            if self.mask_token is None:
                raise ValueError("this backbone has no mask token: build it with mask_token=True")
            t = torch.where(masks.view(*t.shape[:-1], 1), self.mask_token.to(t.dtype), t)
        t = vit._pos_embed(t)                                     # (B, prefix + N, D)
        return vit.norm_pre(vit.patch_drop(t))

    def _outputs(self, t: torch.Tensor) -> dict:
        vit = self.vit
        return {"cls": t[:, 0], "patch": t[:, vit.num_prefix_tokens:], "pooled": vit.forward_head(t, pre_logits=True)}

    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(x)["patch"]  # (B, N, D)

    @torch.no_grad()
    def last_attention(self, x: torch.Tensor) -> torch.Tensor:
        return last_self_attention(self.vit, x)


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

    def forward_tokens(self, x, masks=None):
        return _per_tensor(self._forward_tokens, x, masks)

    def _forward_tokens(self, x: torch.Tensor, masks) -> dict:
        if masks is not None:
            raise ValueError("masked patches need a ViT backbone (backbone=vit)")
        n = self.net
        fmap = n.layer4(n.layer3(n.layer2(n.layer1(n.relu(n.bn1(n.conv1(x)))))))  # (B, 512, h, w)
        patch = fmap.flatten(2).transpose(1, 2)                                   # (B, h*w, 512)
        pooled = patch.mean(dim=1)
        return {"cls": pooled, "patch": patch, "pooled": pooled}


def backbone_from_config(cfg, mask_token: bool = False) -> nn.Module:
    """The backbone a Config describes (fresh weights; torch's current seed decides them)."""
    if cfg.backbone == "resnet18":
        return ResNetBackbone()
    return build_backbone(cfg.backbone, cfg.image_size, cfg.patch_size, cfg.embed_dim, cfg.depth, cfg.num_heads,
                          cfg.global_pool, drop_path_rate=cfg.drop_path_rate, layerscale_init=cfg.layerscale_init,
                          register_tokens=cfg.register_tokens, mask_token=mask_token,
                          packing=cfg.sequence_packing, efficient_drop_path=cfg.efficient_drop_path)


def build_backbone(name: str, img_size: int = 32, patch_size: int = 4, embed_dim: int = 192, depth: int = 6,
                   num_heads: int = 3, global_pool: str = "token", **vit_options) -> nn.Module:
    """`name` is "vit" (default on CPU) or "resnet18"; `vit_options` go to ViTBackbone."""
    if name == "vit":
        return ViTBackbone(img_size, patch_size, embed_dim, depth, num_heads, global_pool, **vit_options)
    if name == "resnet18":
        return ResNetBackbone()
    raise ValueError(f"unknown backbone {name!r}: choose 'vit' or 'resnet18'")
