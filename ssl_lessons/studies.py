"""The studies: several short runs of one method, each with one part of its recipe changed, trained (or resumed, or
read back) by the same loop as any run. The variants are data beside their method; this module turns them into
configs, each with its own run folder runs/<method>-<preset>-<variant slug>.

- lesson 2, `collapse-study --method byol`: BYOL without its predictor, or with the target = the online network;
- lesson 4, `collapse-study --method dino`: DINO without centering, without sharpening, without either (Fig. 7);
- lesson 6, `ablation`: DINOv2's recipe against itself without KoLeo, with EMA centering, with a shared head, and
  with 4 registers;
- lesson 8, `curation-study`: SimCLR pretrained for equal steps on equal-sized pools drawn from each stage of the
  curation of an uncurated pool (uncurated, deduplicated, retrieved around curated seeds, balanced sampling).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .config import Config, make_config, variant_configs
from .curation import curate, near_copy_threshold
from .data import ImageData, load_dataset
from .descriptors import Descriptor, load_descriptor
from .evaluation import extract_features
from .methods import byol, dino, dinov2
from .runtime import RUNS_DIR, pick_device
from .train import train
from .uncurated import Pool, make_pool, split_seed_set

# method -> (its variants, {preset: epochs of each run}; other presets keep their own short budget, extra overrides)
COLLAPSE_STUDIES = {
    "byol": (byol.COLLAPSE_VARIANTS, byol.COLLAPSE_EPOCHS, {}),
    "dino": (dino.COLLAPSE_VARIANTS, dino.COLLAPSE_EPOCHS, {"linear_probe": False}),
}


def collapse_study_configs(method: str, preset: str) -> dict[str, Config]:
    """{variant name: Config} of `method`'s collapse study at `preset` (a method of COLLAPSE_STUDIES)."""
    variants, epochs, extra = COLLAPSE_STUDIES[method]
    common = {"epochs": epochs[preset], **extra} if preset in epochs else {}
    return variant_configs(preset, method, variants, **common)


def ablation_configs(preset: str) -> dict[str, Config]:
    """{variant name: Config} for the DINOv2 ablation at `preset` (no high-resolution phase: it compares the
    recipe's parts at one resolution)."""
    common = {"highres_size": 0, "highres_fraction": 0.0}
    if preset in dinov2.ABLATION_EPOCHS:
        common.update(epochs=dinov2.ABLATION_EPOCHS[preset])
    return variant_configs(preset, "dinov2", dinov2.ABLATION_VARIANTS, **common)


def ablation_study(preset: str = "cifar10-laptop", show_progress: bool = True) -> dict[str, dict]:
    """Train (or resume, or read back) every ablation variant; {variant: {"knn_top1", "linear_top1", "dense_miou",
    "uniformity", "train_minutes", "out_dir"}}, the uniformity (dinov2.feature_uniformity) measured on the test
    images' features of the evaluated backbone."""
    rows = {}
    for name, cfg in ablation_configs(preset).items():
        run = train(cfg, show_progress=show_progress)
        result = run["result"]
        data = load_dataset(cfg)
        features = extract_features(run["method"].eval_backbone, data.test_images, cfg.eval_batch_size,
                                    pick_device(cfg.device), desc="uniformity")
        rows[name] = {"knn_top1": result["knn_top1"], "linear_top1": result.get("linear_top1"),
                      "dense_miou": result.get("dense_miou"),
                      "uniformity": dinov2.feature_uniformity(features), "train_minutes": result["train_minutes"],
                      "out_dir": str(run["out_dir"])}
    return rows


# --- lesson 8: does curation pay? -------------------------------------------------------------------------------------

@dataclass
class CurationArms:
    """The uncurated pool, the curated seed images, the thresholds set from the test images, and {arm: pool indices}:
    "uncurated", "deduplicated" (random draws of `size` from those sets), "retrieved" (n_per_seed nearest images of
    each seed, after deduplication) and "balanced" (a balanced sample of the same size from the deduplicated pool)."""
    pool: Pool
    seed_images: torch.Tensor
    thresholds: tuple[float, float]
    arms: dict[str, np.ndarray]
    stages: dict[str, list]


def curation_arms(data: ImageData, descriptor: Descriptor, n_per_seed: int = 4, seed: int = 0) -> CurationArms:
    """Lesson 8's pool made from `data` (uncurated.make_pool, 100 seed images per class held out first; a tenth of
    everything on a subset as small as the smoke preset's), its thresholds (near_copy_threshold on the test images at
    1 % and 5 %), and the four equal-sized arms, each stage computed by curation.curate."""
    small = len(data.train_labels) < 20_000
    seed_idx, rest = split_seed_set(data.train_labels.numpy(), 10 if small else 100, seed)
    scale = dict(largest=80, smallest=8, n_duplicated=60, n_off_domain=40) if small else {}
    pool = make_pool(data.train_images[rest], data.train_labels.numpy()[rest], **scale, seed=seed)
    test_f, pool_f = descriptor(data.test_images), descriptor(pool.images, progress=True)
    seed_f = descriptor(data.train_images[seed_idx])
    tau_self, tau_relative = near_copy_threshold(test_f, 0.01), near_copy_threshold(test_f, 0.05)
    retrieval = curate(pool_f, tau_self, test_f, tau_relative, seed_features=seed_f, n_per_seed=n_per_seed, seed=seed)
    size = len(retrieval[-1].kept)
    balanced = curate(pool_f, tau_self, test_f, tau_relative, size=size, seed=seed)
    rng = np.random.default_rng(seed)
    clean = retrieval[2].kept
    arms = {"uncurated": np.sort(rng.choice(len(pool), size, replace=False)),
            "deduplicated": np.sort(rng.choice(clean, size, replace=False)),
            "retrieved": retrieval[-1].kept, "balanced": balanced[-1].kept}
    return CurationArms(pool, data.train_images[seed_idx], (tau_self, tau_relative), arms,
                        {"retrieval": retrieval, "balanced": balanced})


def pretrain_on_arms(preset: str, images: torch.Tensor, arms: dict[str, np.ndarray], steps: int, measure: ImageData,
                     method: str = "simclr", show_progress: bool = True) -> dict[str, dict]:
    """{arm: result} of `method` at `preset` trained for `steps` steps on each arm's images (equal sizes), measured
    on `measure` (train.train's eval_data); run folders runs/lesson8-<arm>-<preset>[-<steps>]."""
    sizes = {len(idx) for idx in arms.values()}
    if len(sizes) != 1:
        raise ValueError(f"the arms must be of equal size for an equal budget, got {sizes}")
    results = {}
    for arm, idx in arms.items():
        cfg = make_config(preset, {"method": method, "knn_every": 0, "linear_probe": True,
                                   "out_dir": str(RUNS_DIR / f"lesson8-{arm}-{preset}-{steps}steps")})
        cfg.epochs = steps / (len(idx) // cfg.batch_size)
        arm_images = images[torch.as_tensor(idx)]
        empty = torch.zeros(0, dtype=torch.int64)
        arm_data = ImageData(arm_images, torch.zeros(len(idx), dtype=torch.int64), arm_images[:0], empty,
                             measure.classes)
        results[arm] = train(cfg, data=arm_data, eval_data=measure, show_progress=show_progress)["result"]
    return results


def curation_study(preset: str = "cifar10-laptop", steps: int = 100, descriptor: str = "simclr-vit-cifar10-laptop",
                   measure_size: int = 5000) -> tuple[CurationArms, dict[str, dict]]:
    """Lesson 8's comparison end to end: CIFAR-10 at `preset`, the arms (curation_arms), SimCLR on each for `steps`
    steps, measured by k-NN and a linear probe on `measure_size` training and test images."""
    data = load_dataset(make_config(preset, {"method": "simclr"}))
    arms = curation_arms(data, load_descriptor(descriptor))
    measure = data.subset(n_train=measure_size, n_test=measure_size, seed=0)
    return arms, pretrain_on_arms(preset, arms.pool.images, arms.arms, steps, measure)
