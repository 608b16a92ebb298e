"""The studies: several short runs of one method, each with one part of its recipe changed, trained (or resumed, or
read back) by the same loop as any run. The variants are data beside their method; this module turns them into
configs, each with its own run folder runs/<method>-<preset>-<variant slug>.

- lesson 2, `collapse-study --method byol`: BYOL without its predictor, or with the target = the online network;
- lesson 4, `collapse-study --method dino`: DINO without centering, without sharpening, without either (Fig. 7);
- lesson 6, `ablation`: DINOv2's recipe against itself without KoLeo, with EMA centering, with a shared head, and
  with 4 registers.
"""
from __future__ import annotations

from .config import Config, variant_configs
from .data import load_dataset
from .evaluation import extract_features
from .methods import byol, dino, dinov2
from .runtime import pick_device
from .train import train

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
