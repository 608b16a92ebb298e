"""Where a ViT looks: the last block's attention from the CLS token to the patches (DINO, sec. 4.2.1 and Fig. 1;
facebookresearch/dino `visualize_attention.py`).

timm computes attention with a fused kernel (`scaled_dot_product_attention`) that never materialises the weights.
`last_self_attention` switches the fused path off for one call and reads softmax(q k^T / sqrt(d)) from the input
of `attn_drop`, where timm's unfused path applies dropout to it. That works for any timm ViT whose blocks use
`timm.layers.Attention` (vit_*, deit_*, the DINO checkpoints, ViTs with register tokens).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


@torch.no_grad()
def last_self_attention(vit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Softmax attention weights of the last block of a timm ViT: (B, heads, T, T), rows sum to 1,
    T = prefix tokens (CLS, registers) + patches."""
    attn = vit.blocks[-1].attn
    captured = []
    hook = attn.attn_drop.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0]))
    fused, attn.fused_attn = attn.fused_attn, False
    try:
        vit.forward_features(x)
    finally:
        attn.fused_attn = fused
        hook.remove()
    return captured[0]


def _timm_vit(model: nn.Module) -> nn.Module:
    return model.vit if hasattr(model, "vit") else model  # a ViTBackbone, or a timm ViT itself


@torch.no_grad()
def cls_attention_maps(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, heads, H/p, W/p): the CLS token's attention over the patches in the last block.

    Each head's map is >= 0 and sums to at most 1 (the rest goes to the CLS token itself and to registers)."""
    vit = _timm_vit(model)
    patch = vit.patch_embed.patch_size
    grid_h, grid_w = images.shape[-2] // patch[0], images.shape[-1] // patch[1]
    attn = last_self_attention(vit, images)                      # (B, heads, T, T)
    cls_to_patches = attn[:, :, 0, vit.num_prefix_tokens:]        # (B, heads, N)
    return cls_to_patches.reshape(len(images), -1, grid_h, grid_w)


def keep_attention_mass(maps: torch.Tensor, mass: float = 0.6) -> torch.Tensor:
    """Boolean masks (same shape as maps (..., h, w)) of the smallest set of patches holding `mass` of each map's
    attention, as visualize_attention.py: sort, normalise, cumulative sum, keep where it exceeds 1 - mass."""
    flat = maps.flatten(-2)
    values, order = torch.sort(flat, dim=-1)                      # ascending
    values = values / values.sum(dim=-1, keepdim=True)
    keep_sorted = values.cumsum(dim=-1) > (1 - mass)
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)  # back to patch order
    return keep.view_as(maps)


def upsample_maps(maps: torch.Tensor, size: tuple[int, int], mode: str = "nearest") -> torch.Tensor:
    """(B, heads, h, w) -> (B, heads, *size): patch-grid maps at image resolution."""
    return F.interpolate(maps.float(), size=size, mode=mode)


@torch.no_grad()
def patch_token_norms(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, H/p, W/p): the L2 norm of each patch token in the residual stream after the last block,
    before the final LayerNorm (which would make every norm about sqrt(D)). Darcet et al. (2024, Fig. 3) find a few
    background tokens there with norms many times the rest in large ViTs without registers."""
    vit = _timm_vit(model)
    captured = []
    hook = vit.norm.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0]))
    was_training = vit.training
    vit.eval()
    try:
        vit.forward_features(images)
    finally:
        hook.remove()
        vit.train(was_training)
    patch = vit.patch_embed.patch_size
    grid_h, grid_w = images.shape[-2] // patch[0], images.shape[-1] // patch[1]
    return captured[0][:, vit.num_prefix_tokens:].norm(dim=-1).reshape(len(images), grid_h, grid_w)
