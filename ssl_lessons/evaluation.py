"""Frozen-feature evaluation: feature extraction, weighted k-NN (as DINO's eval_knn.py) and a linear probe.

Weighted k-NN (Wu et al. 2018; Caron et al. 2021): features are L2-normalised; for a test feature x the k most
cosine-similar training features f_i vote for their labels y_i with weight exp(sim(x, f_i) / T):

    score(c) = sum_{i in top-k} exp(x . f_i / T) [y_i = c],      prediction = argmax_c score(c)
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from . import distributed
from .backbones import backbone_from_config
from .images import CIFAR10_MEAN, CIFAR10_STD, normalize


@torch.no_grad()
def extract_features(model: nn.Module, images: torch.Tensor, batch_size: int = 512, device="cpu",
                     desc: str = "features", mean=CIFAR10_MEAN, std=CIFAR10_STD,
                     progress: bool = True) -> torch.Tensor:
    """uint8 images (N, 3, H, W) -> model features (N, D) float32 on the CPU, in eval mode, with a progress bar;
    the images are normalised with (mean, std), CIFAR-10's unless given (a released model takes ImageNet's).

    Under torchrun every rank takes part (a collective, as a sharded model needs): each embeds an equal slice of
    the images and the slices are gathered, so every rank returns all N features."""
    own = images[torch.tensor(distributed.own_share(len(images)))]
    out = []
    with feature_mode(model):
        for start in tqdm(range(0, len(own), batch_size), desc=desc, leave=False, mininterval=1.0,
                          disable=not (progress and distributed.is_main())):
            batch = normalize(own[start:start + batch_size].to(device), mean, std)
            out.append(model(batch).float())
    return distributed.all_gather_rows(torch.cat(out)).cpu()[:len(images)]


@torch.no_grad()
def extract_patch_tokens(backbone: nn.Module, images: torch.Tensor, batch_size: int = 256,
                         device="cpu") -> torch.Tensor:
    """uint8 images (n, 3, H, W) -> a ViT backbone's final patch tokens (backbone.patch_tokens) (n, N, D), float32
    on the CPU: extract_features for every patch. A collective under torchrun, like extract_features."""
    own = images[torch.tensor(distributed.own_share(len(images)))]
    out = []
    with feature_mode(backbone):
        for start in range(0, len(own), batch_size):
            out.append(backbone.patch_tokens(normalize(own[start:start + batch_size].to(device))).float().cpu())
    tokens = torch.cat(out)
    return distributed.all_gather_rows(tokens.flatten(1)).view(-1, *tokens.shape[1:])[:len(images)]


@contextmanager
def feature_mode(model: nn.Module):
    """Eval mode for a feature extraction, then every submodule's mode restored exactly (a teacher keeps its own)."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes.items():
            m.training = mode


class AtSize(nn.Module):
    """A backbone that sees its (normalised) input images resized to `size` px first (bicubic), so a ViT runs on a
    finer grid of patches of the same picture: how DINOv2's high-resolution phase is evaluated (lesson 6).
    (B, 3, H, W) -> the backbone's (B, D)."""

    def __init__(self, backbone: nn.Module, size: int):
        super().__init__()
        self.backbone, self.size = backbone, size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.size:
            x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bicubic", align_corners=False)
        return self.backbone(x)


def pixel_features(images: torch.Tensor) -> torch.Tensor:
    """The raw-pixel yardstick: standardised pixels, flattened. (N, 3, H, W) uint8 -> (N, 3*H*W)."""
    return normalize(images).flatten(1)


@torch.no_grad()
def knn_predict(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                k: int = 20, temperature: float = 0.07, num_classes: int | None = None,
                chunk: int = 1024) -> torch.Tensor:
    """Weighted k-NN predictions (M,) for test features (M, D) against a bank (N, D) with labels (N,)."""
    if k > len(train_features):
        raise ValueError(f"k={k} is larger than the bank of {len(train_features)} features")
    num_classes = num_classes or int(train_labels.max()) + 1
    bank = F.normalize(train_features.float(), dim=1)
    preds = []
    for start in range(0, len(test_features), chunk):
        x = F.normalize(test_features[start:start + chunk].float(), dim=1)
        sim, idx = (x @ bank.T).topk(k, dim=1)                     # (m, k)
        weights = (sim / temperature).exp()                        # (m, k)
        votes = torch.zeros(len(x), num_classes, device=x.device)  # (m, C)
        votes.scatter_add_(1, train_labels[idx], weights)
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds)


def knn_top1(train_features, train_labels, test_features, test_labels, k: int = 20, temperature: float = 0.07) -> float:
    """Top-1 accuracy in percent of the weighted k-NN classifier."""
    preds = knn_predict(train_features, train_labels, test_features, k, temperature)
    return 100.0 * (preds == test_labels).float().mean().item()


def probe_predictions(train_features, train_labels, test_features, max_iter: int = 1000, C: float = 1.0,
                      seed: int = 0) -> torch.Tensor:
    """The test predictions (M,) of a multinomial logistic regression (scikit-learn) fit on standardised frozen
    features (N, D) with labels (N,)."""
    scaler = StandardScaler().fit(train_features.numpy())
    clf = LogisticRegression(max_iter=max_iter, C=C, random_state=seed)
    clf.fit(scaler.transform(train_features.numpy()), train_labels.numpy())
    return torch.from_numpy(clf.predict(scaler.transform(test_features.numpy())))


def linear_probe(train_features, train_labels, test_features, test_labels, max_iter: int = 1000,
                 C: float = 1.0, seed: int = 0) -> float:
    """Top-1 (%) of a multinomial logistic regression (scikit-learn) on standardised frozen features."""
    preds = probe_predictions(train_features, train_labels, test_features, max_iter, C, seed)
    return 100.0 * float(np.mean(preds.numpy() == test_labels.numpy()))


def evaluate(model: nn.Module, data, device="cpu", k: int = 20, temperature: float = 0.07,
             probe: bool = True, batch_size: int = 512, probe_max_iter: int = 1000) -> dict:
    """k-NN (and linear-probe) top-1 of `model`'s features: bank = data's training images, queries = its test images.

    Under torchrun every rank extracts features (collectively); rank 0 fits the classifiers and every rank
    returns its result."""
    train = data.features(model, "train", batch_size, device, desc="bank features")  # ImageData or StreamingImages
    test = data.features(model, "test", batch_size, device, desc="test features")
    result = None
    if distributed.is_main():
        result = {"knn_top1": knn_top1(train, data.train_labels, test, data.test_labels, k, temperature)}
        if probe:
            result["linear_top1"] = linear_probe(train, data.train_labels, test, data.test_labels, probe_max_iter)
    return distributed.broadcast_object(result)


def yardsticks(cfg, data, device="cpu", probe: bool = True) -> dict:
    """Lesson 0's baselines, which any learned representation has to beat:
    raw standardised pixels, and the same backbone as cfg with random (untrained) weights."""

    raw_train, raw_test = pixel_features(data.train_images), pixel_features(data.test_images)
    out = {"raw pixels": {"knn_top1": knn_top1(raw_train, data.train_labels, raw_test, data.test_labels,
                                               cfg.knn_k, cfg.knn_temperature)}}
    if probe:
        out["raw pixels"]["linear_top1"] = linear_probe(raw_train, data.train_labels, raw_test, data.test_labels,
                                                        cfg.probe_max_iter)
    torch.manual_seed(cfg.seed)
    random_net = backbone_from_config(cfg).to(device)
    out[f"random {cfg.backbone}"] = evaluate(random_net, data, device, cfg.knn_k, cfg.knn_temperature, probe,
                                            cfg.eval_batch_size, cfg.probe_max_iter)
    return out

