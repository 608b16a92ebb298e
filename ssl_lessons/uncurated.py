"""An "uncurated web" in miniature, made from what is on the machine, for lesson 8's curation to clean up.

A web crawl differs from a curated dataset in three ways that DINOv2's curation (curation.py) addresses, and the
pool has each, with every image's origin recorded so each stage can be checked:

* a long tail: CIFAR-10 training images with class sizes falling geometrically (class 0 the most, class 9 the
  fewest), where ImageNet has ~1,300 images of every class;
* duplicates: popular images appear again, exactly or lightly edited (re-encoded, re-framed, re-lit);
* off-domain images: noise, flat colour fields, handwritten digits (scikit-learn's 8×8 digits, enlarged) and crops of
  photos that are no CIFAR-10 class (scikit-learn's two sample photos).

A balanced "curated" seed set is held out of the same training images first (ImageNet's role in LVD-142M).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from sklearn.datasets import load_digits, load_sample_images

from .errors import require

KINDS = ("cifar", "duplicate", "near-duplicate", "noise", "flat colour", "digit", "photo crop")
OFF_DOMAIN = KINDS[3:]


@dataclass
class Pool:
    """images (n, 3, H, W) uint8; label (n,) the CIFAR-10 class or −1; kind (n,) an index into KINDS; source (n,)
    the pool index a (near-)duplicate copies, else −1."""
    images: torch.Tensor
    label: np.ndarray
    kind: np.ndarray
    source: np.ndarray

    def __len__(self) -> int:
        return len(self.label)

    def counts(self, indices=None) -> dict[str, int]:
        """How many images of each kind (among `indices`, default all)."""
        kinds = self.kind if indices is None else self.kind[indices]
        return {name: int((kinds == i).sum()) for i, name in enumerate(KINDS)}

    def class_histogram(self, indices=None, num_classes: int = 10) -> np.ndarray:
        """Images per CIFAR-10 class (off-domain images not counted)."""
        labels = self.label if indices is None else self.label[indices]
        return np.bincount(labels[labels >= 0], minlength=num_classes)


def long_tail_sizes(largest: int, smallest: int, num_classes: int = 10) -> np.ndarray:
    """Class sizes falling geometrically from `largest` (class 0) to `smallest` (the last class)."""
    return np.round(largest * (smallest / largest) ** (np.arange(num_classes) / (num_classes - 1))).astype(int)


def split_seed_set(labels, per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(seed-set indices: per_class of each class, the rest), both ascending."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    seeds = np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False)
                            for c in np.unique(labels)])
    return np.sort(seeds), np.setdiff1d(np.arange(len(labels)), seeds)


def light_edit(image: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """A near-duplicate as re-uploads make them: re-framed by at most 2 px (94-100 % of the side), re-lit by ≤ 5 %,
    re-encoded as JPEG at quality 40-90."""
    h, w = image.shape[-2:]
    side = int(round(h * (0.94 + 0.06 * torch.rand((), generator=g).item())))
    top, left = (int(torch.randint(0, n - side + 1, (), generator=g)) for n in (h, w))
    out = TF.resized_crop(image, top, left, side, side, [h, w], antialias=True)
    out = TF.adjust_brightness(out, 0.95 + 0.1 * torch.rand((), generator=g).item())
    return TF.jpeg(out, int(torch.randint(40, 91, (), generator=g)))


def off_domain_images(kind: str, n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """n images (n, 3, size, size) uint8 of one off-domain kind (see OFF_DOMAIN)."""
    g = torch.Generator().manual_seed(seed)
    if kind == "noise":
        return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    if kind == "flat colour":  # a colour with a faint gradient, as a banner or a blank photo
        base = torch.rand(n, 3, 1, 1, generator=g) * 255
        ramp = torch.linspace(-12, 12, size).view(1, 1, 1, size) * torch.randn(n, 1, 1, 1, generator=g)
        return (base + ramp).expand(n, 3, size, size).round().clamp(0, 255).to(torch.uint8)
    if kind == "digit":        # ink of a random colour on paper of another
        digits = torch.as_tensor(load_digits().images, dtype=torch.float32) / 16
        pick = digits[torch.randint(0, len(digits), (n,), generator=g)][:, None]
        ink, paper = torch.rand(n, 3, 1, 1, generator=g) * 255, torch.rand(n, 3, 1, 1, generator=g) * 255
        big = torch.nn.functional.interpolate(pick, size=(size, size), mode="bilinear", align_corners=False)
        return (paper + (ink - paper) * big).round().clamp(0, 255).to(torch.uint8)
    if kind == "photo crop":   # squares of 32-96 px of a photo (a temple, a flower), resized to size
        photos = [torch.tensor(p).permute(2, 0, 1) for p in load_sample_images().images]
        out = []
        for _ in range(n):
            photo = photos[int(torch.randint(0, len(photos), (), generator=g))]
            side = int(torch.randint(32, 97, (), generator=g))
            top = int(torch.randint(0, photo.shape[1] - side + 1, (), generator=g))
            left = int(torch.randint(0, photo.shape[2] - side + 1, (), generator=g))
            out.append(TF.resized_crop(photo, top, left, side, side, [size, size], antialias=True))
        return torch.stack(out)
    raise ValueError(f"unknown off-domain kind {kind!r}; choose from {OFF_DOMAIN}")


def make_pool(images: torch.Tensor, labels, largest: int = 4000, smallest: int = 100, n_duplicated: int = 1500,
              max_copies: int = 3, n_off_domain: int = 1600, seed: int = 0) -> Pool:
    """The uncurated pool from labelled images (those not held out as seeds): the long tail, then n_duplicated of
    its images each copied 1-max_copies times (each copy exact or lightly edited, half and half), then n_off_domain
    off-domain images split evenly over the four kinds; shuffled."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    sizes = long_tail_sizes(largest, smallest, int(labels.max()) + 1)
    available = np.bincount(labels, minlength=len(sizes))
    require((sizes <= available).all(), f"the long tail asks for {sizes.tolist()} images per class but there are "
                                        f"{available.tolist()}: lower `largest`")
    tail = np.concatenate([rng.choice(np.flatnonzero(labels == c), s, replace=False) for c, s in enumerate(sizes)])
    parts = [images[torch.as_tensor(tail)]]
    label, kind, source = [labels[tail]], [np.zeros(len(tail), int)], [np.full(len(tail), -1)]
    g = torch.Generator().manual_seed(seed)
    originals = rng.choice(len(tail), n_duplicated, replace=False)       # popular images: the long tail's own mix
    copies = rng.integers(1, max_copies + 1, n_duplicated)
    dup_of = np.repeat(originals, copies)
    edited = rng.random(len(dup_of)) < 0.5
    dup_images = parts[0][torch.as_tensor(dup_of)].clone()
    for i in np.flatnonzero(edited):
        dup_images[i] = light_edit(dup_images[i], g)
    parts.append(dup_images)
    label.append(labels[tail][dup_of])
    kind.append(np.where(edited, KINDS.index("near-duplicate"), KINDS.index("duplicate")))
    source.append(dup_of)
    per_kind = np.full(len(OFF_DOMAIN), n_off_domain // len(OFF_DOMAIN))
    per_kind[:n_off_domain % len(OFF_DOMAIN)] += 1
    for j, (name, n) in enumerate(zip(OFF_DOMAIN, per_kind)):
        parts.append(off_domain_images(name, int(n), images.shape[-1], seed + 1 + j))
        label.append(np.full(n, -1))
        kind.append(np.full(n, KINDS.index(name)))
        source.append(np.full(n, -1))
    all_images, label, kind, source = torch.cat(parts), *map(np.concatenate, (label, kind, source))
    order = rng.permutation(len(label))
    where = np.empty_like(order)
    where[order] = np.arange(len(order))                                 # old position -> shuffled position
    source = np.where(source >= 0, where[np.maximum(source, 0)], -1)
    return Pool(all_images[torch.as_tensor(order)], label[order], kind[order], source[order])
