"""Random views of a batch, drawn independently per sample, on whatever device the batch lives on.

SimCLR (Chen et al. 2020, App. A) composes, per view:
    random resized crop (area in [s_min, 1], aspect in [3/4, 4/3]) -> horizontal flip (p = 0.5)
    -> colour jitter (p = 0.8; brightness 0.8s, contrast 0.8s, saturation 0.8s, hue 0.2s, in random order)
    -> grayscale (p = 0.2);     no Gaussian blur at 32 px, as in the paper's CIFAR-10 setting.
BYOL and DINO add solarization to one of their two views and use weaker saturation; each method builds its own
views from `ViewAugment` (methods/*.py), and crops.py assembles them into one `Crops` batch.

torchvision's transforms draw one set of random parameters per call, so they make a batch's views
per image (~700 img/s on one core here). The functions below are the same operations, with the same
formulas as `torchvision.transforms.v2.functional` (tests check each against it), vectorised over the batch
with per-sample parameters: crop-and-resize is `torchvision.ops.roi_align`, the colour ops are blends.
"""
from __future__ import annotations

import math

import torch
from torchvision.ops import roi_align
from torchvision.transforms.v2 import functional as TF

from .images import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale


def _uniform(n, low, high, generator, device):
    return torch.rand(n, generator=generator, device=device) * (high - low) + low


def random_resized_crop_boxes(n: int, height: int, width: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                              generator=None, device="cpu", attempts: int = 10) -> torch.Tensor:
    """(n, 4) boxes (x1, y1, x2, y2) in pixels, sampled as torchvision's RandomResizedCrop.get_params:
    area ~ U(scale) * H * W, log-aspect ~ U(log ratio); the first of `attempts` draws that fits is kept,
    else the central crop with the aspect clamped to `ratio`."""
    area = height * width
    target = _uniform(n * attempts, scale[0], scale[1], generator, device).view(n, attempts) * area
    log_r = _uniform(n * attempts, math.log(ratio[0]), math.log(ratio[1]), generator, device).view(n, attempts)
    aspect = torch.exp(log_r)
    w = torch.sqrt(target * aspect).round()
    h = torch.sqrt(target / aspect).round()
    fits = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = fits.float().argmax(dim=1)  # index of the first draw that fits (0 if none)
    rows = torch.arange(n, device=device)
    w, h = w[rows, first], h[rows, first]
    # fallback: whole image, aspect clamped
    in_ratio = width / height
    fb_w, fb_h = (float(width), float(height))
    if in_ratio < ratio[0]:
        fb_w, fb_h = float(width), float(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fb_w, fb_h = float(round(height * ratio[1])), float(height)
    ok = fits.any(dim=1)
    w = torch.where(ok, w, torch.full_like(w, fb_w))
    h = torch.where(ok, h, torch.full_like(h, fb_h))
    u = torch.rand(n, 2, generator=generator, device=device)
    x1 = torch.where(ok, torch.floor(u[:, 0] * (width - w + 1)), torch.floor((width - w) / 2))
    y1 = torch.where(ok, torch.floor(u[:, 1] * (height - h + 1)), torch.floor((height - h) / 2))
    return torch.stack([x1, y1, x1 + w, y1 + h], dim=1)


def resized_crop(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop each image (B, C, H, W) float to its box (B, 4) and resize to (size, size), bilinearly.

    roi_align with aligned=True samples the box at the same points as F.interpolate(align_corners=False)
    on the cropped image; sampling_ratio=0 averages several samples per output pixel when shrinking."""
    rois = torch.cat([torch.arange(len(boxes), device=boxes.device, dtype=images.dtype)[:, None],
                      boxes.to(images.dtype)], dim=1)  # (B, 5): batch index, x1, y1, x2, y2
    return roi_align(images, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=0, aligned=True)


def _per_sample(factor: torch.Tensor) -> torch.Tensor:
    return factor.view(-1, 1, 1, 1)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 1, H, W) luma."""
    w = torch.tensor(GRAY_WEIGHTS, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def adjust_brightness(x, factor):
    return (x * _per_sample(factor)).clamp_(0, 1)


def adjust_contrast(x, factor):
    mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    f = _per_sample(factor)
    return (f * x + (1 - f) * mean).clamp_(0, 1)


def adjust_saturation(x, factor):
    f = _per_sample(factor)
    return (f * x + (1 - f) * grayscale(x)).clamp_(0, 1)


def adjust_hue(x, shift):
    """Rotate hue by `shift` (fraction of a turn, in [-0.5, 0.5]) through HSV, as torchvision does."""
    r, g, b = x.unbind(dim=1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_div = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / cr_div, (maxc - g) / cr_div, (maxc - b) / cr_div
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    h = torch.remainder(h + shift.view(-1, 1, 1), 1.0)
    v = maxc
    # HSV -> RGB
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p = (v * (1 - s)).clamp(0, 1)
    q = (v * (1 - s * f)).clamp(0, 1)
    t = (v * (1 - s * (1 - f))).clamp(0, 1)
    mask = i.unsqueeze(1) == torch.arange(6, device=x.device).view(1, -1, 1, 1)  # (B, 6, H, W)
    a1 = torch.stack((v, q, p, p, t, v), dim=1)
    a2 = torch.stack((t, v, v, q, p, p), dim=1)
    a3 = torch.stack((p, p, t, v, v, q), dim=1)
    return torch.stack([(mask * a).sum(dim=1) for a in (a1, a2, a3)], dim=1)


def color_jitter(x: torch.Tensor, brightness: float, contrast: float, saturation: float, hue: float,
                 generator=None) -> torch.Tensor:
    """torchvision ColorJitter with per-sample factors and a per-sample random order of the four ops.
    Factors ~ U(1 - b, 1 + b) (brightness, contrast, saturation) and hue shift ~ U(-h, h)."""
    n, dev = len(x), x.device
    factors = [_uniform(n, max(0.0, 1 - m), 1 + m, generator, dev) for m in (brightness, contrast, saturation)]
    factors.append(_uniform(n, -hue, hue, generator, dev))
    ops = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
    order = torch.rand(n, 4, generator=generator, device=dev).argsort(dim=1)  # a random permutation per sample
    for step in range(4):
        for k, op in enumerate(ops):
            idx = (order[:, step] == k).nonzero().squeeze(1)
            if len(idx):
                x[idx] = op(x[idx], factors[k][idx])
    return x


def _where_sample(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, 1, 1, 1), a, b)


def simclr_jitter(strength: float = 0.5) -> tuple[float, float, float, float]:
    """SimCLR's colour distortion of strength s as (brightness, contrast, saturation, hue) = (0.8s, 0.8s, 0.8s, 0.2s)
    (Chen et al. 2020, App. A; s = 0.5 for CIFAR-10, s = 1 for ImageNet, which SwAV's main_swav.py also uses)."""
    return (0.8 * strength, 0.8 * strength, 0.8 * strength, 0.2 * strength)


# BYOL's (Grill et al. 2020, Table 6) and DINO's (main_dino.py DataAugmentationDINO) colour jitter
BYOL_JITTER = (0.4, 0.4, 0.2, 0.1)
# DINO's views (main_dino.py DataAugmentationDINO; dinov2 data/augmentations.py), used by DINO, iBOT, DINOv2 and
# distillation: two global views with blur p = 1.0 and 0.1 (solarization 0.2 in the second), local views blur p = 0.5
DINO_GLOBAL_VIEWS = (dict(jitter=BYOL_JITTER, blur_p=1.0), dict(jitter=BYOL_JITTER, blur_p=0.1, solarize_p=0.2))
DINO_LOCAL_VIEW = dict(jitter=BYOL_JITTER, blur_p=0.5)


def solarize(x: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Invert the pixels at or above `threshold`: x -> 1 - x there (torchvision's solarize on [0, 1] floats)."""
    return torch.where(x >= threshold, 1.0 - x, x)


class ViewAugment:
    """One kind of view: crop to `size`, flip, colour jitter, grayscale, solarize, normalise. Callable on uint8
    batches; every random choice is drawn per sample.

    (B, 3, H, W) uint8 on any device -> (B, 3, size, size) float32, standardised with `mean`/`std`.

    `jitter` is (brightness, contrast, saturation, hue), applied with probability `jitter_p` in a random order.
    Gaussian blur (`blur_p`), which SimCLR, BYOL, SwAV and DINO use at 224 px, is left out of these batched 32-px
    views: at 32 px a blur of the paper's 10 %-of-the-image kernel wipes out most of the object, and SimCLR's
    CIFAR-10 setting (App. B.9) drops it for that reason. The full-resolution pipeline (`to_torchvision`, used by
    the streaming loader) applies it with the method's probability.

    Each method describes its views once, here; `to_torchvision()` turns the same description into the official
    per-image torchvision pipeline for full-resolution images."""

    def __init__(self, size: int = 32, scale=(0.08, 1.0), jitter=simclr_jitter(0.5), jitter_p: float = 0.8,
                 gray_p: float = 0.2, solarize_p: float = 0.0, flip_p: float = 0.5, blur_p: float = 0.0,
                 mean=CIFAR10_MEAN, std=CIFAR10_STD):
        self.size, self.scale = size, tuple(scale)
        self.jitter = dict(zip(("brightness", "contrast", "saturation", "hue"), jitter))
        self.jitter_p, self.gray_p, self.solarize_p, self.flip_p = jitter_p, gray_p, solarize_p, flip_p
        self.blur_p = blur_p
        self.mean, self.std = mean, std

    def to_torchvision(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        """This view as the official full-resolution recipes write it, per image with torchvision's transforms.v2
        (dinov2 `data/augmentations.py`, DINO `DataAugmentationDINO`, SimCLR App. A):

            RandomResizedCrop(size, scale, bicubic) -> flip (p) -> ColorJitter (p = jitter_p) -> grayscale (gray_p)
            -> Gaussian blur, kernel 9, sigma ~ U(0.1, 2) (blur_p) -> solarize at 128 (solarize_p) -> normalise.

        (3, H, W) uint8 -> (3, size, size) float32. Random choices come from torch's global RNG (per sample, see
        streaming.py for how they are seeded)."""
        from torchvision.transforms import v2
        steps = [v2.RandomResizedCrop(self.size, scale=self.scale, interpolation=v2.InterpolationMode.BICUBIC,
                                      antialias=True),
                 v2.RandomHorizontalFlip(p=self.flip_p),
                 v2.RandomApply([v2.ColorJitter(**self.jitter)], p=self.jitter_p),
                 v2.RandomGrayscale(p=self.gray_p)]
        if self.blur_p > 0:
            steps.append(v2.RandomApply([v2.GaussianBlur(kernel_size=9, sigma=(0.1, 2.0))], p=self.blur_p))
        if self.solarize_p > 0:
            steps.append(v2.RandomSolarize(threshold=128, p=self.solarize_p))
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
        return v2.Compose(steps)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        n, _, h, w = images.shape
        dev = images.device
        x = images.float().div_(255)
        boxes = random_resized_crop_boxes(n, h, w, self.scale, generator=generator, device=dev)
        x = resized_crop(x, boxes, self.size).clamp_(0, 1)
        flip = torch.rand(n, generator=generator, device=dev) < self.flip_p
        x = _where_sample(flip, x.flip(-1), x)
        jitter = (torch.rand(n, generator=generator, device=dev) < self.jitter_p).nonzero().squeeze(1)
        if len(jitter):
            x[jitter] = color_jitter(x[jitter], **self.jitter, generator=generator)
        gray = torch.rand(n, generator=generator, device=dev) < self.gray_p
        x = _where_sample(gray, grayscale(x).expand_as(x), x)
        if self.solarize_p > 0:
            sol = torch.rand(n, generator=generator, device=dev) < self.solarize_p
            x = _where_sample(sol, solarize(x), x)
        return TF.normalize(x, list(self.mean), list(self.std))


def unnormalize(x: torch.Tensor, mean=CIFAR10_MEAN, std=CIFAR10_STD) -> torch.Tensor:
    """Standardised float views -> [0, 1] images, for pictures."""
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x * s + m).clamp(0, 1)
