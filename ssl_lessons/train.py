"""The one training loop, for every method (see methods/base.py for what a method provides).

    set up (device, seeds, the method, DDP or FSDP2, AdamW)  ->  resume (checkpoint.Checkpointer: one file, or sharded)
    ->  loop: batches from the data's source (in memory or streamed), one training_step each (step.py: schedules,
        forward, backward, clipping, AdamW, the teacher's update), history, periodic k-NN, checkpoints
    ->  evaluate (k-NN, linear probe, dense probe)  ->  save (results.json, history.json, curves.png)

The loop holds what every run needs beyond the step: seeds and exact resume (every rank's random state in the
checkpoint), a tqdm bar, the history of loss / lr / metrics, a NaN check before any weight changes, and a run folder
that one run at a time may hold. A config may add a high-resolution phase at the end (DINOv2 sec. 4): from step
highres_start on, the method's global crops are highres_size px (Method.set_global_size), every schedule runs again
compressed into the phase, and the checkpoint just before is kept.

    python -m ssl_lessons train --method simclr --preset cifar10-laptop --set epochs=8
    torchrun --nproc_per_node=2 -m ssl_lessons train --method simclr --preset cifar10-laptop
    torchrun --nproc_per_node=2 -m ssl_lessons train --method dinov2 --set parallel=fsdp
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from contextlib import nullcontext
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn as nn
from torch.distributed.checkpoint.api import CheckpointException
from tqdm.auto import tqdm

from . import distributed
from .checkpoint import Checkpointer, atomic_save, atomic_write_text, run_lock
from .config import Config, config_from_dict, config_to_dict, flat_config
from .data import CIFAR10_TRAIN_IMAGES, load_dataset
from .dense import DenseBenchmark, dense_probe
from .diagnostics import linear_cka
from .errors import CheckpointError, ConfigError, TrainingDiverged, first_line
from .evaluation import evaluate, extract_patch_tokens, knn_top1
from .methods import build_method
from .parallel import local, memory_per_rank, wrap
from .pretrained import exported_record, load_backbone_and_heads, pretrained_path
from .runtime import pick_device, run_dir
from .step import NonFiniteLoss, set_schedules, training_step
from .visualize import plot_training

# Fields that may change between a run and its resumption without changing what is computed.
RESUMABLE_CHANGES = {"out_dir", "ckpt_every", "device", "eval_batch_size", "linear_probe", "probe_max_iter",
                     "knn_every", "knn_bank", "periodic_dense", "keep_snapshots", "activation_checkpointing",
                     "sequence_packing", "workers"}
# What decides the shapes of a backbone's weights (the architecture an init_from file must share).
ARCHITECTURE = ("backbone", "image_size", "patch_size", "embed_dim", "depth", "num_heads", "register_tokens",
                "layerscale_init")
# Fields that may change on resume when the user says so (--allow-change), besides the recipe's float fields.
ADJUSTABLE_ON_RESUME = ("lr", "min_lr", "warmup", "weight_decay", "weight_decay_end", "clip_grad", "accum_steps")


def train(cfg: Config, data=None, stop_after: int | None = None, show_progress: bool = True,
          allow_changes: tuple[str, ...] = (), eval_data=None) -> dict:
    """Train cfg.method on cfg.dataset; resume from run_dir(cfg)'s checkpoint if it exists (checkpoint.pt, or the
    sharded folder checkpoint/ with parallel=fsdp, which may be resumed at another number of processes).

    A resumed run must have the checkpoint's config, except for the fields in RESUMABLE_CHANGES and those named in
    `allow_changes` (e.g. ("lr",) to go on from the last good checkpoint with a lower learning rate after a NaN;
    see ADJUSTABLE_ON_RESUME); such changes are recorded in the checkpoint and the result.
    `stop_after` ends the call after that many total steps (after writing a checkpoint), as a killed run would.
    Returns {"history", "evals", "result" (None until the run is finished), "out_dir", "method", "optimizer"}.
    The run holds its folder while it runs (checkpoint.run_lock): a second run into the same out_dir is refused.
    `data` (default: cfg's dataset) is what it trains on; `eval_data` (default: `data`) is what its k-NN, probes and
    dense yardstick measure it on: a labelled set, where the training images are an unlabelled pool (lesson 8)."""
    rank, _, _ = distributed.setup()
    with run_lock(run_dir(cfg)) if rank == 0 else nullcontext():
        return _train(cfg, data, stop_after, show_progress, allow_changes, eval_data)


def _train(cfg: Config, data, stop_after: int | None, show_progress: bool, allow_changes: tuple[str, ...],
           eval_data=None) -> dict:
    rank, world, local_rank = distributed.setup()
    device = pick_device(cfg.device, local_rank)
    out_dir = run_dir(cfg)
    checkpointer = Checkpointer(out_dir, sharded=cfg.parallel == "fsdp")
    # Everything that can be checked without the images is checked before they are loaded.
    local_batch = check_run(cfg, world, n_train=None if data is None else len(data.train_labels))
    checkpointer.check_format()
    ckpt = checkpointer.read_meta(device)
    if ckpt is not None:
        config_changes = check_resumable(ckpt, cfg, checkpointer.path, world, allow_changes)

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    if data is None:
        data = load_data(cfg, world)
    n_train = len(data.train_labels)
    measured = data if eval_data is None else eval_data
    steps_per_epoch = n_train // cfg.batch_size
    total_steps = max(1, math.ceil(cfg.epochs * steps_per_epoch))

    method = build_method(cfg)
    if cfg.init_from:  # also when resuming: the patch CKA is measured to these weights (the checkpoint then loads)
        start_from_exported(method, cfg.init_from)
    method = method.to(device)
    init_patches = initial_patch_features(method.eval_backbone, measured, device)  # for the patch CKA to the start
    model = wrap(method, cfg.parallel, world, device, cfg.amp, cfg.activation_checkpointing)
    method = getattr(model, "module", model)  # DDP may have converted BatchNorm layers: the method it runs
    optimizer = torch.optim.AdamW(method.param_groups(), lr=0.0, weight_decay=cfg.weight_decay)
    if cfg.accum_steps > 1 and rank == 0:
        print(f"accum_steps={cfg.accum_steps}: micro-batches of {local_batch // cfg.accum_steps} images per process; "
              f"{method.ACCUMULATION}", flush=True)
    generator = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + rank)

    step, history, evals, train_seconds, changes = 0, [], [], 0.0, []
    if ckpt is not None:
        own = checkpointer.load(method, optimizer, ckpt)
        step, history, evals, train_seconds = ckpt["step"], ckpt["history"], ckpt["evals"], ckpt["train_seconds"]
        changes = ckpt.get("config_changes", []) + ([{"step": step, "changes": config_changes}] if config_changes else [])
        if own is not None:
            generator.set_state(own["generator"].cpu())  # RNG states are CPU byte tensors, whatever map_location did
            torch.set_rng_state(own["torch"].cpu())
            method.load_rank_state(own["method"])
        else:  # written by another number of processes: each rank's random streams start afresh from the step
            generator.manual_seed(cfg.seed * 1000 + rank + 1_000_003 * step)
            torch.manual_seed(cfg.seed * 1000 + rank + 1_000_003 * step)
        del ckpt  # the one-file format holds every tensor: not kept through training
    elif rank == 0:
        (out_dir / "results.json").unlink(missing_ok=True)  # a fresh run: no stale result may stand for it

    def diverged(what: str):
        raise TrainingDiverged(
            f"{what}. The checkpoint in {out_dir} is intact (step {ckpt_step}); resume it with a lower learning "
            f"rate: the same command with --set lr={cfg.lr / 2:g} --allow-change lr (or train afresh with another "
            "out_dir)")

    def save_checkpoint(stem: str | None = None):
        """Collective. Weights or optimizer states that are no longer finite are never saved: the last checkpoint
        stays one a lower lr can resume."""
        if not state_is_finite(method, optimizer, device):
            diverged(f"the weights or optimizer states became infinite or NaN by step {step}")
        distributed.broadcast_buffers(method)
        own = {"generator": generator.get_state().cpu(), "torch": torch.get_rng_state(), "method": method.rank_state()}
        meta = {"config": config_to_dict(cfg), "step": step, "history": history, "evals": evals,
                "train_seconds": train_seconds, "config_changes": changes}
        try:
            checkpointer.save(method, optimizer, meta, own, stem)
        except (OSError, CheckpointException) as e:  # a full disk, a folder gone; DCP's failures are BaseExceptions
            raise CheckpointError(f"could not write the checkpoint of step {step} ({first_line(e)}); the one of step "
                                  f"{ckpt_step} in {out_dir} is intact: free space (or fix the folder) and run the "
                                  "same command to resume from it") from None

    source = data.training_batches(method, local_batch, steps_per_epoch, cfg.seed, rank, world, generator, device)
    highres_start = highres_start_step(cfg, total_steps)
    knn_every_steps = round(cfg.knn_every * steps_per_epoch) if cfg.knn_every else 0
    bar = tqdm(total=total_steps, initial=step, desc=f"{cfg.method} {cfg.preset}", unit="step",
               disable=not show_progress or rank != 0, mininterval=1.0)

    dense_bench = None  # the periodic dense probe's mosaics, made at its first use

    def record_knn():
        nonlocal dense_bench
        evals.append({"step": step, "epoch": step / steps_per_epoch,
                      "bank": min(cfg.knn_bank, len(measured.train_labels)),
                      "knn_top1": periodic_knn(method.eval_backbone, measured, cfg, device)})
        shown = ""
        if init_patches is not None:
            evals[-1]["patch_cka_to_init"] = patch_cka(method.eval_backbone, measured, init_patches, device)
            shown = f", patch CKA to the start {evals[-1]['patch_cka_to_init']:.2f}"
            if cfg.periodic_dense:
                dense_bench = dense_bench or DenseBenchmark.from_data(measured, cfg.patch_size, cfg.dense_mosaics)
                dense = dense_probe(method.eval_backbone, dense_bench, device, cfg.eval_batch_size)
                evals[-1].update({f"dense_{k}": v for k, v in dense.items()})
                shown += f", dense mIoU {dense['miou']:.1f}%"
        if cfg.keep_snapshots:
            keep_snapshot(method, cfg, out_dir, step, evals)
        bar.write(f"step {step}: k-NN top-1 {evals[-1]['knn_top1']:.1f}% (bank {evals[-1]['bank']}){shown}")

    def start_highres_phase():
        method.set_global_size(cfg.highres_size)
        source.restart()  # streamed images: the workers crop at the new size from here on

    ckpt_step = step
    if highres_start is not None and step >= highres_start:
        start_highres_phase()  # resumed inside the high-resolution phase
    if knn_every_steps and step == 0:
        record_knn()  # the starting point: the randomly initialised backbone
    model.train()
    finished = lambda: step >= total_steps or (stop_after is not None and step >= stop_after)  # noqa: E731
    while not finished():
        epoch, start = divmod(step, steps_per_epoch)
        tic = time.perf_counter()
        for batch in source.epoch(epoch, start):
            progress, in_highres = schedule_progress(step, total_steps, highres_start)
            lr, wd = set_schedules(optimizer, method, cfg, progress, cfg.highres_lr_scale if in_highres else 1.0)
            log_now = (step + 1) % cfg.log_every == 0 or step + 1 == total_steps
            try:
                loss, logs = training_step(model, method, optimizer, source.views(batch), cfg, progress, device, world,
                                           diagnostics=log_now)
            except NonFiniteLoss as e:
                diverged(f"{e} at step {step}")
            step += 1
            train_seconds += time.perf_counter() - tic

            if log_now:  # the mean over ranks, so every rank (and its checkpoint) keeps the same history
                values = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=device).detach()
                                      for v in (loss, *logs.values())])
                values = distributed.all_reduce_mean(values).tolist()
                history.append({"step": step, "epoch": step / steps_per_epoch, "loss": values[0], "lr": lr,
                                "weight_decay": wd, **dict(zip(logs, values[1:]))})
                bar.set_postfix(loss=f"{history[-1]['loss']:.3f}", lr=f"{lr:.1e}", refresh=False)
            if knn_every_steps and (step % knn_every_steps == 0 or step == total_steps or step == highres_start):
                record_knn()
            if step % cfg.ckpt_every == 0 or finished():
                save_checkpoint()
                ckpt_step = step
            bar.update()
            if step == highres_start:  # keep the backbone as it was before the phase, then enter it
                save_checkpoint("checkpoint-before-highres")
                start_highres_phase()
                break  # the epoch's next batches come from the source as it is now
            if finished():
                break
            tic = time.perf_counter()
    bar.close()

    result = None
    if step >= total_steps:
        result = _finish(cfg, method, measured, device, out_dir, history, evals, train_seconds, step, steps_per_epoch,
                         changes, memory_per_rank(method, optimizer), init_patches)
    distributed.barrier()
    return {"history": history, "evals": evals, "result": result, "out_dir": out_dir, "method": method,
            "optimizer": optimizer}


def load_data(cfg: Config, world: int):
    """cfg's images (data.load_dataset): rank 0 decodes and caches them first, the other ranks then read its cache."""
    if distributed.rank() != 0:
        distributed.barrier()
    data = load_dataset(cfg)
    if distributed.rank() == 0:
        distributed.barrier()
    check_run(cfg, world, n_train=len(data.train_labels))
    return data


def state_is_finite(method: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device) -> bool:
    """Every parameter and optimizer state finite on every rank (a collective: all ranks get the same answer)."""
    tensors = [*method.parameters(), *(v for state in optimizer.state.values() for v in state.values()
                                       if torch.is_tensor(v) and v.is_floating_point())]
    finite = all(bool(torch.isfinite(local(t)).all()) for t in tensors)
    return distributed.all_reduce_mean(torch.tensor(float(finite), device=device)).item() == 1.0


def schedule_progress(step: int, total_steps: int, highres_start: int | None) -> tuple[float, bool]:
    """(where `step` stands in its phase's schedules, in [0, 1); whether it is in the high-resolution phase).
    Without that phase: step / total_steps. With it, as DINOv2 (App. B.2: the high-resolution model is initialised
    from the pretrained one and trained "with the same procedure ... all the schedules kept the same but compressed"
    into its iterations, at a reduced base lr): the main training's schedules (lr, weight decay, teacher momentum and
    temperature, frozen last layer) run to completion by the phase's start, and run again within the phase."""
    if highres_start is None:
        return step / total_steps, False
    if step < highres_start:
        return step / highres_start, False
    return (step - highres_start) / (total_steps - highres_start), True


def highres_start_step(cfg: Config, total_steps: int) -> int | None:
    """The first step of the high-resolution phase (the last cfg.highres_fraction of the steps), or None."""
    if not cfg.highres_size:
        return None
    return min(total_steps - 1, round(total_steps * (1 - cfg.highres_fraction)))


def periodic_knn(backbone: nn.Module, data, cfg: Config, device) -> float:
    """k-NN top-1 with a bank of cfg.knn_bank training images (fixed subset) against the test images."""
    bank = data.subset(n_train=cfg.knn_bank, seed=1)
    train = bank.features(backbone, "train", cfg.eval_batch_size, device, desc="k-NN bank")
    test = bank.features(backbone, "test", cfg.eval_batch_size, device, desc="k-NN test")
    return knn_top1(train, bank.train_labels, test, bank.test_labels, cfg.knn_k, cfg.knn_temperature)


CKA_IMAGES = 32  # test images whose patch tokens the CKA to the start compares (32 x N tokens)


def initial_patch_features(backbone: nn.Module, data, device) -> torch.Tensor | None:
    """The evaluated backbone's patch tokens of the first CKA_IMAGES test images, at its initialisation: (n, N, D),
    or None when there are none to compare (a ResNet, streamed images). A collective under torchrun."""
    if not hasattr(backbone, "patch_tokens") or not hasattr(data, "test_images"):
        return None
    return extract_patch_tokens(backbone, data.test_images[:CKA_IMAGES], device=device)


def patch_cka(backbone: nn.Module, data, initial: torch.Tensor, device) -> float:
    """Linear CKA between the backbone's patch tokens now and `initial` (diagnostics.py): 1 = not moved."""
    now = extract_patch_tokens(backbone, data.test_images[:CKA_IMAGES], device=device)
    return linear_cka(now.flatten(0, 1), initial.flatten(0, 1))


def start_from_exported(method: nn.Module, name: str) -> None:
    """Config.init_from: the method's networks from the exported backbone `name` and its heads (Method.start_from)."""
    backbone, heads, record = load_backbone_and_heads(name)
    try:
        method.start_from(backbone.state_dict(), {k: h.state_dict() for k, h in heads.items()})
    except (RuntimeError, ValueError) as e:
        saved = record["config"]
        raise ConfigError(f"init_from={name}: its weights do not fit this run's networks ({first_line(e)}); it was "
                          f"trained as --method {saved.get('method')} with "
                          + " ".join(f"{k}={saved.get(k)}" for k in ARCHITECTURE if k in saved)
                          + " (and its heads' sizes): give this run the same ones") from None


def keep_snapshot(method: nn.Module, cfg: Config, out_dir: Path, step: int, evals: list[dict]) -> Path:
    """out_dir/snapshots/step-NNNNNN.pt: the evaluated backbone and its heads now, as `export` writes a finished run
    (pretrained.exported_record; pretrained.load_backbone_and_heads reads it), with the evaluations so far.
    A collective under torchrun (FSDP2's shards are gathered); rank 0 writes."""
    record = exported_record(method.eval_backbone, method.export_heads(), config_to_dict(cfg), step=step,
                             evals=list(evals))
    path = out_dir / "snapshots" / f"step-{step:06d}.pt"
    if distributed.is_main():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save(record, path)
    return path


def _finish(cfg, method, data, device, out_dir, history, evals, train_seconds, step, steps_per_epoch,
            changes, memory: dict, init_patches: torch.Tensor | None) -> dict:
    """The final k-NN (and probe) on every rank (collective), written by rank 0; every rank returns the result."""
    result_path = out_dir / "results.json"
    if result_path.exists():
        result = json.loads(result_path.read_text())
        if result.get("steps") == step:
            return result  # this run was finished and evaluated before
    metrics = evaluate(method.eval_backbone, data, device, cfg.knn_k, cfg.knn_temperature, cfg.linear_probe,
                       cfg.eval_batch_size, cfg.probe_max_iter)
    if init_patches is not None:  # a ViT on images in memory: its patch tokens, measured
        metrics["patch_cka_to_init"] = patch_cka(method.eval_backbone, data, init_patches, device)
        if cfg.dense_probe:
            bench = DenseBenchmark.from_data(data, cfg.patch_size, cfg.dense_mosaics)
            metrics.update({f"dense_{k}": v for k, v in dense_probe(method.eval_backbone, bench, device,
                                                                    cfg.eval_batch_size).items()})
    result = {"method": cfg.method, "preset": cfg.preset, **metrics, "train_minutes": train_seconds / 60,
              "steps": step, "epochs": step / steps_per_epoch, "device": str(device),
              "train_images_per_second": step * cfg.batch_size / max(train_seconds, 1e-9),
              "bank": len(data.train_labels), "queries": len(data.test_labels),
              "final_logs": {k: v for k, v in history[-1].items() if k not in ("step", "epoch")} if history else {},
              "processes": distributed.world_size(), "memory_per_rank": memory,
              "config": config_to_dict(cfg), "config_changes": changes}
    if not distributed.is_main():
        return result
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps({"history": history, "evals": evals}, indent=1), out_dir / "history.json")
    atomic_write_text(json.dumps(result, indent=1), result_path)
    fig = plot_training(history, evals, title=f"{cfg.method} ({cfg.preset})", final=result)
    fig.savefig(out_dir / "curves.png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return result


def check_run(cfg: Config, world: int, n_train: int | None = None) -> int:
    """The per-rank batch, after the checks that need no training: the device exists, the batch splits over the
    processes and fits the training images (CIFAR-10's 50,000, or its subset, before they are loaded)."""
    device = pick_device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={cfg.device} but this machine has no CUDA GPU: use device=auto or device=cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={cfg.device} but MPS is not available here: use device=auto or device=cpu")
    if cfg.dataset == "cifar10" and cfg.data_loading == "stream":
        raise ConfigError("data_loading=stream reads full-resolution images of an ImageFolder tree from disk; "
                          "CIFAR-10 is decoded once into memory: use data_loading=auto (or memory), or --set "
                          "dataset=/path/to/tree")
    if cfg.init_from and not pretrained_path(cfg.init_from).exists():
        raise ConfigError(f"init_from={cfg.init_from}: no such exported backbone ({pretrained_path(cfg.init_from)}); "
                          "export one with `python -m ssl_lessons export ...` (data/pretrained/README.md)")
    if cfg.batch_size % world:
        raise ConfigError(f"batch_size {cfg.batch_size} must be divisible by the {world} processes: set batch_size to "
                          f"a multiple of {world}")
    if (cfg.batch_size // world) % cfg.accum_steps:
        raise ConfigError(f"each process's {cfg.batch_size // world} images must split into accum_steps="
                          f"{cfg.accum_steps} equal micro-batches: choose accum_steps dividing {cfg.batch_size // world}")
    if n_train is None and cfg.dataset == "cifar10":
        n_train = min(cfg.train_subset or CIFAR10_TRAIN_IMAGES, CIFAR10_TRAIN_IMAGES)
    if n_train is not None and cfg.batch_size > n_train:
        raise ConfigError(f"batch_size {cfg.batch_size} is larger than the {n_train} training images: lower "
                          "batch_size or raise train_subset")
    if n_train is not None and cfg.highres_size:
        total = max(1, math.ceil(cfg.epochs * (n_train // cfg.batch_size)))
        if highres_start_step(cfg, total) < 1:
            raise ConfigError(f"highres_fraction {cfg.highres_fraction} leaves no step of the {total} before the "
                              "high-resolution phase (nothing to compare it with): lower highres_fraction or train "
                              "longer")
    if n_train is not None and cfg.knn_k > n_train:
        raise ConfigError(f"knn_k {cfg.knn_k} is larger than the {n_train} training images of the k-NN bank: lower "
                          "knn_k")
    return cfg.batch_size // world


def check_resumable(ckpt: dict, cfg: Config, path: Path, world: int, allow_changes=()) -> dict:
    """Refuse to resume a checkpoint of another method, another config or (unless sharded) another number of
    processes; return the changes made with consent ({key: [before, now]}) for the fields in `allow_changes`."""
    saved = ckpt["config"]
    if saved.get("method") != cfg.method:
        raise CheckpointError(f"{path} belongs to a {saved.get('method')} run, not {cfg.method}: choose another "
                              "out_dir (or delete the checkpoint)")
    if "rank_states" in ckpt and len(ckpt["rank_states"]) != world:
        raise CheckpointError(f"{path} was written by {len(ckpt['rank_states'])} processes; resume it with as many "
                              f"(now {world}), or start afresh with another out_dir (runs with parallel=fsdp write "
                              "sharded checkpoints, which resume at any number of processes)")
    not_adjustable = sorted(set(allow_changes) - adjustable_on_resume(cfg))
    if not_adjustable:
        raise ConfigError(f"--allow-change {', '.join(not_adjustable)}: only these can change on resume: "
                          f"{', '.join(sorted(adjustable_on_resume(cfg)))}")
    before, now = flat_config(config_from_dict(saved)), flat_config(cfg)
    diff = {k: [before.get(k), v] for k, v in now.items() if k not in RESUMABLE_CHANGES and before.get(k) != v}
    refused = {k: d for k, d in diff.items() if k not in allow_changes}
    if refused:
        pretty = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in refused.items())
        adjustable = sorted(set(refused) & adjustable_on_resume(cfg))
        advice = (f"; to go on with new values of {', '.join(adjustable)}, add --allow-change {' '.join(adjustable)}"
                  if adjustable == sorted(refused) else "")
        raise CheckpointError(f"{path} was written with a different config ({pretty}). Resume with the same "
                              "settings, or start afresh with another out_dir (or delete the checkpoint)" + advice)
    return diff


def adjustable_on_resume(cfg: Config) -> set[str]:
    """Fields that may change on resume with consent: the optimisation numbers and the method's real-valued
    settings (temperatures, momenta), which change the steps to come but not the shapes of anything saved."""
    recipe = {f.name for f in dataclasses.fields(cfg.recipe) if isinstance(getattr(cfg.recipe, f.name), float)}
    return set(ADJUSTABLE_ON_RESUME) | recipe
