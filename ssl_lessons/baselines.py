"""Lesson 0's yardsticks, computed once per (data, backbone) and kept in runs/ for every later lesson."""
from __future__ import annotations

import json

from .data import dataset_key, load_dataset
from .dense import dense_yardsticks
from .evaluation import yardsticks
from .checkpoint import atomic_write_text
from .distributed import is_main
from .runtime import RUNS_DIR, pick_device


def yardstick_path(cfg):
    arch = f"{cfg.backbone}-p{cfg.patch_size}-d{cfg.embed_dim}x{cfg.depth}-{cfg.global_pool}"
    # LayerScale and registers change what a random ViT computes (DINOv2's laptop ViT is not DINO's): their own file
    arch += (f"-ls{cfg.layerscale_init:g}" if cfg.layerscale_init else "") + \
            (f"-reg{cfg.register_tokens}" if cfg.register_tokens else "")
    subset = f"-{cfg.train_subset}x{cfg.test_subset}" if cfg.train_subset or cfg.test_subset else ""
    name = dataset_key(cfg)  # two image trees never share yardsticks
    return RUNS_DIR / "baselines" / f"{name}{subset}-{arch}.json"


def load_or_compute_yardsticks(cfg, data=None, recompute: bool = False) -> dict:
    """The yardsticks of cfg's data and backbone: read from runs/baselines/ if saved there, else computed and saved.
    A ViT's include the dense probe's (dense.py) when cfg.dense_probe is on."""
    path = yardstick_path(cfg)
    dense = cfg.dense_probe and cfg.backbone == "vit"
    if path.exists() and not recompute:
        saved = json.loads(path.read_text())
        if not dense or "dense_miou" in saved.get("raw pixels", {}):
            return saved
    data = data if data is not None else load_dataset(cfg)
    device = pick_device(cfg.device)
    result = yardsticks(cfg, data, device, probe=cfg.linear_probe)  # collective under torchrun
    if dense:
        for name, scores in dense_yardsticks(cfg, data, device).items():
            result[name].update(scores)
    if is_main():
        atomic_write_text(json.dumps(result, indent=1), path)
    return result
