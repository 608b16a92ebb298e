"""Benchmark (not a test): training images/s and augmentation images/s for a preset, as medians over steps.

    python -m ssl_lessons bench --preset cifar10-laptop --steps 20

Images/s counts source images per second (each gives the method's number of views); per-view throughput is
that times the number of views. Run it alone: another process on the same cores halves both numbers.
"""
from __future__ import annotations

import platform
import statistics
import time

import torch

from .data import load_dataset
from .methods import build_method
from .train import _autocast, pick_device


def _median_rate(fn, n_items: int, steps: int, warmup: int = 3) -> float:
    times = []
    for i in range(warmup + steps):
        tic = time.perf_counter()
        fn()
        if i >= warmup:
            times.append(time.perf_counter() - tic)
    return n_items / statistics.median(times)


def main(cfg, steps: int = 20) -> dict:
    device = pick_device(cfg.device)
    data = load_dataset(cfg)
    torch.manual_seed(cfg.seed)
    method = build_method(cfg).to(device).train()
    optimizer = torch.optim.AdamW(method.param_groups(), lr=1e-4)
    generator = torch.Generator(device=device).manual_seed(0)
    images = data.train_images[:cfg.batch_size].to(device)
    crops = method.make_views(images, generator)

    def augment():
        method.make_views(images, generator)
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step():
        with _autocast(cfg, device):
            loss, _ = method(crops)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        method.after_step(0.5)  # e.g. the teacher's EMA update
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step_with_views():
        nonlocal crops
        crops = method.make_views(images, generator)
        step()

    n = cfg.batch_size
    result = {"augment_img_per_s": _median_rate(augment, n, steps),
              "train_img_per_s (views given)": _median_rate(step, n, steps),
              "train_img_per_s (views made each step)": _median_rate(step_with_views, n, steps)}
    print(f"{cfg.method} / {cfg.preset} on {device} ({platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads), batch {n}, {crops.n_views} views, median of {steps} steps:")
    for k, v in result.items():
        print(f"  {k:40s} {v:8.0f} images/s   ({v * crops.n_views:.0f} views/s)")
    return result
