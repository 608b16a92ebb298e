"""What a run will need on GPUs, computed from its config (not measured): bytes per GPU with the activations, FLOPs
per image, and the time an epoch takes at a stated throughput. The export-script command prints it; lesson 7 shows it.

Memory per GPU = the persistent state (parallel.state_bytes: weights, gradients, AdamW's moments, the teacher; under
FSDP2 a 1/N shard plus one gathered unit) + the activations kept for backward, counted as Korthikanti et al. (2022,
"Reducing activation recomputation in large transformer models", sec. 4.1) count them for a transformer layer in
16-bit mixed precision: 34 bytes per token and channel (attention 11, MLP 19, the two norms 4), the attention
scores themselves never stored (PyTorch's SDPA kernels recompute them in backward). With activation checkpointing a
block keeps only its input (2 bytes per token and channel) and one block at a time is recomputed whole. The heads
add their hidden layers and their K logits in fp32 (logits, log-softmax and the teacher's targets: 12 bytes each).

FLOPs per image: 2 per weight and token for each matrix product, plus the attention's 4 x tokens^2 x width per block;
backward costs twice the forward. The student runs forward and backward on every view, the teacher forward on the
global views. The rest (augmentation, the loss, the optimizer) is left out.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn as nn

from .config import Config
from .data import CIFAR10_TRAIN_IMAGES
from .errors import CheckpointError, user_message
from .methods import build_method
from .parallel import state_bytes

ACTIVATION_BYTES = 34     # per token and channel of a block, 16-bit mixed precision (Korthikanti et al. 2022)
CHECKPOINTED_BYTES = 2    # per token and channel: a checkpointed block keeps its input only
LOGIT_BYTES = 12          # per logit: fp32 logits, their log-softmax, the teacher's targets
IMAGENET_TRAIN_IMAGES = 1_281_167
# The throughput assumed where nothing was measured: an A100's dense bf16 peak, at a utilisation typical of ViT
# training (MFU). State it with the numbers it gives; measure yours with `python -m ssl_lessons bench`.
ASSUMED_TFLOPS = 312.0
ASSUMED_UTILISATION = 0.4


def view_tokens(cfg: Config, size: int) -> int:
    """Tokens of one view of `size` px: its patches, the CLS token and the registers."""
    return (size // cfg.patch_size) ** 2 + 1 + cfg.register_tokens


@dataclasses.dataclass
class RunEstimate:
    per_gpu_batch: int            # images per GPU per step
    micro_batch: int              # images per GPU per forward pass (per_gpu_batch / accum_steps)
    state_gib: float              # weights, gradients, AdamW, teacher (per GPU)
    activation_gib: float         # kept for backward, one micro-batch
    student_tokens: int           # per image, every view
    teacher_tokens: int           # per image, the global views
    tflops_per_image: float       # student forward + backward, teacher forward

    @property
    def total_gib(self) -> float:
        return self.state_gib + self.activation_gib


def estimate(cfg: Config, nodes: int, gpus_per_node: int) -> RunEstimate:
    """Memory per GPU and FLOPs per image of cfg's run on nodes x gpus_per_node GPUs (a ViT; the model is built on
    the meta device, so a ViT-g costs nothing to count)."""
    if cfg.backbone != "vit":
        raise ValueError("the estimate counts a ViT's tokens: backbone=vit")
    world = nodes * gpus_per_node
    with torch.device("meta"):
        method = build_method(cfg)
    gather = 2 if cfg.amp else 4
    state = state_bytes(method, world, cfg.parallel, gather_bytes=gather)["per_rank"]
    crops = method.crops
    local_size = crops.local_view.size if crops.n_local else 0
    global_tokens, local_tokens = view_tokens(cfg, cfg.image_size), view_tokens(cfg, local_size) if local_size else 0
    student_tokens = crops.n_global * global_tokens + crops.n_local * local_tokens
    teacher_tokens = crops.n_global * global_tokens if hasattr(method, "teacher") else 0
    per_gpu = cfg.batch_size // world
    micro = per_gpu // cfg.accum_steps
    width, depth = cfg.embed_dim, cfg.depth
    per_token = CHECKPOINTED_BYTES * depth + ACTIVATION_BYTES if cfg.activation_checkpointing else ACTIVATION_BYTES * depth
    activations = micro * student_tokens * width * per_token * (1 if cfg.amp else 2)
    recipe = cfg.recipe
    if hasattr(recipe, "out_dim"):  # the DINO family's heads: CLS rows of every view, masked patch rows
        cls_rows = micro * (crops.n_global + crops.n_local)
        masked = getattr(recipe, "mask_probability", 0) * (getattr(recipe, "mask_ratio_min", 0)
                                                            + getattr(recipe, "mask_ratio_max", 0)) / 2
        patch_rows = micro * crops.n_global * (cfg.image_size // cfg.patch_size) ** 2 * masked
        hidden = recipe.hidden_dim * 2 + recipe.bottleneck_dim  # the MLP's activations per row, 16-bit
        k_patch = getattr(recipe, "patch_out_dim", recipe.out_dim)
        activations += (cls_rows + patch_rows) * hidden * 2
        activations += cls_rows * recipe.out_dim * LOGIT_BYTES + patch_rows * k_patch * LOGIT_BYTES
    weights = sum(m.weight.numel() for m in method.backbone.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
    student_views = [global_tokens] * crops.n_global + [local_tokens] * crops.n_local
    teacher_views = [global_tokens] * crops.n_global if teacher_tokens else []
    flops = 3 * forward_flops(weights, student_views, depth, width) + forward_flops(weights, teacher_views, depth, width)
    return RunEstimate(per_gpu, micro, state / 2**30, activations / 2**30, student_tokens, teacher_tokens, flops / 1e12)


def forward_flops(weights: int, view_tokens: list[int], depth: int, width: int) -> float:
    """FLOPs of one image's forward pass through a ViT with `weights` in its matrix products (linear layers and the
    patch embedding), views of the given token counts: 2 x weights x tokens, plus 4 x tokens^2 x width per block
    for the attention (QK^T and the weighted sum of V)."""
    return sum(2 * weights * n + depth * 4 * n * n * width for n in view_tokens)


def hours_per_epoch(est: RunEstimate, gpus: int, tflops_per_gpu: float = ASSUMED_TFLOPS,
                    utilisation: float = ASSUMED_UTILISATION, images: int = IMAGENET_TRAIN_IMAGES) -> float:
    """Hours for `images` at `utilisation` of `tflops_per_gpu` on every one of `gpus` GPUs (an assumption to state:
    e.g. 40 % of an A100's 312 bf16 TFLOP/s; measure yours with `python -m ssl_lessons bench`)."""
    images_per_second = gpus * tflops_per_gpu * utilisation / est.tflops_per_image
    return images / images_per_second / 3600


def job_count(total_hours: float, hours_per_job: int) -> int:
    """SLURM jobs of `hours_per_job` needed for `total_hours` of training (each resumes the last checkpoint)."""
    return max(1, math.ceil(total_hours / hours_per_job))


def summary(cfg: Config, nodes: int, gpus_per_node: int, hours: int) -> str:
    """Lines for the export-script command: memory per GPU, time per epoch and in all at the assumed throughput, and
    how many chained SLURM jobs of `hours` the run needs."""
    try:
        est = estimate(cfg, nodes, gpus_per_node)
    except (FileNotFoundError, CheckpointError) as e:  # distillation builds its teacher from data/pretrained
        return f"no estimate: {user_message(e).splitlines()[0][:200]}"
    gpus = nodes * gpus_per_node
    images = CIFAR10_TRAIN_IMAGES if cfg.dataset == "cifar10" else IMAGENET_TRAIN_IMAGES
    per_epoch = hours_per_epoch(est, gpus, images=images)
    total = per_epoch * cfg.epochs
    micro = f" in {cfg.accum_steps} micro-batches of {est.micro_batch}" if cfg.accum_steps > 1 else ""
    return "\n".join([
        f"per GPU: {est.per_gpu_batch} images a step{micro}; about {est.total_gib:.1f} GiB "
        f"({est.state_gib:.1f} of weights, gradients, AdamW and teacher; {est.activation_gib:.1f} of activations), "
        "computed (estimates.py), not measured",
        f"time: {est.tflops_per_image:.2f} TFLOP per image; at {ASSUMED_UTILISATION:.0%} of {ASSUMED_TFLOPS:.0f} "
        f"TFLOP/s per GPU (an assumption: an A100's bf16 peak) {per_epoch:.2f} h per epoch of {images:,} images, "
        f"{total:.0f} h for {cfg.epochs:g} epochs = {job_count(total, hours)} chained job(s) of {hours} h (job.sbatch "
        "says how to chain them)"])
