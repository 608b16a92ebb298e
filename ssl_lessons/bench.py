"""Benchmarks (not tests): training and augmentation images/s for a preset, as medians over steps; DINOv2's
implementation tricks on and off; the streaming loader's images/s.

    python -m ssl_lessons bench --preset cifar10-laptop --steps 20
    python -m ssl_lessons bench --method dinov2 --tricks          # sequence packing, efficient stochastic depth
    python -m ssl_lessons bench --method dino --stream DIR        # DIR: an ImageFolder tree (train/, val/)
    python -m ssl_lessons bench --method dino --preset imagenet-vits16-dino --set dataset=none device=cuda \
        batch_size=64 --tricks --synthetic                        # ViT-S/16 at 224 px on random images (a GPU)

Images/s counts source images per second (each gives the method's number of views); per-view throughput is
that times the number of views. Run it alone: another process on the same cores halves both numbers.
"""
from __future__ import annotations

import platform
import statistics
import time

import torch

from .config import apply_overrides
from .data import ImageData, load_dataset
from .methods import build_method
from .runtime import pick_device
from .step import set_schedules, training_step
from .streaming import StreamingImages

# Lesson 7's comparison: the same method and batch with each trick on or off. Stochastic depth at dinov2's ViT-L
# rate (0.4) in every variant, so that only the way it is computed changes.
TRICKS = {
    "baseline": dict(drop_path_rate=0.4),
    "sequence packing": dict(drop_path_rate=0.4, sequence_packing=True),
    "efficient stochastic depth": dict(drop_path_rate=0.4, efficient_drop_path=True),
    "both": dict(drop_path_rate=0.4, sequence_packing=True, efficient_drop_path=True),
}


PROGRESS = 0.5  # the steps timed stand mid-training: every schedule running, no part frozen


def _median_rate(fn, n_items: int, steps: int, warmup: int = 3) -> float:
    times = []
    for i in range(warmup + steps):
        tic = time.perf_counter()
        fn()
        if i >= warmup:
            times.append(time.perf_counter() - tic)
    return n_items / statistics.median(times)


class _Prepared:
    """cfg's method on its device with AdamW, a batch of images and one batch of its views: what the timings share."""

    def __init__(self, cfg, data=None):
        self.cfg, self.device = cfg, pick_device(cfg.device)
        data = data if data is not None else load_dataset(cfg)
        torch.manual_seed(cfg.seed)
        self.method = build_method(cfg).to(self.device).train()
        self.optimizer = torch.optim.AdamW(self.method.param_groups(), lr=0.0)
        set_schedules(self.optimizer, self.method, cfg, PROGRESS)
        self.generator = torch.Generator(device=self.device).manual_seed(0)
        self.images = data.train_images[:cfg.batch_size].to(self.device)
        self.crops = self.method.make_views(self.images, self.generator)

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def augment(self):
        self.method.make_views(self.images, self.generator)
        self.sync()

    def step(self):
        training_step(self.method, self.method, self.optimizer, self.crops, self.cfg, PROGRESS, self.device)
        self.sync()

    def step_with_views(self):
        self.crops = self.method.make_views(self.images, self.generator)
        self.step()


def main(cfg, steps: int = 20, data=None) -> dict:
    run = _Prepared(cfg, data)
    n = cfg.batch_size
    result = {"augment_img_per_s": _median_rate(run.augment, n, steps),
              "train_img_per_s (views given)": _median_rate(run.step, n, steps),
              "train_img_per_s (views made each step)": _median_rate(run.step_with_views, n, steps)}
    print(f"{cfg.method} / {cfg.preset} on {run.device} ({platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads), batch {n}, {run.crops.n_views} views, median of {steps} steps:")
    for k, v in result.items():
        print(f"  {k:40s} {v:8.0f} images/s   ({v * run.crops.n_views:.0f} views/s)")
    return result


def train_rate(cfg, steps: int = 10, data=None) -> float:
    """Median training images/s of cfg's method on one batch of views (made once), on cfg's device; on CUDA the
    peak memory is printed too."""
    run = _Prepared(cfg, data)
    if run.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(run.device)
    rate = _median_rate(run.step, cfg.batch_size, steps)
    if run.device.type == "cuda":
        print(f"    peak memory {torch.cuda.max_memory_allocated(run.device) / 2**30:.2f} GiB")
    return rate


def synthetic_data(cfg, n: int = 0):
    """Random uint8 images at cfg.image_size, as many as one batch (a speed benchmark needs no real photos)."""
    g = torch.Generator().manual_seed(0)
    n = n or cfg.batch_size
    images = torch.randint(0, 256, (n, 3, cfg.image_size, cfg.image_size), dtype=torch.uint8, generator=g)
    labels = torch.zeros(n, dtype=torch.int64)
    return ImageData(images, labels, images[:1], labels[:1], ["synthetic"])


def tricks(cfg, steps: int = 10, data=None) -> dict[str, float]:
    """Training images/s with each of TRICKS (packing, efficient stochastic depth) on and off; printed as a table
    with the speed-up over the baseline."""
    data = data if data is not None else load_dataset(cfg)
    rates = {name: train_rate(apply_overrides(cfg, changes), steps, data) for name, changes in TRICKS.items()}
    print(f"{cfg.method} / {cfg.preset}, batch {cfg.batch_size}, on {pick_device(cfg.device)} "
          f"({torch.get_num_threads()} threads), median of {steps} steps:")
    for name, rate in rates.items():
        print(f"  {name:28s} {rate:8.1f} images/s   x{rate / rates['baseline']:.2f}")
    return rates


def stream_rate(cfg, root, batches: int = 20, workers: int = 2) -> float:
    """Images/s the streaming loader delivers (decode + the method's full-resolution multi-crop in `workers`
    processes): up to `batches` batches of one epoch over the wall time from the first request to the last batch,
    workers' start included (a median per batch would time the prefetched queue, not the workers)."""
    method = build_method(cfg)
    loader = StreamingImages(root, eval_size=cfg.image_size, workers=workers).training_loader(
        method.crops, cfg.batch_size, cfg.seed)
    loader.sampler.set_position(0)
    n = min(batches, len(loader))
    tic = time.perf_counter()
    for i, _ in zip(range(n), loader):
        pass
    rate = n * cfg.batch_size / (time.perf_counter() - tic)
    print(f"streaming: {workers} workers, batch {cfg.batch_size}, {method.crops.n_global} x {cfg.image_size} px + "
          f"{method.crops.n_local} x {method.crops.local_view.size if method.crops.n_local else 0} px views: "
          f"{rate:.1f} images/s ({n} batches)")
    return rate
