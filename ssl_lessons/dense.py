"""A dense yardstick from CIFAR-10 alone: segmenting mosaics with a linear probe on frozen patch tokens.

DINO's attention maps, iBOT's and DINOv2's patch features are about *where* things are, which a k-NN on one vector
per image cannot see. Segmentation benchmarks measure it (DINOv2 Table 10: a linear layer on frozen patch tokens,
mIoU on ADE20k), but no segmentation data is at hand offline, so we make some from CIFAR-10:

- a **mosaic** is a canvas of the training size (32 px) with one CIFAR-10 image stretched over it and `n_tiles`
  more pasted on top, each shrunk to a random size (40-70 % of the side, aspect 3:4 to 4:3) at a random place;
  every pixel is labelled with the class of the image seen there;
- a **patch's label** is the class covering most of its pixels (`patch_labels`);
- the **probe** (`dense_probe`) is a multinomial logistic regression (scikit-learn) from a frozen backbone's patch
  tokens to patch labels, fit on mosaics of the training images and measured on mosaics of the test images, as
    patch accuracy = correct patches / patches,
    mIoU = mean over classes c of |pred = c and label = c| / |pred = c or label = c|   (over all test patches).

A patch's own pixels say little about the class of a 32-px object; a patch token that has learned what its
neighbourhood is (DINO's attention, iBOT's masked prediction) says more. Raw pixel patches and the same network at
its random initialisation are the yardsticks (lesson 0), as the k-NN has raw pixels and a random backbone.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning

from . import distributed
from .backbones import backbone_from_config
from .images import normalize
from .evaluation import extract_patch_tokens, probe_predictions

NUM_CLASSES = 10


@dataclass
class Mosaics:
    images: torch.Tensor        # (n, 3, size, size) uint8
    pixel_labels: torch.Tensor  # (n, size, size) int64: the class of the image seen at each pixel


def make_mosaics(images: torch.Tensor, labels: torch.Tensor, n: int, n_tiles: int = 2, size: int = 32,
                 seed: int = 0, tile_sides: tuple[float, float] = (0.4, 0.7)) -> Mosaics:
    """n mosaics from uint8 images (N, 3, H, W) with labels (N,): a background image and n_tiles on top, each at a
    random size and place. The same seed gives the same mosaics on any machine (torch's generator)."""
    g = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, len(images), (n, 1 + n_tiles), generator=g)
    canvas = F.interpolate(images[picks[:, 0]].float(), size=(size, size), mode="bilinear", antialias=True,
                           align_corners=False)
    pixel_labels = labels[picks[:, 0]].view(n, 1, 1).expand(n, size, size).clone()
    sides = torch.rand(n, n_tiles, generator=g) * (tile_sides[1] - tile_sides[0]) + tile_sides[0]
    aspects = torch.exp((torch.rand(n, n_tiles, generator=g) * 2 - 1) * torch.log(torch.tensor(4 / 3)))
    corners = torch.rand(n, n_tiles, 2, generator=g)
    for i in range(n):
        for t in range(n_tiles):
            h = max(2, min(size, round(size * sides[i, t].item() * aspects[i, t].sqrt().item())))
            w = max(2, min(size, round(size * sides[i, t].item() / aspects[i, t].sqrt().item())))
            top, left = int(corners[i, t, 0] * (size - h + 1)), int(corners[i, t, 1] * (size - w + 1))
            tile = images[picks[i, 1 + t]][None].float()
            canvas[i, :, top:top + h, left:left + w] = F.interpolate(tile, size=(h, w), mode="bilinear",
                                                                    antialias=True, align_corners=False)[0]
            pixel_labels[i, top:top + h, left:left + w] = labels[picks[i, 1 + t]]
    return Mosaics(canvas.round().clamp(0, 255).to(torch.uint8), pixel_labels)


def patch_labels(pixel_labels: torch.Tensor, patch_size: int, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """(n, H, W) pixel classes -> (n, H/p * W/p) the majority class of each p x p patch, row-major as a ViT's
    tokens (ties go to the lower class index)."""
    one_hot = F.one_hot(pixel_labels, num_classes).permute(0, 3, 1, 2).float()     # (n, C, H, W)
    counts = F.avg_pool2d(one_hot, patch_size)                                       # (n, C, h, w)
    return counts.argmax(dim=1).flatten(1)


def pixel_patches(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """The raw-pixel yardstick of a patch: its standardised pixels. (n, 3, H, W) uint8 -> (n, N, 3 p^2)."""
    return F.unfold(normalize(images), kernel_size=patch_size, stride=patch_size).transpose(1, 2)


def segmentation_scores(predictions: torch.Tensor, labels: torch.Tensor,
                        num_classes: int = NUM_CLASSES) -> dict[str, float]:
    """{"miou": mean over the classes present (in labels or predictions) of IoU, "patch_accuracy"}, in percent."""
    predictions, labels = predictions.flatten(), labels.flatten()
    confusion = torch.bincount(labels * num_classes + predictions, minlength=num_classes ** 2)
    confusion = confusion.view(num_classes, num_classes).double()                    # rows: truth, columns: predicted
    intersection = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - intersection
    present = union > 0
    return {"miou": 100.0 * (intersection[present] / union[present]).mean().item(),
            "patch_accuracy": 100.0 * (intersection.sum() / confusion.sum()).item()}


@dataclass
class DenseBenchmark:
    """Train and test mosaics with their patch labels, for one patch size."""
    train: Mosaics
    test: Mosaics
    patch_size: int

    @classmethod
    def from_data(cls, data, patch_size: int, n_train: int = 1000) -> "DenseBenchmark":
        """n_train mosaics of data's training images and n_train / 2 of its test images, at their size (fixed
        seeds: every run and every yardstick is measured on the same mosaics)."""
        size = data.train_images.shape[-1]
        return cls(make_mosaics(data.train_images, data.train_labels, n_train, size=size, seed=0),
                   make_mosaics(data.test_images, data.test_labels, max(1, n_train // 2), size=size, seed=1),
                   patch_size)

    def labels(self, split: str) -> torch.Tensor:
        return patch_labels(getattr(self, split).pixel_labels, self.patch_size)

    def score(self, train_features: torch.Tensor, test_features: torch.Tensor, max_iter: int = 200) -> dict:
        """The linear probe from (n, N, D) patch features of the train mosaics to those of the test mosaics.
        max_iter L-BFGS iterations, a fixed budget the same for every backbone (not run to convergence)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            predictions = probe_predictions(train_features.flatten(0, 1), self.labels("train").flatten(),
                                            test_features.flatten(0, 1), max_iter=max_iter)
        return segmentation_scores(predictions, self.labels("test").flatten())


def dense_probe(backbone: torch.nn.Module, bench: DenseBenchmark, device="cpu", batch_size: int = 256,
                max_iter: int = 200) -> dict[str, float]:
    """{"miou", "patch_accuracy"} (%) of a linear probe on `backbone`'s frozen patch tokens (a collective under
    torchrun; every rank returns the result)."""
    train = extract_patch_tokens(backbone, bench.train.images, batch_size, device)
    test = extract_patch_tokens(backbone, bench.test.images, batch_size, device)
    result = bench.score(train, test, max_iter) if distributed.is_main() else None
    return distributed.broadcast_object(result)


def pixel_dense_probe(bench: DenseBenchmark, max_iter: int = 200) -> dict[str, float]:
    """The raw-pixel yardstick: the same probe on each patch's standardised pixels."""
    return bench.score(pixel_patches(bench.train.images, bench.patch_size),
                       pixel_patches(bench.test.images, bench.patch_size), max_iter)


def dense_yardsticks(cfg, data, device="cpu") -> dict:
    """The dense probe's yardsticks (dense.py): raw pixel patches and the random-init ViT of cfg's seed.
    {"raw pixels": {"dense_miou", "dense_patch_accuracy"}, "random vit": {...}}"""
    bench = DenseBenchmark.from_data(data, cfg.patch_size, cfg.dense_mosaics)
    torch.manual_seed(cfg.seed)
    random_net = backbone_from_config(cfg).to(device)
    named = lambda scores: {f"dense_{k}": v for k, v in scores.items()}  # noqa: E731
    return {"raw pixels": named(pixel_dense_probe(bench)),
            f"random {cfg.backbone}": named(dense_probe(random_net, bench, device, cfg.eval_batch_size))}
