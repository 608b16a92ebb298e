"""Where runs live and what they run on: the runs/ folder and a run's folder in it, the device, and the autocast
context of the training step. Below everything that trains, evaluates or reports, so all of them share it."""
from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
RUNS_DIR = Path(os.environ.get("SSL_LESSONS_RUNS", REPO_ROOT / "runs"))


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """`name` itself, or for "auto" the first of cuda (this process's GPU), mps, cpu that is available."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def run_dir(cfg) -> Path:
    """A run's folder: cfg.out_dir, else runs/<method>-<preset>."""
    return Path(cfg.out_dir) if cfg.out_dir else RUNS_DIR / f"{cfg.method}-{cfg.preset or 'custom'}"


def autocast(cfg, device: torch.device, world: int):
    """The training step's autocast: bf16 on CUDA when cfg.amp; none on CPU and MPS, and none under FSDP with
    several processes, whose MixedPrecisionPolicy casts the weights itself (parallel.mixed_precision)."""
    if cfg.parallel == "fsdp" and world > 1:
        return nullcontext()
    if cfg.amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()
