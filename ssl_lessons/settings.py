"""Settings: one plain dataclass for what every run shares (`Config`), the presets of those fields, and reading and
checking values. A method's own fields live in its `Recipe` beside its code (methods/<name>.py), held in
`Config.recipe`; config.py builds a Config for a registered method (make_config) and applies overrides.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError, require


@dataclass
class Config:
    # --- what to learn from -------------------------------------------------------------------
    method: str = "simclr"          # a name in methods.METHODS; its own fields: `recipe`
    dataset: str = "cifar10"        # "cifar10", or the path of any ImageFolder tree (train/ and test/ inside)
    data_source: str = ""           # CIFAR-10 folder or .tar.gz; empty = $SSL_LESSONS_CIFAR10, data/, or download
    image_size: int = 32            # global crop size; cached images are resized to it (ImageFolder trees)
    data_loading: str = "auto"      # "memory" (uint8 cache), "stream" (decode per sample, streaming.py), "auto":
                                    # stream an ImageFolder tree whose cache would exceed streaming's limit (8 GB)
    workers: int = 8                # DataLoader worker processes per training process (streamed data only)
    train_subset: int = 0           # use only this many training images (0 = all); for quick runs
    test_subset: int = 0            # likewise for the test images
    # --- backbone ---------------------------------------------------------------------------------
    backbone: str = "vit"           # "vit" (timm; the fast choice on a CPU) or "resnet18" (CIFAR variant)
    patch_size: int = 4             # ViT patch size; 4 at 32 px gives an 8x8 grid
    embed_dim: int = 192
    depth: int = 6
    num_heads: int = 3
    global_pool: str = "avg"        # ViT feature: "avg" of the patch tokens or the CLS "token"
    drop_path_rate: float = 0.0     # stochastic depth of the student ViT (the teacher runs without it)
    layerscale_init: float = 0.0    # LayerScale's initial value (DINOv2: 1e-5); 0 = no LayerScale
    register_tokens: int = 0        # extra learned tokens beside CLS (Darcet et al. 2024); 0 = none
    sequence_packing: bool = False  # all crop sizes through the blocks as one sequence, block-diagonal mask (DINOv2)
    efficient_drop_path: bool = False  # stochastic depth computing the kept samples only (dinov2, when p > 0.1)
    # --- optimisation -------------------------------------------------------------------------------
    epochs: float = 100.0           # may be fractional
    batch_size: int = 256           # global batch (split across DDP ranks)
    accum_steps: int = 1            # micro-batches per step: each rank's share of the batch in this many forward and
                                    # backward passes, gradients summed (less memory; see step.py for what changes)
    lr: float = 1e-3                # AdamW peak learning rate at the reference batch of lr_scaling
    lr_scaling: str = "linear"      # "linear": lr * batch/256 (SimCLR ... DINO); "sqrt": lr * sqrt(batch/1024) (DINOv2)
    min_lr: float = 1e-6            # cosine end value
    schedules: str = "cosine"       # "cosine": lr, weight decay and teacher momentum follow their cosines to their end
                                    # values; "constant": after the warm-up each stays at its start value (DINOv3,
                                    # which trains without a fixed end: a run can go on, or stop, at any step)
    warmup: float = 0.1             # fraction of training spent warming lr up linearly from 0
    weight_decay: float = 0.05      # cosine schedule from weight_decay to weight_decay_end
    weight_decay_end: float = 0.05
    clip_grad: float = 3.0          # max gradient norm: per tensor, or per part as a method says (0 = none)
    highres_size: int = 0           # > 0: the last highres_fraction of training uses global crops of this size
    highres_fraction: float = 0.0   # (DINOv2's short high-resolution phase, sec. 4; 0 = none), which runs every
    highres_lr_scale: float = 0.5   # schedule again, compressed, at this fraction of the peak lr (App. B.2)
    # --- bookkeeping ------------------------------------------------------------------------------
    init_from: str = ""             # start from an exported backbone (a data/pretrained name or a .pt path) instead of
                                    # random weights: the student and teacher, and the heads when the file has them
    seed: int = 0
    device: str = "auto"            # auto = cuda, then mps, then cpu
    amp: bool = True                # bf16 autocast where the device supports it well (cuda)
    parallel: str = "ddp"           # several processes (torchrun): "ddp" copies the model, "fsdp" shards it (parallel.py)
    activation_checkpointing: bool = False  # recompute each student block in backward: less memory, ~1/3 more compute
    out_dir: str = ""               # empty = runs/<method>-<preset>
    ckpt_every: int = 200           # steps between checkpoints (one is always written at the end)
    log_every: int = 10             # steps between history records (and the only steps that compute diagnostics)
    knn_every: float = 0.0          # epochs between k-NN evaluations during training (0 = only at the end)
    knn_bank: int = 10000           # training images in the bank of the periodic k-NN (the final one uses all)
    periodic_dense: bool = False    # ViTs on images in memory: the dense probe (below) also at each periodic k-NN
    keep_snapshots: bool = False    # at each periodic k-NN also keep the evaluated backbone and its heads small, as
                                    # `export` writes them: out_dir/snapshots/step-NNNNNN.pt (lesson 9's long run)
    knn_k: int = 20
    knn_temperature: float = 0.07
    linear_probe: bool = True       # also fit a logistic-regression probe at the end
    probe_max_iter: int = 1000      # L-BFGS iterations of the probe (scikit-learn warns if it stops before converging)
    dense_probe: bool = True        # ViTs: also segment CIFAR-10 mosaics with a linear probe on patch tokens (dense.py)
    dense_mosaics: int = 1000       # training mosaics of that probe (test mosaics: half as many)
    eval_batch_size: int = 512
    # --- the method's own fields (a methods.<name>.Recipe), set by make_config -------------------
    recipe: Any = field(default=None, metadata={"internal": True})
    preset: str = field(default="", metadata={"internal": True})


PRESETS: dict[str, dict] = {
    # The learner's default: about 15 minutes of training on a 2-core laptop CPU.
    "cifar10-laptop": dict(patch_size=4, embed_dim=128, depth=4, num_heads=4, global_pool="avg",
                           epochs=3.5, batch_size=128, lr=2e-3, warmup=0.05, knn_every=1.0),
    # Full-resolution ImageNet (lesson 7): each is one method's official recipe, which lives in that method's PRESETS
    # (methods/dino.py, dinov2.py, distill.py); here only what the data's scale asks of every run. Give the tree with
    # --set dataset=/path/to/imagenet (train/<class>/*.JPEG, val/<class>/*); it is streamed from disk.
    **{name: dict(data_loading="stream", workers=10, knn_every=0.0, linear_probe=False, log_every=50,
                  ckpt_every=1000, eval_batch_size=256)
       for name in ("imagenet-vits16-dino", "imagenet-vitl14-dinov2", "imagenet-vits14-distill",
                    "imagenet-vitl16-dinov3")},
    # A tiny budget for tests: seconds, not minutes. Its numbers mean nothing.
    "smoke": dict(train_subset=1024, test_subset=512, patch_size=8, embed_dim=64, depth=2, num_heads=2,
                  epochs=0.25, batch_size=64, ckpt_every=2, log_every=1,
                  knn_every=0.125, knn_bank=1024, linear_probe=True, probe_max_iter=100, eval_batch_size=256,
                  dense_mosaics=64),
}


def peak_lr(cfg: Config) -> float:
    """The schedule's peak lr for cfg's global batch: lr * batch/256 (the linear rule of Goyal et al., used by SimCLR,
    BYOL, SwAV and DINO) or lr * sqrt(batch/1024) (DINOv2's `scaling_rule: sqrt_wrt_1024`)."""
    if cfg.lr_scaling == "sqrt":
        return cfg.lr * math.sqrt(cfg.batch_size / 1024)
    return cfg.lr * cfg.batch_size / 256


def general_fields() -> dict[str, type]:
    return {f.name: type(getattr(Config, f.name)) for f in dataclasses.fields(Config) if not f.metadata.get("internal")}


def recipe_fields(recipe) -> dict[str, type]:
    return {f.name: type(getattr(recipe, f.name)) for f in dataclasses.fields(recipe)}


def parse_value(name: str, text, target_type):
    if not isinstance(text, str):
        value = text
    elif target_type is bool:
        low = text.lower()
        if low not in ("1", "0", "true", "false", "yes", "no"):
            raise ConfigError(f"{name} takes true or false, not {text!r}")
        value = low in ("1", "true", "yes")
    else:
        try:
            value = target_type(text)
        except ValueError:
            raise ConfigError(f"{name} takes a {target_type.__name__}, not {text!r}") from None
    if target_type is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, target_type) or (target_type is int and isinstance(value, bool)):
        raise ConfigError(f"{name} takes a {target_type.__name__}, not {type(value).__name__} {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, not {text!r}")
    return value


def validate(cfg: Config) -> Config:
    for key in ("image_size", "patch_size", "embed_dim", "depth", "num_heads", "batch_size", "epochs", "lr",
                "ckpt_every", "log_every", "accum_steps", "knn_k", "knn_temperature", "eval_batch_size", "knn_bank", "dense_mosaics"):
        require(getattr(cfg, key) > 0, f"{key} must be positive, got {getattr(cfg, key)}")
    for key in ("min_lr", "weight_decay", "weight_decay_end", "clip_grad", "drop_path_rate", "layerscale_init",
                "register_tokens", "train_subset", "test_subset", "knn_every", "workers"):
        require(getattr(cfg, key) >= 0, f"{key} must be >= 0, got {getattr(cfg, key)}")
    require(cfg.knn_every == 0 or cfg.knn_k <= cfg.knn_bank,
            f"knn_k ({cfg.knn_k}) must not exceed knn_bank ({cfg.knn_bank}), the periodic k-NN's bank")
    require(0 <= cfg.warmup < 1, f"warmup is a fraction of training in [0, 1), got {cfg.warmup}")
    require(cfg.data_loading in ("auto", "memory", "stream"),
            f"data_loading is 'auto', 'memory' or 'stream', got {cfg.data_loading!r}")
    require(cfg.parallel in ("ddp", "fsdp"), f"parallel is 'ddp' or 'fsdp', got {cfg.parallel!r}")
    require(cfg.lr_scaling in ("linear", "sqrt"), f"lr_scaling is 'linear' or 'sqrt', got {cfg.lr_scaling!r}")
    require(cfg.schedules in ("cosine", "constant"), f"schedules is 'cosine' or 'constant', got {cfg.schedules!r}")
    require(0 < cfg.highres_lr_scale <= 1, f"highres_lr_scale is in (0, 1], got {cfg.highres_lr_scale}")
    require(0 <= cfg.highres_fraction < 1, f"highres_fraction is a fraction of training in [0, 1), got "
                                           f"{cfg.highres_fraction}")
    require((cfg.highres_size > 0) == (cfg.highres_fraction > 0),
            f"a high-resolution phase needs both highres_size ({cfg.highres_size}) and highres_fraction "
            f"({cfg.highres_fraction}) > 0 (or both 0 for none)")
    if cfg.highres_size:
        require(cfg.highres_size > cfg.image_size and cfg.highres_size % cfg.patch_size == 0,
                f"highres_size {cfg.highres_size} must exceed image_size {cfg.image_size} and be a multiple of "
                f"patch_size {cfg.patch_size}")
        require(cfg.backbone == "vit", "the high-resolution phase resamples a ViT's position embeddings: "
                                       "it needs backbone=vit")
    require(cfg.drop_path_rate < 1, f"drop_path_rate is a probability below 1, got {cfg.drop_path_rate}")
    require(cfg.global_pool in ("avg", "token"), f"global_pool is 'avg' or 'token', got {cfg.global_pool!r}")
    require(cfg.backbone in ("vit", "resnet18"), f"backbone is 'vit' or 'resnet18', got {cfg.backbone!r}")
    require(re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", cfg.device) is not None,
            f"device is auto, cpu, mps, cuda or cuda:N, got {cfg.device!r}")
    if cfg.backbone == "vit":
        require(cfg.image_size % cfg.patch_size == 0,
                f"image_size {cfg.image_size} is not a multiple of patch_size {cfg.patch_size}")
        require(cfg.embed_dim % cfg.num_heads == 0,
                f"embed_dim {cfg.embed_dim} is not a multiple of num_heads {cfg.num_heads}")
    cfg.recipe.validate(cfg)
    return cfg


def config_to_dict(cfg: Config) -> dict:
    """Plain types only (saved in checkpoints and results): the general fields and {"recipe": {...}}."""
    return dataclasses.asdict(cfg)


def general_from_dict(saved: dict) -> Config:
    """The general fields (and preset) of a saved config, without its recipe (recipe=None): enough to rebuild the
    backbone it describes (backbones.backbone_from_config). Fields the record predates take today's defaults."""
    return Config(**{k: v for k, v in saved.items() if k in general_fields() or k == "preset"})


def flat_config(cfg: Config) -> dict:
    """{general field or recipe field: value}: one level, for comparing two configs key by key."""
    out = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "recipe"}
    return {**out, **dataclasses.asdict(cfg.recipe)}


def base_preset(preset: str) -> str:
    """The PRESETS entry a run's preset name starts from ("cifar10-laptop-no-centering" -> "cifar10-laptop")."""
    for name in sorted(PRESETS, key=len, reverse=True):
        if preset == name or preset.startswith(name + "-"):
            return name
    raise ConfigError(f"preset {preset!r} does not start with one of {', '.join(PRESETS)}")


SMOKE_ENV = "SSL_LESSONS_SMOKE"


def notebook_preset() -> str:
    """The preset a notebook runs at: the learner's "cifar10-laptop", or "smoke" when $SSL_LESSONS_SMOKE=1 (tests)."""
    return "smoke" if os.environ.get(SMOKE_ENV, "") not in ("", "0") else "cifar10-laptop"


def parse_set_args(items: list[str]) -> dict:
    """['lr=1e-3', 'epochs=2'] -> {'lr': '1e-3', 'epochs': '2'}"""
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set takes key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out
