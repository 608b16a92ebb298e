"""The one training loop, for every method (see methods/base.py for what a method provides).

It owns what every run needs: the device (cuda, mps, cpu), seeds, AdamW with cosine lr and weight-decay
schedules, per-parameter gradient clipping, bf16 autocast on CUDA, a tqdm bar, a history of loss / lr / metrics,
periodic k-NN, atomic checkpoints with exact resume, DDP under torchrun, and the final k-NN + linear probe.

    python -m ssl_lessons train --method simclr --preset cifar10-laptop --set epochs=8
    torchrun --nproc_per_node=2 -m ssl_lessons train --method simclr --preset cifar10-laptop
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DistributedSampler
from tqdm.auto import tqdm

from . import distributed
from .checkpoint import atomic_save, load_checkpoint
from .config import Config
from .data import load_dataset
from .evaluation import evaluate, extract_features, knn_top1
from .methods import build_method
from .schedules import cosine_schedule

REPO_ROOT = Path(__file__).resolve().parent.parent
RUNS_DIR = Path(os.environ.get("SSL_LESSONS_RUNS", REPO_ROOT / "runs"))
# Fields that may change between a run and its resumption without changing what is computed.
RESUMABLE_CHANGES = {"out_dir", "ckpt_every", "device", "eval_batch_size", "linear_probe", "probe_max_iter",
                     "knn_every", "knn_bank"}


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def run_dir(cfg: Config) -> Path:
    return Path(cfg.out_dir) if cfg.out_dir else RUNS_DIR / f"{cfg.method}-{cfg.preset or 'custom'}"


def param_groups(module: nn.Module) -> list[dict]:
    """Weight decay on weight matrices only; none on biases and norm parameters (as DINO's get_params_groups)."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if name.endswith(".bias") or p.ndim == 1 else decay).append(p)
    return [{"params": decay, "apply_wd": True}, {"params": no_decay, "apply_wd": False, "weight_decay": 0.0}]


def clip_gradients(module: nn.Module, max_norm: float) -> None:
    """Clip each parameter's gradient to norm <= max_norm on its own (DINO's utils.clip_gradients)."""
    for p in module.parameters():
        if p.grad is not None:
            norm = p.grad.norm(2)
            p.grad.mul_(torch.clamp(max_norm / (norm + 1e-6), max=1.0))


def _autocast(cfg: Config, device: torch.device):
    if cfg.amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def _rng_state(generator: torch.Generator) -> dict:
    return {"generator": generator.get_state(), "torch": torch.get_rng_state()}


def train(cfg: Config, data=None, stop_after: int | None = None, show_progress: bool = True) -> dict:
    """Train cfg.method on cfg.dataset; resume from run_dir(cfg)/checkpoint.pt if it exists.

    `stop_after` ends the call after that many total steps (after writing a checkpoint), as a killed run would.
    Returns {"history", "evals", "result" (None until the run is finished), "out_dir"}."""
    rank, world, local_rank = distributed.setup()
    device = pick_device(cfg.device, local_rank)
    out_dir = run_dir(cfg)
    ckpt_path = out_dir / "checkpoint.pt"
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the {world} processes")
    local_batch = cfg.batch_size // world

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    if data is None:
        if rank != 0:
            distributed.barrier()  # rank 0 decodes and caches the images first
        data = load_dataset(cfg)
        if rank == 0:
            distributed.barrier()
    n_train = len(data.train_labels)
    steps_per_epoch = n_train // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size {cfg.batch_size} is larger than the {n_train} training images")
    total_steps = max(1, math.ceil(cfg.epochs * steps_per_epoch))

    method = build_method(cfg).to(device)
    model = method
    if world > 1:
        if device.type == "cuda":  # SimCLR's global BN; SyncBatchNorm has no CPU kernel (there DDP syncs buffers)
            method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
        model = DDP(method, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(param_groups(method), lr=0.0, weight_decay=cfg.weight_decay)
    generator = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + rank)

    step, history, evals, train_seconds = 0, [], [], 0.0
    if ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, map_location=device)
        _check_compatible(ckpt["config"], cfg, ckpt_path)
        method.load_state_dict(ckpt["method"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step, history, evals, train_seconds = ckpt["step"], ckpt["history"], ckpt["evals"], ckpt["train_seconds"]
        generator.set_state(ckpt["rng"][rank]["generator"])
        torch.set_rng_state(ckpt["rng"][rank]["torch"])
    elif rank == 0:
        (out_dir / "results.json").unlink(missing_ok=True)  # a fresh run: no stale result may stand for it

    def save_checkpoint():
        distributed.broadcast_buffers(method)
        states = [_rng_state(generator)]
        if world > 1:
            states = [None] * world
            torch.distributed.all_gather_object(states, _rng_state(generator))
        if rank == 0:
            atomic_save({"config": dataclasses.asdict(cfg), "method": method.state_dict(),
                         "optimizer": optimizer.state_dict(), "step": step, "history": history, "evals": evals,
                         "train_seconds": train_seconds, "rng": states}, ckpt_path)

    train_images = data.train_images.to(device)
    sampler = DistributedSampler(range(n_train), num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed,
                                 drop_last=True)
    peak_lr = cfg.lr * cfg.batch_size / 256
    knn_every_steps = round(cfg.knn_every * steps_per_epoch) if cfg.knn_every else 0
    bar = tqdm(total=total_steps, initial=step, desc=f"{cfg.method} {cfg.preset}", unit="step",
               disable=not show_progress or rank != 0, mininterval=1.0)

    def record_knn():
        evals.append({"step": step, "epoch": step / steps_per_epoch, "bank": min(cfg.knn_bank, n_train),
                      "knn_top1": periodic_knn(method.eval_backbone, data, cfg, device)})
        bar.write(f"step {step}: k-NN top-1 {evals[-1]['knn_top1']:.1f}% (bank {evals[-1]['bank']})")

    if knn_every_steps and step == 0:
        record_knn()  # the starting point: the randomly initialised backbone
    model.train()
    while step < total_steps and (stop_after is None or step < stop_after):
        epoch, offset = divmod(step, steps_per_epoch)
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler))
        for b in range(offset, steps_per_epoch):
            tic = time.perf_counter()
            progress = step / total_steps
            lr = cosine_schedule(progress, peak_lr, cfg.min_lr, warmup=cfg.warmup)
            wd = cosine_schedule(progress, cfg.weight_decay, cfg.weight_decay_end)
            for group in optimizer.param_groups:
                group["lr"] = lr
                if group["apply_wd"]:
                    group["weight_decay"] = wd

            method.before_step(progress)
            images = train_images[order[b * local_batch:(b + 1) * local_batch].to(device)]
            views = method.make_views(images, generator)
            with _autocast(cfg, device):
                loss, logs = model(views)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {step}: lower lr (now {lr:.2e}) "
                                         "or raise the temperature; the last checkpoint is intact.")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            method.after_backward(progress)
            if cfg.clip_grad:
                clip_gradients(method, cfg.clip_grad)
            optimizer.step()
            method.after_step(progress)
            step += 1
            train_seconds += time.perf_counter() - tic

            if step % cfg.log_every == 0 or step == total_steps:
                history.append({"step": step, "epoch": step / steps_per_epoch, "loss": loss.item(), "lr": lr,
                                "weight_decay": wd, **logs})
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.1e}", refresh=False)
            if knn_every_steps and (step % knn_every_steps == 0 or step == total_steps):
                record_knn()
            if step % cfg.ckpt_every == 0 or step == total_steps or step == stop_after:
                save_checkpoint()
            bar.update()
            if step >= total_steps or step == stop_after:
                break
    bar.close()

    result = None
    if step >= total_steps:
        result = _finish(cfg, method, data, device, out_dir, history, evals, train_seconds, step, steps_per_epoch)
    distributed.barrier()
    return {"history": history, "evals": evals, "result": result, "out_dir": out_dir, "method": method}


def periodic_knn(backbone: nn.Module, data, cfg: Config, device) -> float:
    """k-NN top-1 with a bank of cfg.knn_bank training images (fixed subset) against the test images."""
    bank = data.subset(n_train=cfg.knn_bank, seed=1)
    train = extract_features(backbone, bank.train_images, cfg.eval_batch_size, device, desc="k-NN bank")
    test = extract_features(backbone, bank.test_images, cfg.eval_batch_size, device, desc="k-NN test")
    return knn_top1(train, bank.train_labels, test, bank.test_labels, cfg.knn_k, cfg.knn_temperature)


def _finish(cfg, method, data, device, out_dir, history, evals, train_seconds, step, steps_per_epoch) -> dict | None:
    result_path = out_dir / "results.json"
    if result_path.exists():
        result = json.loads(result_path.read_text())
        if result.get("steps") == step:
            return result  # this run was finished and evaluated before
    if not distributed.is_main():
        return None
    metrics = evaluate(method.eval_backbone, data, device, cfg.knn_k, cfg.knn_temperature, cfg.linear_probe,
                       cfg.eval_batch_size, cfg.probe_max_iter)
    result = {"method": cfg.method, "preset": cfg.preset, **metrics, "train_minutes": train_seconds / 60,
              "steps": step, "epochs": step / steps_per_epoch, "device": str(device),
              "train_images_per_second": step * cfg.batch_size / max(train_seconds, 1e-9),
              "bank": len(data.train_labels), "queries": len(data.test_labels),
              "final_logs": {k: v for k, v in history[-1].items() if k not in ("step", "epoch")} if history else {},
              "config": dataclasses.asdict(cfg)}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "history.json").write_text(json.dumps({"history": history, "evals": evals}, indent=1))
    _atomic_write_text(result_path, json.dumps(result, indent=1))
    from .visualize import plot_training  # matplotlib only when needed
    fig = plot_training(history, evals, title=f"{cfg.method} ({cfg.preset})", final=result)
    fig.savefig(out_dir / "curves.png", dpi=120, bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)
    return result


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _check_compatible(saved: dict, cfg: Config, path: Path) -> None:
    current = dataclasses.asdict(cfg)
    # keys the saved config lacks were added to Config later, with defaults that keep the old behaviour
    diff = {k: (saved[k], v) for k, v in current.items() if k in saved and k not in RESUMABLE_CHANGES and saved[k] != v}
    if diff:
        pretty = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"{path} was written with a different config ({pretty}). Resume with the same settings, "
                         "or start afresh with another out_dir (or delete the checkpoint).")
