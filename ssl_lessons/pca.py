"""PCA of patch features: the picture of DINOv2's Fig. 1 (Oquab et al. 2024, sec. 7.4; asked for in
facebookresearch/dinov2 issues #23, #45, #292).

    features = patch_features(backbone, images, size=64)   # (n, h, w, D): every patch of every image
    result = patch_pca(features)                           # .first, .foreground, .rgb (n, h, w, 3) in [0, 1]

1. One PCA over the patches of all n images together; its first component is the direction along which patches
   vary most. For a backbone that has learned objects, that is object against background.
2. The first component is thresholded at 0 (PCA centres the data, so 0 is the mean patch) to split foreground from
   background. A principal direction has no sign of its own (the solver may return +v or -v), so the sign is
   chosen from the picture: the border patches are taken to be mostly background — true for CIFAR-10 and most
   object-centred photos, where the object sits in the middle. If the border's mean score is positive, the
   component is negated. (Where that does not hold, e.g. an object touching every edge, the split is inverted.)
3. A second PCA on the foreground patches only; its first 3 components, each min-max scaled over all foreground
   patches of all images (the same scale for every image, so equal colours mean equal features), become RGB.
   Background patches are black.

Because step 3 is fitted on all images jointly, matching parts of different objects (heads, wheels) get matching
colours when the backbone represents them alike — the property Fig. 1 shows across cats, dogs and horses.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class PatchPCA:
    first: torch.Tensor        # (n, h, w) the first component's score of every patch, oriented (border < 0)
    foreground: torch.Tensor   # (n, h, w) bool: first > threshold
    rgb: torch.Tensor          # (n, h, w, 3) in [0, 1]; black on the background
    flipped: bool              # whether the solver's sign was negated to make the border background


@torch.no_grad()
def patch_features(backbone: nn.Module, images: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """(n, 3, H, W) normalised images -> (n, h, w, D) final patch tokens. `size`: resize the images first (bicubic);
    a ViT with dynamic image size interpolates its position embeddings, giving a finer grid of the same picture.
    Works for the course's backbones (forward_tokens) and for any timm VisionTransformer."""
    if size is not None and size != images.shape[-1]:
        images = F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False)
    was_training = backbone.training
    backbone.eval()
    if hasattr(backbone, "forward_tokens"):
        patches = backbone.forward_tokens(images)["patch"]                           # (n, N, D)
    else:  # a timm VisionTransformer
        patches = backbone.forward_features(images)[:, backbone.num_prefix_tokens:]
    backbone.train(was_training)
    n, tokens, d = patches.shape
    h = w = int(round(tokens ** 0.5))
    if h * w != tokens:
        raise ValueError(f"{tokens} patch tokens do not form a square grid; give square images")
    return patches.reshape(n, h, w, d)


def orient_to_border(scores: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(n, h, w) first-component scores -> (scores with the border's mean below 0, whether they were negated)."""
    border = torch.ones_like(scores[0], dtype=torch.bool)
    border[1:-1, 1:-1] = False
    flip = bool(scores[:, border].mean() > 0)
    return (-scores if flip else scores), flip


def patch_pca(features: torch.Tensor, threshold: float = 0.0) -> PatchPCA:
    """(n, h, w, D) patch features -> PatchPCA (see the module's docstring for the three steps)."""
    from sklearn.decomposition import PCA

    n, h, w, d = features.shape
    flat = features.reshape(-1, d).double().cpu().numpy()
    first = torch.from_numpy(PCA(n_components=1, svd_solver="full").fit_transform(flat)[:, 0]).float()
    first, flipped = orient_to_border(first.reshape(n, h, w))
    foreground = first > threshold
    rgb = torch.zeros(n, h, w, 3)
    chosen = foreground.flatten()
    if int(chosen.sum()) >= 3:
        components = PCA(n_components=3, svd_solver="full").fit_transform(flat[chosen.numpy()])
        components = torch.from_numpy(components).float()
        low, high = components.min(0).values, components.max(0).values
        rgb.view(-1, 3)[chosen] = (components - low) / (high - low).clamp_min(1e-12)
    return PatchPCA(first, foreground, rgb, flipped)


def foreground_centredness(result: PatchPCA) -> tuple[float, float]:
    """(share of the central patches — the middle half of each side — that are foreground, share of all patches
    that are): a label-free patch-level measure for object-centred images such as CIFAR-10's. A backbone whose first
    component separates objects gives a high first number and a lower second one; a random split gives both equal."""
    grid = result.foreground.shape[1]
    inner = result.foreground[:, grid // 4:grid - grid // 4, grid // 4:grid - grid // 4]
    return inner.float().mean().item(), result.foreground.float().mean().item()
